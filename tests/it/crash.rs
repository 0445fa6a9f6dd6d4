use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

/// Experts submit in a loop while the server is killed with SIGKILL. Every submission that got a
/// 2xx must be in the store after a restart, and the server must carry on cleanly. Sixteen
/// experts at once, so submissions share batches (checked) and the kill lands while batches are
/// committed and flushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_submits_loses_no_acknowledged_submission() {
    let mut s = Server::start().await;
    let admin = s.admin().await;
    let project = s.project(&admin, pairwise_project("crash", 1)).await;
    assert_eq!(
        s.upload(&admin, project, &pairwise_tasks("c", 400)).await.0,
        StatusCode::CREATED
    );
    let mut tokens = Vec::new();
    for i in 0..16 {
        let (id, token) = s.expert(&admin, &format!("crash{i}"), &[]).await;
        s.add_member(&admin, project, id, "expert").await;
        tokens.push(token);
    }
    let acked: Arc<Mutex<HashMap<u64, u64>>> = Arc::default();
    let url = s.url.clone();
    let client = s.client.clone();
    let mut loops = Vec::new();
    for token in tokens.clone() {
        let (acked, url, client) = (acked.clone(), url.clone(), client.clone());
        loops.push(tokio::spawn(async move {
            loop {
                let Ok(res) = client
                    .post(format!("{url}/api/v1/projects/{project}/next"))
                    .bearer_auth(&token)
                    .send()
                    .await
                else {
                    return;
                };
                if res.status() != StatusCode::OK {
                    return;
                }
                let Ok(next) = res.json::<serde_json::Value>().await else {
                    return;
                };
                let aid = next["assignment"]["id"].as_u64().unwrap();
                let body =
                    json!({"token": next["assignment"]["token"], "answer": pairwise_answer()});
                let Ok(res) = client
                    .post(format!("{url}/api/v1/assignments/{aid}/submit"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                else {
                    return;
                };
                if !res.status().is_success() {
                    return;
                }
                let Ok(sub) = res.json::<serde_json::Value>().await else {
                    return;
                };
                acked.lock().unwrap().insert(
                    sub["id"].as_u64().unwrap(),
                    sub["task_id"].as_u64().unwrap(),
                );
            }
        }));
    }
    // Let a good number of submissions through, then pull the plug mid-flight.
    for _ in 0..600 {
        if acked.lock().unwrap().len() >= 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let batches = s.metric("assay_submit_batches_total").await;
    let members = s.metric("assay_submit_batch_members_total").await;
    s.kill();
    assert!(
        members > batches,
        "submissions should have shared batches ({members} in {batches})"
    );
    for l in loops {
        let _ = l.await;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 60,
        "only {} submissions before the kill",
        acked.len()
    );

    s.restart().await;
    let admin = s.admin().await;
    let rows = s.export(&admin, project).await;
    let stored: HashSet<u64> = rows
        .iter()
        .map(|r| r["submission_id"].as_u64().unwrap())
        .collect();
    let lost: Vec<_> = acked.keys().filter(|id| !stored.contains(id)).collect();
    assert!(lost.is_empty(), "acknowledged submissions lost: {lost:?}");
    // Never more reviews than asked, even across the crash.
    let mut per_task: HashMap<u64, usize> = HashMap::new();
    for r in &rows {
        *per_task.entry(r["task_id"].as_u64().unwrap()).or_default() += 1;
    }
    assert!(per_task.values().all(|&n| n == 1), "a task got two reviews");

    // The restarted server works: the loop continues where it stopped.
    let token = s.login("crash0", EXPERT_PASSWORD).await;
    let (status, _) = s.review_next(&token, project, pairwise_answer()).await;
    assert_eq!(status, StatusCode::CREATED);
    let stats = s.stats(&admin, project).await;
    assert_eq!(
        stats["submissions"].as_u64().unwrap() as usize,
        rows.len() + 1
    );
    assert_eq!(stats["tasks"], 400);
}

/// A lease handed out just before a crash may not have reached the disk; its signed token still
/// lets the expert submit after the restart while the task has room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_token_survives_a_restart() {
    let mut s = Server::start().await;
    let admin = s.admin().await;
    let project = s.project(&admin, pairwise_project("restart", 1)).await;
    s.upload(&admin, project, &pairwise_tasks("x", 1)).await;
    let (id, token) = s.expert(&admin, "survivor", &[]).await;
    s.add_member(&admin, project, id, "expert").await;
    let (_, next) = s.next(&token, project).await;
    s.restart().await;
    let token = s.login("survivor", EXPERT_PASSWORD).await;
    let aid = next["assignment"]["id"].as_u64().unwrap();
    let (status, body) = s
        .post(
            &token,
            &format!("/api/v1/assignments/{aid}/submit"),
            json!({"token": next["assignment"]["token"], "answer": pairwise_answer()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = s.next(&token, project).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// A lease that reached the disk is restored at start-up (from the lease index, after the
/// hand-out index has loaded in the background): its holder gets it back and nobody else gets
/// the task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_lease_is_restored_after_a_restart() {
    let mut s = Server::start().await;
    let admin = s.admin().await;
    let project = s.project(&admin, pairwise_project("restore", 1)).await;
    s.upload(&admin, project, &pairwise_tasks("r", 1)).await;
    let (holder, token) = s.expert(&admin, "holder", &[]).await;
    s.add_member(&admin, project, holder, "expert").await;
    let (status, first) = s.next(&token, project).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    // Creating a user is flushed, and that flush covers the lease written before it.
    let (other, _) = s.expert(&admin, "other", &[]).await;
    s.add_member(&admin, project, other, "expert").await;
    s.restart().await;

    let mut ready = None;
    for _ in 0..200 {
        let res = s
            .client
            .get(format!("{}/readyz", s.url))
            .send()
            .await
            .unwrap();
        let (code, body) = (res.status(), res.json::<serde_json::Value>().await.unwrap());
        if code == StatusCode::OK {
            ready = Some(body);
            break;
        }
        assert_eq!(body["status"], "loading", "{body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ready.expect("ready after start-up")["status"], "ready");

    let other_token = s.login("other", EXPERT_PASSWORD).await;
    let (status, body) = s.next(&other_token, project).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "the task is leased: {body}");
    let token = s.login("holder", EXPERT_PASSWORD).await;
    let (status, again) = s.next(&token, project).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["assignment"]["id"], first["assignment"]["id"]);
    assert_eq!(again["task"]["id"], first["task"]["id"]);
}

/// An import killed at any point shows all of its tasks after the restart, or none, and leaves
/// no spooled upload behind. The first import runs to the end and times the rest. 40,000 tasks
/// keep the suite short; `ASSAY_IMPORT_KILL_TASKS=200000` runs the full-size check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_an_import_leaves_all_of_it_or_none() {
    let tasks_env = std::env::var("ASSAY_IMPORT_KILL_TASKS").ok();
    let size = tasks_env.and_then(|v| v.parse().ok()).unwrap_or(40_000u64);
    let body: String = (0..size)
        .map(|i| format!("{{\"external_id\":\"k{i}\",\"data\":{{\"prompt\":\"p{i}\"}}}}\n"))
        .collect();
    let mut s = Server::start_with(Options {
        rubrics: vec![],
        env: vec![("ASSAY_SERVER__MAX_IMPORT_MB", "256".into())],
    })
    .await;
    let admin = s.admin().await;
    let first = s.project(&admin, pairwise_project("whole", 1)).await;
    let started = std::time::Instant::now();
    assert_eq!(s.upload(&admin, first, &body).await.0, StatusCode::CREATED);
    let whole = started.elapsed();
    let (mut none, mut all) = (0, 0);
    for cycle in 0..10 {
        let admin = s.admin().await;
        let p = s
            .project(&admin, pairwise_project(&format!("kill{cycle}"), 1))
            .await;
        let upload = {
            let (client, url, admin, body) =
                (s.client.clone(), s.url.clone(), admin.clone(), body.clone());
            tokio::spawn(async move {
                client
                    .post(format!("{url}/api/v1/projects/{p}/tasks"))
                    .bearer_auth(admin)
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status())
            })
        };
        // Anywhere from the upload's first bytes to just past the end of the write.
        let at = whole.mul_f64(rand::random::<f64>() * 1.1);
        tokio::time::sleep(at).await;
        s.kill();
        let _ = upload.await;
        s.start_again().await;
        s.ready().await;
        let admin = s.admin().await;
        let stats = s.stats(&admin, p).await;
        let tasks = stats["tasks"].as_u64().unwrap();
        assert!(
            tasks == 0 || tasks == size,
            "cycle {cycle}: {tasks} tasks after the kill"
        );
        assert_eq!(
            stats["open"].as_u64(),
            Some(tasks),
            "cycle {cycle}: {stats}"
        );
        let (_, listed) = s
            .get(&admin, &format!("/api/v1/projects/{p}/tasks?limit=5"))
            .await;
        assert_eq!(
            listed.as_array().unwrap().is_empty(),
            tasks == 0,
            "cycle {cycle}"
        );
        if tasks == 0 {
            none += 1
        } else {
            all += 1
        }
        let spool = s.data_dir().join("spool");
        let left = std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0);
        assert_eq!(left, 0, "cycle {cycle}: the spool keeps {left} files");
    }
    eprintln!("import killed 10 times (a whole import took {whole:?}): {none} left nothing, {all} left everything");
    // The project imported before the kills is whole.
    let admin = s.admin().await;
    assert_eq!(s.stats(&admin, first).await["tasks"].as_u64(), Some(size));
}

/// `assay bench --scenario crash`: ten SIGKILLs under load, with an import, a rubric reload and
/// an export running alongside each; after every restart nothing acknowledged is missing, no
/// task is over its reviews, nobody reviewed a task twice, and no import is half applied.
#[test]
fn the_crash_loop_breaks_none_of_the_rules() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_assay"))
        .current_dir(repo())
        .args([
            "bench",
            "--scenario",
            "crash",
            "--cycles",
            "10",
            "--experts",
            "4",
            "--tasks",
            "800",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let crash = &report["crash"];
    assert_eq!(crash["cycles"], 10, "{report}");
    assert!(crash["acknowledged"].as_u64().unwrap() > 0, "{report}");
    for rule in ["lost", "over_reviewed", "duplicate_reviews", "half_imports"] {
        assert_eq!(crash[rule], 0, "{rule}: {report}");
    }
}
