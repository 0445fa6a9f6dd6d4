use std::collections::{HashMap, HashSet};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_experts_hammering_never_exceed_the_overlap() {
    const TASKS: usize = 30;
    const EXPERTS: usize = 8;
    let s = Server::start().await;
    let admin = s.admin().await;
    let project = s.project(&admin, pairwise_project("race", 2)).await;
    let (status, report) = s.upload(&admin, project, &pairwise_tasks("r", TASKS)).await;
    assert_eq!(status, StatusCode::CREATED, "{report}");
    let mut experts = Vec::new();
    for i in 0..EXPERTS {
        let (id, token) = s.expert(&admin, &format!("expert{i}"), &[]).await;
        s.add_member(&admin, project, id, "expert").await;
        experts.push(token);
    }
    let s = std::sync::Arc::new(s);
    let mut handles = Vec::new();
    for token in experts {
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let (status, next) = s.next(&token, project).await;
                if status == StatusCode::NO_CONTENT {
                    return done;
                }
                assert_eq!(status, StatusCode::OK, "{next}");
                let aid = next["assignment"]["id"].as_u64().unwrap();
                let body =
                    json!({"token": next["assignment"]["token"], "answer": pairwise_answer()});
                let (status, sub) = s
                    .post(&token, &format!("/api/v1/assignments/{aid}/submit"), body)
                    .await;
                assert_eq!(status, StatusCode::CREATED, "{sub}");
                done.push(sub["task_id"].as_u64().unwrap());
            }
        }));
    }
    let mut per_task: HashMap<u64, usize> = HashMap::new();
    for h in handles {
        let done = h.await.unwrap();
        let unique: HashSet<_> = done.iter().collect();
        assert_eq!(unique.len(), done.len(), "an expert reviewed a task twice");
        for t in done {
            *per_task.entry(t).or_default() += 1;
        }
    }
    assert_eq!(per_task.len(), TASKS);
    assert!(per_task.values().all(|&n| n == 2), "{per_task:?}");

    // The stored truth agrees with what the clients saw.
    let rows = s.export(&admin, project).await;
    assert_eq!(rows.len(), TASKS * 2);
    let mut pairs: HashMap<u64, HashSet<u64>> = HashMap::new();
    for r in &rows {
        pairs
            .entry(r["task_id"].as_u64().unwrap())
            .or_default()
            .insert(r["expert_id"].as_u64().unwrap());
    }
    assert!(pairs.values().all(|e| e.len() == 2));
    let stats = s.stats(&admin, project).await;
    assert_eq!(stats["complete"], TASKS as u64);
    assert_eq!(stats["open"], 0);
    assert_eq!(stats["submissions"], (TASKS * 2) as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_task_comes_back_after_its_lease() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let project = s
        .project(&admin, json!({"name": "lease", "rubric": "pairwise_preference", "reviews_per_task": 1, "lease_seconds": 1}))
        .await;
    s.upload(&admin, project, &pairwise_tasks("l", 1)).await;
    let (a_id, a) = s.expert(&admin, "abandoner", &[]).await;
    let (b_id, b) = s.expert(&admin, "finisher", &[]).await;
    s.add_member(&admin, project, a_id, "expert").await;
    s.add_member(&admin, project, b_id, "expert").await;

    let (status, first) = s.next(&a, project).await;
    assert_eq!(status, StatusCode::OK);
    // While leased, nobody else gets it; asking again returns the same lease.
    assert_eq!(s.next(&b, project).await.0, StatusCode::NO_CONTENT);
    let (_, again) = s.next(&a, project).await;
    assert_eq!(again["assignment"]["id"], first["assignment"]["id"]);

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, second) = s.next(&b, project).await;
    assert_eq!(status, StatusCode::OK, "the task should come back");
    assert_eq!(second["task"]["id"], first["task"]["id"]);

    // The abandoned lease can no longer submit or heartbeat.
    let aid = first["assignment"]["id"].as_u64().unwrap();
    let token = first["assignment"]["token"].clone();
    let (status, body) = s
        .post(
            &a,
            &format!("/api/v1/assignments/{aid}/submit"),
            json!({"token": token, "answer": pairwise_answer()}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("lease_expired")),
        "{body}"
    );
    let (status, _) = s
        .post(
            &a,
            &format!("/api/v1/assignments/{aid}/heartbeat"),
            json!({"token": token}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);

    let bid = second["assignment"]["id"].as_u64().unwrap();
    let (status, _) = s
        .post(
            &b,
            &format!("/api/v1/assignments/{bid}/submit"),
            json!({"token": second["assignment"]["token"], "answer": pairwise_answer()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_validates_is_idempotent_and_checks_the_lease() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let project = s.project(&admin, pairwise_project("submit", 2)).await;
    s.upload(&admin, project, &pairwise_tasks("s", 2)).await;
    let (e1, t1) = s.expert(&admin, "one", &[]).await;
    let (e2, t2) = s.expert(&admin, "two", &[]).await;
    s.add_member(&admin, project, e1, "expert").await;
    s.add_member(&admin, project, e2, "expert").await;

    let (_, next) = s.next(&t1, project).await;
    assert_eq!(next["criteria"][0]["kind"], "pairwise");
    assert!(next["instructions"].is_string());
    let aid = next["assignment"]["id"].as_u64().unwrap();
    let token = next["assignment"]["token"].clone();
    let path = format!("/api/v1/assignments/{aid}/submit");

    // Declarative and scripted validation, every problem named by field.
    let (status, body) = s
        .post(
            &t1,
            &path,
            json!({"token": token, "answer": {"preference": {"pick": "up"}, "bogus": 1}}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["code"], "invalid_answer");
    let fields: HashSet<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        HashSet::from(["bogus", "preference", "justification"]),
        "{body}"
    );
    let strong = json!({"preference": {"pick": "right", "strength": 3}, "justification": "B is a lot better here."});
    let (status, body) = s
        .post(&t1, &path, json!({"token": token, "answer": strong}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"][0]["field"], "justification");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("80 characters"));

    // Someone else's lease.
    let (status, body) = s
        .post(
            &t2,
            &path,
            json!({"token": token, "answer": pairwise_answer()}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("foreign_lease"))
    );
    let (status, body) = s
        .post(
            &t1,
            &path,
            json!({"token": "forged", "answer": pairwise_answer()}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("invalid_lease_token"))
    );

    // Heartbeat extends the lease.
    let (status, hb) = s
        .post(
            &t1,
            &format!("/api/v1/assignments/{aid}/heartbeat"),
            json!({"token": token}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        hb["expires_at"].as_i64().unwrap() >= next["assignment"]["expires_at"].as_i64().unwrap()
    );

    // A valid answer is stored with scores and versions; a retry returns the same submission.
    let (status, first) = s
        .post(
            &t1,
            &path,
            json!({"token": token, "answer": pairwise_answer()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["scores"]["preference"], 2);
    assert_eq!(first["rubric"], "pairwise_preference");
    assert_eq!(first["rubric_version"].as_str().unwrap().len(), 64);
    let (status, retry) = s
        .post(
            &t1,
            &path,
            json!({"token": token, "answer": pairwise_answer()}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(retry["id"], first["id"]);
    let task = first["task_id"].as_u64().unwrap();
    let (_, subs) = s
        .get(&admin, &format!("/api/v1/tasks/{task}/submissions"))
        .await;
    assert_eq!(subs.as_array().unwrap().len(), 1);
    // The lease is over: no more heartbeats.
    let (status, body) = s
        .post(
            &t1,
            &format!("/api/v1/assignments/{aid}/heartbeat"),
            json!({"token": token}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("lease_ended"))
    );

    // Operators see it in the metrics.
    let metrics = s
        .client
        .get(format!("{}/metrics", s.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "assay_submissions_total 1",
        "assay_submission_replays_total 1",
        "assay_invalid_answers_total 2",
        "assay_handouts_total 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{metrics}"
        );
    }
    assert!(metrics.contains("assay_http_request_duration_seconds_count"));
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
    };
    let (flushes, durable) = (
        counter("assay_group_flushes_total"),
        counter("assay_durable_writes_total"),
    );
    assert!(
        flushes >= 1 && durable >= flushes,
        "users, the project, the import and the submission waited for flushes: {flushes} / {durable}"
    );

    // Blind review: expert two sees only their own submissions of that task.
    let (_, next2) = s.next(&t2, project).await;
    let t2_task = next2["task"]["id"].as_u64().unwrap();
    let (status, theirs) = s
        .get(&t2, &format!("/api/v1/tasks/{t2_task}/submissions"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(theirs.as_array().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_release_and_pools() {
    let s = Server::start_with(Options {
        rubrics: vec![],
        env: vec![],
    })
    .await;
    // A router that sends medical tasks to the "medicine" pool.
    std::fs::write(
        s.dir.path().join("plugins").join("by_domain.rhai"),
        "fn route(task) { if task.meta.domain == \"medicine\" { #{ pool: \"medicine\", priority: 5 } } else { #{} } }",
    )
    .unwrap();
    let mut s = s;
    s.restart().await;
    let admin = s.admin().await;
    let project = s
        .project(&admin, json!({"name": "pools", "rubric": "pairwise_preference", "router": "by_domain", "reviews_per_task": 1}))
        .await;
    let tasks = [
        json!({"external_id": "med", "data": {"prompt": "dose?", "responses": ["a", "b"]}, "meta": {"domain": "medicine"}}),
        json!({"external_id": "gen", "data": {"prompt": "egg?", "responses": ["a", "b"]}, "meta": {"domain": "general"}}),
    ];
    let body = tasks
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert_eq!(
        s.upload(&admin, project, &body).await.0,
        StatusCode::CREATED
    );
    let (doc_id, doc) = s.expert(&admin, "doc", &["medicine"]).await;
    let (lay_id, lay) = s.expert(&admin, "lay", &[]).await;
    s.add_member(&admin, project, doc_id, "expert").await;
    s.add_member(&admin, project, lay_id, "expert").await;

    // The physician gets the higher-priority medical task; the lay expert never sees it.
    let (_, n) = s.next(&doc, project).await;
    assert_eq!(n["task"]["external_id"], "med");
    let doc_aid = n["assignment"]["id"].as_u64().unwrap();
    let doc_token = n["assignment"]["token"].clone();
    // Release: the task goes back and can be taken again (by the same physician).
    let (status, _) = s
        .post(
            &doc,
            &format!("/api/v1/assignments/{doc_aid}/release"),
            json!({"token": doc_token, "reason": "need a break"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, n) = s.next(&doc, project).await;
    assert_eq!(n["task"]["external_id"], "med");
    // Skip: never offered to them again.
    let aid = n["assignment"]["id"].as_u64().unwrap();
    let (status, _) = s
        .post(
            &doc,
            &format!("/api/v1/assignments/{aid}/skip"),
            json!({"token": n["assignment"]["token"], "reason": "conflict of interest"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = s
        .post(
            &doc,
            &format!("/api/v1/assignments/{aid}/skip"),
            json!({"token": n["assignment"]["token"]}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::CONFLICT, Some("lease_ended"))
    );
    let (_, n) = s.next(&doc, project).await;
    assert_eq!(n["task"]["external_id"], "gen");

    // The lay expert: the general task is leased by the physician, the medical one is not for them.
    let (status, _) = s.next(&lay, project).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
}

/// The hand-out passes the task's stored content through: exactly what was imported (nested
/// values, escapes, non-ASCII text), and never the task's meta or gold answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_out_shows_the_content_as_imported_and_nothing_else() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let project = s.project(&admin, pairwise_project("verbatim", 1)).await;
    let data = json!({
        "prompt": "Quote \"this\" \\ and <b>that</b>\n— naïve café, 東京, 🙂",
        "responses": [{"id": "a", "text": "A", "scores": [1, 2.5, -3e-7]}, {"id": "b", "text": ""}],
        "context": {"nested": {"deep": [null, true, {"k": "v"}]}}
    });
    let line = json!({"external_id": "v-1", "data": data,
        "meta": {"source": "META-SECRET"}, "gold": {"preference": {"pick": "left", "strength": 2}}});
    let (status, report) = s.upload(&admin, project, &line.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{report}");
    let (expert, token) = s.expert(&admin, "verbatim-expert", &[]).await;
    s.add_member(&admin, project, expert, "expert").await;
    let (status, next) = s.next(&token, project).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_eq!(next["task"]["data"], data);
    assert_eq!(next["task"]["external_id"], "v-1");
    let shown = next.to_string();
    assert!(!shown.contains("META-SECRET"), "{shown}");
    assert!(!shown.contains("gold"), "{shown}");
    assert_eq!(next["criteria"][0]["id"], "preference");
}

/// A rubric whose scripts never look at the task, but whose criteria are checked against it.
const TASK_CHECKED: &str = r#"fn criteria(task) {
    [
        #{ id: "spans", kind: "spans", target: "text", labels: ["wrong"], required: false },
        #{ id: "steps", kind: "per_item", over: "steps",
           item: #{ id: "ok", kind: "boolean" } },
        #{ id: "order", kind: "ranking", items: "responses" }
    ]
}
fn validate(task, answer) { [] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_is_checked_against_its_task_even_when_no_script_reads_it() {
    let s = Server::start_with(Options {
        rubrics: vec![("task_checked", TASK_CHECKED.into())],
        env: vec![],
    })
    .await;
    let admin = s.admin().await;
    let (eid, expert) = s.expert(&admin, "checker", &[]).await;
    let p = s
        .project(
            &admin,
            json!({"name": "checked", "rubric": "task_checked", "reviews_per_task": 1}),
        )
        .await;
    s.add_member(&admin, p, eid, "expert").await;
    let task = json!({"external_id": "t", "data": {
        "text": "four", "steps": ["a", "b"], "responses": [{"id": "x"}, {"id": "y"}]}});
    assert_eq!(
        s.upload(&admin, p, &task.to_string()).await.0,
        StatusCode::CREATED
    );
    let (status, next) = s.next(&expert, p).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    let aid = next["assignment"]["id"].as_u64().unwrap();
    let path = format!("/api/v1/assignments/{aid}/submit");
    let submit = |answer: serde_json::Value| {
        s.post(
            &expert,
            &path,
            json!({"token": next["assignment"]["token"], "answer": answer}),
        )
    };
    // Each refusal comes from the task's content: the text is 4 characters, there are two
    // steps, and the responses to rank are x and y.
    let refused = [
        (
            json!({"spans": [{"start": 0, "end": 5, "label": "wrong"}], "steps": [true, false],
                   "order": ["x", "y"]}),
            "spans",
        ),
        (json!({"steps": [true], "order": ["x", "y"]}), "steps"),
        (
            json!({"steps": [true, false], "order": ["x", "z"]}),
            "order",
        ),
    ];
    for (answer, field) in refused {
        let (status, body) = submit(answer).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        let fields: Vec<&str> = body["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no field errors: {body}"))
            .iter()
            .filter_map(|e| e["field"].as_str())
            .collect();
        assert!(fields.iter().any(|f| f.starts_with(field)), "{body}");
    }
    let (status, body) = submit(json!({"spans": [{"start": 0, "end": 4, "label": "wrong"}],
        "steps": [true, false], "order": ["y", "x"]}))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}
