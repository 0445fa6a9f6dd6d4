//! Small HTTP helpers the scenarios share: calls, logins, experts, the flush counters.

use serde_json::{json, Value};

pub(crate) async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let mut req = client.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.map_err(|e| format!("transport: {e}"))?;
    let status = res.status().as_u16();
    let text = res.text().await.map_err(|e| format!("transport: {e}"))?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

pub(crate) async fn login(
    client: &reqwest::Client,
    url: &str,
    user: &str,
    password: &str,
) -> Result<String, String> {
    let res = client
        .post(format!("{url}/api/v1/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = res.json().await.map_err(|e| e.to_string())?;
    v["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("login of {user} failed: {v}"))
}

/// Creates an expert, makes them a member of the project and signs them in: (id, token).
pub(crate) async fn new_expert(
    client: &reqwest::Client,
    api: &str,
    admin: &str,
    pid: u64,
    name: &str,
) -> Result<(u64, String), String> {
    let (status, user) = call(
        client,
        reqwest::Method::POST,
        format!("{api}/users"),
        admin,
        Some(json!({"username": name, "password": "bench-expert-password"})),
    )
    .await?;
    if status != 201 {
        return Err(format!("cannot create expert: {user}"));
    }
    let uid = user["id"].as_u64().ok_or("no user id")?;
    call(
        client,
        reqwest::Method::PUT,
        format!("{api}/projects/{pid}/members/{uid}"),
        admin,
        Some(json!({"role": "expert"})),
    )
    .await?;
    let url = api.trim_end_matches("/api/v1");
    Ok((
        uid,
        login(client, url, name, "bench-expert-password").await?,
    ))
}

/// The server's flush count and the writes that waited for flushes, from `/metrics`.
pub(crate) async fn flush_counts(client: &reqwest::Client, url: &str) -> Option<(u64, u64)> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let counter = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
    };
    Some((
        counter("assay_group_flushes_total")?,
        counter("assay_durable_writes_total")?,
    ))
}
