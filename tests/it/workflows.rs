//! Hot-swapped workflows: live reload, versions, the router contract.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

async fn take_and_submit(
    s: &Server,
    token: &str,
    project: u64,
    answer: Value,
) -> (StatusCode, Value) {
    let (status, next) = s
        .post(
            token,
            &format!("/api/v1/projects/{project}/next"),
            json!({}),
        )
        .await;
    if status != StatusCode::OK {
        return (status, next);
    }
    let aid = next["assignment"]["id"].as_u64().unwrap();
    s.post(
        token,
        &format!("/api/v1/assignments/{aid}/submit"),
        json!({"token": next["assignment"]["token"], "answer": answer}),
    )
    .await
}

fn pick(side: &str, strength: u64) -> Value {
    json!({"preference": {"pick": side, "strength": strength}, "justification": "Clear difference in correctness."})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_consensus_asks_a_senior_only_on_disagreement() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let p = s.project(&admin, json!({"name": "consensus", "rubric": "pairwise_preference", "router": "adaptive_consensus"})).await;
    let (e1, t1) = s.expert(&admin, "first", &[]).await;
    let (e2, t2) = s.expert(&admin, "second", &[]).await;
    let (e3, senior) = s.expert(&admin, "senior", &["senior"]).await;
    for e in [e1, e2, e3] {
        s.add_member(&admin, p, e, "expert").await;
    }
    // Agreement: two reviews complete the task; the senior is not asked.
    s.upload(&admin, p, &pairwise_tasks("agree", 1)).await;
    assert_eq!(
        take_and_submit(&s, &t1, p, pick("left", 2)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        take_and_submit(&s, &t2, p, pick("left", 1)).await.0,
        StatusCode::CREATED
    );
    let (_, stats) = s.get(&admin, &format!("/api/v1/projects/{p}/stats")).await;
    assert_eq!(stats["complete"], 1);
    assert_eq!(
        s.post(&senior, &format!("/api/v1/projects/{p}/next"), json!({}))
            .await
            .0,
        StatusCode::NO_CONTENT
    );

    // Disagreement: a third review, from the senior pool only.
    s.upload(&admin, p, &pairwise_tasks("disagree", 1)).await;
    assert_eq!(
        take_and_submit(&s, &t1, p, pick("left", 2)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        take_and_submit(&s, &t2, p, pick("right", 2)).await.0,
        StatusCode::CREATED
    );
    let (_, stats) = s.get(&admin, &format!("/api/v1/projects/{p}/stats")).await;
    assert_eq!(
        (stats["complete"].as_u64(), stats["open"].as_u64()),
        (Some(1), Some(1))
    );
    let (_, outsider_id_token) = s.expert(&admin, "outsider", &[]).await;
    let outsider = outsider_id_token;
    let (_, users) = s.get(&admin, "/api/v1/users").await;
    let oid = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "outsider")
        .unwrap()["id"]
        .as_u64()
        .unwrap();
    s.add_member(&admin, p, oid, "expert").await;
    assert_eq!(
        s.post(&outsider, &format!("/api/v1/projects/{p}/next"), json!({}))
            .await
            .0,
        StatusCode::NO_CONTENT,
        "only the senior pool"
    );
    let (status, third) = take_and_submit(&s, &senior, p, pick("left", 1)).await;
    assert_eq!(status, StatusCode::CREATED, "{third}");
    let (_, stats) = s.get(&admin, &format!("/api/v1/projects/{p}/stats")).await;
    assert_eq!(
        (stats["complete"].as_u64(), stats["open"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(s.export(&admin, p).await.len(), 5);
}

const V2: &str = r#"
fn criteria(task) {
    [ #{ id: "verdict", kind: "choice", label: "Verdict", options: ["good", "bad"] } ]
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rubric_rewritten_under_load_switches_versions_without_failures() {
    let v1 = "fn criteria(task) {\n    [ #{ id: \"ok\", kind: \"boolean\", label: \"OK?\" } ]\n}\n"
        .to_owned();
    let s = Server::start_with(Options {
        rubrics: vec![("live", v1)],
        env: vec![("ASSAY_PLUGINS__DEBOUNCE_MS", "50".into())],
    })
    .await;
    let admin = s.admin().await;
    let p = s
        .project(
            &admin,
            json!({"name": "live", "rubric": "live", "reviews_per_task": 1}),
        )
        .await;
    s.upload(&admin, p, &pairwise_tasks("live", 400)).await;
    let (_, before) = s.get(&admin, "/api/v1/plugins/rubric/live/versions").await;
    let v1_hash = before[0]["hash"].as_str().unwrap().to_owned();

    // An answer in flight under version 1...
    let (eid, expert) = s.expert(&admin, "inflight", &[]).await;
    s.add_member(&admin, p, eid, "expert").await;
    let (_, held) = s
        .post(&expert, &format!("/api/v1/projects/{p}/next"), json!({}))
        .await;
    assert_eq!(held["assignment"]["rubric_version"], v1_hash.as_str());

    // ... while other experts loop and the file is rewritten, in place and by rename.
    let s = Arc::new(s);
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut loops = Vec::new();
    for i in 0..3 {
        let (id, token) = s.expert(&admin, &format!("loop{i}"), &[]).await;
        s.add_member(&admin, p, id, "expert").await;
        let (s, stop, failures, done) = (s.clone(), stop.clone(), failures.clone(), done.clone());
        loops.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (status, next) = s
                    .post(&token, &format!("/api/v1/projects/{p}/next"), json!({}))
                    .await;
                if status != StatusCode::OK {
                    failures.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                // Answer in the shape of the version the task was served under.
                let answer = if next["criteria"][0]["id"] == "ok" {
                    json!({"ok": true})
                } else {
                    json!({"verdict": "good"})
                };
                let aid = next["assignment"]["id"].as_u64().unwrap();
                let (status, _) = s
                    .post(
                        &token,
                        &format!("/api/v1/assignments/{aid}/submit"),
                        json!({"token": next["assignment"]["token"], "answer": answer}),
                    )
                    .await;
                if status == StatusCode::CREATED {
                    done.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let file = s.rubric_dir().join("live.rhai");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // In-place rewrite to version 2.
    std::fs::write(&file, V2).unwrap();
    let v2_hash = wait_for_version(&s, &admin, "live", 2).await;
    // Write-then-rename back to a third version.
    let tmp = s.rubric_dir().join(".live.rhai.tmp");
    std::fs::write(&tmp, format!("{V2}\n// v3\n")).unwrap();
    std::fs::rename(&tmp, &file).unwrap();
    let v3_hash = wait_for_version(&s, &admin, "live", 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no request may fail during the swaps"
    );
    assert!(done.load(Ordering::Relaxed) > 0);
    assert_ne!(v2_hash, v3_hash);

    // The held assignment is still validated under version 1.
    let aid = held["assignment"]["id"].as_u64().unwrap();
    let (status, sub) = s
        .post(
            &expert,
            &format!("/api/v1/assignments/{aid}/submit"),
            json!({"token": held["assignment"]["token"], "answer": {"ok": true}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    assert_eq!(sub["rubric_version"], v1_hash.as_str());
    // New work is served under version 3; every version's source can be read back.
    let (_, next) = s
        .post(&expert, &format!("/api/v1/projects/{p}/next"), json!({}))
        .await;
    assert_eq!(next["assignment"]["rubric_version"], v3_hash.as_str());
    let (status, source) = s
        .get(
            &admin,
            &format!("/api/v1/plugins/rubric/live/versions/{v1_hash}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(source["source"].as_str().unwrap().contains("\"ok\""));
    let rows = s.export(&admin, p).await;
    let versions: std::collections::HashSet<&str> = rows
        .iter()
        .map(|r| r["rubric_version"].as_str().unwrap())
        .collect();
    assert!(versions.contains(v1_hash.as_str()));
}

/// Waits until the plugin has `count` stored versions; returns the newest hash.
async fn wait_for_version(s: &Server, admin: &str, name: &str, count: usize) -> String {
    let started = Instant::now();
    loop {
        let (_, versions) = s
            .get(admin, &format!("/api/v1/plugins/rubric/{name}/versions"))
            .await;
        let list = versions.as_array().unwrap();
        if list.len() >= count {
            let current = list.iter().find(|v| v["current"] == true).unwrap();
            if current["hash"] == list[count - 1]["hash"] {
                return current["hash"].as_str().unwrap().to_owned();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "version {count} never went live: {versions}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_versions_never_replace_the_working_one() {
    let good =
        "fn criteria(task) {\n    [ #{ id: \"ok\", kind: \"boolean\", label: \"OK?\" } ]\n}\n"
            .to_owned();
    let s = Server::start_with(Options {
        rubrics: vec![("guarded", good)],
        env: vec![
            ("ASSAY_PLUGINS__DEBOUNCE_MS", "50".into()),
            ("ASSAY_SCRIPTING__TIMEOUT_MS", "300".into()),
        ],
    })
    .await;
    let admin = s.admin().await;
    let (_, before) = s
        .get(&admin, "/api/v1/plugins/rubric/guarded/versions")
        .await;
    let good_hash = before[0]["hash"].as_str().unwrap().to_owned();
    let file = s.rubric_dir().join("guarded.rhai");
    let broken = [
        ("fn criteria(task) {\n    let x = ;\n}\n", "syntax error", Some(2)),
        ("fn score(task, answer) { #{} }\n", "fn criteria", None),
        ("fn criteria(task) { [ #{ id: \"ok\", kind: \"boolean\" } ] }\nfn tests() {\n    [ #{ task: #{ data: #{} }, answer: #{}, valid: true } ]\n}\n", "case 1", None),
        ("fn criteria(task) { [] }\nfn tests() {\n    loop { }\n}\n", "limit", None),
    ];
    for (source, needle, line) in broken {
        std::fs::write(&file, source).unwrap();
        let started = Instant::now();
        let status = loop {
            let (_, plugins) = s.get(&admin, "/api/v1/plugins").await;
            let me = plugins
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == "guarded")
                .unwrap()
                .clone();
            if me["status"] == "error"
                && me["last_error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(needle)
            {
                break me;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "no error shown for {needle}: {me}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(
            status["version"],
            good_hash.as_str(),
            "the working version keeps serving"
        );
        if let Some(line) = line {
            assert_eq!(status["last_error"]["line"], line);
        }
    }
    let (_, metrics) = (
        0,
        s.client
            .get(format!("{}/metrics", s.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(
        metrics.contains("assay_plugin_reload_failures_total 4"),
        "{metrics}"
    );

    // A deleted file: projects keep using the last version; the list says so.
    let p = s
        .project(
            &admin,
            json!({"name": "kept", "rubric": "guarded", "reviews_per_task": 1}),
        )
        .await;
    s.upload(&admin, p, &pairwise_tasks("kept", 1)).await;
    std::fs::remove_file(&file).unwrap();
    let started = Instant::now();
    loop {
        let (_, plugins) = s.get(&admin, "/api/v1/plugins").await;
        let me = plugins
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "guarded")
            .unwrap()
            .clone();
        if me["status"] == "deleted" {
            assert_eq!(me["version"], good_hash.as_str());
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{me}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (eid, expert) = s.expert(&admin, "keeper", &[]).await;
    s.add_member(&admin, p, eid, "expert").await;
    let (status, sub) = take_and_submit(&s, &expert, p, json!({"ok": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    assert_eq!(sub["rubric_version"], good_hash.as_str());
}

#[test]
fn assay_check_passes_good_files_and_fails_bad_ones_with_positions() {
    let dir = tempfile::tempdir().unwrap();
    let rubrics = dir.path().join("rubrics");
    std::fs::create_dir_all(&rubrics).unwrap();
    std::fs::write(rubrics.join("bad.rhai"), "fn criteria(task) {\n  [\n}\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_assay"))
        .current_dir(dir.path())
        .args([
            "check",
            repo().join("rubrics").to_str().unwrap(),
            repo().join("plugins").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("pairwise_preference.rhai (rubric, 5 test case(s))"),
        "{text}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_assay"))
        .current_dir(dir.path())
        .args(["check", rubrics.join("bad.rhai").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("bad.rhai:3:1"), "{text}");
}
