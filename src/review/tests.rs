//! Every state change of the core leaves the hand-out index an exact mirror of the store:
//! after each method, the index is compared with a fresh read of every open task and lease.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::json;

use super::ReviewCore;
use crate::config::Config;
use crate::domain::*;

struct Fixture {
    core: Arc<ReviewCore>,
    project: Project,
    experts: Vec<User>,
    dir: tempfile::TempDir,
}

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

async fn fixture(reviews: u32, lease_seconds: u64) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::default();
    config.storage.data = dir.path().join("data");
    config.storage.fsync = false;
    config.plugins.rubrics = repo("rubrics");
    config.plugins.plugins = repo("plugins");
    config.plugins.templates = dir.path().join("templates");
    config.auth.secret = "core-test-secret-core-test-secret-0123456789".into();
    let core = ReviewCore::open(config).unwrap();
    core.ready().await;
    let store = core.store();
    let now = crate::now_ms();
    let project = store
        .create_project(Project {
            id: 0,
            name: "core".into(),
            instructions: String::new(),
            rubric: "pairwise_preference".into(),
            router: "fixed_overlap".into(),
            reviews_per_task: reviews,
            lease_seconds,
            estimate_minutes: None,
            qa_rate: 0.0,
            qa_blind: true,
            created_at: now,
            updated_at: now,
        })
        .unwrap();
    let mut experts = Vec::new();
    for name in ["ana", "ben", "cy"] {
        let user = store
            .create_user(User {
                id: 0,
                username: name.into(),
                password_hash: String::new(),
                role: GlobalRole::Member,
                skills: vec![],
                hourly_rate: None,
                active: true,
                token_generation: 0,
                created_at: now,
            })
            .unwrap();
        store
            .set_member(project.id, user.id, Some(ProjectRole::Expert))
            .unwrap();
        experts.push(user);
    }
    Fixture {
        core,
        project,
        experts,
        dir,
    }
}

fn agree(core: &ReviewCore, after: &str) {
    let mismatches = core.index_mismatches().unwrap();
    assert!(
        mismatches.is_empty(),
        "after {after}, index and store disagree: {mismatches:?}"
    );
}

fn tasks(n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({"external_id": format!("t{i}"), "data": {"prompt": format!("q{i}"),
                "responses": [{"id": "a", "text": "yes"}, {"id": "b", "text": "no"}]}})
            .to_string()
                + "\n"
        })
        .collect()
}

fn answer() -> serde_json::Value {
    json!({"preference": {"pick": "left", "strength": 2}, "justification": "A answers the question."})
}

async fn import(f: &Fixture, n: usize) {
    let path = f.dir.path().join("upload.jsonl");
    std::fs::write(&path, tasks(n)).unwrap();
    let (core, project, path2) = (f.core.clone(), f.project.clone(), path.clone());
    let report = super::blocking(move || core.import_file(&project, &path2, 1))
        .await
        .unwrap();
    assert_eq!(report.imported, n as u64);
}

