//! One project's slow scripts must not hold up other projects or logins.

use std::time::Instant;

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rubric_at_its_time_limit_slows_only_its_own_project() {
    let slow = "fn criteria(task) {\n    let n = 0;\n    loop { n += 1; }\n}\n";
    let s = Server::start_with(Options {
        rubrics: vec![("slow", slow.into())],
        env: vec![
            ("ASSAY_SCRIPTING__TIMEOUT_MS", "1500".into()),
            ("ASSAY_SCRIPTING__MAX_OPERATIONS", "100000000000".into()),
        ],
    })
    .await;
    let admin = s.admin().await;
    let stalled = s
        .project(
            &admin,
            json!({"name": "stalled", "rubric": "slow", "reviews_per_task": 1}),
        )
        .await;
    s.upload(&admin, stalled, &pairwise_tasks("s", 16)).await;
    let healthy = s.project(&admin, pairwise_project("healthy", 1)).await;
    s.upload(&admin, healthy, &pairwise_tasks("h", 4)).await;
    let (hid, helper) = s.expert(&admin, "helper", &[]).await;
    s.add_member(&admin, healthy, hid, "expert").await;
    let mut stuck = Vec::new();
    for i in 0..8 {
        let (id, token) = s.expert(&admin, &format!("stuck{i}"), &[]).await;
        s.add_member(&admin, stalled, id, "expert").await;
        stuck.push(token);
    }

    // Eight experts on the slow project at once: more than the script pool has threads.
    let started = Instant::now();
    let calls: Vec<_> = stuck
        .into_iter()
        .map(|token| {
            let (client, url) = (s.client.clone(), s.url.clone());
            tokio::spawn(async move {
                let res = client
                    .post(format!("{url}/api/v1/projects/{stalled}/next"))
                    .bearer_auth(token)
                    .json(&json!({}))
                    .send()
                    .await
                    .unwrap();
                (res.status(), Instant::now())
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    // Meanwhile another project hands out and takes back a task, and someone logs in.
    let (status, next) = s.next(&helper, healthy).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    let aid = next["assignment"]["id"].as_u64().unwrap();
    let (status, body) = s
        .post(
            &helper,
            &format!("/api/v1/assignments/{aid}/release"),
            json!({"token": next["assignment"]["token"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let served = Instant::now();
    s.login("helper", EXPERT_PASSWORD).await;
    let logged_in = Instant::now();

    let mut first_slow = None::<Instant>;
    for call in calls {
        let (status, done) = call.await.unwrap();
        assert_ne!(status, StatusCode::OK);
        first_slow = Some(first_slow.map_or(done, |f| f.min(done)));
    }
    let first_slow = first_slow.unwrap();
    assert!(
        served < first_slow && logged_in < first_slow,
        "the healthy project ({:?}) and the login ({:?}) waited for the slow project's scripts \
         (first one back after {:?})",
        served - started,
        logged_in - started,
        first_slow - started
    );
}
