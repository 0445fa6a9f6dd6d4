//! Micro benchmarks of the hot paths: `cargo bench`. The load test of the whole server is
//! `assay bench` (see BENCHMARKS.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use assay::config::ScriptingConfig;
use assay::domain::*;
use assay::queue::{Lease, ProjectQueue};
use assay::scripting::registry::prepare;
use assay::scripting::rubric::check_answer;
use assay::scripting::ScriptEngine;
use assay::store::{SledStore, Store, SubmissionWrite};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use serde_json::json;

fn typical_task() -> Task {
    let filler =
        "The committee reviewed the evidence in detail and found that the proposed change \
                  would reduce the error rate while keeping latency within the agreed budget. ";
    Task {
        id: 1,
        project_id: 1,
        external_id: Some("t-1".into()),
        data: json!({"prompt": "Summarise the finding.", "responses": [
            {"id": "a", "text": filler.repeat(6)}, {"id": "b", "text": filler.repeat(5)}]}),
        meta: json!({"domain": "general"}),
        gold: None,
        created_at: 0,
    }
}

fn rubric_check(c: &mut Criterion) {
    let engine = ScriptEngine::new(&ScriptingConfig::default());
    let source = std::fs::read_to_string("rubrics/pairwise_preference.rhai").unwrap();
    let (rubric, _) = prepare(
        &engine,
        PluginKind::Rubric,
        "pairwise_preference",
        "p.rhai",
        source,
    )
    .unwrap();
    let task = typical_task();
    let answer = json!({"preference": {"pick": "left", "strength": 2},
                        "justification": "A is more complete and better supported by the evidence."});
    c.bench_function("rubric validate + score (pairwise, 2.3 KB task)", |b| {
        b.iter(|| check_answer(&engine, &rubric, black_box(&task), black_box(&answer)).unwrap())
    });
}

/// The review page as the server renders it: view models, Markdown + sanitizing, templates.
fn review_page(c: &mut Criterion) {
    use assay::web::pages::{templates::Templates, view};
    let engine = ScriptEngine::new(&ScriptingConfig::default());
    let source = std::fs::read_to_string("rubrics/pairwise_preference.rhai").unwrap();
    let (rubric, _) = prepare(&engine, PluginKind::Rubric, "p", "p.rhai", source).unwrap();
    let task = typical_task();
    let criteria = assay::scripting::rubric::criteria(
        &engine,
        &rubric,
        &assay::scripting::rubric::task_value(&task),
    )
    .unwrap();
    let templates = Templates::load(std::path::Path::new("/nonexistent"));
    c.bench_function("review page render (criteria + task view + templates)", |b| {
        b.iter(|| {
            let labels = view::response_labels(&criteria);
            let data = json!({
                "title": "Review", "user": {"username": "alice", "is_admin": false}, "csrf": "x",
                "project": {"id": 1, "name": "Demo"}, "instructions": "Judge **accuracy**.",
                "assignment": {"id": 1, "token": "t", "expires_at": 0, "served_at": 0, "rubric_version": "h"},
                "task": {"id": 1, "external_id": "t-1", "view": view::task_view(&task.data, &labels)},
                "criteria": view::criteria_view(&criteria, &task.data),
                "lease_seconds": 1800, "heartbeat_seconds": 30, "idle_seconds": 120, "server_now": 0,
            });
            black_box(templates.render("review", &data).unwrap())
        })
    });
}

fn status(task: Id) -> NewTask {
    let t = typical_task();
    NewTask {
        external_id: Some(format!("t-{task}")),
        data: serde_json::value::to_raw_value(&t.data).expect("task data is JSON"),
        meta: t.meta,
        gold: None,
        routing: Routing {
            reviews: 1,
            ..Default::default()
        },
    }
}

fn assignment(store: &dyn Store, task: Id, expert: Id) -> Assignment {
    Assignment {
        id: store.new_id().unwrap(),
        task_id: task,
        project_id: 1,
        expert_id: expert,
        status: AssignmentStatus::Active,
        served_at: 0,
        expires_at: i64::MAX / 2,
        last_seen_at: 0,
        active_seconds: 0.0,
        fence: 1,
        rubric: "r".into(),
        rubric_version: "v".into(),
        router: "q".into(),
        router_version: "v".into(),
        submission_id: None,
        reason: None,
    }
}

