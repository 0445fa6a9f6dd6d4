//! Online backup and restore: a backup taken while experts submit is a consistent point in
//! time, holds every submission acknowledged before it, and restores to a working server.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::Value;

use crate::support::*;

fn assay() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_assay"));
    cmd.current_dir(std::env::temp_dir());
    cmd
}

fn submission_id(line: &str) -> u64 {
    serde_json::from_str::<Value>(line).unwrap()["submission_id"]
        .as_u64()
        .unwrap()
}

async fn run(cmd: Command) -> std::process::Output {
    let mut cmd = cmd;
    tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backup_under_load_restores_to_the_same_point() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let p = s.project(&admin, pairwise_project("backed up", 1)).await;
    s.upload(&admin, p, &pairwise_tasks("b", 400)).await;
    let mut experts = Vec::new();
    for i in 0..4 {
        let (id, token) = s.expert(&admin, &format!("e{i}"), &[]).await;
        s.add_member(&admin, p, id, "expert").await;
        experts.push(token);
    }

    // Experts submit in a loop; each acknowledged submission is noted with whether its 201
    // came before the backup was asked for.
    let s = Arc::new(s);
    let asked = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(u64, bool)>>> = Arc::default();
    let mut load = Vec::new();
    for token in experts.clone() {
        let (s, asked, stop, acked) = (s.clone(), asked.clone(), stop.clone(), acked.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let (status, body) = s.review_next(&token, p, pairwise_answer()).await;
                if status != StatusCode::CREATED {
                    break;
                }
                let before = !asked.load(Ordering::SeqCst);
                let id = body["submission_id"]
                    .as_u64()
                    .or(body["id"].as_u64())
                    .unwrap();
                acked.lock().unwrap().push((id, before));
            }
        }));
    }
    while acked.lock().unwrap().len() < 60 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let file = s.dir.path().join("backup.bin");
    let mut cmd = assay();
    cmd.args(["backup", "--url", &s.url, "--out"])
        .arg(&file)
        .env("ASSAY_TOKEN", &admin);
    asked.store(true, Ordering::SeqCst);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("sha256"));
    // The load goes on past the backup, then stops.
    let at_backup = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < at_backup + 40 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    for task in load {
        task.await.unwrap();
    }
    let live = s.export_text(&admin, p, "jsonl").await;

    // Restore into a new data folder and serve it.
    let restored_dir = tempfile::tempdir().unwrap();
    let data = restored_dir.path().join("data");
    let mut cmd = assay();
    cmd.arg("restore").arg(&file).arg("--data").arg(&data);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r = Server::start_with(Options {
        rubrics: vec![],
        env: vec![("ASSAY_STORAGE__DATA", data.display().to_string())],
    })
    .await;
    let restored = r.export_text(&admin, p, "jsonl").await;
    let kept: BTreeSet<u64> = restored.lines().map(submission_id).collect();

    // Every submission acknowledged before the backup was asked for is in it…
    for (id, before) in acked.lock().unwrap().iter() {
        if *before {
            assert!(kept.contains(id), "acknowledged submission {id} missing");
        }
    }
    // …the later ones are not all in it (the backup is a point, not the end)…
    assert!(
        kept.len() < acked.lock().unwrap().len(),
        "{} kept",
        kept.len()
    );
    // …and what it holds is exported byte for byte as the live server exports it.
    let expected: Vec<&str> = live
        .lines()
        .filter(|l| kept.contains(&submission_id(l)))
        .collect();
    assert_eq!(restored.lines().collect::<Vec<_>>(), expected);
    // Counters and records were copied at one point: they agree.
    let stats = r.stats(&admin, p).await;
    assert_eq!(
        stats["submissions"].as_u64(),
        Some(kept.len() as u64),
        "{stats}"
    );
    assert_eq!(
        stats["complete"].as_u64(),
        Some(kept.len() as u64),
        "{stats}"
    );
    assert_eq!(stats["tasks"], 400, "{stats}");

    // The restored server works on: a new submission gets an id of its own.
    let (status, body) = r.review_next(&experts[0], p, pairwise_answer()).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let after = r.export_text(&admin, p, "jsonl").await;
    let ids: BTreeSet<u64> = after.lines().map(submission_id).collect();
    assert_eq!(ids.len(), kept.len() + 1);
    assert!(ids.iter().max() > kept.iter().max());

    // A restore never overwrites a database, and a damaged backup leaves nothing behind.
    let mut cmd = assay();
    cmd.arg("restore").arg(&file).arg("--data").arg(&data);
    let out = run(cmd).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exists"));
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    let damaged = s.dir.path().join("damaged.bin");
    std::fs::write(&damaged, &bytes).unwrap();
    let elsewhere = restored_dir.path().join("other");
    let mut cmd = assay();
    cmd.arg("restore")
        .arg(&damaged)
        .arg("--data")
        .arg(&elsewhere);
    let out = run(cmd).await;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("damaged"), "{err}");
    assert!(!elsewhere.join("db").exists() && !elsewhere.join("db.restoring").exists());

    // Offline: a stopped server's data folder backs up too.
    drop(r);
    let offline = restored_dir.path().join("offline.bin");
    let mut cmd = assay();
    cmd.args(["backup", "--data"])
        .arg(&data)
        .arg("--out")
        .arg(&offline);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Only admins take backups.
    let (status, _) = s.get(&experts[0], "/api/v1/admin/backup").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (_, events) = s.get(&admin, "/api/v1/audit?action=backup").await;
    assert_eq!(events.as_array().map(Vec::len), Some(1), "{events}");
}
