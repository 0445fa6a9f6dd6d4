use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_import_nothing_and_name_every_bad_line() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let p = s.project(&admin, pairwise_project("imports", 1)).await;

    // Malformed JSON array: a position, nothing imported.
    let (status, body) = s
        .upload(&admin, p, "[{\"prompt\": \"a\"},\n {\"prompt\": }]")
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "invalid_import");
    assert_eq!(body["errors"][0]["line"], 2, "{body}");
    assert_eq!(task_count(&s, &admin, p).await, 0);

    // JSON Lines: every bad line reported, good ones not imported either.
    let upload = [
        r#"{"prompt": "fine"}"#,
        r#"{"prompt": "broken"#,
        r#"{"data": "not an object"}"#,
        r#"{"data": {"prompt": "x"}, "meta": [1, 2]}"#,
        r#"{"data": {"prompt": "x"}, "external_id": {"no": 1}}"#,
        r#"{"data": {"prompt": "x"}, "colour": "red"}"#,
        r#"["an", "array"]"#,
        r#"{"prompt": "also fine"}"#,
    ]
    .join("\n");
    let (status, body) = s.upload(&admin, p, &upload).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let lines: Vec<u64> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["line"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, vec![2, 3, 4, 5, 6, 7], "{body}");
    let messages: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(messages[1].contains("`data` must be an object"));
    assert!(messages[2].contains("`meta` must be an object"));
    assert!(messages[3].contains("external_id"));
    assert!(messages[4].contains("colour"));
    assert_eq!(task_count(&s, &admin, p).await, 0);

    // Only the first 100 problems are listed, but all are counted.
    let many = (0..150)
        .map(|_| "{\"data\": 1}")
        .collect::<Vec<_>>()
        .join("\n");
    let (status, body) = s.upload(&admin, p, &many).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["errors"].as_array().unwrap().len(), 100);
    assert!(
        body["message"].as_str().unwrap().contains("150 invalid"),
        "{body}"
    );

    let (status, body) = s.upload(&admin, p, "  \n ").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("empty_import"))
    );
    assert_eq!(task_count(&s, &admin, p).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_format_imports_and_external_ids_are_idempotent() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let p = s.project(&admin, pairwise_project("formats", 1)).await;

    let (status, r) = s.upload(&admin, p, &pairwise_tasks("dup", 5)).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(r, json!({"records": 5, "imported": 5, "duplicates": 0}));
    // Re-importing overlapping external ids creates only the new ones.
    let (_, r) = s.upload(&admin, p, &pairwise_tasks("dup", 7)).await;
    assert_eq!(r, json!({"records": 7, "imported": 2, "duplicates": 5}));
    // Label Studio's task list, and a plain JSON array of bare objects.
    let ls = json!([{"id": 1, "data": {"prompt": "ls one"}, "annotations": [], "predictions": []}, {"data": {"prompt": "ls two"}}]);
    let (_, r) = s.upload(&admin, p, &ls.to_string()).await;
    assert_eq!(r["imported"], 2);
    let bare = json!([{"prompt": "bare", "responses": ["x", "y"]}]);
    let (_, r) = s.upload(&admin, p, &bare.to_string()).await;
    assert_eq!(r["imported"], 1);
    // Duplicates inside one upload count once.
    let twice = format!(
        "{}\n{}",
        pairwise_tasks("same", 1),
        pairwise_tasks("same", 1)
    );
    let (_, r) = s.upload(&admin, p, &twice).await;
    assert_eq!(r, json!({"records": 2, "imported": 1, "duplicates": 1}));

    let stats = s.stats(&admin, p).await;
    assert_eq!(stats["tasks"], 11);
    assert_eq!(stats["open"], 11);
    let (_, listed) = s
        .get(&admin, &format!("/api/v1/projects/{p}/tasks?limit=3"))
        .await;
    assert_eq!(listed.as_array().unwrap().len(), 3);
    let last = listed[2]["task"]["id"].as_u64().unwrap();
    let (_, rest) = s
        .get(
            &admin,
            &format!("/api/v1/projects/{p}/tasks?after={last}&limit=1000"),
        )
        .await;
    assert_eq!(rest.as_array().unwrap().len(), 8);
    assert_eq!(listed[0]["task"]["external_id"], "dup-0");
    assert_eq!(rest[4]["task"]["data"]["prompt"], "ls one");
    assert_eq!(rest[5]["task"]["data"]["prompt"], "ls two");
    assert_eq!(rest[6]["task"]["data"]["prompt"], "bare");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_streams_every_submission_with_its_context() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let p = s.project(&admin, pairwise_project("export", 1)).await;
    s.upload(&admin, p, &pairwise_tasks("e", 3)).await;
    let (eid, expert) = s.expert(&admin, "exporter", &[]).await;
    s.add_member(&admin, p, eid, "expert").await;
    assert!(s.export(&admin, p).await.is_empty());
    for _ in 0..3 {
        let (status, _) = s.review_next(&expert, p, pairwise_answer()).await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let rows = s.export(&admin, p).await;
    assert_eq!(rows.len(), 3);
    let first = &rows[0];
    assert_eq!(first["external_id"], "e-0");
    assert_eq!(first["expert"], "exporter");
    assert_eq!(first["answer"], pairwise_answer());
    assert_eq!(first["scores"]["preference"], 2);
    assert_eq!(first["rubric"], "pairwise_preference");
    assert_eq!(first["rubric_version"].as_str().unwrap().len(), 64);
    assert!(first["data"]["prompt"]
        .as_str()
        .unwrap()
        .starts_with("Question 0"));
    assert!(first["submitted_at"].as_i64().unwrap() >= first["served_at"].as_i64().unwrap());

    // A lead may export; an unknown format is refused by name.
    let (lead_id, lead) = s.expert(&admin, "lead", &[]).await;
    s.add_member(&admin, p, lead_id, "lead").await;
    assert_eq!(s.export(&lead, p).await.len(), 3);
    let (status, body) = s
        .get(&admin, &format!("/api/v1/projects/{p}/export?format=xml"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["errors"][0]["field"], "format");

    // The audit trail saw it all.
    let (_, audit) = s.get(&admin, "/api/v1/audit?limit=1000").await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for action in [
        "auth.login",
        "project.create",
        "tasks.import",
        "task.lease",
        "task.submit",
        "export",
    ] {
        assert!(
            actions.contains(&action),
            "{action} missing from {actions:?}"
        );
    }
}

async fn task_count(s: &Server, admin: &str, p: u64) -> u64 {
    s.get(admin, &format!("/api/v1/projects/{p}/stats")).await.1["tasks"]
        .as_u64()
        .unwrap()
}

/// A large upload (its tasks go to a segment file, not the store's records) behaves like any
/// other through kills and restarts: duplicates inside it and across uploads are skipped, its
/// tasks are handed out, reviewed and exported, reviewed ones stay reviewed, and a bad record
/// deep inside another upload leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_import_survives_kills_and_is_reviewed_like_any_other() {
    let mut s = Server::start().await;
    let admin = s.admin().await;
    let p = s.project(&admin, pairwise_project("large", 1)).await;
    let upload = format!(
        "{}\n{}",
        pairwise_tasks("big", 600),
        pairwise_tasks("big", 10)
    );
    let (status, r) = s.upload(&admin, p, &upload).await;
    assert_eq!(status, StatusCode::CREATED, "{r}");
    assert_eq!(
        r,
        json!({"records": 610, "imported": 600, "duplicates": 10})
    );
    let segments = s.data_dir().join("db").join("segments");
    let files = || std::fs::read_dir(&segments).map(|d| d.count()).unwrap_or(0);
    assert_eq!(files(), 1, "the upload went to one segment");

    s.kill();
    s.start_again().await;
    s.ready().await;
    let admin = s.admin().await;
    let (_, expert) = {
        let (id, token) = s.expert(&admin, "reviewer", &[]).await;
        s.add_member(&admin, p, id, "expert").await;
        (id, token)
    };
    for _ in 0..5 {
        let (status, body) = s.review_next(&expert, p, pairwise_answer()).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    s.kill();
    s.start_again().await;
    s.ready().await;
    let admin = s.admin().await;
    let stats = s.stats(&admin, p).await;
    assert_eq!(
        (
            stats["tasks"].as_u64(),
            stats["complete"].as_u64(),
            stats["open"].as_u64()
        ),
        (Some(600), Some(5), Some(595)),
        "{stats}"
    );
    let exported = s.export(&admin, p).await;
    assert_eq!(exported.len(), 5);
    assert!(exported
        .iter()
        .all(|e| e.to_string().contains("how do I boil an egg")));
    // The reviewed tasks are not handed out again; the next one is an unreviewed one.
    let (_, next) = s
        .post(&expert, &format!("/api/v1/projects/{p}/next"), json!({}))
        .await;
    let served = next["task"]["external_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(served.starts_with("big-"), "{next}");
    assert!(!exported
        .iter()
        .any(|e| e.to_string().contains(&format!("\"{served}\""))));
    let (_, r) = s.upload(&admin, p, &pairwise_tasks("big", 300)).await;
    assert_eq!(r, json!({"records": 300, "imported": 0, "duplicates": 300}));

    // A bad record after many good ones: refused by line, nothing shows, no file stays.
    let q = s.project(&admin, pairwise_project("refused", 1)).await;
    let mut lines: Vec<String> = pairwise_tasks("r", 2500)
        .lines()
        .map(str::to_owned)
        .collect();
    lines[2200] = "{\"data\": 5}".into();
    let (status, r) = s.upload(&admin, q, &lines.join("\n")).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{r}");
    assert_eq!(r["errors"][0]["line"], 2201, "{r}");
    assert_eq!(s.stats(&admin, q).await["tasks"], 0);
    assert_eq!(files(), 1, "the refused upload's segment is gone");
}

/// Import builds for `route` only the fields it reads and routes look-alike records once; a
/// router that reads `data`, directly or through a copy of the whole task, still decides by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routers_at_import_see_the_fields_they_read() {
    let s = Server::start().await;
    let plugins = s.dir.path().join("plugins");
    std::fs::write(
        plugins.join("by_kind.rhai"),
        "fn route(task) { if task.data.kind == \"hard\" { #{ priority: 5 } } else { #{} } }",
    )
    .unwrap();
    std::fs::write(
        plugins.join("by_kind_whole.rhai"),
        "fn route(t) { let n = t; if n.data.kind == \"hard\" && n.is_gold == false { #{ priority: 5 } } else { #{} } }",
    )
    .unwrap();
    let mut s = s;
    s.restart().await;
    let admin = s.admin().await;
    let (expert_id, expert) = s.expert(&admin, "kinds", &[]).await;
    // 300 easy records that look alike to the router, one hard one last.
    let mut lines: Vec<String> = (0..300)
        .map(|i| json!({"external_id": format!("e{i}"), "data": {"kind": "easy", "prompt": format!("p{i}"), "responses": ["a", "b"]}}).to_string())
        .collect();
    lines.push(json!({"external_id": "h", "data": {"kind": "hard", "prompt": "q", "responses": ["a", "b"]}}).to_string());
    for router in ["by_kind", "by_kind_whole"] {
        let p = s
            .project(&admin, json!({"name": router, "rubric": "pairwise_preference", "router": router, "reviews_per_task": 1}))
            .await;
        s.add_member(&admin, p, expert_id, "expert").await;
        let (status, r) = s.upload(&admin, p, &lines.join("\n")).await;
        assert_eq!(status, StatusCode::CREATED, "{r}");
        let (_, n) = s.next(&expert, p).await;
        assert_eq!(n["task"]["external_id"], "h", "{router}: {n}");
    }
}
