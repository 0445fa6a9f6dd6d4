//! The `reload` scenario: a rubric rewritten under load, each save timed until it serves.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::http::*;
use super::report::*;

/// Writes `bench_live_ID.rhai` (the pairwise rubric) and waits until the server serves it.
pub(crate) async fn prepare_live_rubric(
    client: &reqwest::Client,
    api: &str,
    admin: &str,
    dir: &std::path::Path,
    run_id: &str,
) -> Result<(String, PathBuf), String> {
    let name = format!("bench_live_{run_id}");
    let file = dir.join(format!("{name}.rhai"));
    let source = std::fs::read_to_string(dir.join("pairwise_preference.rhai"))
        .map_err(|e| format!("no pairwise_preference rubric to copy: {e}"))?;
    std::fs::write(&file, &source).map_err(|e| e.to_string())?;
    let hash = assay::scripting::registry::content_hash(&source);
    wait_live(client, api, admin, &name, &hash, Duration::from_secs(20))
        .await
        .ok_or("the bench rubric never went live (is the watcher on?)")?;
    Ok((name, file))
}

/// Polls the plugin list until `name` serves `hash`; returns how long it took.
pub(crate) async fn wait_live(
    client: &reqwest::Client,
    api: &str,
    admin: &str,
    name: &str,
    hash: &str,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok((200, list)) = call(
            client,
            reqwest::Method::GET,
            format!("{api}/plugins"),
            admin,
            None,
        )
        .await
        {
            let live = list
                .as_array()
                .is_some_and(|l| l.iter().any(|p| p["name"] == name && p["version"] == hash));
            if live {
                return Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// Rewrites the live rubric every `interval` ms during the measured window, alternating
/// in-place writes and write-then-rename saves, and times each until it serves.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn reload_loop(
    client: &reqwest::Client,
    api: &str,
    admin: &str,
    name: &str,
    file: &std::path::Path,
    warmup: f64,
    duration: f64,
    interval: u64,
) -> Result<Reload, String> {
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    let base = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let end = Instant::now() + Duration::from_secs_f64(duration);
    let (mut saves, mut missed, mut took) = (0u64, 0u64, Vec::new());
    while Instant::now() + Duration::from_millis(interval) <= end {
        saves += 1;
        let source = format!("{base}\n// revision {saves}\n");
        let hash = assay::scripting::registry::content_hash(&source);
        let saved_at = Instant::now();
        let written = if saves % 2 == 0 {
            let tmp = file.with_extension("rhai.tmp");
            std::fs::write(&tmp, &source).and_then(|_| std::fs::rename(&tmp, file))
        } else {
            std::fs::write(file, &source)
        };
        written.map_err(|e| e.to_string())?;
        match wait_live(client, api, admin, name, &hash, Duration::from_secs(10)).await {
            Some(_) => took.push(saved_at.elapsed().as_micros() as u64),
            None => missed += 1,
        }
        let next = saved_at + Duration::from_millis(interval);
        tokio::time::sleep(next.saturating_duration_since(Instant::now())).await;
    }
    Ok(Reload {
        saves,
        save_to_live_ms: latency(took),
        missed,
    })
}
