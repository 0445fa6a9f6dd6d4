//! Quality review: the QA queue, verdicts, fixes, adjudication and what exports make of them.

use std::collections::{HashMap, HashSet};

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

/// A project on the pairwise rubric with QA settings, and its members by role.
async fn qa_project(s: &Server, admin: &str, body: Value, tasks: usize) -> u64 {
    let p = s.project(admin, body).await;
    let (status, report) = s.upload(admin, p, &pairwise_tasks("q", tasks)).await;
    assert_eq!(status, StatusCode::CREATED, "{report}");
    p
}

async fn member(s: &Server, admin: &str, p: u64, name: &str, role: &str) -> (u64, String) {
    let (uid, token) = s.expert(admin, name, &[]).await;
    s.add_member(admin, p, uid, role).await;
    (uid, token)
}

/// Reviews one task through the API; returns the submission id.
async fn review(s: &Server, token: &str, p: u64, answer: Value) -> Option<u64> {
    let (status, next) = s.next(token, p).await;
    if status == StatusCode::NO_CONTENT {
        return None;
    }
    assert_eq!(status, StatusCode::OK, "{next}");
    let aid = next["assignment"]["id"].as_u64().unwrap();
    let (status, sub) = s
        .post(
            token,
            &format!("/api/v1/assignments/{aid}/submit"),
            json!({"token": next["assignment"]["token"], "answer": answer}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{sub}");
    sub["id"].as_u64()
}

async fn qa_next(s: &Server, token: &str, p: u64) -> Option<Value> {
    let (status, item) = s
        .post(token, &format!("/api/v1/projects/{p}/qa/next"), json!({}))
        .await;
    match status {
        StatusCode::NO_CONTENT => None,
        StatusCode::OK => Some(item),
        other => panic!("qa/next: {other} {item}"),
    }
}

async fn verdict(s: &Server, token: &str, item: &Value, body: Value) -> (StatusCode, Value) {
    let aid = item["assignment"]["id"].as_u64().unwrap();
    let mut body = body;
    body["token"] = item["assignment"]["token"].clone();
    s.post(token, &format!("/api/v1/qa/{aid}/verdict"), body)
        .await
}

fn accept_all(item: &Value) -> Value {
    let verdicts: Vec<Value> = item["submissions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sub| json!({"submission": sub["id"], "verdict": "accept"}))
        .collect();
    json!({ "verdicts": verdicts })
}

/// Four reviewers drain 200 QA items at once: each item gets exactly one verdict, and no one
/// is ever handed an item holding their own submission.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_reviewers_never_share_an_item_or_check_their_own_work() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let body = json!({"name": "qa-load", "rubric": "pairwise_preference",
        "reviews_per_task": 1, "qa_rate": 1.0, "qa_blind": false});
    let p = qa_project(&s, &admin, body, 200).await;
    let mut reviewers = Vec::new();
    for i in 0..4 {
        reviewers.push(member(&s, &admin, p, &format!("rev{i}"), "reviewer").await);
    }
    // Two of the reviewers answer every task first (reviewers review like experts).
    let mut authored: HashMap<u64, HashSet<u64>> = HashMap::new();
    let mut turn = 0;
    loop {
        let (uid, token) = &reviewers[turn % 2];
        match review(&s, token, p, pairwise_answer()).await {
            Some(sub) => authored.entry(*uid).or_default().insert(sub),
            None => break,
        };
        turn += 1;
    }
    assert_eq!(authored.values().map(HashSet::len).sum::<usize>(), 200);
    assert_eq!(s.stats(&admin, p).await["in_qa"], 200);

    let workers = reviewers.iter().cloned().map(|(uid, token)| {
        let (client, url) = (s.client.clone(), s.url.clone());
        let own = authored.get(&uid).cloned().unwrap_or_default();
        tokio::spawn(async move {
            let mut judged = Vec::new();
            loop {
                let res = client
                    .post(format!("{url}/api/v1/projects/{p}/qa/next"))
                    .bearer_auth(&token)
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap();
                if res.status() == StatusCode::NO_CONTENT {
                    break;
                }
                assert_eq!(res.status(), StatusCode::OK);
                let item: Value = res.json().await.unwrap();
                for sub in item["submissions"].as_array().unwrap() {
                    let id = sub["id"].as_u64().unwrap();
                    assert!(
                        !own.contains(&id),
                        "reviewer {uid} got their own submission"
                    );
                }
                let aid = item["assignment"]["id"].as_u64().unwrap();
                let mut body = accept_all(&item);
                body["token"] = item["assignment"]["token"].clone();
                let res = client
                    .post(format!("{url}/api/v1/qa/{aid}/verdict"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), StatusCode::CREATED);
                judged.push(item["task"]["id"].as_u64().unwrap());
            }
            judged
        })
    });
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let distinct: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(all.len(), 200, "every item judged once");
    assert_eq!(distinct.len(), 200, "no item judged twice");
    let stats = s.stats(&admin, p).await;
    assert_eq!(
        (stats["in_qa"].as_u64(), stats["complete"].as_u64()),
        (Some(0), Some(200))
    );
    assert_eq!(stats["accepted"], 200, "{stats}");
}

