//! The `loop` scenario (and the load under `reload`): experts in a closed next+submit loop.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

use super::http::*;
use super::report::*;
use super::target::*;
use assay::cli::bench_args::BenchArgs;

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_loop(
    args: &BenchArgs,
    client: &reqwest::Client,
    api: &str,
    admin: &str,
    pid: u64,
    run_id: &str,
    target: &Target,
    report: &mut Report,
) -> Result<(), String> {
    let mut tokens = Vec::new();
    for i in 0..args.experts {
        tokens.push(new_expert(client, api, admin, pid, &format!("bench-{run_id}-{i}")).await?);
    }
    let answer = json!({"preference": {"pick": "left", "strength": 2}, "justification": "A is more complete and better supported by the evidence."});
    let warmup_end = Instant::now() + Duration::from_secs_f64(args.warmup);
    let end = warmup_end + Duration::from_secs_f64(args.duration);
    #[derive(Default)]
    struct Shared {
        next: Vec<u64>,
        submit: Vec<u64>,
        whole: Vec<u64>,
        errors: HashMap<String, u64>,
        handed: HashMap<u64, HashSet<u64>>,
        duplicates: u64,
        loops: u64,
    }
    let shared = Arc::new(Mutex::new(Shared::default()));
    let cpu_before = target.pid().and_then(proc_stat).map(|s| s.0);
    let flushes_before = flush_counts(client, &target.url).await;
    let mut workers = Vec::new();
    for (uid, token) in tokens {
        let (client, api, answer, shared) = (
            client.clone(),
            api.to_owned(),
            answer.clone(),
            shared.clone(),
        );
        workers.push(tokio::spawn(async move {
            let (mut next_l, mut sub_l, mut loop_l) = (Vec::new(), Vec::new(), Vec::new());
            let mut errors: HashMap<String, u64> = HashMap::new();
            let mut seen: Vec<u64> = Vec::new();
            let mut loops = 0u64;
            while Instant::now() < end {
                let t0 = Instant::now();
                let n = call(
                    &client,
                    reqwest::Method::POST,
                    format!("{api}/projects/{pid}/next"),
                    &token,
                    None,
                )
                .await;
                let t1 = Instant::now();
                let (status, next) = match n {
                    Ok(r) => r,
                    Err(e) => {
                        *errors.entry(e).or_default() += 1;
                        continue;
                    }
                };
                if status == 204 {
                    *errors.entry("queue empty".into()).or_default() += 1;
                    break;
                }
                if status != 200 {
                    *errors
                        .entry(format!(
                            "next {status} {}",
                            next["code"].as_str().unwrap_or("")
                        ))
                        .or_default() += 1;
                    continue;
                }
                let (Some(aid), Some(task)) = (
                    next["assignment"]["id"].as_u64(),
                    next["task"]["id"].as_u64(),
                ) else {
                    continue;
                };
                seen.push(task);
                let body = json!({"token": next["assignment"]["token"], "answer": answer});
                let s = call(
                    &client,
                    reqwest::Method::POST,
                    format!("{api}/assignments/{aid}/submit"),
                    &token,
                    Some(body),
                )
                .await;
                let t2 = Instant::now();
                match s {
                    Ok((201, _)) => {
                        if t0 >= warmup_end {
                            next_l.push((t1 - t0).as_micros() as u64);
                            sub_l.push((t2 - t1).as_micros() as u64);
                            loop_l.push((t2 - t0).as_micros() as u64);
                            loops += 1;
                        }
                    }
                    Ok((status, body)) => {
                        *errors
                            .entry(format!(
                                "submit {status} {}",
                                body["code"].as_str().unwrap_or("")
                            ))
                            .or_default() += 1
                    }
                    Err(e) => *errors.entry(e).or_default() += 1,
                }
            }
            let mut sh = shared.lock().unwrap_or_else(|p| p.into_inner());
            sh.next.extend(next_l);
            sh.submit.extend(sub_l);
            sh.whole.extend(loop_l);
            sh.loops += loops;
            for (k, v) in errors {
                *sh.errors.entry(k).or_default() += v;
            }
            for task in seen {
                if !sh.handed.entry(task).or_default().insert(uid) {
                    sh.duplicates += 1; // the same task handed to the same expert twice
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let measured = (Instant::now().min(end) - warmup_end)
        .as_secs_f64()
        .max(1e-9);
    let cpu_after = target.pid().and_then(proc_stat).map(|s| s.0);
    if let (Some((f0, w0)), Some((f1, w1))) =
        (flushes_before, flush_counts(client, &target.url).await)
    {
        let flushes = f1.saturating_sub(f0);
        report.flushes = Some(flushes);
        report.writers_per_flush =
            (flushes > 0).then(|| w1.saturating_sub(w0) as f64 / flushes as f64);
    }
    let mut sh = shared.lock().unwrap_or_else(|p| p.into_inner());
    // More experts on a task than it asked reviews for is a duplicate hand-out too.
    let over: u64 = sh
        .handed
        .values()
        .map(|e| (e.len() as u64).saturating_sub(u64::from(args.reviews)))
        .sum();
    report.duplicates = sh.duplicates + over;
    report.loops = sh.loops;
    report.loops_per_s = sh.loops as f64 / measured;
    report
        .latency_ms
        .insert("next", latency(std::mem::take(&mut sh.next)));
    report
        .latency_ms
        .insert("submit", latency(std::mem::take(&mut sh.submit)));
    report
        .latency_ms
        .insert("loop", latency(std::mem::take(&mut sh.whole)));
    report.errors = std::mem::take(&mut sh.errors);
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        report.server_cpu_percent = Some((b - a) / (measured + args.warmup) * 100.0);
    }
    Ok(())
}
