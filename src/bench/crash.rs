//! The `crash` scenario: experts in the review loop while imports, rubric reloads and exports
//! run alongside, and the server is killed with SIGKILL at a random moment, `--cycles` times.
//! After each restart it checks that every acknowledged submission is there, no task has more
//! reviews than it asked for, no expert reviewed a task twice, and no import is half applied.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use super::http::*;
use super::isolation::import_generated;
use super::report::*;
use super::target::*;
use super::ADMIN_PASSWORD;
use assay::cli::bench_args::BenchArgs;

/// Reviews each task of the loop project asks for.
const REVIEWS: u32 = 2;
/// Tasks per import started in a cycle: each one shows whole or not at all.
const IMPORT_SIZE: usize = 20_000;

pub(crate) async fn run_crash(args: &BenchArgs, report: &mut Report) -> Result<(), String> {
    let mut target = start_server(&[])?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .map_err(|e| e.to_string())?;
    let admin = login(&client, &target.url, "admin", ADMIN_PASSWORD).await?;
    let api = format!("{}/api/v1", target.url);
    let project = |name: &str| json!({"name": name, "rubric": "pairwise_preference", "reviews_per_task": REVIEWS, "lease_seconds": 600});
    let (_, looped) = call(
        &client,
        reqwest::Method::POST,
        format!("{api}/projects"),
        &admin,
        Some(project("crash loop")),
    )
    .await?;
    let (_, imports) = call(
        &client,
        reqwest::Method::POST,
        format!("{api}/projects"),
        &admin,
        Some(project("crash imports")),
    )
    .await?;
    let (Some(looped), Some(imports)) = (looped["id"].as_u64(), imports["id"].as_u64()) else {
        return Err("cannot create the crash projects".into());
    };
    report.import = Some(import_generated(&client, &api, &admin, looped, args.tasks).await?);
    let mut experts = Vec::new();
    for i in 0..args.experts {
        experts.push(new_expert(&client, &api, &admin, looped, &format!("crash-{i}")).await?);
    }
    let live = target
        .rubrics
        .clone()
        .ok_or("no rubric folder")?
        .join("bench_crash_live.rhai");
    let rubric = std::fs::read_to_string(live.with_file_name("pairwise_preference.rhai"))
        .map_err(|e| format!("no pairwise rubric to copy: {e}"))?;

    let acked: Arc<Mutex<HashMap<u64, (u64, u64)>>> = Arc::default();
    let mut outcome = Crash::default();
    let mut restarts = Vec::new();
    for cycle in 0..args.cycles {
        let api = format!("{}/api/v1", target.url);
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Vec::new();
        for (uid, token) in &experts {
            let (client, api, token, stop, acked, uid) = (
                client.clone(),
                api.clone(),
                token.clone(),
                stop.clone(),
                acked.clone(),
                *uid,
            );
            load.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((200, next)) = call(&client, reqwest::Method::POST, format!("{api}/projects/{looped}/next"), &token, None).await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    let (Some(aid), Some(task)) = (next["assignment"]["id"].as_u64(), next["task"]["id"].as_u64()) else { continue };
                    let body = json!({"token": next["assignment"]["token"], "answer": {"preference": {"pick": "left", "strength": 2}, "justification": "A is more complete and better supported."}});
                    if let Ok((201, sub)) = call(&client, reqwest::Method::POST, format!("{api}/assignments/{aid}/submit"), &token, Some(body)).await {
                        if let Some(id) = sub["id"].as_u64() {
                            acked.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (task, uid));
                        }
                    }
                }
            }));
        }
        // Alongside: an import, a rubric reload and an export, each cut wherever the kill lands.
        let side = {
            let (client, api, admin) = (client.clone(), api.clone(), admin.clone());
            // External ids of this cycle only: every import adds its tasks or none.
            let body: String = (0..IMPORT_SIZE)
                .map(|i| json!({"external_id": format!("c{cycle}-{i}"), "data": {"prompt": format!("task {i} of cycle {cycle}"), "responses": ["a", "b"]}}).to_string() + "\n")
                .collect();
            tokio::spawn(async move {
                let _ = client
                    .post(format!("{api}/projects/{imports}/tasks"))
                    .bearer_auth(admin)
                    .body(body)
                    .send()
                    .await;
            })
        };
        let _ = std::fs::write(&live, format!("// cycle {cycle}\n{rubric}"));
        let export = {
            let (client, api, admin) = (client.clone(), api.clone(), admin.clone());
            tokio::spawn(async move {
                if let Ok(res) = client
                    .get(format!("{api}/projects/{looped}/export"))
                    .bearer_auth(&admin)
                    .send()
                    .await
                {
                    let mut body = res.bytes_stream();
                    while let Some(Ok(_)) = body.next().await {}
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(200 + rand::random::<u64>() % 1800)).await;
        let killed = Instant::now();
        target.kill_and_restart()?;
        stop.store(true, Ordering::Relaxed);
        for task in load {
            let _ = task.await;
        }
        side.abort();
        export.abort();
        wait_ready(&client, &target.url).await?;
        restarts.push(killed.elapsed().as_micros() as u64);
        let acked_now = acked.lock().unwrap_or_else(|p| p.into_inner()).clone();
        check(
            &client,
            &target.url,
            &admin,
            looped,
            imports,
            &acked_now,
            &mut outcome,
        )
        .await?;
        outcome.cycles += 1;
    }
    outcome.acknowledged = acked.lock().unwrap_or_else(|p| p.into_inner()).len() as u64;
    outcome.restart_ms = latency(restarts);
    report.crash = Some(outcome);
    Ok(())
}

async fn wait_ready(client: &reqwest::Client, url: &str) -> Result<(), String> {
    for _ in 0..1200 {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err("the server did not become ready after a restart".into())
}

/// Reads everything back after a restart and counts what breaks the rules; an audit chain
/// that no longer verifies fails the run.
async fn check(
    client: &reqwest::Client,
    url: &str,
    admin: &str,
    looped: u64,
    imports: u64,
    acked: &HashMap<u64, (u64, u64)>,
    outcome: &mut Crash,
) -> Result<(), String> {
    let text = client
        .get(format!("{url}/api/v1/projects/{looped}/export"))
        .bearer_auth(admin)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())?;
    let mut stored = HashSet::new();
    let mut per_task: HashMap<u64, u32> = HashMap::new();
    let mut pairs = HashSet::new();
    outcome.duplicate_reviews = 0;
    for line in text.lines() {
        let r: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("export: {e}"))?;
        let (Some(id), Some(task), Some(expert)) = (
            r["submission_id"].as_u64(),
            r["task_id"].as_u64(),
            r["expert_id"].as_u64(),
        ) else {
            return Err(format!("export record without ids: {line}"));
        };
        stored.insert(id);
        *per_task.entry(task).or_default() += 1;
        if !pairs.insert((task, expert)) {
            outcome.duplicate_reviews += 1;
        }
    }
    outcome.lost = acked.keys().filter(|id| !stored.contains(id)).count() as u64;
    outcome.over_reviewed = per_task.values().filter(|&&n| n > REVIEWS).count() as u64;
    // The kept counters agree with the records (a submit batch is written without a
    // transaction, and completed from the submit log after a kill): a mismatch breaks a rule.
    let (_, counts) = call(
        client,
        reqwest::Method::GET,
        format!("{url}/api/v1/projects/{looped}/stats"),
        admin,
        None,
    )
    .await?;
    let count = |name: &str| counts[name].as_u64().unwrap_or(0);
    let complete = per_task.values().filter(|&&n| n >= REVIEWS).count() as u64;
    let states = ["open", "in_qa", "complete", "archived", "broken"].map(count);
    if count("submissions") != stored.len() as u64
        || count("complete") != complete
        || states.iter().sum::<u64>() != count("tasks")
    {
        return Err(format!(
            "the counters disagree with the records after a restart: {counts}; the export \
             holds {} submissions and {complete} complete tasks",
            stored.len()
        ));
    }
    let (_, stats) = call(
        client,
        reqwest::Method::GET,
        format!("{url}/api/v1/projects/{imports}/stats"),
        admin,
        None,
    )
    .await?;
    let tasks = stats["tasks"].as_u64().unwrap_or(0);
    if tasks % IMPORT_SIZE as u64 != 0 {
        outcome.half_imports += 1;
    }
    outcome.imports_whole = tasks / IMPORT_SIZE as u64;
    // The audit chain survives every kill too: a problem here is a broken rule, not a count.
    let (_, audit) = call(
        client,
        reqwest::Method::GET,
        format!("{url}/api/v1/audit/verify"),
        admin,
        None,
    )
    .await?;
    match audit["problems"].as_array() {
        Some(problems) if problems.is_empty() => Ok(()),
        _ => Err(format!(
            "the audit chain does not verify after a restart: {audit}"
        )),
    }
}