/// A QA lease that runs out frees its item for another reviewer; the first reviewer's late
/// verdict is refused, and a retry of an accepted verdict returns the first result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_qa_lease_comes_back() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let body = json!({"name": "qa-lease", "rubric": "pairwise_preference",
        "reviews_per_task": 1, "qa_rate": 1.0, "lease_seconds": 1});
    let p = qa_project(&s, &admin, body, 1).await;
    let (_, expert) = member(&s, &admin, p, "ed", "expert").await;
    let (_, first) = member(&s, &admin, p, "ria", "reviewer").await;
    let (_, second) = member(&s, &admin, p, "rob", "reviewer").await;
    review(&s, &expert, p, pairwise_answer()).await.unwrap();
    let item = qa_next(&s, &first, p).await.unwrap();
    assert!(qa_next(&s, &second, p).await.is_none(), "held by the first");
    // An expert has no QA queue.
    let (status, _) = s
        .post(&expert, &format!("/api/v1/projects/{p}/qa/next"), json!({}))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    let taken = qa_next(&s, &second, p).await.expect("the item came back");
    assert_eq!(taken["task"]["id"], item["task"]["id"]);
    let (status, body) = verdict(&s, &first, &item, accept_all(&item)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, done) = verdict(&s, &second, &taken, accept_all(&taken)).await;
    assert_eq!(status, StatusCode::CREATED, "{done}");
    let (status, again) = verdict(&s, &second, &taken, accept_all(&taken)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, done, "a retry returns the first result");
}

