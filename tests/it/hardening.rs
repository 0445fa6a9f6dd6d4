//! Findings from probing the server from outside (issue "Security and operations"), each with a
//! test that failed before its fix.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::*;

/// An anonymous `/readyz` is a read: it never makes the store flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_never_flushes() {
    let s = Server::start().await;
    s.ready().await;
    let before = s.metric("assay_group_flushes_total").await;
    for _ in 0..20 {
        let r = s
            .client
            .get(format!("{}/readyz", s.url))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert_eq!(s.metric("assay_group_flushes_total").await, before);
}

/// A JSON body over `server.max_json_kb` is refused with 413, not 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_over_limit_json_body_gets_413() {
    let s = Server::start_with(Options {
        env: vec![("ASSAY_SERVER__MAX_JSON_KB", "16".into())],
        ..Default::default()
    })
    .await;
    let big = json!({"username": "x".repeat(20_000), "password": "p"});
    let (status, body) = s
        .request(reqwest::Method::POST, None, "/api/v1/auth/login", Some(big))
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["code"], "payload_too_large");
    assert!(body["message"].as_str().unwrap().contains("16 KiB"));
}

/// The last active admin can be neither demoted nor deactivated, by itself or anyone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_admin_stays_an_admin() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let (_, me) = s.get(&admin, "/api/v1/auth/me").await;
    let me = me["id"].as_u64().unwrap();
    let path = format!("/api/v1/users/{me}");
    let (status, body) = s.patch(&admin, &path, json!({"role": "member"})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "last_admin");

    // With a second admin, the first may step down; then the second is the last one.
    let (status, second) = s
        .post(
            &admin,
            "/api/v1/users",
            json!({"username": "second", "password": "second-password-1", "role": "admin"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{second}");
    let second_id = second["id"].as_u64().unwrap();
    let (status, _) = s.patch(&admin, &path, json!({"role": "member"})).await;
    assert_eq!(status, StatusCode::OK);
    let token = s.login("second", "second-password-1").await;
    let (status, body) = s
        .patch(
            &token,
            &format!("/api/v1/users/{second_id}"),
            json!({"role": "member"}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "last_admin");
}

/// A login with a huge username stores and keeps only a capped copy of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_caps_what_it_keeps_of_a_huge_username() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let huge = "a".repeat(500_000);
    let (status, _) = s
        .request(
            reqwest::Method::POST,
            None,
            "/api/v1/auth/login",
            Some(json!({"username": huge, "password": "whatever-password"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, events) = s.get(&admin, "/api/v1/audit?limit=5").await;
    assert_eq!(status, StatusCode::OK);
    let text = events.to_string();
    assert!(
        text.len() < 10_000,
        "the audit keeps {} bytes of it",
        text.len()
    );
    assert!(text.contains("over_length"));
}

/// Everything the server writes in its data folder is for its own user only (was 0644).
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_files_are_private_to_the_server_user() {
    use std::os::unix::fs::PermissionsExt;
    let s = Server::start().await;
    let admin = s.admin().await;
    let p = s.project(&admin, pairwise_project("modes", 1)).await;
    s.upload(&admin, p, &pairwise_tasks("m", 3)).await;
    let mut seen = 0;
    let mut stack = vec![s.data_dir()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(
                mode & 0o077,
                0,
                "{} has mode {:o}",
                path.display(),
                mode & 0o777
            );
            seen += 1;
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    assert!(
        seen >= 3,
        "the data folder holds the database and the secret"
    );
}

/// A client with a cookie jar, signed in through the API (which sets the session cookie).
async fn cookie_session(s: &Server, username: &str, password: &str) -> reqwest::Client {
    let c = reqwest::Client::builder()
        .cookie_store(true)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = c
        .post(format!("{}/api/v1/auth/login", s.url))
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    c
}

/// Finding 3: a GET of the review page (which an `<img>` in task content could make) only
/// shows; it takes no lease. Before, it leased the task, so a second expert got nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_review_page_takes_no_lease_on_get() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let p = s.project(&admin, pairwise_project("get", 1)).await;
    s.upload(&admin, p, &pairwise_tasks("g", 1)).await;
    let (a, _) = s.expert(&admin, "ann", &[]).await;
    let (b, b_token) = s.expert(&admin, "ben", &[]).await;
    s.add_member(&admin, p, a, "expert").await;
    s.add_member(&admin, p, b, "expert").await;
    let c = cookie_session(&s, "ann", EXPERT_PASSWORD).await;
    let page = c
        .get(format!("{}/p/{p}/review", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"start-review\""), "a start form: {html}");
    assert!(!html.contains("data-assignment"), "no lease shown");
    // The only task is still free for the other expert.
    let (status, body) = s.next(&b_token, p).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // And the start form needs its CSRF token: a bare cross-site POST takes nothing either.
    let res = c
        .post(format!("{}/p/{p}/review", s.url))
        .form(&[("_csrf", "forged")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

/// Finding 2: a member removed from a project can no longer heartbeat, skip, release or
/// submit a lease taken before the removal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_member_cannot_act_on_an_old_lease() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let p = s.project(&admin, pairwise_project("removed", 1)).await;
    s.upload(&admin, p, &pairwise_tasks("r", 2)).await;
    let (uid, expert) = s.expert(&admin, "rita", &[]).await;
    s.add_member(&admin, p, uid, "expert").await;
    let (status, lease) = s.next(&expert, p).await;
    assert_eq!(status, StatusCode::OK);
    let aid = lease["assignment"]["id"].as_u64().unwrap();
    let token = lease["assignment"]["token"].as_str().unwrap().to_owned();
    let (status, _) = s
        .request(
            reqwest::Method::DELETE,
            Some(&admin),
            &format!("/api/v1/projects/{p}/members/{uid}"),
            None,
        )
        .await;
    assert!(status.is_success());
    for action in ["heartbeat", "skip", "release"] {
        let (status, body) = s
            .post(
                &expert,
                &format!("/api/v1/assignments/{aid}/{action}"),
                json!({"token": token}),
            )
            .await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{action}: {body}");
    }
    let (status, body) = s
        .post(
            &expert,
            &format!("/api/v1/assignments/{aid}/submit"),
            json!({"token": token, "answer": pairwise_answer()}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "submit: {body}");
}

async fn login_from(s: &Server, address: &str, username: &str, password: &str) -> StatusCode {
    s.client
        .post(format!("{}/api/v1/auth/login", s.url))
        .header("X-Forwarded-For", address)
        .json(&json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap()
        .status()
}

/// Finding 5: failures from one address lock that address out, not the account; and one
/// address spraying many usernames is stopped too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_limits_are_per_address_and_per_user() {
    let s = Server::start_with(Options {
        env: vec![
            ("ASSAY_AUTH__LOGIN_ATTEMPTS", "3".into()),
            ("ASSAY_AUTH__LOGIN_ATTEMPTS_PER_ADDRESS", "6".into()),
            ("ASSAY_SERVER__TRUSTED_PROXIES", "[\"127.0.0.1\"]".into()),
        ],
        ..Default::default()
    })
    .await;
    s.ready().await;
    for _ in 0..3 {
        let status = login_from(&s, "10.0.0.1", "admin", "wrong-password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let status = login_from(&s, "10.0.0.1", "admin", ADMIN_PASSWORD).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "the guesser is stopped"
    );
    let status = login_from(&s, "10.0.0.2", "admin", ADMIN_PASSWORD).await;
    assert_eq!(status, StatusCode::OK, "the admin elsewhere still signs in");

    // Spraying: six usernames from one address, then even a new one is refused there.
    for i in 0..6 {
        let status = login_from(&s, "10.0.0.3", &format!("user{i}"), "wrong-password").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
    let status = login_from(&s, "10.0.0.3", "someone-new", "wrong-password").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

/// Finding 6: a body trickled one byte at a time is cut off with 408 once it falls behind
/// the minimum rate (before, the connection stayed open for as long as the client liked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_body_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = Server::start_with(Options {
        env: vec![("ASSAY_SERVER__BODY_GRACE_SECONDS", "1".into())],
        ..Default::default()
    })
    .await;
    s.ready().await;
    let addr = s.url.trim_start_matches("http://").to_owned();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/auth/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let trickle = async {
        // One byte every 300 ms, far below the rate; stops when the server has answered.
        for _ in 0..200 {
            if conn.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            let mut buf = [0u8; 512];
            match tokio::time::timeout(std::time::Duration::from_millis(1), conn.read(&mut buf))
                .await
            {
                Ok(Ok(n)) if n > 0 => return String::from_utf8_lossy(&buf[..n]).into_owned(),
                Ok(_) => return String::new(),
                Err(_) => {}
            }
        }
        String::new()
    };
    let answer = trickle.await;
    assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer:?}");
    assert!(answer.contains("request_timeout"), "{answer}");
}

/// Finding 7: a logout ends that session for good (the token stops working), and
/// deactivating a user ends theirs so that reactivating does not revive them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_and_deactivation_end_sessions() {
    let mut s = Server::start().await;
    let admin = s.admin().await;
    let (uid, expert) = s.expert(&admin, "lou", &[]).await;
    let other = s.login("lou", EXPERT_PASSWORD).await;
    let (status, _) = s.post(&expert, "/api/v1/auth/logout", json!({})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        s.get(&expert, "/api/v1/auth/me").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        s.get(&other, "/api/v1/auth/me").await.0,
        StatusCode::OK,
        "only that session"
    );
    // The revocation outlives a restart.
    s.restart().await;
    assert_eq!(
        s.get(&expert, "/api/v1/auth/me").await.0,
        StatusCode::UNAUTHORIZED
    );

    let path = format!("/api/v1/users/{uid}");
    assert_eq!(
        s.patch(&admin, &path, json!({"active": false})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        s.patch(&admin, &path, json!({"active": true})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        s.get(&other, "/api/v1/auth/me").await.0,
        StatusCode::UNAUTHORIZED
    );
    s.login("lou", EXPERT_PASSWORD).await;
}

/// Finding 8: updates are audited with what changed, before and after, never a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_are_audited_with_before_and_after() {
    let s = Server::start().await;
    let admin = s.admin().await;
    let (uid, _) = s.expert(&admin, "ada", &[]).await;
    let path = format!("/api/v1/users/{uid}");
    let body = json!({"role": "admin", "password": "a-new-password-1"});
    assert_eq!(s.patch(&admin, &path, body).await.0, StatusCode::OK);
    let p = s.project(&admin, pairwise_project("audited", 1)).await;
    let body = json!({"reviews_per_task": 3});
    let (status, _) = s
        .patch(&admin, &format!("/api/v1/projects/{p}"), body)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, events) = s.get(&admin, "/api/v1/audit?limit=20").await;
    let events = events.as_array().unwrap().clone();
    let find = |action: &str| {
        events
            .iter()
            .find(|e| e["action"] == action)
            .cloned()
            .unwrap_or_else(|| panic!("no {action} in {events:?}"))
    };
    let user = find("user.update");
    assert_eq!(user["detail"]["role"]["before"], "member", "{user}");
    assert_eq!(user["detail"]["role"]["after"], "admin");
    assert_eq!(user["detail"]["password_hash"], "changed");
    assert!(!user.to_string().contains("argon2"), "no hash: {user}");
    let project = find("project.update");
    assert_eq!(
        project["detail"]["reviews_per_task"]["before"], 1,
        "{project}"
    );
    assert_eq!(project["detail"]["reviews_per_task"]["after"], 3);
}

/// Finding 9: plugin sources, file paths and script errors are for admins and leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn experts_see_no_plugin_source_or_script_detail() {
    let failing = r#"
        fn criteria(task) { throw "gold answer is SECRET-42"; }
    "#;
    let s = Server::start_with(Options {
        rubrics: vec![("leaky", failing.to_owned())],
        ..Default::default()
    })
    .await;
    let admin = s.admin().await;
    let p = s
        .project(
            &admin,
            json!({"name": "leaky", "rubric": "leaky", "reviews_per_task": 1}),
        )
        .await;
    let (status, body) = s.upload(&admin, p, &pairwise_tasks("l", 5)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (uid, expert) = s.expert(&admin, "eve", &[]).await;
    s.add_member(&admin, p, uid, "expert").await;

    let (status, body) = s.next(&expert, p).await;
    assert!(status.is_server_error(), "{status} {body}");
    let text = body.to_string();
    assert!(
        !text.contains("SECRET-42"),
        "the expert sees the script's words: {text}"
    );
    assert!(
        !text.contains(".rhai"),
        "the expert sees a file path: {text}"
    );
    assert_eq!(body["script"]["plugin"], "leaky");

    let (_, list) = s.get(&expert, "/api/v1/plugins").await;
    let leaky = list
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "leaky")
        .unwrap()
        .clone();
    assert_eq!(leaky["file"], "", "{leaky}");
    let (status, _) = s
        .get(&expert, "/api/v1/plugins/rubric/leaky/versions")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let hash = leaky["version"].as_str().unwrap();
    let path = format!("/api/v1/plugins/rubric/leaky/versions/{hash}");
    assert_eq!(s.get(&expert, &path).await.0, StatusCode::FORBIDDEN);
    // Admins see it all.
    let (status, version) = s.get(&admin, &path).await;
    assert_eq!(status, StatusCode::OK);
    assert!(version.to_string().contains("SECRET-42"));
    let (_, body) = s.next(&admin, p).await;
    assert!(body.to_string().contains("SECRET-42"), "{body}");
}

/// Finding 13: the session cookie is `Secure` behind TLS (or when configured), and the login
/// response is never cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cookie_is_secure_behind_tls_and_login_is_not_cached() {
    let s = Server::start_with(Options {
        env: vec![("ASSAY_SERVER__TRUSTED_PROXIES", "[\"127.0.0.1\"]".into())],
        ..Default::default()
    })
    .await;
    s.ready().await;
    let login = |proto: &'static str| {
        s.client
            .post(format!("{}/api/v1/auth/login", s.url))
            .header("X-Forwarded-Proto", proto)
            .json(&json!({"username": "admin", "password": ADMIN_PASSWORD}))
            .send()
    };
    let plain = login("http").await.unwrap();
    let cookie = plain.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert_eq!(plain.headers()["cache-control"], "no-store");
    let tls = login("https").await.unwrap();
    let cookie = tls.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("Secure"), "{cookie}");
}

/// Finding 13: `nbf` and `iat` are checked: a session token that is not yet valid, or claims
/// a longer life than sessions have, is refused even with a valid signature.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_tokens_are_checked_for_nbf_and_iat() {
    let secret = "a-test-secret-that-is-long-enough-for-hs256";
    let s = Server::start_with(Options {
        env: vec![("ASSAY_AUTH__SECRET", secret.into())],
        ..Default::default()
    })
    .await;
    let admin = s.admin().await;
    let (_, me) = s.get(&admin, "/api/v1/auth/me").await;
    let (_, users) = s.get(&admin, "/api/v1/users").await;
    let generation = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["id"] == me["id"])
        .and_then(|u| u["token_generation"].as_u64())
        .unwrap_or(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let token = |iat: i64, nbf: i64, exp: i64| {
        let claims = json!({"iss": "assay/session", "sub": me["id"], "gen": generation,
            "sid": "forged", "iat": iat, "nbf": nbf, "exp": exp});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    };
    let s = &s;
    let me_with = |t: String| async move { s.get(&t, "/api/v1/auth/me").await.0 };
    assert_eq!(
        me_with(token(now, now, now + 3600)).await,
        StatusCode::OK,
        "control"
    );
    let later = now + 3600;
    assert_eq!(
        me_with(token(now, later, later + 60)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        me_with(token(later, later, later + 60)).await,
        StatusCode::UNAUTHORIZED
    );
    let long = now + 365 * 24 * 3600;
    assert_eq!(
        me_with(token(now, now, long)).await,
        StatusCode::UNAUTHORIZED
    );
}

/// `/metrics`: build info, per-route counts, queue depth and leases per project, import and
/// export counters; behind a token when one is configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_routes_queues_and_leases_behind_a_token() {
    let s = Server::start_with(Options {
        env: vec![("ASSAY_SERVER__METRICS_TOKEN", "metrics-secret".into())],
        ..Default::default()
    })
    .await;
    let admin = s.admin().await;
    let p = s.project(&admin, pairwise_project("metered", 1)).await;
    s.upload(&admin, p, &pairwise_tasks("m", 3)).await;
    let (uid, expert) = s.expert(&admin, "meg", &[]).await;
    s.add_member(&admin, p, uid, "expert").await;
    assert_eq!(s.next(&expert, p).await.0, StatusCode::OK);

    let url = format!("{}/metrics", s.url);
    let res = s.client.get(&url).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = s
        .client
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let text = s
        .client
        .get(&url)
        .bearer_auth("metrics-secret")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "assay_build_info{version=",
        "assay_route_requests_total{method=\"POST\",route=\"/api/v1/projects/{id}/next\"} 1",
        &format!("assay_queue_open_tasks{{project=\"{p}\"}} 3"),
        &format!("assay_open_leases{{project=\"{p}\"}} 1"),
        "assay_imports_total 1",
        "assay_imported_tasks_total 3",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}
