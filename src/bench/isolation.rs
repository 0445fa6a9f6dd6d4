//! The `isolation` scenario: the normal loop alone, then again while eight experts hammer
//! another project whose rubric always runs into its time limit. The report compares the
//! healthy project's p99 next+submit in the two phases.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::http::*;
use super::reload::wait_live;
use super::report::*;
use super::review_loop::run_loop;
use super::target::*;
use assay::cli::bench_args::BenchArgs;

/// Experts on the stalled project.
const STALLED_EXPERTS: usize = 8;

const SLOW_RUBRIC: &str = "// Always runs into the time limit.\n\
fn criteria(task) {\n    let n = 0;\n    loop { n += 1; }\n}\n";

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_isolation(
    args: &BenchArgs,
    client: &reqwest::Client,
    api: &str,
    admin: &str,
    pid: u64,
    run_id: &str,
    target: &Target,
    report: &mut Report,
) -> Result<(), String> {
    let dir = target
        .rubrics
        .as_ref()
        .ok_or("the isolation scenario needs --rubrics DIR with --url")?;
    let mut alone = Report::default();
    run_loop(
        args,
        client,
        api,
        admin,
        pid,
        &format!("{run_id}a"),
        target,
        &mut alone,
    )
    .await?;

    // The stalled project: its own rubric, tasks and experts.
    let name = format!("bench_slow_{run_id}");
    std::fs::write(dir.join(format!("{name}.rhai")), SLOW_RUBRIC).map_err(|e| e.to_string())?;
    let hash = assay::scripting::registry::content_hash(SLOW_RUBRIC);
    wait_live(client, api, admin, &name, &hash, Duration::from_secs(20))
        .await
        .ok_or("the slow rubric never went live")?;
    let (status, project) = call(
        client,
        reqwest::Method::POST,
        format!("{api}/projects"),
        admin,
        Some(json!({"name": format!("stalled {run_id}"), "rubric": name, "reviews_per_task": 1})),
    )
    .await?;
    let stalled = project["id"].as_u64().ok_or(format!(
        "cannot create the stalled project ({status}): {project}"
    ))?;
    import_generated(client, api, admin, stalled, 64).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut hammers = Vec::new();
    for i in 0..STALLED_EXPERTS {
        let (_, token) = new_expert(
            client,
            api,
            admin,
            stalled,
            &format!("stalled-{run_id}-{i}"),
        )
        .await?;
        let (client, api, stop, calls) =
            (client.clone(), api.to_owned(), stop.clone(), calls.clone());
        hammers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let url = format!("{api}/projects/{stalled}/next");
                let _ = call(&client, reqwest::Method::POST, url, &token, None).await;
                calls.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // Let the stalled project fill its share of the script permits first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let healthy = second_project(client, api, admin, run_id, args.tasks).await?;
    let outcome = run_loop(
        args,
        client,
        api,
        admin,
        healthy,
        &format!("{run_id}b"),
        target,
        report,
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for h in hammers {
        let _ = h.await;
    }
    outcome?;
    let p99 = |r: &Report| r.latency_ms.get("loop").map_or(0.0, |l| l.p99);
    let (alone_p99, stalled_p99) = (p99(&alone), p99(report));
    report.isolation = Some(Isolation {
        alone_loops_per_s: alone.loops_per_s,
        alone_p99_ms: alone_p99,
        with_stalled_p99_ms: stalled_p99,
        ratio: if alone_p99 > 0.0 {
            stalled_p99 / alone_p99
        } else {
            0.0
        },
        stalled_experts: STALLED_EXPERTS,
        stalled_calls: calls.load(Ordering::Relaxed),
    });
    Ok(())
}

/// A fresh project like the first, so the second phase does not run out of tasks.
async fn second_project(
    client: &reqwest::Client,
    api: &str,
    admin: &str,
    run_id: &str,
    tasks: usize,
) -> Result<u64, String> {
    let (_, project) = call(
        client,
        reqwest::Method::POST,
        format!("{api}/projects"),
        admin,
        Some(json!({
            "name": format!("healthy {run_id}"), "rubric": "pairwise_preference",
            "router": "fixed_overlap", "reviews_per_task": 1, "lease_seconds": 600
        })),
    )
    .await?;
    let pid = project["id"]
        .as_u64()
        .ok_or("cannot create the second project")?;
    import_generated(client, api, admin, pid, tasks).await?;
    Ok(pid)
}

/// Imports `n` generated tasks; returns the rate.
pub(crate) async fn import_generated(
    client: &reqwest::Client,
    api: &str,
    admin: &str,
    pid: u64,
    n: usize,
) -> Result<Rate, String> {
    let file = generated_tasks(n)?;
    let bytes = file.as_file().metadata().map_err(|e| e.to_string())?.len();
    let upload = tokio::fs::File::open(file.path())
        .await
        .map_err(|e| e.to_string())?;
    let body =
        reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(upload, 1 << 20));
    let started = std::time::Instant::now();
    let res = client
        .post(format!("{api}/projects/{pid}/tasks"))
        .bearer_auth(admin)
        .header(reqwest::header::CONTENT_LENGTH, bytes)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if res.status().as_u16() != 201 {
        return Err(format!(
            "import failed: {}",
            res.text().await.unwrap_or_default()
        ));
    }
    let secs = started.elapsed().as_secs_f64();
    Ok(Rate {
        items: n as u64,
        seconds: secs,
        tasks_per_s: n as f64 / secs,
        mb_per_s: bytes as f64 / 1e6 / secs,
    })
}