async fn next(f: &Fixture, expert: usize) -> super::Handout {
    f.core
        .next(f.experts[expert].clone(), f.project.id)
        .await
        .unwrap()
        .expect("a task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_lease_heartbeat_submit_keep_index_and_store_in_step() {
    let f = fixture(2, 600).await;
    import(&f, 4).await;
    agree(&f.core, "import");

    let h = next(&f, 0).await;
    agree(&f.core, "next");
    let token = h.assignment.token.clone();
    f.core
        .heartbeat(f.experts[0].clone(), h.assignment.id, token.clone())
        .await
        .unwrap();
    agree(&f.core, "heartbeat");

    let done = f
        .core
        .submit(
            f.experts[0].clone(),
            h.assignment.id,
            token.clone(),
            answer(),
        )
        .await
        .unwrap();
    assert!(!done.replay);
    agree(&f.core, "submit (task still open)");
    // A retry returns the stored submission and changes nothing.
    let again = f
        .core
        .submit(f.experts[0].clone(), h.assignment.id, token, answer())
        .await
        .unwrap();
    assert!(again.replay);
    assert_eq!(again.submission.id, done.submission.id);
    agree(&f.core, "a repeated submit");

    // The second review completes the task: it leaves the index.
    let h2 = next(&f, 1).await;
    assert_eq!(h2.task.id, h.task.id, "the started task comes first");
    f.core
        .submit(
            f.experts[1].clone(),
            h2.assignment.id,
            h2.assignment.token,
            answer(),
        )
        .await
        .unwrap();
    agree(&f.core, "submit (task complete)");
    let status = f.core.store().task_status(h.task.id).unwrap().unwrap();
    assert_eq!(status.state, TaskState::Complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_release_and_expiry_keep_index_and_store_in_step() {
    let f = fixture(1, 1).await;
    import(&f, 3).await;

    let h = next(&f, 0).await;
    f.core
        .end_without_answer(
            f.experts[0].clone(),
            h.assignment.id,
            h.assignment.token,
            AssignmentStatus::Skipped,
            Some("not my field".into()),
        )
        .await
        .unwrap();
    agree(&f.core, "skip");
    let status = f.core.store().task_status(h.task.id).unwrap().unwrap();
    assert_eq!(status.skipped_by, vec![f.experts[0].id]);

    let h = next(&f, 1).await;
    f.core
        .end_without_answer(
            f.experts[1].clone(),
            h.assignment.id,
            h.assignment.token,
            AssignmentStatus::Released,
            None,
        )
        .await
        .unwrap();
    agree(&f.core, "release");

    // A one-second lease runs out; the sweep ends it in the store and the index.
    let h = next(&f, 2).await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let core = f.core.clone();
    let ended = super::blocking(move || core.sweep()).await.unwrap();
    assert_eq!(ended, 1);
    agree(&f.core, "expiry");
    let late = f
        .core
        .submit(
            f.experts[2].clone(),
            h.assignment.id,
            h.assignment.token,
            answer(),
        )
        .await;
    assert!(late.is_err(), "an expired lease takes no answer");
    agree(&f.core, "a refused submit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_on_one_task_keep_index_and_store_in_step() {
    let f = fixture(3, 600).await;
    import(&f, 2).await;
    // Three experts on the same task at once: whether or not their submits share a batch, each
    // builds on the task status the one before it leaves.
    let mut handouts = Vec::new();
    for i in 0..3 {
        handouts.push(next(&f, i).await);
    }
    assert!(handouts.iter().all(|h| h.task.id == handouts[0].task.id));
    let mut calls = Vec::new();
    for (i, h) in handouts.into_iter().enumerate() {
        let (core, user) = (f.core.clone(), f.experts[i].clone());
        calls.push(tokio::spawn(async move {
            core.submit(user, h.assignment.id, h.assignment.token, answer())
                .await
        }));
    }
    for call in calls {
        assert!(!call.await.unwrap().unwrap().replay);
    }
    agree(&f.core, "three concurrent submits");
    let task = f
        .core
        .store()
        .submissions_page(f.project.id, None, 10)
        .unwrap()[0]
        .task_id;
    let status = f.core.store().task_status(task).unwrap().unwrap();
    assert_eq!(status.done_by.len(), 3);
    assert_eq!(status.state, TaskState::Complete);
}

/// While a submit batch is written, the committer holds its projects' commit gates and lets go of
/// their indexes: a hand-out goes on meanwhile, and a change to a lease (here a heartbeat) waits
/// for the batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_out_goes_on_while_a_batch_is_written_and_a_lease_change_waits() {
    use std::time::Duration;
    let f = fixture(2, 600).await;
    import(&f, 4).await;
    let first = next(&f, 0).await;
    // A thread stands in for the committer in the middle of a batch.
    let handle = f.core.queue.project(f.project.id);
    let (held_tx, held_rx) = std::sync::mpsc::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let committer = std::thread::spawn(move || {
        let _gate = crate::queue::Queue::gate(&handle);
        held_tx.send(()).unwrap();
        let _ = release_rx.recv();
    });
    held_rx.recv().unwrap();

    // Bounded only so that a hand-out that waits for the gate fails instead of hanging.
    let handed = tokio::time::timeout(Duration::from_secs(60), next(&f, 1))
        .await
        .expect("a hand-out does not wait for a batch being written");
    assert_ne!(handed.assignment.id, first.assignment.id);

    let (core, user) = (f.core.clone(), f.experts[0].clone());
    let mut heartbeat = tokio::spawn(async move {
        core.heartbeat(user, first.assignment.id, first.assignment.token)
            .await
    });
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut heartbeat)
            .await
            .is_err(),
        "a heartbeat waits for the batch"
    );
    release_tx.send(()).unwrap();
    committer.join().unwrap();
    heartbeat.await.unwrap().unwrap();
    agree(&f.core, "a hand-out and a heartbeat beside a batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_ended_behind_the_batch_fails_alone() {
    let f = fixture(1, 600).await;
    import(&f, 2).await;
    let a = next(&f, 0).await;
    let b = next(&f, 1).await;
    let prepare = |user: &User, h: &super::Handout| match f
        .core
        .prepare_submit(user, h.assignment.id, &h.assignment.token, answer())
        .unwrap()
    {
        super::submit::Prepared::Pending(p) => *p,
        super::submit::Prepared::Stored(_) => panic!("nothing is stored yet"),
    };
    let (pa, pb) = (prepare(&f.experts[0], &a), prepare(&f.experts[1], &b));
    // b's lease ends in the store after its answer was checked and before it is committed,
    // without the index knowing: the batch's transaction finds it ended and fails whole, and
    // its members are committed one by one, so only b is refused.
    let mut released = f.core.store().assignment(b.assignment.id).unwrap().unwrap();
    released.status = AssignmentStatus::Released;
    f.core.store().end_assignment(&released, None).unwrap();
    let ((ta, wa), (tb, wb)) = (
        tokio::sync::oneshot::channel(),
        tokio::sync::oneshot::channel(),
    );
    f.core.committer.enqueue_together(vec![(pa, ta), (pb, tb)]);
    let (ra, rb) = (wa.await.unwrap(), wb.await.unwrap());
    assert!(!ra.unwrap().replay);
    assert_eq!(rb.unwrap_err().code(), crate::error::ErrorCode::LeaseEnded);
    assert_eq!(
        f.core
            .store()
            .submissions_page(f.project.id, None, 10)
            .unwrap()
            .len(),
        1
    );
    // The index learned that b's lease had ended.
    agree(&f.core, "a failed batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reroute_keeps_index_and_store_in_step() {
    let f = fixture(2, 600).await;
    import(&f, 3).await;
    let h = next(&f, 0).await;
    f.core
        .submit(
            f.experts[0].clone(),
            h.assignment.id,
            h.assignment.token,
            answer(),
        )
        .await
        .unwrap();
    // The project now asks for one review: the reviewed task completes, the others stay open.
    let mut project = f.project.clone();
    project.reviews_per_task = 1;
    f.core.store().update_project(&project).unwrap();
    let report = f.core.reroute(1, f.project.id).await.unwrap();
    assert_eq!((report.rerouted, report.completed), (3, 1));
    agree(&f.core, "reroute");
}
