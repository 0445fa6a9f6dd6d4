//! Pages in a real browser: headless Chromium driven through chromedriver (Debian's `chromium`
//! and `chromium-driver`, installed by `.ci/run`). Screenshots of the main pages are written to
//! `target/screenshots/` for people to look at.

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
}

impl Browser {
    pub async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is needed: apt-get install chromium chromium-driver");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                            "--disable-background-networking", "--disable-dev-shm-usage",
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
                Ok(client) => return Browser { client, driver },
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
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
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
    let b = Browser::start().await;
    // Not signed in: the review page sends us to login and brings us back.
    b.goto(&format!("{}/p/{project}/review", server.url)).await;
    assert!(
        b.path().await.starts_with("/login?next="),
        "{}",
        b.path().await
    );
    b.screenshot("login").await;
    b.login_with_keys("pat", EXPERT_PASSWORD).await;
    assert_eq!(b.path().await, format!("/p/{project}/review"));
    b.wait("review page", task_id_on_page()).await;

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
