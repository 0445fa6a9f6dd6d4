use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::*;

fn b64(v: &serde_json::Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

fn sign(claims: &serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_bad_tokens_are_refused() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let (expert_id, expert) = s.expert(&admin, "erin", &[]).await;

    // Wrong password.
    let (status, body) = s
        .request(
            Method::POST,
            None,
            "/api/v1/auth/login",
            Some(json!({"username": "erin", "password": "nope-nope-nope"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["code"], "unauthorized");
    assert!(body["request_id"].as_str().is_some_and(|r| r.len() == 16));

    // No token, garbage, tampered payload.
    let (status, _) = s.request(Method::GET, None, "/api/v1/auth/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = s.get("not-a-token", "/api/v1/auth/me").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let parts: Vec<&str> = expert.split('.').collect();
    let now = jsonwebtoken::get_current_timestamp() as i64;
    let forged_payload =
        b64(&json!({"iss": "assay/session", "sub": 1, "gen": 0, "iat": now, "exp": now + 3600}));
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    let (status, _) = s.get(&tampered, "/api/v1/users").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a payload swapped under a valid signature"
    );

    // alg: none.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        forged_payload
    );
    let (status, _) = s.get(&none, "/api/v1/auth/me").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "alg none");

    // Expired, though correctly signed.
    let expired = sign(
        &json!({"iss": "assay/session", "sub": expert_id, "gen": 0, "iat": now - 7200, "nbf": now - 7200, "exp": now - 60}),
    );
    let (status, body) = s.get(&expired, "/api/v1/auth/me").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    // The same claims, unexpired, are accepted: the secret and claim shape are right.
    let fresh = sign(
        &json!({"iss": "assay/session", "sub": expert_id, "gen": 0, "iat": now, "nbf": now, "exp": now + 60}),
    );
    let (status, body) = s.get(&fresh, "/api/v1/auth/me").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // A token of another purpose (an assignment token's issuer) is not a session.
    let wrong_issuer = sign(
        &json!({"iss": "assay/assignment", "sub": expert_id, "gen": 0, "iat": now, "nbf": now, "exp": now + 60}),
    );
    let (status, _) = s.get(&wrong_issuer, "/api/v1/auth/me").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Revoked: every token issued before the revocation stops working.
    let (status, _) = s.get(&expert, "/api/v1/auth/me").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s
        .post(
            &admin,
            &format!("/api/v1/users/{expert_id}/revoke"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s.get(&expert, "/api/v1/auth/me").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["message"], "the token was revoked");
    let again = s.login("erin", EXPERT_PASSWORD).await;
    let (status, _) = s.get(&again, "/api/v1/auth/me").await;
    assert_eq!(status, StatusCode::OK);

    // Deactivated users can neither log in nor use old tokens.
    let (status, _) = s
        .request(
            Method::PATCH,
            Some(&admin),
            &format!("/api/v1/users/{expert_id}"),
            Some(json!({"active": false})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = s.get(&again, "/api/v1/auth/me").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experts_are_kept_to_their_own_projects_and_roles() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let (erin_id, erin) = s.expert(&admin, "erin", &[]).await;
    let mine = s.project(&admin, pairwise_project("mine", 1)).await;
    let theirs = s.project(&admin, pairwise_project("theirs", 1)).await;
    s.add_member(&admin, mine, erin_id, "expert").await;
    assert_eq!(
        s.upload(&admin, mine, &pairwise_tasks("m", 2)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        s.upload(&admin, theirs, &pairwise_tasks("t", 2)).await.0,
        StatusCode::CREATED
    );

    // Admin endpoints.
    let (status, body) = s
        .post(&erin, "/api/v1/projects", pairwise_project("x", 1))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (status, _) = s
        .post(
            &erin,
            "/api/v1/users",
            json!({"username": "mallory", "password": "password-123"}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s.get(&erin, "/api/v1/users").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s.get(&erin, "/api/v1/audit").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let res = s
        .client
        .post(format!("{}/api/v1/projects/{mine}/tasks", s.url))
        .bearer_auth(&erin)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);

    // Only their projects are listed; another project's tasks and queue are closed to them.
    let (_, list) = s.get(&erin, "/api/v1/projects").await;
    let ids: Vec<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![mine]);
    let (status, _) = s.get(&erin, &format!("/api/v1/projects/{theirs}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s.next(&erin, theirs).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, tasks) = s
        .get(&admin, &format!("/api/v1/projects/{theirs}/tasks"))
        .await;
    let their_task = tasks[0]["task"]["id"].as_u64().unwrap();
    let (status, body) = s.get(&erin, &format!("/api/v1/tasks/{their_task}")).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = s
        .get(&erin, &format!("/api/v1/projects/{theirs}/export"))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // In their own project an expert sees a task only once it is handed to them.
    let (_, tasks) = s
        .get(&admin, &format!("/api/v1/projects/{mine}/tasks"))
        .await;
    let ids: Vec<u64> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["task"]["id"].as_u64().unwrap())
        .collect();
    let (status, next) = s.next(&erin, mine).await;
    assert_eq!(status, StatusCode::OK);
    let held = next["task"]["id"].as_u64().unwrap();
    let other = *ids.iter().find(|&&t| t != held).unwrap();
    assert_eq!(
        s.get(&erin, &format!("/api/v1/tasks/{held}")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        s.get(&erin, &format!("/api/v1/tasks/{other}")).await.0,
        StatusCode::FORBIDDEN
    );
    // Experts do not list or export the project.
    assert_eq!(
        s.get(&erin, &format!("/api/v1/projects/{mine}/tasks"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.get(&erin, &format!("/api/v1/projects/{mine}/export"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_rate_limited_per_username() {
    let s = Server::start_with(Options {
        env: vec![("ASSAY_AUTH__LOGIN_ATTEMPTS", "3".into())],
        ..Default::default()
    })
    .await;
    for _ in 0..3 {
        let (status, _) = s
            .request(
                Method::POST,
                None,
                "/api/v1/auth/login",
                Some(json!({"username": "admin", "password": "wrong-password"})),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let (status, body) = s
        .request(
            Method::POST,
            None,
            "/api/v1/auth/login",
            Some(json!({"username": "admin", "password": ADMIN_PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "too_many_requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sets_a_strict_http_only_cookie_and_errors_have_one_shape() {
    let s = Server::start().await;
    let res = s
        .client
        .post(format!("{}/api/v1/auth/login", s.url))
        .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    let cookie = res
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("assay_session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert_eq!(
        res.headers().get("x-content-type-options").unwrap(),
        "nosniff"
    );
    assert!(res.headers().get("x-request-id").is_some());

    // Malformed JSON, unknown fields, unknown routes: one error shape.
    let res = s
        .client
        .post(format!("{}/api/v1/auth/login", s.url))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["code"], "invalid_json");
    let (status, body) = s
        .request(
            Method::POST,
            None,
            "/api/v1/auth/login",
            Some(json!({"username": "a", "password": "b", "extra": 1})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_json"))
    );
    assert!(
        body["message"].as_str().unwrap().contains("extra"),
        "{body}"
    );
    let (status, body) = s.request(Method::GET, None, "/api/v1/nope", None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let admin = s.admin().await;
    let (status, body) = s
        .post(
            &admin,
            "/api/v1/projects",
            json!({"name": "x", "rubric": "missing"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0]["field"], "rubric");
}
