//! Counters and a latency histogram for `/metrics` (Prometheus text format): what an operator
//! asks about — hand-outs, submissions, request outcomes and latency, script failures, reloads.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Upper bounds of the request latency buckets, in milliseconds.
const BUCKETS_MS: [u64; 11] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000];

#[derive(Default)]
pub struct Metrics {
    pub handouts: AtomicU64,
    pub submissions: AtomicU64,
    pub submission_replays: AtomicU64,
    pub invalid_answers: AtomicU64,
    /// Tasks set aside because their form could not be built.
    pub quarantined: AtomicU64,
    /// Submit batches committed, and the submissions they carried.
    pub commit_batches: AtomicU64,
    pub commit_members: AtomicU64,
    /// Syncs that made submit batches durable, and the answers that waited for them (counted
    /// with the store's flushes in `/metrics`).
    pub durable_syncs: AtomicU64,
    pub durable_synced_writes: AtomicU64,
    /// How the hand-out index was loaded at start: 1 from a clean stop's snapshot, 0 by a scan;
    /// and how long it took.
    pub queue_from_snapshot: AtomicU64,
    pub queue_load_ms: AtomicU64,
    /// Exports started, imports committed and the tasks they created.
    pub exports: AtomicU64,
    pub imports: AtomicU64,
    pub imported_tasks: AtomicU64,
    requests_by_class: [AtomicU64; 5],
    /// Per route (method and pattern; unmatched paths as one): requests, server errors and
    /// the sum of their durations. Bounded by the route table.
    routes: std::sync::Mutex<std::collections::BTreeMap<(String, String), RouteCounts>>,
    latency_buckets: [AtomicU64; BUCKETS_MS.len()],
    latency_sum_micros: AtomicU64,
    latency_count: AtomicU64,
}

#[derive(Default, Clone, Copy)]
struct RouteCounts {
    requests: u64,
    server_errors: u64,
    micros: u64,
}

impl Metrics {
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Records one finished request of a route (`pattern`: the route as declared, so ids in
    /// paths do not multiply the series).
    pub fn observe_route(&self, method: &str, pattern: Option<&str>, status: u16, micros: u64) {
        self.observe(status, micros);
        let pattern = pattern.unwrap_or("(unmatched)");
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        let entry = routes
            .entry((method.to_owned(), pattern.to_owned()))
            .or_default();
        entry.requests += 1;
        entry.server_errors += u64::from(status >= 500);
        entry.micros += micros;
    }

    /// Records one finished request.
    pub fn observe(&self, status: u16, micros: u64) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests_by_class[class].fetch_add(1, Relaxed);
        let ms = micros / 1000;
        for (bound, bucket) in BUCKETS_MS.iter().zip(&self.latency_buckets) {
            if ms < *bound {
                bucket.fetch_add(1, Relaxed);
            }
        }
        self.latency_sum_micros.fetch_add(micros, Relaxed);
        self.latency_count.fetch_add(1, Relaxed);
    }

    pub fn render(&self, out: &mut String) {
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "assay_handouts_total",
            "Leases handed out.",
            self.handouts.load(Relaxed),
        );
        counter(
            "assay_submissions_total",
            "Submissions stored.",
            self.submissions.load(Relaxed),
        );
        counter(
            "assay_submission_replays_total",
            "Submit retries answered with the first submission.",
            self.submission_replays.load(Relaxed),
        );
        counter(
            "assay_invalid_answers_total",
            "Answers the rubric refused.",
            self.invalid_answers.load(Relaxed),
        );
        counter(
            "assay_tasks_quarantined_total",
            "Tasks set aside because their rubric failed on them.",
            self.quarantined.load(Relaxed),
        );
        counter(
            "assay_submit_batches_total",
            "Submit batches committed, each one store transaction.",
            self.commit_batches.load(Relaxed),
        );
        counter(
            "assay_submit_batch_members_total",
            "Submissions those batches carried; divided by the batches, submissions per transaction.",
            self.commit_members.load(Relaxed),
        );
        counter(
            "assay_exports_total",
            "Exports started (the request was valid and streaming began).",
            self.exports.load(Relaxed),
        );
        counter(
            "assay_imports_total",
            "Imports committed.",
            self.imports.load(Relaxed),
        );
        counter(
            "assay_imported_tasks_total",
            "Tasks those imports created.",
            self.imported_tasks.load(Relaxed),
        );
        let mut gauge = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "assay_queue_loaded_from_snapshot",
            "1 when the hand-out index came from the last clean stop's snapshot, 0 when it was scanned.",
            self.queue_from_snapshot.load(Relaxed),
        );
        gauge(
            "assay_queue_load_milliseconds",
            "Milliseconds from the start of the review core until the hand-out index was loaded.",
            self.queue_load_ms.load(Relaxed),
        );
        let _ = writeln!(out, "# HELP assay_http_requests_total Requests by status class.\n# TYPE assay_http_requests_total counter");
        for (i, c) in self.requests_by_class.iter().enumerate() {
            let _ = writeln!(
                out,
                "assay_http_requests_total{{class=\"{}xx\"}} {}",
                i + 1,
                c.load(Relaxed)
            );
        }
        let _ = writeln!(out, "# HELP assay_http_request_duration_seconds Request latency.\n# TYPE assay_http_request_duration_seconds histogram");
        for (bound, bucket) in BUCKETS_MS.iter().zip(&self.latency_buckets) {
            let le = *bound as f64 / 1000.0;
            let _ = writeln!(
                out,
                "assay_http_request_duration_seconds_bucket{{le=\"{le}\"}} {}",
                bucket.load(Relaxed)
            );
        }
        let count = self.latency_count.load(Relaxed);
        let _ = writeln!(
            out,
            "assay_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.latency_sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "assay_http_request_duration_seconds_sum {sum}\nassay_http_request_duration_seconds_count {count}");
        let routes = self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let _ = writeln!(out, "# HELP assay_route_requests_total Requests per route.\n# TYPE assay_route_requests_total counter");
        for ((method, pattern), c) in &routes {
            let _ = writeln!(
                out,
                "assay_route_requests_total{{method=\"{method}\",route=\"{pattern}\"}} {}",
                c.requests
            );
        }
        let _ = writeln!(out, "# HELP assay_route_server_errors_total 5xx answers per route.\n# TYPE assay_route_server_errors_total counter");
        for ((method, pattern), c) in &routes {
            let _ = writeln!(
                out,
                "assay_route_server_errors_total{{method=\"{method}\",route=\"{pattern}\"}} {}",
                c.server_errors
            );
        }
        let _ = writeln!(out, "# HELP assay_route_duration_seconds_sum Time spent per route.\n# TYPE assay_route_duration_seconds_sum counter");
        for ((method, pattern), c) in &routes {
            let _ = writeln!(
                out,
                "assay_route_duration_seconds_sum{{method=\"{method}\",route=\"{pattern}\"}} {}",
                c.micros as f64 / 1e6
            );
        }
    }
}