/// Hand-out: choose a task in the in-memory queue and write the lease.
fn handout(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), true).unwrap();
    let created = store
        .import_batch(1, (0..20_000).map(status).collect())
        .unwrap()
        .created;
    let mut queue = ProjectQueue::default();
    for s in created {
        queue.set_status(s);
    }
    let mut expert = 0;
    c.bench_function("hand-out (pick + lease write)", |b| {
        b.iter(|| {
            expert += 1;
            let task = queue.pick(expert, &[], 0).unwrap();
            let a = assignment(&store, task, expert);
            store.put_assignment(&a).unwrap();
            queue.add_lease(task, Lease::from(&a));
            // Give it back in memory only, so the queue never runs dry however long this runs.
            queue.remove_lease(task, a.id);
        })
    });
}

/// The submission of lease `a` on task `s`, which it completes.
fn submission_write(s: &TaskStatus, a: Assignment, answer: &serde_json::Value) -> SubmissionWrite {
    let mut done = s.clone();
    done.done_by.push(a.expert_id);
    done.state = TaskState::Complete;
    SubmissionWrite {
        submission: Submission {
            id: 0,
            task_id: s.task_id,
            project_id: s.project_id,
            assignment_id: a.id,
            expert_id: a.expert_id,
            answer: answer.clone(),
            scores: json!({"preference": 2}),
            rubric: "r".into(),
            rubric_version: "v".into(),
            router: "q".into(),
            router_version: "v".into(),
            served_at: 0,
            submitted_at: 1,
            active_seconds: 1.0,
            qa: None,
        },
        audit: AuditEvent {
            at: 1,
            actor: Some(a.expert_id),
            action: AuditAction::TaskSubmit,
            object: format!("task:{}", s.task_id),
            detail: json!({"assignment": a.id}),
        },
        assignment: a,
        status: done,
        prior_state: Some(TaskState::Open),
    }
}

/// Submit: the transaction and the flush that makes it durable.
fn submit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), true).unwrap();
    let answer =
        json!({"preference": {"pick": "left", "strength": 2}, "justification": "A is better."});
    c.bench_function("submit transaction + flush + fdatasync", |b| {
        b.iter_batched(
            || {
                let s = store
                    .import_batch(1, vec![status(rand_id())])
                    .unwrap()
                    .created
                    .remove(0);
                let a = assignment(&store, s.task_id, 7);
                store.put_assignment(&a).unwrap();
                (s, a)
            },
            |(s, a)| {
                store
                    .commit_submission(submission_write(&s, a, &answer))
                    .unwrap();
                store.flush().unwrap();
            },
            BatchSize::SmallInput,
        )
    });
}

/// What the store writes for a loop under load: a lease per expert, then their 16 submissions
/// as one batch (not synced: the submit log's one fdatasync a batch is the same whatever the
/// batch holds). Per batch of 16 loops.
fn loop_writes(c: &mut Criterion) {
    const BATCH: usize = 16;
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path(), true).unwrap();
    let answer =
        json!({"preference": {"pick": "left", "strength": 2}, "justification": "A is better."});
    let mut waiting: Vec<TaskStatus> = Vec::new();
    let mut group = c.benchmark_group("store writes");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("16 loops: 16 leases, one submit batch", |b| {
        b.iter_custom(|iters| {
            let mut spent = std::time::Duration::ZERO;
            for _ in 0..iters {
                if waiting.len() < BATCH {
                    // Imported in batches under 256 tasks, so their statuses are in the trees
                    // (a large import's live in a segment file until they change).
                    waiting = store
                        .import_batch(1, (0..200).map(|_| status(rand_id())).collect())
                        .unwrap()
                        .created;
                }
                let started = std::time::Instant::now();
                let mut batch = Vec::with_capacity(BATCH);
                for (expert, s) in waiting.drain(..BATCH).enumerate() {
                    let expert = expert as Id + 1;
                    let a = assignment(&store, s.task_id, expert);
                    store.put_assignment(&a).unwrap();
                    batch.push(submission_write(&s, a, &answer));
                }
                black_box(store.commit_submissions(batch).unwrap());
                spent += started.elapsed();
            }
            spent
        })
    });
    group.finish();
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1_000_000);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Import parsing: one JSON Lines record of ~2.3 KB.
fn import_parse(c: &mut Criterion) {
    let line =
        serde_json::to_string(&json!({"external_id": "x", "data": typical_task().data})).unwrap();
    let body: String = (0..1000).map(|_| format!("{line}\n")).collect();
    let mut group = c.benchmark_group("import parse");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("1000 JSON Lines records of 2.3 KB", |b| {
        b.iter(|| {
            let mut n = 0;
            assay::import::read_records(black_box(body.as_bytes()), &mut |_, r| {
                n += usize::from(r.is_ok());
            })
            .unwrap();
            assert_eq!(n, 1000);
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    rubric_check,
    handout,
    submit,
    loop_writes,
    review_page,
    import_parse
);
criterion_main!(benches);
