//! A task whose form cannot be built is set aside, not served in a loop.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::*;

const FRAGILE: &str = r#"fn criteria(task) {
    if task.data.poison == true { throw "cannot build a form for this task"; }
    [#{ id: "ok", kind: "boolean", label: "OK?" }]
}
"#;

const MENDED: &str = r#"fn criteria(task) {
    // Mended: poison is fine now.
    [#{ id: "ok", kind: "boolean", label: "OK?" }]
}
"#;

fn tasks() -> String {
    let mut lines = vec![json!({"external_id": "poison", "data": {"poison": true}}).to_string()];
    for i in 0..20 {
        lines.push(json!({"external_id": format!("good-{i}"), "data": {"text": i}}).to_string());
    }
    lines.join("\n")
}

async fn answer(s: &Server, expert: &str, next: &Value) -> StatusCode {
    let aid = next["assignment"]["id"].as_u64().unwrap();
    s.post(
        expert,
        &format!("/api/v1/assignments/{aid}/submit"),
        json!({"token": next["assignment"]["token"], "answer": {"ok": true}}),
    )
    .await
    .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_breaks_its_rubric_is_quarantined_and_retried() {
    let s = Server::start_with(Options {
        rubrics: vec![("fragile", FRAGILE.into())],
        env: vec![],
    })
    .await;
    let admin = s.admin().await;
    let (eid, expert) = s.expert(&admin, "worker", &[]).await;
    let p = s
        .project(
            &admin,
            json!({"name": "fragile", "rubric": "fragile", "reviews_per_task": 1}),
        )
        .await;
    s.add_member(&admin, p, eid, "expert").await;
    assert_eq!(s.upload(&admin, p, &tasks()).await.0, StatusCode::CREATED);

    // The poisoned task comes first in the queue; the expert gets the good ones all the same.
    for _ in 0..20 {
        let (status, next) = s.next(&expert, p).await;
        assert_eq!(status, StatusCode::OK, "{next}");
        assert_ne!(next["task"]["external_id"], "poison");
        assert_eq!(answer(&s, &expert, &next).await, StatusCode::CREATED);
    }
    assert_eq!(s.next(&expert, p).await.0, StatusCode::NO_CONTENT);
    let stats = s.stats(&admin, p).await;
    assert_eq!(
        (stats["broken"].as_u64(), stats["complete"].as_u64()),
        (Some(1), Some(20)),
        "{stats}"
    );

    // Leads and admins see why; experts may not look.
    let (status, broken) = s.get(&admin, &format!("/api/v1/projects/{p}/broken")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(broken.as_array().unwrap().len(), 1, "{broken}");
    assert!(
        broken[0]["error"]
            .as_str()
            .unwrap()
            .contains("cannot build a form"),
        "{broken}"
    );
    assert_eq!(broken[0]["rubric"], "fragile");
    let poison = broken[0]["task_id"].as_u64().unwrap();
    assert_eq!(
        s.get(&expert, &format!("/api/v1/projects/{p}/broken"))
            .await
            .0,
        StatusCode::FORBIDDEN
    );

    // A retry by hand puts it back; it breaks again under the same rubric, and says so.
    let (status, body) = s
        .post(
            &admin,
            &format!("/api/v1/projects/{p}/broken/retry"),
            json!({"tasks": [poison]}),
        )
        .await;
    assert_eq!(
        (status, body["reopened"].as_u64()),
        (StatusCode::OK, Some(1)),
        "{body}"
    );
    let (status, body) = s.next(&expert, p).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["code"], "script_error");
    assert_eq!(s.stats(&admin, p).await["broken"], 1);

    // A new rubric version retries it on its own, and it is served.
    std::fs::write(s.rubric_dir().join("fragile.rhai"), MENDED).unwrap();
    let mut reopened = false;
    for _ in 0..200 {
        if s.stats(&admin, p).await["broken"] == 0 {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reopened,
        "the new rubric version did not retry the quarantined task"
    );
    let (status, next) = s.next(&expert, p).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_eq!(next["task"]["external_id"], "poison");
    assert_eq!(answer(&s, &expert, &next).await, StatusCode::CREATED);
}

/// The router of `reroute_is_all_or_nothing`, first routing everything, then failing on one task.
const STEADY: &str = "fn route(task) { #{ reviews: 1 } }\n";
const PICKY: &str = r#"fn route(task) {
    if task.external_id == "t-600" { throw "no route for this one"; }
    #{ reviews: 3 }
}
"#;

/// Polls the plugin list until `name` serves the version of `source`.
async fn wait_for_plugin(s: &Server, admin: &str, name: &str, source: &str) {
    let version = assay::scripting::registry::content_hash(source);
    for _ in 0..200 {
        let (_, plugins) = s.get(admin, "/api/v1/plugins").await;
        let live = plugins
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == name && p["version"] == version.as_str());
        if live {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("plugin {name} never went live");
}

async fn reviews_asked(s: &Server, admin: &str, p: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let (_, page) = s
            .get(
                admin,
                &format!("/api/v1/projects/{p}/tasks?limit=1000{after}"),
            )
            .await;
        let page = page.as_array().unwrap().clone();
        if page.is_empty() {
            return out;
        }
        out.extend(
            page.iter()
                .map(|t| t["status"]["reviews"].as_u64().unwrap()),
        );
        after = format!("&after={}", page.last().unwrap()["task"]["id"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reroute_is_all_or_nothing_and_names_the_failing_task() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let router = s.dir.path().join("plugins").join("steady.rhai");
    std::fs::write(&router, STEADY).unwrap();
    wait_for_plugin(&s, &admin, "steady", STEADY).await;
    let p = s
        .project(
            &admin,
            json!({"name": "reroute", "rubric": "pairwise_preference", "router": "steady"}),
        )
        .await;
    let upload: Vec<String> = (0..1200)
        .map(|i| {
            json!({"external_id": format!("t-{i}"), "data": {"prompt": i, "responses": ["a", "b"]}})
                .to_string()
        })
        .collect();
    assert_eq!(
        s.upload(&admin, p, &upload.join("\n")).await.0,
        StatusCode::CREATED
    );

    std::fs::write(&router, PICKY).unwrap();
    wait_for_plugin(&s, &admin, "steady", PICKY).await;
    let (status, body) = s
        .post(&admin, &format!("/api/v1/projects/{p}/reroute"), json!({}))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["code"], "script_error");
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("\"t-600\"") && message.contains("no route"),
        "{body}"
    );
    assert_eq!(body["script"]["line"], 2, "{body}");
    // Nothing changed: every task still asks for one review.
    let reviews = reviews_asked(&s, &admin, p).await;
    assert_eq!(reviews.len(), 1200);
    assert!(
        reviews.iter().all(|&r| r == 1),
        "a failed reroute changed some tasks"
    );
}

/// A router whose `pick` throws whenever a poisoned task is among the candidates.
const CHOOSY: &str = r#"fn route(task) { #{} }
fn pick(expert, candidates) {
    for c in candidates { if c.meta.poison == true { throw "cannot rank a poisoned task"; } }
    0
}
"#;
/// The same router, mended.
const CHOOSY_MENDED: &str = r#"fn route(task) { #{} }
fn pick(expert, candidates) { 0 }
"#;
/// A router whose `pick` fails for every task: a plain bug, not a bad task.
const CLUMSY: &str = r#"fn route(task) { #{} }
fn pick(expert, candidates) { throw "always broken"; }
"#;

fn picked_tasks() -> String {
    let mut lines = vec![
        json!({"external_id": "poison", "data": {"text": "p"}, "meta": {"poison": true}})
            .to_string(),
    ];
    for i in 0..20 {
        lines.push(json!({"external_id": format!("good-{i}"), "data": {"text": i}}).to_string());
    }
    lines.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_the_router_cannot_pick_is_quarantined_and_a_broken_router_blames_none() {
    let s = Server::start_with(Options {
        rubrics: vec![("fragile", MENDED.into())],
        env: vec![],
    })
    .await;
    let admin = s.admin().await;
    let plugins = s.dir.path().join("plugins");
    std::fs::write(plugins.join("choosy.rhai"), CHOOSY).unwrap();
    std::fs::write(plugins.join("clumsy.rhai"), CLUMSY).unwrap();
    wait_for_plugin(&s, &admin, "choosy", CHOOSY).await;
    wait_for_plugin(&s, &admin, "clumsy", CLUMSY).await;
    let (eid, expert) = s.expert(&admin, "worker", &[]).await;
    let make = |name: &str, router: &str| json!({"name": name, "rubric": "fragile", "router": router, "reviews_per_task": 1});
    let p = s.project(&admin, make("choosy", "choosy")).await;
    let q = s.project(&admin, make("clumsy", "clumsy")).await;
    for project in [p, q] {
        s.add_member(&admin, project, eid, "expert").await;
        assert_eq!(
            s.upload(&admin, project, &picked_tasks()).await.0,
            StatusCode::CREATED
        );
    }

    // The poisoned task makes every pick that sees it throw; it is set aside and the expert
    // gets all the good tasks.
    for _ in 0..20 {
        let (status, next) = s.next(&expert, p).await;
        assert_eq!(status, StatusCode::OK, "{next}");
        assert_ne!(next["task"]["external_id"], "poison");
        assert_eq!(answer(&s, &expert, &next).await, StatusCode::CREATED);
    }
    assert_eq!(s.next(&expert, p).await.0, StatusCode::NO_CONTENT);
    let (_, broken) = s.get(&admin, &format!("/api/v1/projects/{p}/broken")).await;
    assert_eq!(broken.as_array().unwrap().len(), 1, "{broken}");
    assert_eq!(broken[0]["stage"], "pick");
    assert_eq!(broken[0]["router"][0], "choosy");
    assert!(broken[0]["error"]
        .as_str()
        .unwrap()
        .contains("cannot rank a poisoned task"));

    // A router that fails for every task blames none: the project is served in queue order.
    for _ in 0..21 {
        let (status, next) = s.next(&expert, q).await;
        assert_eq!(status, StatusCode::OK, "{next}");
        assert_eq!(answer(&s, &expert, &next).await, StatusCode::CREATED);
    }
    let stats = s.stats(&admin, q).await;
    assert_eq!(
        (stats["broken"].as_u64(), stats["complete"].as_u64()),
        (Some(0), Some(21)),
        "{stats}"
    );

    // A new version of the router retries the task it broke, on its own.
    std::fs::write(plugins.join("choosy.rhai"), CHOOSY_MENDED).unwrap();
    let mut reopened = false;
    for _ in 0..200 {
        if s.stats(&admin, p).await["broken"] == 0 {
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened, "the new router version did not retry the task");
    let (status, next) = s.next(&expert, p).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    assert_eq!(next["task"]["external_id"], "poison");
}
