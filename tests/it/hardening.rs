//! Findings from probing the server from outside (issue "Security and operations"), each with a
//! test that failed before its fix.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

/// An anonymous `/readyz` is a read: it never makes the store flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_never_flushes() {
    let s = Server::start().await;
    s.ready().await;
    let before = s.metric("assay_group_flushes_total").await;
    for _ in 0..20 {
        let r = s
            .client
            .get(format!("{}/readyz", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(s.metric("assay_group_flushes_total").await, before);
}

/// A JSON body over `server.max_json_kb` is refused with 413, not 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_limit_json_body_gets_413() {
    let s = Server::start_with(Options {
        env: vec![("ASSAY_SERVER__MAX_JSON_KB", "16".into())],
        ..Default::default()
    })
    .await;
    let big = json!({"username": "x".repeat(20_000), "password": "p"});
    let (status, body) = s
        .request(reqwest::Method::POST, None, "/api/v1/auth/login", Some(big))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["code"], "payload_too_large");
    assert!(body["message"].as_str().unwrap().contains("16 KiB"));
}

/// The last active admin can be neither demoted nor deactivated, by itself or anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_admin_stays_an_admin() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let (_, me) = s.get(&admin, "/api/v1/auth/me").await;
    let me = me["id"].as_u64().unwrap();
    let path = format!("/api/v1/users/{me}");
    let (status, body) = s.patch(&admin, &path, json!({"role": "member"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "last_admin");

    // With a second admin, the first may step down; then the second is the last one.
    let (status, second) = s
        .post(
            &admin,
            "/api/v1/users",
            json!({"username": "second", "password": "second-password-1", "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let second_id = second["id"].as_u64().unwrap();
    let (status, _) = s.patch(&admin, &path, json!({"role": "member"})).await;
    assert_eq!(status, StatusCode::OK);
    let token = s.login("second", "second-password-1").await;
    let (status, body) = s
        .patch(
            &token,
            &format!("/api/v1/users/{second_id}"),
            json!({"role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "last_admin");
}

/// A login with a huge username stores and keeps only a capped copy of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_caps_what_it_keeps_of_a_huge_username() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let huge = "a".repeat(500_000);
    let (status, _) = s
        .request(
            reqwest::Method::POST,
            None,
            "/api/v1/auth/login",
            Some(json!({"username": huge, "password": "whatever-password"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, events) = s.get(&admin, "/api/v1/audit?limit=5").await;
    assert_eq!(status, StatusCode::OK);
    let text = events.to_string();
    assert!(
        text.len() < 10_000,
        "the audit keeps {} bytes of it",
        text.len()
    );
    assert!(text.contains("over_length"));
}

/// Everything the server writes in its data folder is for its own user only (was 0644).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_are_private_to_the_server_user() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start().await;
    let admin = s.admin().await;
    let p = s.project(&admin, pairwise_project("modes", 1)).await;
    s.upload(&admin, p, &pairwise_tasks("m", 3)).await;
    let mut seen = 0;
    let mut stack = vec![s.data_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o077,
                0,
                "{} has mode {:o}",
                path.display(),
                mode & 0o777
            );
            seen += 1;
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    assert!(
        seen >= 3,
        "the data folder holds the database and the secret"
    );
}
