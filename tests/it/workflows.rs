//! Hot-swapped workflows: live reload, versions, the router contract.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

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
        s.review_next(&t1, p, pick("left", 2)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        s.review_next(&t2, p, pick("left", 1)).await.0,
        StatusCode::CREATED
    );
    let stats = s.stats(&admin, p).await;
    assert_eq!(stats["complete"], 1);
    assert_eq!(s.next(&senior, p).await.0, StatusCode::NO_CONTENT);

    // Disagreement: a third review, from the senior pool only.
    s.upload(&admin, p, &pairwise_tasks("disagree", 1)).await;
    assert_eq!(
        s.review_next(&t1, p, pick("left", 2)).await.0,
        StatusCode::CREATED
    );
    assert_eq!(
        s.review_next(&t2, p, pick("right", 2)).await.0,
        StatusCode::CREATED
    );
    let stats = s.stats(&admin, p).await;
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
        s.next(&outsider, p).await.0,
        StatusCode::NO_CONTENT,
        "only the senior pool"
    );
    let (status, third) = s.review_next(&senior, p, pick("left", 1)).await;
    assert_eq!(status, StatusCode::CREATED, "{third}");
    let stats = s.stats(&admin, p).await;
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
    // Enough tasks that the loops never run out (a 204 would count as a failure).
    s.upload(&admin, p, &pairwise_tasks("live", 5000)).await;
    let (_, before) = s.get(&admin, "/api/v1/plugins/rubric/live/versions").await;
    let v1_hash = before[0]["hash"].as_str().unwrap().to_owned();

    // An answer in flight under version 1...
    let (eid, expert) = s.expert(&admin, "inflight", &[]).await;
    s.add_member(&admin, p, eid, "expert").await;
    let (_, held) = s.next(&expert, p).await;
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
                let (status, next) = s.next(&token, p).await;
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
    let (_, next) = s.next(&expert, p).await;
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
    let (status, sub) = s.review_next(&expert, p, json!({"ok": true})).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gold_injection_hands_gold_every_fifth_task_and_never_twice() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let p = s
        .project(
            &admin,
            json!({"name": "gold", "rubric": "pairwise_preference", "router": "gold_injection"}),
        )
        .await;
    let gold = |i: usize, pick: &str| {
        json!({"external_id": format!("gold-{i}"), "gold": {"preference": {"pick": pick, "strength": 2}},
               "data": {"prompt": format!("gold {i}"), "responses": ["x", "y"]}})
        .to_string()
    };
    let upload = format!(
        "{}\n{}\n{}",
        pairwise_tasks("reg", 12),
        gold(0, "left"),
        gold(1, "right")
    );
    assert_eq!(s.upload(&admin, p, &upload).await.0, StatusCode::CREATED);
    let (eid, expert) = s.expert(&admin, "measured", &[]).await;
    s.add_member(&admin, p, eid, "expert").await;
    let mut kinds = Vec::new();
    for _ in 0..14 {
        let (status, next) = s.next(&expert, p).await;
        assert_eq!(status, StatusCode::OK, "{next}");
        let ext = next["task"]["external_id"].as_str().unwrap().to_owned();
        let aid = next["assignment"]["id"].as_u64().unwrap();
        let (status, sub) = s
            .post(
                &expert,
                &format!("/api/v1/assignments/{aid}/submit"),
                json!({"token": next["assignment"]["token"], "answer": pick("left", 2)}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        if ext.starts_with("gold") {
            // Graded against the gold answer: left is right for gold-0, wrong for gold-1.
            let want = if ext == "gold-0" { 1.0 } else { 0.0 };
            assert_eq!(sub["scores"]["gold_grade"].as_f64(), Some(want), "{sub}");
        } else {
            assert!(sub["scores"].get("gold_grade").is_none());
        }
        kinds.push(ext);
    }
    let gold_positions: Vec<usize> = kinds
        .iter()
        .enumerate()
        .filter(|(_, k)| k.starts_with("gold"))
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(gold_positions, vec![5, 10], "{kinds:?}");
    let golds: std::collections::HashSet<_> =
        kinds.iter().filter(|k| k.starts_with("gold")).collect();
    assert_eq!(golds.len(), 2, "never the same gold twice");
    // Only gold left for this expert once regular work is done... none, since both were seen.
    assert_eq!(s.next(&expert, p).await.0, StatusCode::NO_CONTENT);
    // Another expert sees the same gold tasks.
    let (e2, other) = s.expert(&admin, "other", &[]).await;
    s.add_member(&admin, p, e2, "expert").await;
    let (status, next) = s.next(&other, p).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        next["task"]["external_id"]
            .as_str()
            .unwrap()
            .starts_with("gold"),
        "only gold is left: {next}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expertise_pools_route_by_domain_and_reroute_applies_a_changed_router() {
    let mut s = Server::start().await;
    let admin = s.admin().await;
    let p = s.project(&admin, json!({"name": "experts", "rubric": "pairwise_preference", "router": "expertise_pools"})).await;
    let task = |ext: &str, domain: &str| {
        json!({"external_id": ext, "meta": {"domain": domain}, "data": {"prompt": ext, "responses": ["a", "b"]}}).to_string()
    };
    let upload = [
        task("g1", "general"),
        task("m1", "medicine"),
        task("f1", "finance"),
    ]
    .join("\n");
    s.upload(&admin, p, &upload).await;
    let (doc_id, doc) = s.expert(&admin, "doc", &["medicine"]).await;
    let (lay_id, lay) = s.expert(&admin, "lay", &[]).await;
    s.add_member(&admin, p, doc_id, "expert").await;
    s.add_member(&admin, p, lay_id, "expert").await;
    let (_, tasks) = s.get(&admin, &format!("/api/v1/projects/{p}/tasks")).await;
    let routed: Vec<(String, Value, u64)> = tasks
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["task"]["external_id"].as_str().unwrap().to_owned(),
                t["status"]["pool"].clone(),
                t["status"]["reviews"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        routed,
        vec![
            ("g1".into(), Value::Null, 1),
            ("m1".into(), json!("medicine"), 3),
            ("f1".into(), json!("finance"), 1)
        ]
    );
    // The physician is handed the medical task first (pick prefers their specialty).
    let (_, next) = s.next(&doc, p).await;
    assert_eq!(next["task"]["external_id"], "m1");
    // The lay expert sees only the general task.
    let (_, next) = s.next(&lay, p).await;
    assert_eq!(next["task"]["external_id"], "g1");

    // The router is changed on disk to open finance to everyone; reroute applies it.
    let file = s.dir.path().join("plugins").join("expertise_pools.rhai");
    let source = std::fs::read_to_string(&file)
        .unwrap()
        .replace(
            "fn general_domains() { [\"\", \"general\", \"other\"] }",
            "fn general_domains() { [\"\", \"general\", \"other\", \"finance\"] }",
        )
        // Its own test case changes with it, or the new version would be refused.
        .replace(
            "route: #{ pool: \"finance\", reviews: 1 }",
            "route: #{ pool: () }",
        );
    std::fs::write(&file, source).unwrap();
    s.restart().await; // (a restart also loads it; the watcher does the same live)
    let admin = s.admin().await;
    let (status, report) = s
        .post(&admin, &format!("/api/v1/projects/{p}/reroute"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["rerouted"], 3);
    let lay = s.login("lay", EXPERT_PASSWORD).await;
    let (_, next) = s.next(&lay, p).await;
    // The lay expert still holds g1 (the lease survived the restart), and finance is now theirs to take after.
    assert_eq!(next["task"]["external_id"], "g1");
    let aid = next["assignment"]["id"].as_u64().unwrap();
    s.post(
        &lay,
        &format!("/api/v1/assignments/{aid}/submit"),
        json!({"token": next["assignment"]["token"], "answer": pick("left", 1)}),
    )
    .await;
    let (_, next) = s.next(&lay, p).await;
    assert_eq!(next["task"]["external_id"], "f1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_formats_dpo_sft_and_rubric_records() {
    let s = Server::start().await;
    let admin = s.admin().await;
    // DPO from pairwise majority votes: 2 of 3 prefer the right response.
    let p = s
        .project(
            &admin,
            json!({"name": "dpo", "rubric": "pairwise_preference", "reviews_per_task": 3}),
        )
        .await;
    s.upload(&admin, p, &json!({"data": {"prompt": "Capital of France?", "responses": [{"text": "Lyon"}, {"text": "Paris"}]}}).to_string()).await;
    for (i, side) in ["right", "left", "right"].iter().enumerate() {
        let (id, t) = s.expert(&admin, &format!("voter{i}"), &[]).await;
        s.add_member(&admin, p, id, "expert").await;
        assert_eq!(
            s.review_next(&t, p, pick(side, 1)).await.0,
            StatusCode::CREATED
        );
    }
    let rows = export_format(&s, &admin, p, "dpo").await;
    assert_eq!(
        rows,
        vec![
            json!({"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon",
        "task_id": rows[0]["task_id"], "external_id": null, "votes": {"left": 1, "right": 2, "tie": 0}})
        ]
    );
    let (status, body) = s
        .get(
            &admin,
            &format!("/api/v1/projects/{p}/export?format=records"),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "pairwise_preference has no export_records: {body}"
    );

    // SFT and scripted records from expert rewrites.
    let p = s
        .project(
            &admin,
            json!({"name": "sft", "rubric": "expert_rewrite", "reviews_per_task": 1}),
        )
        .await;
    s.upload(&admin, p, &json!({"external_id": "boil", "data": {"prompt": "Boiling point of water?", "response": "90 °C."}}).to_string()).await;
    let (id, t) = s.expert(&admin, "editor", &[]).await;
    s.add_member(&admin, p, id, "expert").await;
    let answer = json!({"rewrite": "100 °C at sea level.", "changes": ["factual correction"], "why": "Water boils at 100 °C at sea level."});
    let (status, sub) = s.review_next(&t, p, answer).await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    assert!(sub["scores"]["similarity"].as_f64().unwrap() < 1.0);
    let sft = export_format(&s, &admin, p, "sft").await;
    assert_eq!(
        sft[0]["messages"],
        json!([{"role": "user", "content": "Boiling point of water?"}, {"role": "assistant", "content": "100 °C at sea level."}])
    );
    let records = export_format(&s, &admin, p, "records").await;
    assert_eq!(records[0]["source_task"], "boil");
    assert_eq!(records[0]["messages"][1]["content"], "100 °C at sea level.");
}

async fn export_format(s: &Server, token: &str, project: u64, format: &str) -> Vec<Value> {
    s.export_text(token, project, format)
        .await
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_broken_while_the_server_was_down_falls_back_to_the_last_stored_version() {
    let good =
        "fn criteria(task) {\n    [ #{ id: \"ok\", kind: \"boolean\", label: \"OK?\" } ]\n}\n"
            .to_owned();
    let mut s = Server::start_with(Options {
        rubrics: vec![("sturdy", good)],
        env: vec![],
    })
    .await;
    let admin = s.admin().await;
    let p = s
        .project(
            &admin,
            json!({"name": "sturdy", "rubric": "sturdy", "reviews_per_task": 1}),
        )
        .await;
    s.upload(&admin, p, &pairwise_tasks("st", 1)).await;
    let (_, versions) = s
        .get(&admin, "/api/v1/plugins/rubric/sturdy/versions")
        .await;
    let good_hash = versions[0]["hash"].as_str().unwrap().to_owned();
    s.kill();
    std::fs::write(
        s.rubric_dir().join("sturdy.rhai"),
        "fn criteria(task) {\n    oops(\n}\n",
    )
    .unwrap();
    s.restart().await;
    let admin = s.admin().await;
    let (_, plugins) = s.get(&admin, "/api/v1/plugins").await;
    let me = plugins
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "sturdy")
        .unwrap()
        .clone();
    assert_eq!(me["status"], "error");
    assert_eq!(me["version"], good_hash.as_str(), "{me}");
    let (eid, expert) = s.expert(&admin, "steady", &[]).await;
    s.add_member(&admin, p, eid, "expert").await;
    let (status, sub) = s.review_next(&expert, p, json!({"ok": true})).await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    assert_eq!(sub["rubric_version"], good_hash.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pick_may_decline_or_break_its_contract_and_on_submit_may_send_to_qa() {
    let mut s = Server::start().await;
    let plugins = s.dir.path().join("plugins");
    // Declines everything for experts without the "trusted" skill; sends every answer to QA.
    std::fs::write(
        plugins.join("picky.rhai"),
        "fn route(task) { #{} }\n\
         fn pick(expert, candidates) { if \"trusted\" in expert.skills { 0 } else { -1 } }\n\
         fn on_submit(task, submission, submissions) { #{ action: \"qa\" } }\n",
    )
    .unwrap();
    std::fs::write(
        plugins.join("broken_pick.rhai"),
        "fn route(task) { #{} }\nfn pick(expert, candidates) { 99 }\n",
    )
    .unwrap();
    s.restart().await;
    let admin = s.admin().await;
    let p = s
        .project(
            &admin,
            json!({"name": "picky", "rubric": "pairwise_preference", "router": "picky"}),
        )
        .await;
    s.upload(&admin, p, &pairwise_tasks("pk", 2)).await;
    let (plain_id, plain) = s.expert(&admin, "plain", &[]).await;
    let (trusted_id, trusted) = s.expert(&admin, "trusted", &["trusted"]).await;
    s.add_member(&admin, p, plain_id, "expert").await;
    s.add_member(&admin, p, trusted_id, "expert").await;

    assert_eq!(s.next(&plain, p).await.0, StatusCode::NO_CONTENT);
    let (status, sub) = s.review_next(&trusted, p, pick("left", 1)).await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    let stats = s.stats(&admin, p).await;
    assert_eq!(
        (stats["in_qa"].as_u64(), stats["open"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );

    // An index outside the window breaks pick's contract: the project does not stall on it;
    // the task goes out in queue order and the failure is counted.
    let failures = s.metric("assay_script_failures_total").await;
    let b = s
        .project(
            &admin,
            json!({"name": "broken", "rubric": "pairwise_preference", "router": "broken_pick"}),
        )
        .await;
    s.upload(&admin, b, &pairwise_tasks("bp", 1)).await;
    s.add_member(&admin, b, plain_id, "expert").await;
    let (status, body) = s.next(&plain, b).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["task"]["external_id"], "bp-0");
    assert!(s.metric("assay_script_failures_total").await > failures);
}
