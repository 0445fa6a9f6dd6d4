//! The `pages` scenario: every page requested many times, server and client time.

use std::time::Instant;

use serde_json::json;

use super::http::*;
use super::report::*;

/// Requests each page many times with a session cookie and collects its render times.
pub(crate) async fn run_pages(
    client: &reqwest::Client,
    url: &str,
    api: &str,
    admin: &str,
    pid: u64,
    run_id: &str,
) -> Result<std::collections::BTreeMap<&'static str, PageTiming>, String> {
    const ROUNDS: usize = 200;
    let (_, expert) = new_expert(client, api, admin, pid, &format!("bench-{run_id}-pages")).await?;
    // Twenty answers so the submissions page has a full page to show.
    let answer = json!({"preference": {"pick": "left", "strength": 2}, "justification": "A is more complete and better supported by the evidence."});
    for _ in 0..20 {
        let (_, next) = call(
            client,
            reqwest::Method::POST,
            format!("{api}/projects/{pid}/next"),
            &expert,
            None,
        )
        .await?;
        let aid = next["assignment"]["id"]
            .as_u64()
            .ok_or("nothing to review")?;
        let body = json!({"token": next["assignment"]["token"], "answer": answer});
        call(
            client,
            reqwest::Method::POST,
            format!("{api}/assignments/{aid}/submit"),
            &expert,
            Some(body),
        )
        .await?;
    }
    let pages: [(&'static str, String, Option<&str>); 9] = [
        ("login", "/login".into(), None),
        ("home", "/".into(), Some(&expert)),
        ("review", format!("/p/{pid}/review"), Some(&expert)),
        (
            "submissions (20 per page)",
            format!("/p/{pid}/submissions"),
            Some(admin),
        ),
        ("stats", format!("/p/{pid}/stats"), Some(admin)),
        ("admin projects", "/admin/projects".into(), Some(admin)),
        (
            "admin project",
            format!("/admin/projects/{pid}"),
            Some(admin),
        ),
        ("admin users", "/admin/users".into(), Some(admin)),
        ("admin plugins", "/admin/plugins".into(), Some(admin)),
    ];
    let mut out = std::collections::BTreeMap::new();
    for (label, path, token) in pages {
        let (mut server, mut seen) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
        for _ in 0..ROUNDS {
            let mut req = client.get(format!("{url}{path}"));
            if let Some(t) = token {
                req = req.header(reqwest::header::COOKIE, format!("assay_session={t}"));
            }
            let t0 = Instant::now();
            let res = req.send().await.map_err(|e| e.to_string())?;
            if res.status() != 200 {
                return Err(format!("{path}: HTTP {}", res.status()));
            }
            let timing = res
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split("dur=").nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            let _ = res.bytes().await.map_err(|e| e.to_string())?;
            seen.push(t0.elapsed().as_micros() as u64);
            server.push((timing * 1000.0) as u64);
        }
        out.insert(
            label,
            PageTiming {
                requests: ROUNDS,
                server_ms: latency(server),
                client_ms: latency(seen),
            },
        );
    }
    Ok(out)
}
