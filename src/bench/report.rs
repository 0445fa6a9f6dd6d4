//! What a bench run measured, and how it is printed (human or `--json`; the JSON shape is
//! what scripts and the integration test read, so it does not change).

use std::collections::HashMap;

use serde::Serialize;

#[derive(Serialize, Default)]
pub(crate) struct Latency {
    pub(crate) p50: f64,
    pub(crate) p95: f64,
    pub(crate) p99: f64,
    pub(crate) max: f64,
}

pub(crate) fn latency(mut micros: Vec<u64>) -> Latency {
    if micros.is_empty() {
        return Latency::default();
    }
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0;
    Latency {
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
        max: at(1.0),
    }
}

#[derive(Serialize, Default)]
pub(crate) struct Report {
    pub(crate) scenario: String,
    pub(crate) experts: usize,
    pub(crate) tasks: usize,
    pub(crate) reviews: u32,
    pub(crate) loops: u64,
    pub(crate) loops_per_s: f64,
    pub(crate) latency_ms: HashMap<&'static str, Latency>,
    pub(crate) errors: HashMap<String, u64>,
    pub(crate) duplicates: u64,
    pub(crate) import: Option<Rate>,
    pub(crate) export: Option<Rate>,
    pub(crate) reload: Option<Reload>,
    pub(crate) server_cpu_percent: Option<f64>,
    pub(crate) peak_rss_mb: Option<f64>,
    /// loop: store flushes during the run and the writes each one made durable on average
    /// (from the server's `/metrics`).
    pub(crate) flushes: Option<u64>,
    pub(crate) writers_per_flush: Option<f64>,
    /// pages: server time per page (the `Server-Timing` header) and time seen by the client.
    pub(crate) pages: Option<std::collections::BTreeMap<&'static str, PageTiming>>,
    /// isolation: the loop alone against the loop beside a project stalled by its scripts.
    pub(crate) isolation: Option<Isolation>,
    /// crash: what SIGKILL under load broke (all zero when nothing did).
    pub(crate) crash: Option<Crash>,
    /// qa: reviewers draining the QA queue the loop filled.
    pub(crate) qa: Option<QaRun>,
}

#[derive(Serialize, Default)]
pub(crate) struct QaRun {
    pub(crate) reviewers: usize,
    /// Items judged (next + accept verdicts, acknowledged).
    pub(crate) items: u64,
    pub(crate) seconds: f64,
    pub(crate) items_per_s: f64,
    /// One round: `qa/next` then `verdict`.
    pub(crate) round_ms: Latency,
    pub(crate) errors: u64,
}

#[derive(Serialize, Default)]
pub(crate) struct Crash {
    pub(crate) cycles: u64,
    pub(crate) acknowledged: u64,
    /// Acknowledged submissions missing after the last restart (a loss stays missing).
    pub(crate) lost: u64,
    /// Tasks with more submissions than reviews asked, at the last check.
    pub(crate) over_reviewed: u64,
    /// (task, expert) pairs with two submissions, at the last check.
    pub(crate) duplicate_reviews: u64,
    /// Checks that found an import partly applied.
    pub(crate) half_imports: u64,
    /// Imports that completed before a kill, at the last check.
    pub(crate) imports_whole: u64,
    /// From the kill to `/readyz` answering again.
    pub(crate) restart_ms: Latency,
}

#[derive(Serialize)]
pub(crate) struct Isolation {
    pub(crate) alone_loops_per_s: f64,
    pub(crate) alone_p99_ms: f64,
    pub(crate) with_stalled_p99_ms: f64,
    /// `with_stalled_p99_ms / alone_p99_ms`; the goal is at most 2.
    pub(crate) ratio: f64,
    pub(crate) stalled_experts: usize,
    pub(crate) stalled_calls: u64,
}

#[derive(Serialize)]
pub(crate) struct PageTiming {
    pub(crate) requests: usize,
    pub(crate) server_ms: Latency,
    pub(crate) client_ms: Latency,
}