/// A rejection needs a reason; it reopens the task for exactly one more review by someone
/// else, the author sees it, and exports leave the rejected answer out unless asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_gets_one_more_review_from_someone_else() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let body = json!({"name": "qa-reject", "rubric": "pairwise_preference",
        "reviews_per_task": 1, "qa_rate": 1.0});
    let p = qa_project(&s, &admin, body, 1).await;
    let (_, ann) = member(&s, &admin, p, "ann", "expert").await;
    let (_, bob) = member(&s, &admin, p, "bob", "expert").await;
    let (_, rev) = member(&s, &admin, p, "rev", "reviewer").await;
    let rejected = review(&s, &ann, p, pairwise_answer()).await.unwrap();

    let item = qa_next(&s, &rev, p).await.unwrap();
    assert_eq!(item["kind"], "qa");
    let no_reason = json!({"verdicts": [{"submission": rejected, "verdict": "reject"}]});
    let (status, body) = verdict(&s, &rev, &item, no_reason).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["errors"][0]["field"], "verdicts[0].reason");
    let reject = json!({"verdicts": [{"submission": rejected, "verdict": "reject",
        "reason": "B is the safer answer here."}]});
    let (status, body) = verdict(&s, &rev, &item, reject).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "open");

    // Not back to its author; one more review from another expert, then no more.
    assert_eq!(s.next(&ann, p).await.0, StatusCode::NO_CONTENT);
    let kept = review(&s, &bob, p, pairwise_answer()).await.unwrap();
    assert_eq!(s.next(&bob, p).await.0, StatusCode::NO_CONTENT);
    let item = qa_next(&s, &rev, p).await.unwrap();
    assert_eq!(item["submissions"].as_array().unwrap().len(), 1);
    assert_eq!(item["submissions"][0]["id"], kept);
    assert_eq!(
        verdict(&s, &rev, &item, accept_all(&item)).await.0,
        StatusCode::CREATED
    );
    let stats = s.stats(&admin, p).await;
    assert_eq!(
        (stats["complete"].as_u64(), stats["rejected"].as_u64()),
        (Some(1), Some(1))
    );

    // The author sees the verdict and the reason.
    let (_, mine) = s.get(&ann, "/api/v1/me/submissions").await;
    assert_eq!(mine[0]["verdict"], "reject", "{mine}");
    assert_eq!(mine[0]["reason"], "B is the safer answer here.");

    let ids = |records: Vec<Value>| -> Vec<u64> {
        records
            .iter()
            .map(|r| r["submission_id"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(
        ids(s.export(&admin, p).await),
        vec![kept],
        "rejected left out"
    );
    let (status, text) = export_text(&s, &admin, p, "status=rejected").await;
    assert_eq!(status, StatusCode::OK);
    let record: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(record["submission_id"], rejected);
    assert_eq!(record["qa"]["verdict"], "reject");
    assert_eq!(record["qa"]["reason"], "B is the safer answer here.");
}

async fn export_text(s: &Server, token: &str, p: u64, query: &str) -> (StatusCode, String) {
    let res = s
        .client
        .get(format!("{}/api/v1/projects/{p}/export?{query}", s.url))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (res.status(), res.text().await.unwrap())
}

/// A fix is checked by the rubric (422 naming the field when it breaks it), stored beside the
/// original, and both are exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fix_is_validated_and_kept_beside_the_original() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let body = json!({"name": "qa-fix", "rubric": "pairwise_preference",
        "reviews_per_task": 1, "qa_rate": 1.0});
    let p = qa_project(&s, &admin, body, 1).await;
    let (_, ann) = member(&s, &admin, p, "ann", "expert").await;
    let (_, lead) = member(&s, &admin, p, "lee", "lead").await;
    let original = review(&s, &ann, p, pairwise_answer()).await.unwrap();
    let item = qa_next(&s, &lead, p).await.expect("leads review too");

    let broken = json!({"preference": {"pick": "sideways", "strength": 2}, "justification": "x"});
    let bad = json!({"verdicts": [{"submission": original, "verdict": "fix", "answer": broken}]});
    let (status, body) = verdict(&s, &lead, &item, bad).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let field = body["errors"][0]["field"].as_str().unwrap().to_owned();
    assert!(field.starts_with("verdicts[0].answer."), "{body}");

    let fixed = json!({"preference": {"pick": "right", "strength": 1},
        "justification": "On reflection B is fine: microwaving works if pierced first."});
    let good = json!({"verdicts": [{"submission": original, "verdict": "fix", "answer": fixed}]});
    let (status, body) = verdict(&s, &lead, &item, good).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let records = s.export(&admin, p).await;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0]["answer"],
        pairwise_answer(),
        "the original is kept"
    );
    assert_eq!(records[0]["qa"]["verdict"], "fix");
    assert_eq!(records[0]["qa"]["fixed_answer"], fixed);
    assert_eq!(s.stats(&admin, p).await["fixed"], 1);
}

