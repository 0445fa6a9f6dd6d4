//! Pages over plain HTTP: sessions and redirects, CSRF on forms and on cookie-authenticated API
//! calls, security headers, static asset caching, template overrides and their hot reload, and
//! the lead's view of submissions.

use reqwest::{header, redirect, StatusCode};
use serde_json::json;

use crate::support::*;

/// A browser-like client: keeps cookies, does not follow redirects.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .cookie_store(true)
        .redirect(redirect::Policy::none())
        .build()
        .unwrap()
}

fn hidden(html: &str, name: &str) -> String {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html
        .find(&marker)
        .unwrap_or_else(|| panic!("no {name} in page"))
        + marker.len();
    html[start..start + html[start..].find('"').unwrap()].to_owned()
}

/// GET with the client's cookies: status and body.
async fn fetch(c: &reqwest::Client, url: &str) -> (StatusCode, String) {
    let res = c.get(url).send().await.unwrap();
    (res.status(), res.text().await.unwrap())
}

/// Takes a lease through the start form (a POST) and returns the review page it leads to.
async fn start_review(c: &reqwest::Client, server: &Server, project: u64, csrf: &str) -> String {
    let url = format!("{}/p/{project}/review", server.url);
    let res = c.post(&url).form(&[("_csrf", csrf)]).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let (status, html) = fetch(c, &url).await;
    assert_eq!(status, StatusCode::OK);
    html
}

/// Posts the login form.
async fn post_login(
    c: &reqwest::Client,
    server: &Server,
    (username, password, next): (&str, &str, &str),
    csrf: Option<&str>,
) -> reqwest::Response {
    let mut form = vec![
        ("username", username),
        ("password", password),
        ("next", next),
    ];
    if let Some(token) = csrf {
        form.push(("_csrf", token));
    }
    c.post(format!("{}/login", server.url))
        .form(&form)
        .send()
        .await
        .unwrap()
}

