//! Smaller findings of the reliability review, each with the check that failed before.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

const VERSION_A: &str =
    "fn criteria(task) { [#{ id: \"a\", kind: \"boolean\", label: \"A?\" }] }\n";
const VERSION_B: &str =
    "fn criteria(task) { [#{ id: \"b\", kind: \"boolean\", label: \"B?\" }] }\n";

async fn serving(s: &Server, admin: &str, name: &str) -> (String, String, Option<String>) {
    let (_, plugins) = s.get(admin, "/api/v1/plugins").await;
    let p = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .cloned()
        .unwrap_or_default();
    (
        p["status"].as_str().unwrap_or("").to_owned(),
        p["version"].as_str().unwrap_or("").to_owned(),
        p["last_error"]["message"].as_str().map(str::to_owned),
    )
}

async fn wait_serving(s: &Server, admin: &str, name: &str, source: &str) {
    let version = assay::scripting::registry::content_hash(source);
    for _ in 0..200 {
        if serving(s, admin, name).await.1 == version {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{name} never served the expected version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_file_falls_back_to_the_version_that_served_last() {
    let mut s = Server::start_with(Options {
        rubrics: vec![("flip", VERSION_A.into())],
        env: vec![],
    })
    .await;
    let admin = s.admin().await;
    let file = s.rubric_dir().join("flip.rhai");
    // A, then B, then A again: A serves last, though B is the newest stored version.
    std::fs::write(&file, VERSION_B).unwrap();
    wait_serving(&s, &admin, "flip", VERSION_B).await;
    std::fs::write(&file, VERSION_A).unwrap();
    wait_serving(&s, &admin, "flip", VERSION_A).await;
    s.kill();
    std::fs::write(&file, "fn criteria(task) { let x = ; }\n").unwrap();
    s.start_again().await;
    let admin = s.admin().await;
    let (status, version, error) = serving(&s, &admin, "flip").await;
    assert_eq!(status, "error");
    assert!(error.unwrap_or_default().contains("syntax error"));
    assert_eq!(version, assay::scripting::registry::content_hash(VERSION_A));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_plugin_file_is_an_error_an_admin_sees() {
    let s = Server::start().await;
    let admin = s.admin().await;
    std::fs::write(
        s.rubric_dir().join("latin1.rhai"),
        b"fn criteria(task) { \"caf\xe9\" }\n",
    )
    .unwrap();
    let mut seen = None;
    for _ in 0..200 {
        let found = serving(&s, &admin, "latin1").await;
        if found.0 == "error" {
            seen = found.2;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let message = seen.expect("the unreadable file never showed as an error");
    assert!(
        message.contains("cannot read") && message.contains("UTF-8"),
        "{message}"
    );
    assert!(s.metric("assay_plugin_reload_failures_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_are_refused_in_names() {
    let s = Server::start().await;
    let admin = s.admin().await;
    for name in ["nul\u{0}name", "line\nbreak"] {
        let (status, body) = s
            .post(&admin, "/api/v1/projects", pairwise_project(name, 1))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["errors"][0]["field"], "name", "{body}");
    }
    let (status, body) = s
        .post(
            &admin,
            "/api/v1/users",
            json!({"username": "nul\u{0}user", "password": EXPERT_PASSWORD}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errors"][0]["field"], "username", "{body}");
}
