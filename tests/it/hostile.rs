//! The hostile rubric corpus (`tests/hostile/`): every attack ends in a clear error, the server
//! keeps serving, and its peak memory stays bounded.

use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

/// Peak RSS the whole corpus may add to the server's resident memory at start.
const RSS_BOUND_MIB: u64 = 200;

struct Case {
    name: String,
    source: String,
    code: String,
    needle: String,
}

fn corpus() -> Vec<Case> {
    let dir = repo().join("tests/hostile");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let source = std::fs::read_to_string(&path).unwrap();
            let expect = source
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("// expect: "))
                .unwrap_or_else(|| panic!("{} has no `// expect:` line", path.display()));
            let (code, needle) = expect.split_once(' ').unwrap();
            Case {
                name: path.file_stem().unwrap().to_string_lossy().into_owned(),
                source: source.clone(),
                code: code.to_owned(),
                needle: needle.to_owned(),
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hostile_corpus_is_contained_within_a_memory_bound() {
    let cases = corpus();
    assert!(cases.len() >= 10, "the corpus is in tests/hostile");
    let rubrics: Vec<(&'static str, String)> = cases
        .iter()
        .map(|c| (&*c.name.clone().leak(), c.source.clone()))
        .collect();
    let s = Server::start_with(Options {
        rubrics,
        env: vec![
            ("ASSAY_SCRIPTING__TIMEOUT_MS", "400".into()),
            ("ASSAY_SCRIPTING__TESTS_BUDGET_MS", "300".into()),
            // The wall clock and the memory budget, not the operation count, must stop these.
            ("ASSAY_SCRIPTING__MAX_OPERATIONS", "100000000000".into()),
        ],
    })
    .await;
    let admin = s.admin().await;
    let (eid, expert) = s.expert(&admin, "target", &[]).await;
    let baseline = s.memory_kib("VmRSS");

    for case in &cases {
        let p = s
            .project(
                &admin,
                json!({"name": case.name, "rubric": case.name, "reviews_per_task": 1}),
            )
            .await;
        // A lead: experts are told only what kind of failure it was, leads see the script's words.
        s.add_member(&admin, p, eid, "lead").await;
        assert_eq!(
            s.upload(&admin, p, &pairwise_tasks(&case.name, 1)).await.0,
            StatusCode::CREATED
        );
        let (status, body) = s.next(&expert, p).await;
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{}: {body}",
            case.name
        );
        assert_eq!(body["code"], case.code.as_str(), "{}: {body}", case.name);
        assert!(
            body["message"].as_str().unwrap().contains(&case.needle),
            "{}: expected `{}` in {body}",
            case.name,
            case.needle
        );
        // The server still answers, and its peak so far is within the bound.
        assert_eq!(s.get(&admin, "/api/v1/plugins").await.0, StatusCode::OK);
        let peak = s.memory_kib("VmHWM");
        assert!(
            peak.saturating_sub(baseline) < RSS_BOUND_MIB * 1024,
            "{}: peak RSS {peak} KiB against {baseline} KiB at start",
            case.name
        );
    }
    eprintln!(
        "hostile corpus: {} cases, peak RSS {} KiB above the {} KiB at start",
        cases.len(),
        s.memory_kib("VmHWM").saturating_sub(baseline),
        baseline
    );
    // `print` and `debug` were cut to the per-plugin rate, not written 1,000 times each.
    assert!(s.metric("assay_script_prints_dropped_total").await >= 1900.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assay_check_applies_the_same_limits() {
    let file = repo().join("tests/hostile/slow_tests.rhai");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_assay"))
            .current_dir(std::env::temp_dir())
            .args(["check", file.to_str().unwrap()])
            .env("ASSAY_SCRIPTING__TESTS_BUDGET_MS", "300")
            .env("ASSAY_SCRIPTING__MAX_OPERATIONS", "100000000000")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("total time budget"), "{text}");
}
