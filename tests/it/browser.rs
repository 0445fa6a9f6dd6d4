//! Pages in a real browser: headless Chromium driven through chromedriver (Debian's `chromium`
//! and `chromium-driver`, installed by `.ci/run`). Screenshots of the main pages are written to
//! `target/screenshots/` for people to look at.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

use crate::support::*;

pub struct Browser {
    pub client: Client,
    driver: Child,
    /// The browser's own profile folder: every Chromium process of this browser names it on
    /// its command line, which is how `Drop` finds them all.
    profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let profile = tempfile::tempdir().expect("profile folder");
        // Its own process group, so that ending the driver ends what it started.
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .expect("chromedriver is needed: apt-get install chromium chromium-driver");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-background-networking", "--disable-dev-shm-usage",
                            "--disable-crash-reporter", "--no-first-run",
                            format!("--user-data-dir={}", profile.path().display()),
                            "--window-size=1440,1000"]}),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut last = None;
        for _ in 0..100 {
            match ClientBuilder::rustls()
                .expect("tls")
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(client) => {
                    return Browser {
                        client,
                        driver,
                        profile,
                    }
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot start a browser session: {last:?}");
    }

    pub async fn goto(&self, url: &str) {
        self.client.goto(url).await.expect("goto");
    }

    pub async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("url");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// Key presses through the WebDriver actions API: real key events to whatever has focus.
    /// Each item is a chord: its keys go down in order and come up in reverse.
    pub async fn keys(&self, chords: &[&[char]]) {
        let mut seq = KeyActions::new("keyboard".into());
        for chord in chords {
            for k in chord.iter() {
                seq = seq.then(KeyAction::Down { value: *k });
            }
            for k in chord.iter().rev() {
                seq = seq.then(KeyAction::Up { value: *k });
            }
        }
        self.client.perform_actions(seq).await.expect("keys");
    }

    pub async fn press(&self, key: char) {
        self.keys(&[&[key]]).await;
    }

    pub async fn type_text(&self, text: &str) {
        let chars: Vec<char> = text.chars().collect();
        let chords: Vec<[char; 1]> = chars.iter().map(|c| [*c]).collect();
        let refs: Vec<&[char]> = chords.iter().map(|c| c.as_slice()).collect();
        self.keys(&refs).await;
    }

    pub async fn ctrl_enter(&self) {
        self.keys(&[&[Key::Control.into(), Key::Enter.into()]])
            .await;
    }

    pub async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.expect("script")
    }

    /// Waits until `script` (a JS expression) is truthy.
    pub async fn wait(&self, what: &str, script: &str) {
        for _ in 0..200 {
            if let Ok(v) = self
                .client
                .execute(&format!("return !!({script});"), vec![])
                .await
            {
                if v == Value::Bool(true) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.screenshot(&format!("failed-{}", what.replace(' ', "-")))
            .await;
        panic!(
            "timed out waiting for {what} ({script}) at {}",
            self.path().await
        );
    }

    pub async fn text(&self, css: &str) -> String {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .text()
            .await
            .expect("text")
    }

    pub async fn screenshot(&self, name: &str) {
        let dir = repo().join("target").join("screenshots");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        if let Ok(png) = self.client.screenshot().await {
            std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
        }
    }

    /// Signs in through the login form using only the keyboard.
    pub async fn login_with_keys(&self, username: &str, password: &str) {
        self.wait("login form", "document.getElementById('login-form')")
            .await;
        self.wait(
            "username focused",
            "document.activeElement && document.activeElement.id === 'username'",
        )
        .await;
        self.type_text(username).await;
        self.press(Key::Tab.into()).await;
        self.type_text(password).await;
        self.press(Key::Enter.into()).await;
        self.wait("signed in", "!document.getElementById('login-form')")
            .await;
    }
}

impl Drop for Browser {
    /// Ends the driver, its process group, and every Chromium process that uses this browser's
    /// profile (some leave the group), so a test run leaves no browser behind.
    fn drop(&mut self) {
        let group = self.driver.id() as i32;
        // SAFETY: sends a signal to the process group this browser started; no memory involved.
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let profile = self.profile.path().display().to_string();
        for _ in 0..20 {
            let left = processes_naming(&profile);
            if left.is_empty() {
                return;
            }
            for pid in left {
                // SAFETY: as above, for one process found by its command line.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Processes whose command line contains `needle` (live ones: zombies have none).
fn processes_naming(needle: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

const NOTHING_RAN: &str = "window.__pwned === undefined";

/// Sets up a project with `tasks` (JSON Lines) and one expert; returns (project id, expert id).
async fn project_with_expert(server: &Server, body: Value, tasks: &str) -> (u64, u64) {
    let admin = server.admin().await;
    let project = server.project(&admin, body).await;
    let (status, report) = server.upload(&admin, project, tasks).await;
    assert!(status.is_success(), "{report}");
    let (expert, _) = server.expert(&admin, "pat", &[]).await;
    server.add_member(&admin, project, expert, "expert").await;
    (project, expert)
}

/// A browser signed in as the project's expert, on the project's review page. The sign-in goes
/// through the login page the review page redirects to.
async fn reviewing(server: &Server, project: u64) -> Browser {
    let b = Browser::start().await;
    b.goto(&format!("{}/p/{project}/review", server.url)).await;
    assert!(
        b.path().await.starts_with("/login?next="),
        "{}",
        b.path().await
    );
    b.screenshot("login").await;
    b.login_with_keys("pat", EXPERT_PASSWORD).await;
    assert_eq!(b.path().await, format!("/p/{project}/review"));
    // The page only shows: the lease is taken by the start form, focused, with Enter.
    b.wait(
        "start form",
        "document.activeElement && document.activeElement.id === 'btn-start'",
    )
    .await;
    b.press(Key::Enter.into()).await;
    b.wait("review page", task_id_on_page()).await;
    b
}

fn task_id_on_page() -> &'static str {
    "document.getElementById('review') && document.getElementById('review').dataset.assignment"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expert_reviews_three_pairwise_tasks_with_the_keyboard_only() {
    let server = Server::start().await;
    let (project, expert) = project_with_expert(
        &server,
        pairwise_project("Keyboard", 1),
        &pairwise_tasks("kb", 3),
    )
    .await;
    // Not signed in: the review page sends us to login and brings us back.
    let b = reviewing(&server, project).await;

    // Task 1: A, strength 3, then a justification too short for a strong preference.
    let first = b.js(&format!("return {};", task_id_on_page())).await;
    b.press('a').await;
    b.press('3').await;
    b.wait(
        "justification focused",
        "document.activeElement && document.activeElement.name === 'justification'",
    )
    .await;
    b.type_text("A is right and B is unsafe.").await;
    b.ctrl_enter().await;
    b.wait(
        "validation error beside the field",
        "!document.querySelector('[data-error-for=\"justification\"]').hidden",
    )
    .await;
    let error = b.text("[data-error-for=\"justification\"]").await;
    assert!(error.contains("80"), "{error}");
    b.screenshot("review-validation-error").await;
    // Nothing typed was lost; fix it and submit.
    let kept = b
        .js("return document.querySelector('textarea[name=justification]').value;")
        .await;
    assert_eq!(kept, json!("A is right and B is unsafe."));
    b.wait(
        "error field focused",
        "document.activeElement && document.activeElement.name === 'justification'",
    )
    .await;
    b.type_text(" Boiling for nine minutes is the standard method; microwaving an egg in its shell can make it explode.").await;
    b.ctrl_enter().await;
    b.wait(
        "the next task",
        &format!("{} && {} !== {first}", task_id_on_page(), task_id_on_page()),
    )
    .await;

    // Task 2: B, strength 1, a justification, then tick an issue and submit.
    b.press('b').await;
    b.press('1').await;
    b.type_text("B is shorter and still gives the essential safety warning here.")
        .await;
    b.press(Key::Escape.into()).await;
    b.press(Key::Down.into()).await;
    b.press('a').await; // "factual error" in the issues list
    b.screenshot("review").await;
    let second = b.js(&format!("return {};", task_id_on_page())).await;
    b.ctrl_enter().await;
    b.wait(
        "the third task",
        &format!(
            "{} && {} !== {second}",
            task_id_on_page(),
            task_id_on_page()
        ),
    )
    .await;

    // Task 3: the shortcut map, then a tie.
    b.press('?').await;
    b.wait("shortcut map", "!document.getElementById('help').hidden")
        .await;
    b.screenshot("review-shortcuts").await;
    b.press(Key::Escape.into()).await;
    b.press('t').await;
    b.type_text("Both answers are equally good for this question.")
        .await;
    b.ctrl_enter().await;
    b.wait("nothing left", "document.getElementById('nothing-left')")
        .await;
    b.screenshot("nothing-left").await;
    assert_eq!(b.js(&format!("return {NOTHING_RAN};")).await, json!(true));

    // What the server stored is what the keys said.
    let admin = server.admin().await;
    let rows = server.export(&admin, project).await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    let mut answers: Vec<Value> = rows
        .iter()
        .map(|r| {
            assert_eq!(r["expert_id"], json!(expert), "{r}");
            r["answer"].clone()
        })
        .collect();
    answers.sort_by_key(|a| a["preference"]["pick"].as_str().unwrap_or("").to_owned());
    assert_eq!(
        answers[0]["preference"],
        json!({"pick": "left", "strength": 3})
    );
    assert!(
        answers[0]["justification"]
            .as_str()
            .unwrap()
            .chars()
            .count()
            >= 80
    );
    assert_eq!(
        answers[1]["preference"],
        json!({"pick": "right", "strength": 1})
    );
    assert_eq!(answers[1]["issues"], json!(["factual error"]));
    assert_eq!(answers[2]["preference"], json!({"pick": "tie"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_is_marked_with_the_keyboard_and_stored_as_code_point_offsets() {
    let server = Server::start().await;
    // A non-ASCII character before the passage: offsets must count code points, not bytes
    // or UTF-16 units.
    let text = "Café 🚀 opened in 1887 and the Eiffel Tower is 500 metres tall.";
    let task = json!({"external_id": "h1", "data": {"prompt": "Tell me about Paris.", "responses": [{"text": text}]}});
    let (project, _) = project_with_expert(
        &server,
        json!({"name": "Spans", "rubric": "hallucination_spans", "reviews_per_task": 1}),
        &task.to_string(),
    )
    .await;
    let b = reviewing(&server, project).await;
    // The spans question is first: find the passage, accept it, label it "fabricated" (1).
    b.press('/').await;
    b.wait(
        "search focused",
        "document.activeElement.classList.contains('span-search')",
    )
    .await;
    b.type_text("500 metres").await;
    b.press(Key::Enter.into()).await;
    b.press('1').await;
    b.wait(
        "span marked",
        "document.querySelectorAll('.span-target mark[data-label]').length === 1",
    )
    .await;
    assert_eq!(
        b.text(".span-target mark[data-label]").await.trim(),
        "500 metres"
    );
    // Verdict by its jump key, then an option letter; submit.
    b.press('v').await;
    b.press('c').await; // major hallucination
    b.screenshot("review-spans").await;
    b.ctrl_enter().await;
    b.wait("nothing left", "document.getElementById('nothing-left')")
        .await;

    let admin = server.admin().await;
    let rows = server.export(&admin, project).await;
    assert_eq!(rows.len(), 1);
    let byte = text.find("500 metres").unwrap();
    let start = text[..byte].chars().count() as u64;
    assert_eq!(
        rows[0]["answer"]["spans"],
        json!([{"start": start, "end": start + 10, "label": "fabricated"}])
    );
    assert_eq!(rows[0]["answer"]["verdict"], json!("major hallucination"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_creates_a_project_uploads_tasks_and_adds_a_member() {
    let server = Server::start().await;
    let admin = server.admin().await;
    let (expert, _) = server.expert(&admin, "sam", &[]).await;
    let b = Browser::start().await;
    b.goto(&format!("{}/admin/projects", server.url)).await;
    b.login_with_keys("admin", ADMIN_PASSWORD).await;
    assert_eq!(b.path().await, "/admin/projects");

    // Create a project through the form; the first try names no project and is refused.
    let form = b
        .client
        .find(Locator::Id("new-project"))
        .await
        .expect("form");
    form.find(Locator::Css("button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    // The browser's own `required` check stops an empty name; bypass it to see the server's.
    b.js("document.querySelector('#new-project input[name=name]').removeAttribute('required'); document.querySelector('#new-project input[name=name]').value = '   '; document.querySelector('#new-project button[type=submit]').click();").await;
    b.wait(
        "name error",
        "!document.querySelector('#new-project [data-error-for=name]').hidden",
    )
    .await;
    let name = form
        .find(Locator::Css("input[name=name]"))
        .await
        .expect("name");
    b.js("document.querySelector('#new-project input[name=name]').value = '';")
        .await;
    name.send_keys("Cardiology answers").await.expect("type");
    form.find(Locator::Css("textarea[name=instructions]"))
        .await
        .expect("instructions")
        .send_keys("Judge **medical accuracy** first.")
        .await
        .expect("type");
    b.js(
        "document.querySelector('#new-project select[name=rubric]').value = 'pairwise_preference';",
    )
    .await;
    b.screenshot("admin-projects").await;
    form.find(Locator::Css("button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");
    b.wait("project page", "location.pathname.startsWith('/admin/projects/') && document.getElementById('import-form')").await;
    let project: u64 = b
        .path()
        .await
        .rsplit('/')
        .next()
        .unwrap()
        .parse()
        .expect("project id");

    // Upload a task file through the file input.
    let file = server.dir.path().join("upload.jsonl");
    std::fs::write(&file, pairwise_tasks("up", 4)).expect("write");
    b.client
        .find(Locator::Id("import-file"))
        .await
        .expect("file input")
        .send_keys(&file.display().to_string())
        .await
        .expect("choose file");
    b.js("document.querySelector('#import-form button[type=submit]').click();")
        .await;
    b.wait(
        "import report",
        "document.querySelector('.upload-report').textContent.includes('Imported 4')",
    )
    .await;
    b.wait("reload with counts", "document.getElementById('task-count') && document.getElementById('task-count').textContent.trim() === '4'").await;

    // A bad file is refused with its line named, and nothing is imported.
    std::fs::write(&file, "{\"data\": {\"prompt\": \"ok\"}}\nnot json\n").expect("write");
    b.client
        .find(Locator::Id("import-file"))
        .await
        .expect("file input")
        .send_keys(&file.display().to_string())
        .await
        .expect("choose file");
    b.js("document.querySelector('#import-form button[type=submit]').click();")
        .await;
    b.wait(
        "import errors",
        "document.querySelector('.upload-report li')",
    )
    .await;
    let report = b.text(".upload-report").await;
    assert!(report.contains("line 2"), "{report}");

    // Add the expert as a member.
    b.js(&format!("document.querySelector('#add-member select[name=user]').value = '{expert}'; document.querySelector('#add-member button[type=submit]').click();")).await;
    b.wait("member listed", "document.getElementById('members') && document.getElementById('members').textContent.includes('sam')").await;
    b.screenshot("admin-project").await;

    let stats = server.stats(&admin, project).await;
    assert_eq!(stats["tasks"], json!(4), "{stats}");
    let (_, members) = server
        .get(&admin, &format!("/api/v1/projects/{project}/members"))
        .await;
    assert_eq!(members[0]["username"], json!("sam"), "{members}");
    let (_, p) = server
        .get(&admin, &format!("/api/v1/projects/{project}"))
        .await;
    assert_eq!(p["name"], json!("Cardiology answers"));

    // Edit the project's settings.
    b.js("document.querySelector('#edit-project input[name=reviews_per_task]').value = '3'; document.querySelector('#edit-project button[type=submit]').click();").await;
    b.wait("settings saved", "performance.getEntriesByType('navigation')[0].type === 'reload' && document.querySelector('#edit-project input[name=reviews_per_task]').value === '3'").await;
    let (_, p) = server
        .get(&admin, &format!("/api/v1/projects/{project}"))
        .await;
    assert_eq!(p["reviews_per_task"], json!(3), "{p}");

    // Users: create one through the form, give them skills, deactivate them.
    b.goto(&format!("{}/admin/users", server.url)).await;
    b.wait("users page", "document.getElementById('new-user')")
        .await;
    let form = b.client.find(Locator::Id("new-user")).await.expect("form");
    for (field, value) in [
        ("username", "dana"),
        ("password", "a-long-password-1"),
        ("skills", "cardiology, law"),
    ] {
        form.find(Locator::Css(&format!("input[name={field}]")))
            .await
            .expect("input")
            .send_keys(value)
            .await
            .expect("type");
    }
    b.js("document.querySelector('#new-user button[type=submit]').click();")
        .await;
    b.wait(
        "user listed",
        "document.querySelector('tr[data-user=dana]')",
    )
    .await;
    // The page reloads after a save: a mark on the old document tells the new one apart.
    b.js("window.beforeSave = true; document.querySelector('tr[data-user=dana] input[name=skills]').value = 'oncology'; document.querySelector('tr[data-user=dana] form button[type=submit]').click();").await;
    b.wait("skills saved", "!window.beforeSave && document.querySelector('tr[data-user=dana] input[name=skills]') && document.querySelector('tr[data-user=dana] input[name=skills]').value === 'oncology'").await;
    b.js("document.querySelector('tr[data-user=dana] td.actions form button').click();")
        .await;
    b.wait(
        "deactivated",
        "document.querySelector('tr[data-user=dana]').textContent.includes('deactivated')",
    )
    .await;
    let (_, users) = server.get(&admin, "/api/v1/users").await;
    let dana = users
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "dana")
        .expect("dana")
        .clone();
    assert_eq!(dana["skills"], json!(["oncology"]), "{dana}");
    assert_eq!(dana["active"], json!(false), "{dana}");

    // A submission, seen by the admin beside its task.
    let sam = server.login("sam", EXPERT_PASSWORD).await;
    let (status, body) = server.review_next(&sam, project, pairwise_answer()).await;
    assert_eq!(status.as_u16(), 201, "{body}");
    b.goto(&format!("{}/p/{project}/submissions", server.url))
        .await;
    b.wait(
        "submission shown",
        "document.querySelector('.submission .answer')",
    )
    .await;
    b.screenshot("submissions").await;

    // The other admin pages render.
    for (path, shot, marker) in [
        ("/admin/users", "admin-users", "users"),
        ("/admin/plugins", "admin-plugins", "plugins"),
        (&format!("/p/{project}/stats") as &str, "stats", "states"),
        ("/", "home-admin", "projects"),
    ] {
        b.goto(&format!("{}{path}", server.url)).await;
        b.wait(path, &format!("document.getElementById('{marker}')"))
            .await;
        b.screenshot(shot).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_task_content_renders_inert() {
    let server = Server::start().await;
    let evil = [
        "<script>window.__pwned = 'script'</script>Plain text after a script.",
        "<img src=x onerror=\"window.__pwned = 'img'\"> and [a link](javascript:window.__pwned='md-link') \
         <a href=\"javascript:window.__pwned='a'\" id=\"evil-link\">click</a> \
         <svg onload=\"window.__pwned='svg'\"></svg><iframe src=\"javascript:window.__pwned='iframe'\"></iframe>\n\n```html\n<script>kept as code</script>\n```",
    ];
    let task = json!({"external_id": "x1", "data": {
        "prompt": "<b onmouseover=\"window.__pwned='b'\">Hover</b> `code` <style>body{display:none}</style>",
        "responses": [{"text": evil[0]}, {"text": evil[1]}],
        "context": "<details open ontoggle=\"window.__pwned='toggle'\">x</details>"
    }});
    let (project, _) =
        project_with_expert(&server, pairwise_project("Hostile", 1), &task.to_string()).await;
    let b = reviewing(&server, project).await;
    // Give anything that could run a chance to run, and interact with the content.
    b.js("document.querySelectorAll('.task a, .task b').forEach(function (e) { e.dispatchEvent(new MouseEvent('mouseover', {bubbles: true})); });").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.screenshot("hostile").await;
    assert_eq!(b.js(&format!("return {NOTHING_RAN};")).await, json!(true));
    let found = b
        .js("return {
            scripts: document.querySelectorAll('.task script').length,
            handlers: Array.from(document.querySelectorAll('.task *')).filter(function (e) {
                return Array.from(e.attributes).some(function (a) { return a.name.startsWith('on'); });
            }).length,
            js_links: document.querySelectorAll('.task [href^=\"javascript\"], .task [src^=\"javascript\"]').length,
            iframes: document.querySelectorAll('.task iframe, .task svg, .task style').length,
            code: document.querySelector('.task pre code') ? document.querySelector('.task pre code').textContent : '',
            text: document.querySelector('.task').textContent.includes('Plain text after a script.')
        };")
        .await;
    assert_eq!(found["scripts"], json!(0), "{found}");
    assert_eq!(found["handlers"], json!(0), "{found}");
    assert_eq!(found["js_links"], json!(0), "{found}");
    assert_eq!(found["iframes"], json!(0), "{found}");
    assert!(
        found["code"]
            .as_str()
            .unwrap()
            .contains("<script>kept as code</script>"),
        "{found}"
    );
    assert_eq!(found["text"], json!(true), "{found}");
    // Clicking what was a javascript: link runs nothing either.
    if let Ok(link) = b.client.find(Locator::Id("evil-link")).await {
        let _ = link.click().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(b.js(&format!("return {NOTHING_RAN};")).await, json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_session_returns_to_the_same_task_with_the_answer_kept() {
    let server = Server::start().await;
    let (project, _) = project_with_expert(
        &server,
        pairwise_project("Expiry", 1),
        &pairwise_tasks("ex", 2),
    )
    .await;
    let b = reviewing(&server, project).await;
    let assignment = b.js(&format!("return {};", task_id_on_page())).await;
    b.press('b').await;
    b.press('2').await;
    let words = "B warns about the real risk and gives the safe method.";
    b.type_text(words).await;
    // The session ends (cookie gone, as after expiry); submitting sends the expert to login.
    b.client.delete_all_cookies().await.expect("cookies");
    b.ctrl_enter().await;
    b.wait("login page", "document.getElementById('login-form')")
        .await;
    assert!(
        b.path().await.starts_with("/login?next=%2Fp%2F"),
        "{}",
        b.path().await
    );
    b.login_with_keys("pat", EXPERT_PASSWORD).await;
    // Back on the same lease, with everything typed still there.
    b.wait("review page", task_id_on_page()).await;
    assert_eq!(
        b.js(&format!("return {};", task_id_on_page())).await,
        assignment
    );
    let restored = b
        .js(
            "return [document.querySelector('input[name=\"preference.pick\"]:checked').value,
                     document.querySelector('input[name=\"preference.strength\"]:checked').value,
                     document.querySelector('textarea[name=justification]').value];",
        )
        .await;
    assert_eq!(restored, json!(["right", "2", words]));
    b.keys(&[&[Key::Control.into(), Key::Enter.into()]]).await;
    b.wait(
        "the next task",
        &format!(
            "{} && {} !== {assignment}",
            task_id_on_page(),
            task_id_on_page()
        ),
    )
    .await;
    let admin = server.admin().await;
    let rows = server.export(&admin, project).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["answer"]["justification"], json!(words));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_yes_no_ranking_per_item_number_and_rewrite_work_from_the_keyboard() {
    let rubric = r#"
fn criteria(task) {
    [
        #{ id: "quality", kind: "likert", label: "Quality", min: 1, max: 5 },
        #{ id: "safe", kind: "boolean", label: "Safe?" },
        #{ id: "order", kind: "ranking", label: "Rank the responses", items: "responses" },
        #{ id: "steps", kind: "per_item", over: "steps", label: "Each step",
           item: #{ id: "step", kind: "choice", options: ["correct", "incorrect"], shortcut: "c/i" } },
        #{ id: "first_wrong", kind: "number", label: "First wrong step", min: 0, max: 3 },
        #{ id: "fixed", kind: "rewrite", label: "Fix the best response", source: "responses.0.text" }
    ]
}
"#;
    let server = Server::start_with(Options {
        rubrics: vec![("many_kinds", rubric.to_owned())],
        ..Options::default()
    })
    .await;
    let task = json!({"external_id": "k1", "data": {"prompt": "Add 2 and 2, then double it.",
        "responses": [{"id": "r1", "text": "The answer is 8"}, {"id": "r2", "text": "It is 6"}, {"id": "r3", "text": "Eight"}],
        "steps": ["2 + 2 = 4", "4 * 2 = 6", "so 6"]}});
    let (project, _) = project_with_expert(
        &server,
        json!({"name": "Kinds", "rubric": "many_kinds", "reviews_per_task": 1}),
        &task.to_string(),
    )
    .await;
    let b = reviewing(&server, project).await;
    b.press('4').await; // quality → next question
    b.press('y').await; // safe → next
    b.press('3').await; // ranking: r3, r1, r2
    b.press('1').await;
    b.press('2').await;
    b.press('c').await; // step 1 correct → step 2
    b.press('i').await;
    b.press('i').await; // step 3 → the number field, focused for typing
    b.wait(
        "number focused",
        "document.activeElement && document.activeElement.name === 'first_wrong'",
    )
    .await;
    b.type_text("2").await;
    b.press(Key::Tab.into()).await; // → the rewrite, caret at the end of the original
    b.wait(
        "rewrite focused",
        "document.activeElement && document.activeElement.name === 'fixed'",
    )
    .await;
    b.type_text(", because 2 + 2 = 4 and 4 × 2 = 8.").await;
    b.wait("diff shown", "document.querySelector('.rewrite-diff ins')")
        .await;
    b.screenshot("review-many-kinds").await;
    b.ctrl_enter().await;
    b.wait("nothing left", "document.getElementById('nothing-left')")
        .await;

    let admin = server.admin().await;
    let rows = server.export(&admin, project).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0]["answer"],
        json!({
            "quality": 4, "safe": true, "order": ["r3", "r1", "r2"],
            "steps": ["correct", "incorrect", "incorrect"], "first_wrong": 2,
            "fixed": "The answer is 8, because 2 + 2 = 4 and 4 × 2 = 8."
        })
    );
}

/// Submits one answer through the API (the browser tests here are about the reviewer).
async fn answer_by_api(server: &Server, token: &str, project: u64, answer: Value) {
    let (status, next) = server.next(token, project).await;
    assert_eq!(status, reqwest::StatusCode::OK, "{next}");
    let aid = next["assignment"]["id"].as_u64().unwrap();
    let (status, body) = server
        .post(
            token,
            &format!("/api/v1/assignments/{aid}/submit"),
            json!({"token": next["assignment"]["token"], "answer": answer}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::CREATED, "{body}");
}

fn qa_item_on_page() -> &'static str {
    "document.getElementById('qa') && document.getElementById('qa').dataset.assignment"
}

/// From the start form to the next QA item, with Enter; returns the item's lease id.
async fn start_qa(b: &Browser, previous: &Value) -> Value {
    b.wait(
        "next QA item",
        &format!(
            "(document.getElementById('btn-start') && document.activeElement && document.activeElement.id === 'btn-start') \
             || (({item}) && ({item}) !== {previous})",
            item = qa_item_on_page(),
            previous = previous
        ),
    )
    .await;
    if b.js("return !!document.getElementById('btn-start');").await == json!(true) {
        b.press(Key::Enter.into()).await;
        b.wait("QA page", qa_item_on_page()).await;
    }
    b.js(&format!("return {};", qa_item_on_page())).await
}

/// A reviewer accepts, rejects with a reason and fixes (the diff shown) from the keyboard,
/// then adjudicates a disagreement by picking an answer; the author's "My work" shows the
/// rejection and its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reviewer_accepts_rejects_and_fixes_from_the_keyboard() {
    let server = Server::start().await;
    let admin = server.admin().await;
    let qa_body = json!({"name": "QA keys", "rubric": "pairwise_preference",
        "reviews_per_task": 1, "qa_rate": 1.0});
    let project = server.project(&admin, qa_body).await;
    server
        .upload(&admin, project, &pairwise_tasks("qk", 3))
        .await;
    let adj_body = json!({"name": "Disagree", "rubric": "pairwise_preference",
        "router": "qa_sampling", "reviews_per_task": 2});
    let disagree = server.project(&admin, adj_body).await;
    server
        .upload(&admin, disagree, &pairwise_tasks("dk", 1))
        .await;
    let (pat, pat_token) = server.expert(&admin, "pat", &[]).await;
    let (sam, sam_token) = server.expert(&admin, "sam", &[]).await;
    let (rita, _) = server.expert(&admin, "rita", &[]).await;
    for p in [project, disagree] {
        server.add_member(&admin, p, pat, "expert").await;
        server.add_member(&admin, p, rita, "reviewer").await;
    }
    server.add_member(&admin, disagree, sam, "expert").await;
    for _ in 0..3 {
        answer_by_api(&server, &pat_token, project, pairwise_answer()).await;
    }
    answer_by_api(&server, &pat_token, disagree, pairwise_answer()).await;
    let other = json!({"preference": {"pick": "right", "strength": 1},
        "justification": "B is quicker and works if the shell is pierced first."});
    answer_by_api(&server, &sam_token, disagree, other).await;

    let b = Browser::start().await;
    b.goto(&format!("{}/p/{project}/qa", server.url)).await;
    b.login_with_keys("rita", EXPERT_PASSWORD).await;
    let first = start_qa(&b, &Value::Null).await;
    b.screenshot("qa").await;
    // y: accept.
    b.press('y').await;
    let second = start_qa(&b, &first).await;
    // n: reject, with the reason typed into the focused box.
    b.press('n').await;
    b.wait(
        "reason focused",
        "document.activeElement && document.activeElement.classList.contains('qa-reason')",
    )
    .await;
    b.type_text("Too vague about the risk.").await;
    b.press(Key::Enter.into()).await;
    let third = start_qa(&b, &second).await;
    // e: fix, in the rubric's form pre-filled with the answer; the diff shows what changed.
    b.press('e').await;
    b.wait(
        "fix form open",
        "document.querySelector('.qa-submission.current .qa-fix-form .field.active')",
    )
    .await;
    let prefilled = "return document.querySelector('.qa-submission.current .qa-fix-form input[value=left]').checked;";
    assert_eq!(
        b.js(prefilled).await,
        json!(true),
        "the form starts from the answer"
    );
    b.press('3').await; // strength 3; the preference is complete → the justification
    b.wait(
        "justification focused",
        "document.activeElement && document.activeElement.name === 'justification'",
    )
    .await;
    b.keys(&[&[Key::Control.into(), 'a']]).await;
    b.type_text("A is the standard safe method.").await;
    // Too short for a strong preference: the rubric refuses the fix, the edits stay and the
    // error shows beside the field, which has the focus again.
    b.ctrl_enter().await;
    b.wait(
        "fix refused beside its field",
        "(() => { const e = document.querySelector('.qa-submission.current .qa-fix-form [data-error-for=justification]'); \
         return e && !e.hidden && document.activeElement && document.activeElement.name === 'justification'; })()",
    )
    .await;
    b.type_text(" B can make the egg explode in the microwave, so it is unsafe.")
        .await;
    b.wait(
        "diff visible",
        "document.querySelector('.qa-submission.current .qa-diff').textContent.includes('\"strength\": 3')",
    )
    .await;
    b.screenshot("qa-fix-diff").await;
    b.ctrl_enter().await;
    b.wait("QA queue done", "document.getElementById('nothing-left')")
        .await;
    assert_ne!(third, Value::Null);
    let rows = server.export(&admin, project).await;
    let fixed: Vec<&Value> = rows
        .iter()
        .filter_map(|r| {
            r["qa"]["fixed_answer"]
                .as_object()
                .map(|_| &r["qa"]["fixed_answer"])
        })
        .collect();
    assert_eq!(fixed.len(), 1, "{rows:?}");
    assert_eq!(
        fixed[0]["preference"],
        json!({"pick": "left", "strength": 3})
    );
    assert_eq!(
        fixed[0]["justification"],
        "A is the standard safe method. B can make the egg explode in the microwave, so it is unsafe."
    );
    let stats = server.stats(&admin, project).await;
    assert_eq!(
        (
            stats["accepted"].as_u64(),
            stats["rejected"].as_u64(),
            stats["fixed"].as_u64()
        ),
        (Some(1), Some(1), Some(1)),
        "{stats}"
    );

    // Adjudication: the answers side by side, 1 picks the first, Ctrl+Enter sends it.
    b.goto(&format!("{}/p/{disagree}/qa", server.url)).await;
    start_qa(&b, &Value::Null).await;
    assert_eq!(
        b.js("return document.getElementById('qa').dataset.kind;")
            .await,
        json!("adjudicate")
    );
    b.screenshot("adjudicate").await;
    // 2 starts the final answer's form from the second answer; Ctrl+Enter sends it.
    b.press('2').await;
    b.wait(
        "final form filled",
        "document.querySelector('#final-form input[value=right]').checked",
    )
    .await;
    b.ctrl_enter().await;
    b.wait("adjudicated", "document.getElementById('nothing-left')")
        .await;
    assert_eq!(server.stats(&admin, disagree).await["adjudicated"], 1);
    let rows = server.export(&admin, disagree).await;
    assert_eq!(
        rows[0]["final"]["answer"]["preference"],
        json!({"pick": "right", "strength": 1}),
        "{rows:?}"
    );

    // The author's "My work": the rejection with its reason.
    b.js("document.getElementById('logout').click(); return true;")
        .await;
    b.wait("signed out", "document.getElementById('login-form')")
        .await;
    b.goto(&format!("{}/me/work", server.url)).await;
    b.login_with_keys("pat", EXPERT_PASSWORD).await;
    b.wait("my work", "document.getElementById('my-work')")
        .await;
    let table = b.text("#my-work").await;
    assert!(
        table.contains("reject") && table.contains("Too vague about the risk."),
        "{table}"
    );
    b.screenshot("my-work").await;
}
