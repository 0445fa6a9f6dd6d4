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

/// `assay serve` on a data folder, expected to refuse to start: its stderr.
fn refused_start(data: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_assay"))
        .current_dir(std::env::temp_dir())
        .arg("serve")
        .env("ASSAY_STORAGE__DATA", data)
        .env("ASSAY_SERVER__BIND", "127.0.0.1:0")
        .env("ASSAY_PLUGINS__WATCH", "false")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the server started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_failures_say_what_to_do() {
    // A database another server holds.
    let s = Server::start().await;
    let data = s.data_dir();
    let err = tokio::task::spawn_blocking(move || refused_start(&data))
        .await
        .unwrap();
    assert!(err.contains("in use by another assay process"), "{err}");
    // An empty secret file (a crash while it was first written).
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret.key"), "").unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            dir.path().join("secret.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
    }
    let data = dir.path().to_owned();
    let err = tokio::task::spawn_blocking(move || refused_start(&data))
        .await
        .unwrap();
    assert!(
        err.contains("is empty") && err.contains("delete it"),
        "{err}"
    );
}

const EXPORTER: &str = r#"fn criteria(task) { [#{ id: "ok", kind: "boolean", label: "OK?" }] }
fn export_records(task, submissions) {
    if task.external_id == "t-0" && task.data.fail_first == true { throw "cannot export the first"; }
    if task.external_id == "t-150" { throw "cannot export this one"; }
    let pad = "x";
    pad.pad(2000, "x");
    [#{ id: task.external_id, pad: pad }]
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_that_fails_says_so_and_is_never_silently_cut() {
    let s = Server::start_with(Options {
        rubrics: vec![("exporter", EXPORTER.into())],
        env: vec![],
    })
    .await;
    let admin = s.admin().await;
    let (eid, expert) = s.expert(&admin, "exp", &[]).await;
    let mut projects = Vec::new();
    for (name, fail_first) in [("late", false), ("early", true)] {
        let p = s
            .project(
                &admin,
                json!({"name": name, "rubric": "exporter", "reviews_per_task": 1}),
            )
            .await;
        s.add_member(&admin, p, eid, "expert").await;
        let tasks: Vec<String> = (0..200)
            .map(|i| {
                json!({"external_id": format!("t-{i}"), "data": {"fail_first": fail_first}})
                    .to_string()
            })
            .collect();
        s.upload(&admin, p, &tasks.join("\n")).await;
        for _ in 0..200 {
            let (status, _) = s.review_next(&expert, p, json!({"ok": true})).await;
            assert_eq!(status, StatusCode::CREATED);
        }
        projects.push(p);
    }
    // Failing after 150 records (more than one chunk streamed): the body ends with the error.
    let res = s
        .client
        .get(format!(
            "{}/api/v1/projects/{}/export?format=records",
            s.url, projects[0]
        ))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let body = res.text().await.unwrap();
    let lines: Vec<serde_json::Value> = body
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 151, "150 records and the trailer");
    let trailer = &lines[150]["error"];
    assert_eq!(trailer["code"], "script_error", "{trailer}");
    assert!(
        trailer["message"]
            .as_str()
            .unwrap()
            .contains("cannot export this one"),
        "{trailer}"
    );
    // Failing on the first record: an error response, not an empty 200.
    let (status, body) = s
        .get(
            &admin,
            &format!("/api/v1/projects/{}/export?format=records", projects[1]),
        )
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["script"]["function"], "export_records", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downtime_does_not_eat_leases() {
    let mut s = Server::start().await;
    let admin = s.admin().await;
    let (eid, expert) = s.expert(&admin, "patient", &[]).await;
    let p = s
        .project(
            &admin,
            json!({"name": "short", "rubric": "pairwise_preference", "lease_seconds": 6}),
        )
        .await;
    s.add_member(&admin, p, eid, "expert").await;
    s.upload(&admin, p, &pairwise_tasks("d", 2)).await;
    let (status, next) = s.next(&expert, p).await;
    assert_eq!(status, StatusCode::OK);
    // A hand-out is not flushed on its own; any later durable write takes the lease to disk.
    s.expert(&admin, "bystander", &[]).await;
    // The server is down for longer than the lease has left.
    s.kill();
    tokio::time::sleep(Duration::from_secs(7)).await;
    s.start_again().await;
    s.ready().await;
    // The lease is still the expert's: the page's heartbeat keeps it, and the answer lands.
    let aid = next["assignment"]["id"].as_u64().unwrap();
    let token = next["assignment"]["token"].clone();
    let (status, body) = s
        .post(
            &expert,
            &format!("/api/v1/assignments/{aid}/heartbeat"),
            json!({"token": token}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = s
        .post(
            &expert,
            &format!("/api/v1/assignments/{aid}/submit"),
            json!({"token": token, "answer": pairwise_answer()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
