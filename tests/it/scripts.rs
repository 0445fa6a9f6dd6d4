use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

const CRITERIA: &str = r#"[#{ id: "ok", kind: "boolean", label: "OK?" }]"#;

fn hostile() -> Vec<(&'static str, String)> {
    vec![
        ("forever", "fn criteria(task) {\n    let n = 0;\n    loop { n += 1; }\n}\n".into()),
        ("recursion", "fn dive(n) { dive(n + 1) }\nfn criteria(task) {\n    dive(0)\n}\n".into()),
        ("huge", "fn criteria(task) {\n    let s = \"xxxxxxxxxxxxxxxx\";\n    loop { s += s; }\n}\n".into()),
        ("runtime", "fn criteria(task) {\n    let x = 1;\n    x.missing_method()\n}\n".into()),
        ("syntax", "fn criteria(task) {\n    let x = ;\n}\n".into()),
        ("nocriteria", "fn score(task, answer) { #{} }\n".into()),
        ("badshape", "fn criteria(task) { [#{ id: \"q\", kind: \"likert\", min: 5, max: 1 }] }\n".into()),
        ("badscore", format!("fn criteria(task) {{ {CRITERIA} }}\nfn score(task, answer) {{ \"high\" }}\n")),
        ("throws", format!("fn criteria(task) {{ {CRITERIA} }}\nfn validate(task, answer) {{\n    throw \"no validation today\";\n}}\n")),
    ]
}

