//! The `qa` scenario: the normal loop on a project that samples every submission into QA
//! (`qa_rate` 1.0), then eight reviewers drain the QA queue at once (next + accept verdicts),
//! for the run's duration or until it is empty. Reports QA items per second and the latency of
//! one QA round trip.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::http::*;
use super::report::*;

/// Reviewers working the QA queue at once.
pub(crate) const REVIEWERS: usize = 8;

pub(crate) async fn run_qa(
    client: &reqwest::Client,
    api: &str,
    admin: &str,
    pid: u64,
    run_id: &str,
    duration: f64,
) -> Result<QaRun, String> {
    let mut reviewers = Vec::new();
    for i in 0..REVIEWERS {
        let name = format!("reviewer-{run_id}-{i}");
        let (uid, token) = new_expert(client, api, admin, pid, &name).await?;
        let (status, body) = call(
            client,
            reqwest::Method::PUT,
            format!("{api}/projects/{pid}/members/{uid}"),
            admin,
            Some(json!({"role": "reviewer"})),
        )
        .await?;
        if status >= 300 {
            return Err(format!("cannot make {name} a reviewer: {body}"));
        }
        reviewers.push(token);
    }
    let deadline = Instant::now() + Duration::from_secs_f64(duration.max(1.0));
    let times = Arc::new(Mutex::new(Vec::<u64>::new()));
    let started = Instant::now();
    let mut workers = Vec::new();
    for token in reviewers {
        let (client, api, times) = (client.clone(), api.to_owned(), times.clone());
        workers.push(tokio::spawn(async move {
            let mut errors = 0u64;
            while Instant::now() < deadline {
                let round = Instant::now();
                let url = format!("{api}/projects/{pid}/qa/next");
                let (status, item) =
                    call(&client, reqwest::Method::POST, url, &token, None).await?;
                if status == 204 {
                    break;
                }
                if status != 200 {
                    errors += 1;
                    continue;
                }
                let verdicts: Vec<Value> = item["submissions"]
                    .as_array()
                    .map(|subs| {
                        subs.iter()
                            .map(|s| json!({"submission": s["id"], "verdict": "accept"}))
                            .collect()
                    })
                    .unwrap_or_default();
                let aid = item["assignment"]["id"].as_u64().unwrap_or(0);
                let body = json!({"token": item["assignment"]["token"], "verdicts": verdicts});
                let url = format!("{api}/qa/{aid}/verdict");
                let (status, _) =
                    call(&client, reqwest::Method::POST, url, &token, Some(body)).await?;
                if status == 201 {
                    times.lock().await.push(round.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            Ok::<u64, String>(errors)
        }));
    }
    let mut errors = 0;
    for w in workers {
        errors += w.await.map_err(|e| e.to_string())??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let times = std::mem::take(&mut *times.lock().await);
    let items = times.len() as u64;
    Ok(QaRun {
        reviewers: REVIEWERS,
        items,
        seconds,
        items_per_s: items as f64 / seconds,
        round_ms: latency(times),
        errors,
    })
}
