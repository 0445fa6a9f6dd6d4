//! Start-up: the hand-out index comes from the snapshot a clean stop wrote only when that
//! snapshot matches the store; otherwise it is rebuilt by a scan. Either way the server hands out
//! exactly what the store says.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

const TASKS: usize = 6;

fn snapshot_path(s: &Server) -> std::path::PathBuf {
    s.data_dir().join("queue.snapshot")
}

/// Takes tasks until none is left for the expert; returns how many were reviewed.
async fn review_all(s: &Server, token: &str, project: u64) -> usize {
    let mut done = 0;
    loop {
        let (status, body) = s.review_next(token, project, pairwise_answer()).await;
        match status {
            StatusCode::CREATED => done += 1,
            StatusCode::NO_CONTENT => return done,
            other => panic!("unexpected {other}: {body}"),
        }
    }
}

async fn setup(s: &Server) -> (String, u64, String) {
    let admin = s.admin().await;
    let project = s.project(&admin, pairwise_project("snap", 1)).await;
    assert_eq!(
        s.upload(&admin, project, &pairwise_tasks("s", TASKS))
            .await
            .0,
        StatusCode::CREATED
    );
    let (id, _) = s.expert(&admin, "snapper", &[]).await;
    s.add_member(&admin, project, id, "expert").await;
    let token = s.login("snapper", EXPERT_PASSWORD).await;
    (admin, project, token)
}

async fn lease(s: &Server, token: &str, project: u64) -> Value {
    let (status, next) = s.next(token, project).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_a_snapshot_the_next_start_uses() {
    let mut s = Server::start().await;
    let (_, project, token) = setup(&s).await;
    assert_eq!(
        s.review_next(&token, project, pairwise_answer()).await.0,
        StatusCode::CREATED
    );
    let held = lease(&s, &token, project).await;
    s.terminate();
    assert!(snapshot_path(&s).exists(), "a clean stop writes a snapshot");

    s.start_again().await;
    s.ready().await;
    assert_eq!(s.metric("assay_queue_loaded_from_snapshot").await, 1.0);
    assert!(
        !snapshot_path(&s).exists(),
        "a snapshot is used once: the start consumes it"
    );
    // The lease survived in the snapshot: the expert gets the same one back.
    let again = lease(&s, &token, project).await;
    assert_eq!(again["assignment"]["id"], held["assignment"]["id"]);
    assert_eq!(review_all(&s, &token, project).await, TASKS - 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_damaged_snapshots_are_refused_and_the_store_is_scanned() {
    let mut s = Server::start().await;
    let (_, project, token) = setup(&s).await;
    s.terminate();
    let first = std::fs::read(snapshot_path(&s)).expect("first snapshot");

    // Work after the first snapshot, then a clean stop: its snapshot replaces the first.
    s.start_again().await;
    for _ in 0..2 {
        assert_eq!(
            s.review_next(&token, project, pairwise_answer()).await.0,
            StatusCode::CREATED
        );
    }
    s.terminate();

    // Stale: the first snapshot, put back, no longer matches the store.
    std::fs::write(snapshot_path(&s), &first).unwrap();
    s.start_again().await;
    s.ready().await;
    assert_eq!(s.metric("assay_queue_loaded_from_snapshot").await, 0.0);
    assert_eq!(
        s.review_next(&token, project, pairwise_answer()).await.0,
        StatusCode::CREATED
    );
    s.terminate();

    // Damaged: one byte of a fresh, matching snapshot changed.
    let mut bytes = std::fs::read(snapshot_path(&s)).expect("snapshot");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(snapshot_path(&s), &bytes).unwrap();
    s.start_again().await;
    s.ready().await;
    assert_eq!(s.metric("assay_queue_loaded_from_snapshot").await, 0.0);
    // Three tasks were reviewed: exactly the other three are handed out.
    assert_eq!(review_all(&s, &token, project).await, TASKS - 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_sigkill_an_older_snapshot_is_not_trusted() {
    let mut s = Server::start().await;
    let (admin, project, token) = setup(&s).await;
    s.terminate();
    let clean = std::fs::read(snapshot_path(&s)).expect("snapshot");

    // Start from the snapshot, change the store, and die without a clean stop.
    s.start_again().await;
    s.ready().await;
    assert_eq!(s.metric("assay_queue_loaded_from_snapshot").await, 1.0);
    assert_eq!(
        s.review_next(&token, project, pairwise_answer()).await.0,
        StatusCode::CREATED
    );
    lease(&s, &token, project).await; // a lease that may not reach the disk
    s.kill();

    // Even with the clean stop's snapshot back in place, the store changed since: scan.
    std::fs::write(snapshot_path(&s), &clean).unwrap();
    s.start_again().await;
    s.ready().await;
    assert_eq!(s.metric("assay_queue_loaded_from_snapshot").await, 0.0);
    // The scan knows the task reviewed before the kill: it is not offered again (the old
    // snapshot would have offered it to the same expert a second time).
    assert_eq!(review_all(&s, &token, project).await, TASKS - 1);
    let stats = s.stats(&admin, project).await;
    assert_eq!(stats["submissions"], json!(TASKS));
}
