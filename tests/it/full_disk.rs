//! A full disk: clear errors, a degraded health check, and recovery on its own once space is
//! back, with every acknowledged answer kept. The data folder lives on a small tmpfs (the tests
//! run as root, as CI does).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use reqwest::StatusCode;

use crate::support::*;

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(size_mb: u32) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap().keep();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mb}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs (the tests need root)"
        );
        SmallDisk(dir)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Fills the disk to the last byte; returns the filler file.
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 1 << 16];
    while f.write_all(&block).is_ok() {}
    while f.write_all(&[0u8]).is_ok() {}
    let _ = f.sync_all();
    path
}

async fn health(s: &Server) -> Option<(StatusCode, serde_json::Value)> {
    let res = s
        .client
        .get(format!("{}/healthz", s.url))
        .send()
        .await
        .ok()?;
    let status = res.status();
    Some((status, res.json().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_clear_errors_and_the_server_recovers_on_its_own() {
    let disk = SmallDisk::mount(64);
    let s = Server::start_with(Options {
        rubrics: vec![],
        env: vec![
            (
                "ASSAY_STORAGE__DATA",
                disk.0.join("data").display().to_string(),
            ),
            ("ASSAY_STORAGE__CACHE_MB", "8".into()),
        ],
    })
    .await;
    let admin = s.admin().await;
    let (eid, expert) = s.expert(&admin, "writer", &[]).await;
    let p = s.project(&admin, pairwise_project("disk", 1)).await;
    s.add_member(&admin, p, eid, "expert").await;
    assert_eq!(
        s.upload(&admin, p, &pairwise_tasks("f", 400)).await.0,
        StatusCode::CREATED
    );
    let mut acknowledged = Vec::new();
    for _ in 0..5 {
        let (status, sub) = s.review_next(&expert, p, pairwise_answer()).await;
        assert_eq!(status, StatusCode::CREATED, "{sub}");
        acknowledged.push(sub["id"].as_u64().unwrap());
    }

    let filler = fill(&disk.0);
    // Answers now fail with a code that says why, and nothing fails as a bare `internal`.
    let mut full = None;
    for _ in 0..200 {
        let (status, body) = s.review_next(&expert, p, pairwise_answer()).await;
        match status {
            StatusCode::CREATED => acknowledged.push(body["id"].as_u64().unwrap()),
            _ => {
                full = Some((status, body));
                break;
            }
        }
    }
    let (status, body) = full.expect("writes kept succeeding on a full disk");
    assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{body}");
    assert_eq!(body["code"], "storage_full", "{body}");
    let (status, health_body) = health(&s).await.expect("healthz answers");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(health_body["storage"], "full", "{health_body}");

    // Space comes back: the server recovers without anyone restarting it.
    std::fs::remove_file(filler).unwrap();
    let mut recovered = false;
    for _ in 0..300 {
        if matches!(health(&s).await, Some((StatusCode::OK, _))) {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(recovered, "the server did not recover once space was back");
    s.ready().await;
    let admin = s.admin().await;
    let expert = s.login("writer", EXPERT_PASSWORD).await;
    let (status, body) = s.review_next(&expert, p, pairwise_answer()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let exported: Vec<u64> = s
        .export(&admin, p)
        .await
        .iter()
        .map(|r| r["submission_id"].as_u64().unwrap())
        .collect();
    for id in &acknowledged {
        assert!(
            exported.contains(id),
            "acknowledged submission {id} was lost"
        );
    }
    drop(s);
}
