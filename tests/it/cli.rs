use std::process::Command;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

fn assay() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_assay"));
    // Away from the repository's own config.toml.
    cmd.current_dir(std::env::temp_dir());
    cmd
}

/// The JSON a successful command printed.
fn json_report(out: &std::process::Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `assay ARGS --project P --url URL --token TOKEN` off the test's runtime.
async fn against(s: &Server, token: &str, project: u64, args: &[&str]) -> std::process::Output {
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let project = project.to_string();
    all.extend(["--project", &project, "--url", &s.url, "--token", token].map(String::from));
    tokio::task::spawn_blocking(move || assay().args(&all).output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_and_export_commands_talk_to_a_running_server() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let p = s.project(&admin, pairwise_project("cli", 1)).await;
    let file = s.dir.path().join("tasks.jsonl");
    std::fs::write(&file, pairwise_tasks("cli", 25)).unwrap();
    let url = s.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        assay()
            .args([
                "import",
                file.to_str().unwrap(),
                "--project",
                &p.to_string(),
                "--url",
                &url,
            ])
            .env("ASSAY_PASSWORD", ADMIN_PASSWORD)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report = json_report(&out);
    assert_eq!(report["imported"], 25);

    // A bad file: non-zero exit and the bad line named.
    let bad = s.dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"a\": 1}\n{nope\n").unwrap();
    let out = against(&s, &admin, p, &["import", bad.to_str().unwrap()]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (eid, expert) = s.expert(&admin, "clier", &[]).await;
    s.add_member(&admin, p, eid, "expert").await;
    let (status, _) = s.review_next(&expert, p, pairwise_answer()).await;
    assert_eq!(status, StatusCode::CREATED);

    let target = s.dir.path().join("out.jsonl");
    let out = against(
        &s,
        &admin,
        p,
        &["export", "--out", target.to_str().unwrap()],
    )
    .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&target).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(text.lines().next().unwrap()).unwrap()["expert"],
        "clier"
    );

    // A format is sent as one encoded value: one that looks like more query parameters is
    // refused by name, not split into a different request.
    let out = against(&s, &admin, p, &["export", "--format", "dpo&status=all"]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unknown format `dpo&status=all`"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_add_writes_to_the_data_folder_and_bad_config_stops_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = assay()
        .args([
            "user",
            "add",
            "carol",
            "--role",
            "admin",
            "--skills",
            "law,finance",
            "--data",
            data.to_str().unwrap(),
        ])
        .env("ASSAY_PASSWORD", "carol-password-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Too short a password is refused with the field named.
    let out = assay()
        .args(["user", "add", "dave", "--data", data.to_str().unwrap()])
        .env("ASSAY_PASSWORD", "short")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("password"));

    // A typo in a setting stops start-up and names it.
    let out = assay()
        .args(["serve", "--data", data.to_str().unwrap()])
        .env("ASSAY_QUEUE__LEASE_SECONDZ", "5")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lease_secondz"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[queue]\nlease_seconds = \"long\"\n").unwrap();
    let out = assay()
        .args(["serve", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("config.toml") && err.contains("lease_seconds"),
        "{err}"
    );

    // The server started on that folder knows carol (and creates no extra admin).
    let s = {
        let mut s = Server::start().await;
        s.kill();
        std::fs::remove_dir_all(s.data_dir()).unwrap();
        copy_tree(&data, &s.data_dir());
        s.restart().await;
        s
    };
    let token = s.login("carol", "carol-password-1").await;
    let (_, me) = s.get(&token, "/api/v1/auth/me").await;
    assert_eq!(me["skills"], json!(["law", "finance"]));
    assert_eq!(me["role"], "admin");
    let (status, _) = s
        .request(
            reqwest::Method::POST,
            None,
            "/api/v1/auth/login",
            Some(json!({"username": "admin", "password": ADMIN_PASSWORD})),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "no admin is created when users exist"
    );
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `assay bench` starts its own server on a temporary folder, runs the closed loop and reports
/// what the issue names, in JSON: rates, latency percentiles, errors, duplicates, flushes.
#[test]
fn bench_runs_the_loop_against_its_own_server_and_reports_json() {
    let out = Command::new(env!("CARGO_BIN_EXE_assay"))
        // The shipped rubrics and routers come from the working folder.
        .current_dir(repo())
        .args([
            "bench",
            "--experts",
            "3",
            "--tasks",
            "3000",
            "--warmup",
            "0",
            "--duration",
            "1",
            "--json",
        ])
        .output()
        .unwrap();
    let report = json_report(&out);
    assert_eq!(report["scenario"], "loop");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert!(report["loops"].as_u64().unwrap() > 0, "{report}");
    assert!(report["loops_per_s"].as_f64().unwrap() > 0.0);
    for phase in ["next", "submit", "loop"] {
        let l = &report["latency_ms"][phase];
        for p in ["p50", "p95", "p99", "max"] {
            assert!(l[p].as_f64().is_some(), "{phase}.{p} missing: {report}");
        }
        assert!(l["p50"].as_f64() <= l["max"].as_f64(), "{report}");
    }
    // Running out of tasks ends an expert's loop; nothing else may go wrong.
    let errors = report["errors"].as_object().unwrap();
    assert!(
        errors.keys().all(|k| k == "queue empty"),
        "unexpected errors: {report}"
    );
    assert_eq!(report["import"]["items"], 3000);
    assert!(report["import"]["tasks_per_s"].as_f64().unwrap() > 0.0);
    assert!(report["export"]["items"].as_u64().unwrap() >= report["loops"].as_u64().unwrap());
    assert!(report["flushes"].as_u64().unwrap() >= 1, "{report}");
    assert!(
        report["writers_per_flush"].as_f64().unwrap() >= 1.0,
        "{report}"
    );
    assert!(report["peak_rss_mb"].as_f64().unwrap() > 0.0);
}

/// The audit log through the API (filters, CSV, the chain's check) and offline with
/// `assay audit verify`, which fails once an event is edited in the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_filtered_exported_and_verified() {
    let mut s = Server::start().await;
    let admin = s.admin().await;
    let p = s.project(&admin, pairwise_project("audited", 1)).await;
    s.upload(&admin, p, &pairwise_tasks("a", 2)).await;
    let (uid, expert) = s.expert(&admin, "eve", &[]).await;
    s.add_member(&admin, p, uid, "expert").await;
    assert_eq!(s.next(&expert, p).await.0, StatusCode::OK);

    let (status, leases) = s
        .get(&admin, &format!("/api/v1/audit?action=task&actor={uid}"))
        .await;
    assert_eq!(status, StatusCode::OK);
    let leases = leases.as_array().unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!(leases[0]["action"], "task.lease");
    let csv = s
        .client
        .get(format!("{}/api/v1/audit?format=csv&object=project:", s.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert!(csv.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = csv.text().await.unwrap();
    assert!(csv.starts_with("at,actor,action,object,detail\n"), "{csv}");
    assert!(
        csv.contains("\"project.create\"") && !csv.contains("task.lease"),
        "{csv}"
    );

    // The sealer runs every second, two seconds behind.
    let mut sealed = 0;
    for _ in 0..100 {
        let (_, check) = s.get(&admin, "/api/v1/audit/verify").await;
        assert_eq!(check["problems"], json!([]), "{check}");
        sealed = check["sealed"].as_u64().unwrap();
        if sealed >= 5 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(sealed >= 5, "the sealer sealed {sealed}");

    s.terminate();
    let data = s.data_dir();
    let out = assay()
        .args(["audit", "verify", "--data", data.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("ok: every event is intact"), "{text}");
    {
        let db = sled::open(data.join("db")).unwrap();
        let audit = db.open_tree("audit_time_id").unwrap();
        let (key, value) = audit.iter().next().unwrap().unwrap();
        let edited = String::from_utf8(value.to_vec()).unwrap().replacen(
            "\"object\":\"",
            "\"object\":\"x",
            1,
        );
        audit.insert(key, edited.as_bytes()).unwrap();
        db.flush().unwrap();
    }
    let out = assay()
        .args(["audit", "verify", "--data", data.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success());
    assert!(text.contains("problem: the event of seal 1"), "{text}");
}

/// `log.format = "json"`: one JSON object per line on stderr, and no colour codes when stderr
/// is not a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_can_be_json_lines_without_colour() {
    let dir = tempfile::tempdir().unwrap();
    let out = assay()
        .args([
            "audit",
            "verify",
            "--data",
            dir.path().join("data").to_str().unwrap(),
        ])
        .env("ASSAY_LOG__FORMAT", "json")
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains('\u{1b}'), "no ANSI codes: {err}");
    assert!(err.lines().count() > 0, "debug logs were written");
    for line in err.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
}

/// `assay user add --url` adds a user through a running server; without it, the locked data
/// folder says to use the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_add_works_through_a_running_server() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let out = assay()
        .args(["user", "add", "zed", "--skills", "law", "--url", &s.url])
        .env("ASSAY_TOKEN", &admin)
        .env("ASSAY_PASSWORD", "zed-password-123")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("created user `zed`"));
    s.login("zed", "zed-password-123").await;

    let data = s.data_dir();
    let out = assay()
        .args(["user", "add", "amy", "--data", data.to_str().unwrap()])
        .env("ASSAY_PASSWORD", "amy-password-123")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--url"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