#[derive(Serialize)]
pub(crate) struct Rate {
    pub(crate) items: u64,
    pub(crate) seconds: f64,
    pub(crate) tasks_per_s: f64,
    pub(crate) mb_per_s: f64,
}

#[derive(Serialize)]
pub(crate) struct Reload {
    pub(crate) saves: u64,
    /// Time from a file save to the new version serving, in milliseconds.
    pub(crate) save_to_live_ms: Latency,
    /// Saves whose version never went live within 10 s.
    pub(crate) missed: u64,
}

pub(crate) fn print_report(r: &Report, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    println!(
        "scenario {}: {} experts, {} tasks, {} review(s) per task",
        r.scenario, r.experts, r.tasks, r.reviews
    );
    if let Some(i) = &r.import {
        println!(
            "import   {} tasks in {:.2} s: {:.0} tasks/s, {:.1} MB/s",
            i.items, i.seconds, i.tasks_per_s, i.mb_per_s
        );
    }
    if let Some(pages) = &r.pages {
        println!("pages    median / p95 server time (Server-Timing), median client time");
        for (name, t) in pages {
            println!(
                "  {name:<26} {:.2} ms / {:.2} ms, client {:.2} ms ({} requests)",
                t.server_ms.p50, t.server_ms.p95, t.client_ms.p50, t.requests
            );
        }
    } else if r.scenario != "import" && r.crash.is_none() {
        println!(
            "loop     {} loops, {:.0} loops/s, duplicates {}",
            r.loops, r.loops_per_s, r.duplicates
        );
        for phase in ["next", "submit", "loop"] {
            if let Some(l) = r.latency_ms.get(phase) {
                println!(
                    "  {phase:<7} p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                    l.p50, l.p95, l.p99, l.max
                );
            }
        }
        if !r.errors.is_empty() {
            println!("errors   {:?}", r.errors);
        }
        if let (Some(f), Some(w)) = (r.flushes, r.writers_per_flush) {
            println!("flushes  {f}, {w:.1} durable writes per flush");
        }
    }
    if let Some(e) = &r.export {
        println!(
            "export   {} records in {:.2} s: {:.0} records/s, {:.1} MB/s",
            e.items, e.seconds, e.tasks_per_s, e.mb_per_s
        );
    }
    if let Some(rl) = &r.reload {
        let l = &rl.save_to_live_ms;
        println!(
            "reload   {} saves, save-to-live p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, missed {}",
            rl.saves, l.p50, l.p99, l.max, rl.missed
        );
    }
    if let Some(c) = &r.crash {
        println!(
            "crash    {} SIGKILLs, {} acknowledged submissions: {} lost, {} tasks over their reviews, {} double reviews, {} half imports ({} whole); restart to ready p50 {:.0} ms, max {:.0} ms",
            c.cycles, c.acknowledged, c.lost, c.over_reviewed, c.duplicate_reviews, c.half_imports, c.imports_whole, c.restart_ms.p50, c.restart_ms.max
        );
    }
    if let Some(q) = &r.qa {
        println!(
            "qa       {} reviewers judged {} items in {:.1} s: {:.0} items/s, round p50 {:.2} ms, p99 {:.2} ms, {} errors",
            q.reviewers, q.items, q.seconds, q.items_per_s, q.round_ms.p50, q.round_ms.p99, q.errors
        );
    }
    if let Some(i) = &r.isolation {
        println!(
            "isolation  loop p99 alone {:.2} ms ({:.0} loops/s), beside {} stalled experts {:.2} ms: {:.2}x ({} stalled calls)",
            i.alone_p99_ms, i.alone_loops_per_s, i.stalled_experts, i.with_stalled_p99_ms, i.ratio, i.stalled_calls
        );
    }
    if let Some(c) = r.server_cpu_percent {
        println!("server   cpu {c:.0}% (of one core)");
    }
    if let Some(m) = r.peak_rss_mb {
        println!("server   peak RSS {m:.1} MB");
    }
}