/// Signs in through the login form; returns the client and the page CSRF token.
async fn sign_in(server: &Server, username: &str, password: &str) -> (reqwest::Client, String) {
    let c = browser();
    let page = c.get(format!("{}/login", server.url)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let html = page.text().await.unwrap();
    let csrf = hidden(&html, "_csrf");
    let res = post_login(&c, server, (username, password, "/"), Some(&csrf)).await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let home = c.get(format!("{}/", server.url)).send().await.unwrap();
    assert_eq!(home.status(), StatusCode::OK);
    let html = home.text().await.unwrap();
    let token = hidden(&html, "_csrf");
    (c, token)
}

#[tokio::test]
async fn pages_need_a_session_and_send_you_back_where_you_were() {
    let server = Server::start().await;
    let c = browser();
    let res = c
        .get(format!("{}/p/7/review?x=1", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        res.headers()[header::LOCATION],
        "/login?next=/p/7/review%3Fx%3D1"
    );

    // A login form post without its CSRF token is refused; with it, we go to `next`.
    let res = post_login(&c, &server, ("admin", ADMIN_PASSWORD, "/admin/users"), None).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let html = fetch(&c, &format!("{}/login?next=/admin/users", server.url))
        .await
        .1;
    let csrf = hidden(&html, "_csrf");
    assert_eq!(hidden(&html, "next"), "/admin/users");
    let res = post_login(
        &c,
        &server,
        ("admin", "wrong-password", "/admin/users"),
        Some(&csrf),
    )
    .await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("Wrong username or password"));
    let res = post_login(
        &c,
        &server,
        ("admin", ADMIN_PASSWORD, "/admin/users"),
        Some(&csrf),
    )
    .await;
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/admin/users");
    let cookie = res.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(cookie.starts_with("assay_session="), "{cookie}");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );

    // `next` never leads off the site.
    let res = post_login(
        &c,
        &server,
        ("admin", ADMIN_PASSWORD, "//evil.example/x"),
        Some(&csrf),
    )
    .await;
    assert_eq!(res.headers()[header::LOCATION], "/");

    // Logout needs the form's token, then the session is gone from the browser.
    let html = fetch(&c, &format!("{}/", server.url)).await.1;
    let page_csrf = hidden(&html, "_csrf");
    let res = c
        .post(format!("{}/logout", server.url))
        .form(&[("_csrf", "nope")])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = c
        .post(format!("{}/logout", server.url))
        .form(&[("_csrf", &page_csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        fetch(&c, &format!("{}/", server.url)).await.0,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn a_revoked_session_sends_the_page_back_to_login() {
    let server = Server::start().await;
    let admin = server.admin().await;
    let (uid, _) = server.expert(&admin, "rita", &[]).await;
    let (c, _) = sign_in(&server, "rita", EXPERT_PASSWORD).await;
    let (status, _) = server
        .post(&admin, &format!("/api/v1/users/{uid}/revoke"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let res = c.get(format!("{}/", server.url)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    assert_eq!(res.headers()[header::LOCATION], "/login?next=/");
}

#[tokio::test]
async fn cookie_sessions_must_send_the_csrf_header_to_change_anything() {
    let server = Server::start().await;
    let (c, csrf) = sign_in(&server, "admin", ADMIN_PASSWORD).await;
    let url = format!("{}/api/v1/projects", server.url);
    let body = pairwise_project("Via cookie", 1);
    // Reads work with the cookie alone.
    assert_eq!(fetch(&c, &url).await.0, StatusCode::OK);
    // Writes without the header (what a forged cross-site request would be) are refused.
    let res = c.post(&url).json(&body).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = c
        .post(&url)
        .header("X-CSRF-Token", "00".repeat(16))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let res = c
        .post(&url)
        .header("X-CSRF-Token", &csrf)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn pages_carry_security_headers_and_assets_are_cacheable() {
    let server = Server::start().await;
    let c = browser();
    let res = c.get(format!("{}/login", server.url)).send().await.unwrap();
    let h = res.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h[header::CACHE_CONTROL], "no-store");
    assert!(h.contains_key("server-timing"));
    let html = res.text().await.unwrap();
    assert!(!html.contains("<script>"), "no inline script");
    let start = html.find("/static/app.js?v=").unwrap();
    let src = &html[start..start + html[start..].find('"').unwrap()];

    let res = c.get(format!("{}{src}", server.url)).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    assert!(res.headers()[header::CACHE_CONTROL]
        .to_str()
        .unwrap()
        .contains("immutable"));
    let etag = res.headers()[header::ETAG].clone();
    let res = c
        .get(format!("{}{src}", server.url))
        .header(header::IF_NONE_MATCH, etag)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        fetch(&c, &format!("{}/static/nope.js", server.url)).await.0,
        StatusCode::NOT_FOUND
    );
}

async fn wait_for_page(c: &reqwest::Client, url: &str, needle: &str) -> String {
    for _ in 0..100 {
        let html = fetch(c, url).await.1;
        if html.contains(needle) {
            return html;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("{url} never showed {needle}");
}

#[tokio::test]
async fn templates_are_overridden_and_hot_reloaded_and_a_broken_one_keeps_the_last_good() {
    let server = Server::start().await;
    let (c, _) = sign_in(&server, "admin", ADMIN_PASSWORD).await;
    let dir = server.dir.path().join("templates");
    std::fs::create_dir_all(dir.join("static")).unwrap();
    let home = std::fs::read_to_string(repo().join("templates/home.hbs")).unwrap();
    let url = format!("{}/", server.url);

    std::fs::write(
        dir.join("home.hbs"),
        home.replace("Your projects</h1>", "Our studies v1</h1>"),
    )
    .unwrap();
    wait_for_page(&c, &url, "Our studies v1").await;

    // A template that does not compile is rejected; the previous version keeps serving.
    std::fs::write(
        dir.join("home.hbs"),
        "{{#> layout page=\"home\"}} {{#if}} broken",
    )
    .unwrap();
    let plugins = wait_for_page(&c, &format!("{}/admin/plugins", server.url), "home.hbs:").await;
    assert!(
        plugins.contains("status-error"),
        "the error shows on the plugins page"
    );
    let html = fetch(&c, &url).await.1;
    assert!(
        html.contains("Our studies v1"),
        "last good version still serves"
    );

    // Static assets are overridable too, and their URLs change with them.
    let before = fetch(&c, &url).await.1;
    std::fs::write(dir.join("static/app.css"), "body { color: #123456; }").unwrap();
    let after = wait_for_page(&c, &url, "Our studies v1").await;
    let mut changed = after != before;
    for _ in 0..100 {
        if changed {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        changed = fetch(&c, &url).await.1 != before;
    }
    assert!(changed, "asset version in the page changes");
    let css = fetch(&c, &format!("{}/static/app.css", server.url)).await.1;
    assert_eq!(css, "body { color: #123456; }");

    // Removing the override brings the default back.
    std::fs::remove_file(dir.join("home.hbs")).unwrap();
    wait_for_page(&c, &url, "Your projects</h1>").await;
}

#[tokio::test]
async fn leads_see_each_submission_beside_its_task_and_experts_do_not() {
    let server = Server::start().await;
    let admin = server.admin().await;
    let project = server
        .project(&admin, pairwise_project("Lead view", 1))
        .await;
    let tasks = json!({"external_id": "l1", "data": {"prompt": "Is <b>this</b> bold?", "responses": [{"text": "Yes"}, {"text": "No"}]}});
    let (status, _) = server.upload(&admin, project, &tasks.to_string()).await;
    assert!(status.is_success());
    let (eid, expert) = server.expert(&admin, "erin", &[]).await;
    let (lid, _) = server.expert(&admin, "leo", &[]).await;
    server.add_member(&admin, project, eid, "expert").await;
    server.add_member(&admin, project, lid, "lead").await;
    let answer = json!({"preference": {"pick": "right", "strength": 1}, "justification": "The <i>right</i> one answers correctly."});
    let (status, body) = server.review_next(&expert, project, answer).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let (lead, _) = sign_in(&server, "leo", EXPERT_PASSWORD).await;
    let (status, html) = fetch(&lead, &format!("{}/p/{project}/submissions", server.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("by <strong>erin</strong>"), "{html}");
    assert!(
        html.contains("<strong>Response B</strong>, strength 1"),
        "{html}"
    );
    assert!(
        html.contains("The &lt;i&gt;right"),
        "answer text is escaped: {html}"
    );
    assert!(!html.contains("<i>right</i>"));
    let stats = fetch(&lead, &format!("{}/p/{project}/stats", server.url))
        .await
        .1;
    assert!(stats.contains("id=\"submissions-total\">1<"), "{stats}");

    let (exp, _) = sign_in(&server, "erin", EXPERT_PASSWORD).await;
    assert_eq!(
        fetch(&exp, &format!("{}/p/{project}/submissions", server.url))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        fetch(&exp, &format!("{}/admin/users", server.url)).await.0,
        StatusCode::FORBIDDEN
    );
    let home = fetch(&exp, &format!("{}/", server.url)).await.1;
    assert!(home.contains("id=\"done-today\">1<"), "{home}");
}

#[tokio::test]
async fn every_criterion_kind_renders_a_form_field() {
    let rubric = r#"
fn criteria(task) {
    [
        #{ id: "l", kind: "likert", label: "Likert", min: 1, max: 5 },
        #{ id: "c", kind: "choice", label: "Choice", options: ["x", "y"] },
        #{ id: "m", kind: "multi", label: "Multi", options: ["p", "q"], required: false },
        #{ id: "pw", kind: "pairwise", label: "Pairwise", ties: true, strength: 2 },
        #{ id: "r", kind: "ranking", label: "Ranking", items: "responses" },
        #{ id: "n", kind: "number", label: "Number", min: 0, max: 10 },
        #{ id: "b", kind: "boolean", label: "Boolean" },
        #{ id: "t", kind: "text", label: "Text", max_chars: 50, required: false },
        #{ id: "rw", kind: "rewrite", label: "Rewrite", source: "responses.0.text" },
        #{ id: "s", kind: "spans", label: "Spans", target: "responses.1.text", labels: ["bad"], required: false },
        #{ id: "pi", kind: "per_item", label: "Steps", over: "steps", item: #{ id: "ok", kind: "boolean", label: "ok" } }
    ]
}
"#;
    let server = Server::start_with(Options {
        rubrics: vec![("every_kind", rubric.to_owned())],
        ..Options::default()
    })
    .await;
    let admin = server.admin().await;
    let project = server
        .project(
            &admin,
            json!({"name": "Kinds", "rubric": "every_kind", "reviews_per_task": 1}),
        )
        .await;
    let task = json!({"data": {"messages": [{"role": "user", "content": "Hi **there**"}],
        "responses": [{"id": "r1", "text": "first <answer>"}, {"id": "r2", "text": "second"}],
        "steps": ["one", "two", "three"], "extra": {"k": "<v>"}}});
    let (status, _) = server.upload(&admin, project, &task.to_string()).await;
    assert!(status.is_success());
    let (uid, _) = server.expert(&admin, "kim", &[]).await;
    server.add_member(&admin, project, uid, "expert").await;
    let (c, csrf) = sign_in(&server, "kim", EXPERT_PASSWORD).await;
    let html = start_review(&c, &server, project, &csrf).await;
    for kind in [
        "likert", "choice", "multi", "pairwise", "ranking", "number", "boolean", "text", "rewrite",
        "spans", "per_item",
    ] {
        assert!(
            html.contains(&format!("data-kind=\"{kind}\"")),
            "{kind} missing"
        );
    }
    assert_eq!(
        html.matches("data-field=\"pi.").count(),
        3,
        "one field per step"
    );
    assert!(
        html.contains("<strong>there</strong>"),
        "chat messages are rendered as Markdown"
    );
    assert!(
        html.contains("first &lt;answer&gt;"),
        "rewrite source is escaped"
    );
    assert!(
        html.contains("&quot;&lt;v&gt;&quot;"),
        "other fields shown as escaped JSON"
    );
}

/// Quarantined tasks are listed on the admin's project page with their error, escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_project_page_lists_quarantined_tasks_with_their_error() {
    let s = Server::start_with(Options {
        rubrics: vec![(
            "brittle",
            "fn criteria(task) { if task.data.bad == true { throw \"<b>no form</b> for this\"; } [#{ id: \"ok\", kind: \"boolean\", label: \"OK?\" }] }\n".into(),
        )],
        env: vec![],
    })
    .await;
    let admin = s.admin().await;
    let (eid, expert) = s.expert(&admin, "w", &[]).await;
    let p = s
        .project(
            &admin,
            json!({"name": "brittle", "rubric": "brittle", "reviews_per_task": 1}),
        )
        .await;
    s.add_member(&admin, p, eid, "expert").await;
    s.upload(
        &admin,
        p,
        "{\"data\": {\"bad\": true}}\n{\"data\": {\"bad\": false}}",
    )
    .await;
    let (status, next) = s.next(&expert, p).await;
    assert_eq!(status, StatusCode::OK, "{next}");
    let (c, _) = sign_in(&s, "admin", ADMIN_PASSWORD).await;
    let (status, html) = fetch(&c, &format!("{}/admin/projects/{p}", s.url)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("Quarantined tasks"), "{html}");
    assert!(
        html.contains("&lt;b&gt;no form&lt;/b&gt;"),
        "the error is shown escaped"
    );
    assert!(!html.contains("<b>no form</b>"));
    assert!(html.contains("/broken/retry"));
}

#[tokio::test]
async fn a_task_whose_page_fails_to_render_is_set_aside_and_retried_when_templates_change() {
    let mut s = Server::start_with(Options {
        rubrics: vec![(
            "plain",
            "fn criteria(task) { [#{ id: \"ok\", kind: \"boolean\", label: \"OK?\" }] }\n".into(),
        )],
        env: vec![],
    })
    .await;
    // An override that names a field only some tasks have: rendering is strict, so the page
    // of a task without `title` fails.
    let dir = s.dir.path().join("templates");
    std::fs::create_dir_all(&dir).unwrap();
    let original = std::fs::read_to_string(repo().join("templates/task_view.hbs")).unwrap();
    std::fs::write(
        dir.join("task_view.hbs"),
        format!("<p class=\"title\">{{{{other.title}}}}</p>\n{original}"),
    )
    .unwrap();
    s.restart().await;
    let admin = s.admin().await;
    let (eid, expert) = s.expert(&admin, "reader", &[]).await;
    let p = s
        .project(
            &admin,
            json!({"name": "titles", "rubric": "plain", "reviews_per_task": 1}),
        )
        .await;
    s.add_member(&admin, p, eid, "expert").await;
    let tasks = [
        json!({"external_id": "untitled", "data": {"body": "no title here"}}),
        json!({"external_id": "t1", "data": {"title": "First title"}}),
        json!({"external_id": "t2", "data": {"title": "Second title"}}),
    ]
    .map(|t| t.to_string())
    .join("\n");
    assert_eq!(s.upload(&admin, p, &tasks).await.0, StatusCode::CREATED);

    // The untitled task comes first; starting sets it aside and shows the next one.
    let (c, csrf) = sign_in(&s, "reader", EXPERT_PASSWORD).await;
    let html = start_review(&c, &s, p, &csrf).await;
    assert!(html.contains("First title"), "{html}");
    let (_, broken) = s.get(&admin, &format!("/api/v1/projects/{p}/broken")).await;
    assert_eq!(broken.as_array().unwrap().len(), 1, "{broken}");
    assert_eq!(broken[0]["stage"], "render");
    assert!(
        broken[0]["error"].as_str().unwrap().contains("render"),
        "{broken}"
    );

    // Finish that task through the API, put the untitled one back by hand and take it through
    // the API: the page's GET cannot show it and changes nothing; the start form sets it aside.
    let (_, held) = s.next(&expert, p).await;
    assert_eq!(held["task"]["external_id"], "t1");
    let aid = held["assignment"]["id"].as_u64().unwrap();
    let (status, _) = s
        .post(
            &expert,
            &format!("/api/v1/assignments/{aid}/submit"),
            json!({"token": held["assignment"]["token"], "answer": {"ok": true}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = s
        .post(
            &admin,
            &format!("/api/v1/projects/{p}/broken/retry"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, held) = s.next(&expert, p).await;
    assert_eq!(held["task"]["external_id"], "untitled");
    let url = format!("{}/p/{p}/review", s.url);
    let (status, html) = fetch(&c, &url).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("id=\"start-problem\""), "{html}");
    assert_eq!(
        s.stats(&admin, p).await["broken"],
        0,
        "a GET set nothing aside"
    );
    let html = start_review(&c, &s, p, &csrf).await;
    assert!(html.contains("Second title"), "{html}");
    assert_eq!(s.stats(&admin, p).await["broken"], 1);

    // Mending the template retries the task on its own.
    std::fs::write(dir.join("task_view.hbs"), &original).unwrap();
    let mut reopened = false;
    for _ in 0..200 {
        if s.stats(&admin, p).await["broken"] == 0 {
            reopened = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(reopened, "changed templates did not retry the task");
}