/// With `qa_sampling`, two answers that disagree go to adjudication; the reviewer's final
/// answer completes the task and is exported with it. Blind projects never name the authors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disagreement_is_adjudicated_with_qa_sampling_blind() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let body = json!({"name": "qa-adj", "rubric": "pairwise_preference",
        "router": "qa_sampling", "reviews_per_task": 2});
    let p = qa_project(&s, &admin, body, 1).await;
    let (_, ann) = member(&s, &admin, p, "annabel", "expert").await;
    let (_, bob) = member(&s, &admin, p, "bobbie", "expert").await;
    let (_, rev) = member(&s, &admin, p, "reviewer1", "reviewer").await;
    review(&s, &ann, p, pairwise_answer()).await.unwrap();
    let other = json!({"preference": {"pick": "right", "strength": 1},
        "justification": "B is quicker and works if the shell is pierced."});
    review(&s, &bob, p, other).await.unwrap();
    assert_eq!(s.stats(&admin, p).await["in_qa"], 1);

    let item = qa_next(&s, &rev, p).await.unwrap();
    assert_eq!(item["kind"], "adjudicate");
    assert_eq!(item["submissions"].as_array().unwrap().len(), 2);
    let text = item.to_string();
    assert!(
        !text.contains("annabel") && !text.contains("bobbie"),
        "blind: {text}"
    );
    assert!(item["submissions"][0].get("expert").is_none());

    let (status, body) = verdict(&s, &rev, &item, json!({"final": {"nonsense": 1}})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(body["errors"][0]["field"]
        .as_str()
        .unwrap()
        .starts_with("final"));
    let (status, body) = verdict(&s, &rev, &item, json!({"final": pairwise_answer()})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["state"], "complete");
    let stats = s.stats(&admin, p).await;
    assert_eq!(
        (stats["complete"].as_u64(), stats["adjudicated"].as_u64()),
        (Some(1), Some(1))
    );
    let records = s.export(&admin, p).await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0]["final"]["answer"], pairwise_answer());
    // The audit names who gave the final answer.
    let (_, events) = s.get(&admin, "/api/v1/audit?limit=50").await;
    assert!(events
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["action"] == "qa.final"));
}

/// Items waiting in QA survive a kill and a clean stop (its snapshot) alike, with their kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_qa_queue_survives_restarts() {
    let mut s = Server::start().await;
    let admin = s.admin().await;
    let body = json!({"name": "qa-restart", "rubric": "pairwise_preference",
        "router": "qa_sampling", "reviews_per_task": 2});
    let p = qa_project(&s, &admin, body, 1).await;
    let (_, ann) = member(&s, &admin, p, "ann", "expert").await;
    let (_, bob) = member(&s, &admin, p, "bob", "expert").await;
    let (_, rev) = member(&s, &admin, p, "rev", "reviewer").await;
    review(&s, &ann, p, pairwise_answer()).await.unwrap();
    let other = json!({"preference": {"pick": "right", "strength": 1},
        "justification": "B is quicker and works if pierced."});
    review(&s, &bob, p, other).await.unwrap();
    let item = qa_next(&s, &rev, p).await.unwrap();

    // After a kill the item is read back from the store's index...
    s.kill();
    s.start_again().await;
    let again = qa_next(&s, &rev, p).await.expect("still waiting in QA");
    assert_eq!(again["kind"], "adjudicate");
    assert_eq!(again["task"]["id"], item["task"]["id"]);
    let aid = again["assignment"]["id"].as_u64().unwrap();
    let token = json!({"token": again["assignment"]["token"]});
    let (status, _) = s
        .post(&rev, &format!("/api/v1/qa/{aid}/release"), token)
        .await;
    assert_eq!(status, StatusCode::OK);
    // ...and after a clean stop from its snapshot. QA leases live in memory only: the first
    // lease's signed token still gets the verdict in, since no one else holds the item.
    s.terminate();
    s.start_again().await;
    let (status, body) = verdict(&s, &rev, &item, json!({"final": pairwise_answer()})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert!(qa_next(&s, &rev, p).await.is_none());
}