/// A project on `rubric` that `member` leads: leads (and admins) see a script's own words and
/// position; experts are told only the kind of failure (see `hardening.rs`).
async fn project_with(s: &Server, admin: &str, member: u64, rubric: &str) -> u64 {
    let p = s
        .project(
            admin,
            json!({"name": rubric, "rubric": rubric, "reviews_per_task": 1}),
        )
        .await;
    s.add_member(admin, p, member, "lead").await;
    assert_eq!(
        s.upload(admin, p, &pairwise_tasks(rubric, 1)).await.0,
        StatusCode::CREATED
    );
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_rubrics_get_clear_errors_and_the_server_keeps_serving() {
    let s = Server::start_with(Options {
        rubrics: hostile(),
        env: vec![
            ("ASSAY_SCRIPTING__TIMEOUT_MS", "400".into()),
            // High enough that the wall-clock deadline, not the operation count, stops the loop.
            ("ASSAY_SCRIPTING__MAX_OPERATIONS", "100000000000".into()),
        ],
    })
    .await;
    let admin = s.admin().await;
    let (eid, expert) = s.expert(&admin, "victim", &[]).await;

    // Load-time failures are visible in the plugins list, with the position.
    let (_, plugins) = s.get(&admin, "/api/v1/plugins").await;
    let find = |name: &str| {
        plugins
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap()
    };
    let syntax = find("syntax");
    assert_eq!(syntax["status"], "error");
    assert_eq!(syntax["last_error"]["line"], 2, "{syntax}");
    assert!(syntax["last_error"]["column"].as_u64().is_some());
    assert!(syntax["last_error"]["message"]
        .as_str()
        .unwrap()
        .contains("syntax error"));
    let missing = find("nocriteria");
    assert_eq!(missing["status"], "error");
    assert!(
        missing["last_error"]["message"]
            .as_str()
            .unwrap()
            .contains("fn criteria"),
        "{missing}"
    );
    assert_eq!(find("pairwise_preference")["status"], "ok");

    // The infinite loop: it is cut off at the deadline, and other requests are answered meanwhile.
    let p = project_with(&s, &admin, eid, "forever").await;
    let started = Instant::now();
    let looping = {
        let (client, url, expert) = (s.client.clone(), s.url.clone(), expert.clone());
        tokio::spawn(async move {
            let res = client
                .post(format!("{url}/api/v1/projects/{p}/next"))
                .bearer_auth(&expert)
                .send()
                .await
                .unwrap();
            (
                res.status(),
                res.json::<serde_json::Value>().await.unwrap(),
                Instant::now(),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, _) = s.get(&admin, "/api/v1/plugins").await;
    let answered_at = Instant::now();
    assert_eq!(status, StatusCode::OK);
    let (status, body, finished_at) = looping.await.unwrap();
    assert!(
        answered_at < finished_at,
        "another request was answered while the script ran"
    );
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["code"], "script_timeout", "{body}");
    assert_eq!(body["script"]["plugin"], "forever");
    assert_eq!(body["script"]["function"], "criteria");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("400 ms time limit"),
        "{body}"
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    // The task was set aside with its error, not stranded under a lease.
    let stats = s.stats(&admin, p).await;
    assert_eq!(
        (stats["open"].as_u64(), stats["broken"].as_u64()),
        (Some(0), Some(1)),
        "{stats}"
    );

    // Each other failure: its code, plugin, function and position.
    for (rubric, code, line, needle) in [
        ("recursion", "script_error", None, "recursion"),
        ("huge", "script_error", None, "size limit"),
        ("runtime", "script_error", Some(3), "missing_method"),
        ("syntax", "plugin_unavailable", None, "syntax.rhai:2:"),
        // A criteria list of the wrong shape is refused at load, by a probe call.
        ("badshape", "plugin_unavailable", None, "min < max"),
    ] {
        let p = project_with(&s, &admin, eid, rubric).await;
        let (status, body) = s.next(&expert, p).await;
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{rubric}: {body}"
        );
        assert_eq!(body["code"], code, "{rubric}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "{rubric}: {body}"
        );
        if let Some(line) = line {
            assert_eq!(body["script"]["line"], line, "{rubric}: {body}");
            assert_eq!(body["script"]["plugin"], rubric);
        }
    }

    // Failures in validate and score surface at submit time, and nothing is stored.
    for (rubric, function) in [("badscore", "score"), ("throws", "validate")] {
        let p = project_with(&s, &admin, eid, rubric).await;
        let (status, next) = s.next(&expert, p).await;
        assert_eq!(status, StatusCode::OK, "{next}");
        let aid = next["assignment"]["id"].as_u64().unwrap();
        let (status, body) = s
            .post(
                &expert,
                &format!("/api/v1/assignments/{aid}/submit"),
                json!({"token": next["assignment"]["token"], "answer": {"ok": true}}),
            )
            .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(body["script"]["function"], function, "{body}");
        let stats = s.stats(&admin, p).await;
        assert_eq!(stats["submissions"], 0);
    }

    // Healthy projects are unaffected.
    let good = s.project(&admin, pairwise_project("good", 1)).await;
    s.add_member(&admin, good, eid, "expert").await;
    s.upload(&admin, good, &pairwise_tasks("g", 1)).await;
    let (status, _) = s.review_next(&expert, good, pairwise_answer()).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_cannot_reach_files_eval_or_the_clock() {
    let rubrics = vec![
        (
            "importer",
            "fn criteria(task) {\n    import \"secrets\" as s;\n    []\n}\n".into(),
        ),
        (
            "evaler",
            "fn criteria(task) {\n    eval(\"40 + 2\")\n}\n".into(),
        ),
        ("clock", "fn criteria(task) {\n    timestamp()\n}\n".into()),
    ];
    let s = Server::start_with(Options {
        rubrics,
        env: vec![],
    })
    .await;
    let admin = s.admin().await;
    let (eid, expert) = s.expert(&admin, "probe", &[]).await;
    for rubric in ["importer", "evaler", "clock"] {
        let p = project_with(&s, &admin, eid, rubric).await;
        let (status, body) = s.next(&expert, p).await;
        assert_eq!(
            status,
            StatusCode::INTERNAL_SERVER_ERROR,
            "{rubric}: {body}"
        );
        assert!(
            body["code"] == "script_error" || body["code"] == "plugin_unavailable",
            "{rubric}: {body}"
        );
    }
}
