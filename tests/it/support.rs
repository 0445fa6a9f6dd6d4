//! Starts the real `assay` binary on a free port with a temporary data folder, and talks HTTP to
//! it. Every test gets its own server.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{json, Value};

pub const ADMIN_PASSWORD: &str = "admin-password-1";
pub const SECRET: &str = "test-secret-test-secret-test-secret-0123456789";
pub const EXPERT_PASSWORD: &str = "expert-password-1";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub struct Server {
    child: Option<Child>,
    pub url: String,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    env: Vec<(String, String)>,
}

#[derive(Default, Clone)]
pub struct Options {
    /// Extra rubric files: (name, source).
    pub rubrics: Vec<(&'static str, String)>,
    /// Extra environment, e.g. ("ASSAY_SCRIPTING__TIMEOUT_MS", "300").
    pub env: Vec<(&'static str, String)>,
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(Options::default()).await
    }

    pub async fn start_with(opts: Options) -> Server {
        let dir = tempfile::tempdir().expect("tempdir");
        let rubrics = dir.path().join("rubrics");
        let plugins = dir.path().join("plugins");
        copy_dir(&repo().join("rubrics"), &rubrics);
        copy_dir(&repo().join("plugins"), &plugins);
        for (name, source) in &opts.rubrics {
            std::fs::write(rubrics.join(format!("{name}.rhai")), source).expect("write rubric");
        }
        let mut env = vec![
            (
                "ASSAY_STORAGE__DATA".to_owned(),
                dir.path().join("data").display().to_string(),
            ),
            (
                "ASSAY_PLUGINS__RUBRICS".to_owned(),
                rubrics.display().to_string(),
            ),
            (
                "ASSAY_PLUGINS__PLUGINS".to_owned(),
                plugins.display().to_string(),
            ),
            (
                "ASSAY_PLUGINS__TEMPLATES".to_owned(),
                dir.path().join("templates").display().to_string(),
            ),
            ("ASSAY_SERVER__BIND".to_owned(), "127.0.0.1:0".to_owned()),
            ("ASSAY_SERVER__WORKERS".to_owned(), "2".to_owned()),
            ("ASSAY_AUTH__SECRET".to_owned(), SECRET.to_owned()),
            (
                "ASSAY_QUEUE__SWEEP_INTERVAL_MS".to_owned(),
                "100".to_owned(),
            ),
            ("ASSAY_ADMIN_PASSWORD".to_owned(), ADMIN_PASSWORD.to_owned()),
        ];
        for (k, v) in opts.env {
            env.push((k.to_owned(), v));
        }
        let mut server = Server {
            child: None,
            url: String::new(),
            dir,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            env,
        };
        server.launch().await;
        server
    }

    /// Starts the process and waits until it prints its address and answers `/healthz`.
    async fn launch(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_assay"));
        cmd.arg("serve")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd.env("RUST_LOG", "warn").current_dir(self.dir.path());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn assay");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("assay listening on ") {
                    if !sent {
                        let _ = tx.send(url.to_owned());
                        sent = true;
                    }
                }
            }
        });
        let url = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(60)))
            .await
            .expect("join")
            .expect("the server did not print its address");
        self.url = url;
        self.child = Some(child);
        for _ in 0..100 {
            if let Ok(r) = self
                .client
                .get(format!("{}/healthz", self.url))
                .send()
                .await
            {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not become healthy");
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server is running").id()
    }

    /// A `/proc/{pid}/status` figure of the server in KiB, e.g. `VmRSS` or `VmHWM` (the peak).
    pub fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    /// Kills the process with SIGKILL (no chance to clean up).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same data folder.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// Stops the process with SIGTERM (a clean stop) and waits for it to exit.
    pub fn terminate(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let sent = Command::new("kill").args(["-TERM", &pid]).status();
            assert!(sent.is_ok_and(|s| s.success()), "cannot send SIGTERM");
            let status = child.wait().expect("wait for the server");
            assert!(
                status.success(),
                "a clean stop exits with success: {status}"
            );
        }
    }

    /// Starts the process again after [`Server::terminate`] or [`Server::kill`].
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is still running");
        self.launch().await;
    }

    /// One value of `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .client
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name}"))
    }

    /// Waits until `/readyz` says the hand-out index is loaded.
    pub async fn ready(&self) {
        for _ in 0..600 {
            if let Ok(r) = self.client.get(format!("{}/readyz", self.url)).send().await {
                if r.status() == StatusCode::OK {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the server did not become ready");
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn rubric_dir(&self) -> PathBuf {
        self.dir.path().join("rubrics")
    }

    pub async fn request(
        &self,
        method: reqwest::Method,
        token: Option<&str>,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{}", self.url, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let text = res.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, token: &str, path: &str) -> (StatusCode, Value) {
        self.request(reqwest::Method::GET, Some(token), path, None)
            .await
    }

    pub async fn post(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::POST, Some(token), path, Some(body))
            .await
    }

    pub async fn patch(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::PATCH, Some(token), path, Some(body))
            .await
    }

    pub async fn put(&self, token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.request(reqwest::Method::PUT, Some(token), path, Some(body))
            .await
    }

    pub async fn upload(&self, token: &str, project: u64, body: &str) -> (StatusCode, Value) {
        let res = self
            .client
            .post(format!("{}/api/v1/projects/{project}/tasks", self.url))
            .bearer_auth(token)
            .body(body.to_owned())
            .send()
            .await
            .expect("upload");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn login(&self, username: &str, password: &str) -> String {
        let (status, body) = self
            .request(
                reqwest::Method::POST,
                None,
                "/api/v1/auth/login",
                Some(json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login {username}: {body}");
        body["token"].as_str().expect("token").to_owned()
    }

    pub async fn admin(&self) -> String {
        self.login("admin", ADMIN_PASSWORD).await
    }

    /// Creates a member with the given skills and returns (id, token).
    pub async fn expert(&self, admin: &str, username: &str, skills: &[&str]) -> (u64, String) {
        let (status, body) = self
            .post(
                admin,
                "/api/v1/users",
                json!({"username": username, "password": EXPERT_PASSWORD, "skills": skills}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let id = body["id"].as_u64().expect("id");
        (id, self.login(username, EXPERT_PASSWORD).await)
    }

    pub async fn project(&self, admin: &str, body: Value) -> u64 {
        let (status, project) = self.post(admin, "/api/v1/projects", body).await;
        assert_eq!(status, StatusCode::CREATED, "{project}");
        project["id"].as_u64().expect("id")
    }

    pub async fn add_member(&self, admin: &str, project: u64, user: u64, role: &str) {
        let (status, body) = self
            .put(
                admin,
                &format!("/api/v1/projects/{project}/members/{user}"),
                json!({"role": role}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    /// `POST /projects/{project}/next` as `token`.
    pub async fn next(&self, token: &str, project: u64) -> (StatusCode, Value) {
        self.post(
            token,
            &format!("/api/v1/projects/{project}/next"),
            json!({}),
        )
        .await
    }

    /// The project's kept counters.
    pub async fn stats(&self, token: &str, project: u64) -> Value {
        self.get(token, &format!("/api/v1/projects/{project}/stats"))
            .await
            .1
    }

    /// Takes the next task of a project and submits `answer` for it: the submit's status and
    /// body, or `next`'s when there was no task.
    pub async fn review_next(
        &self,
        token: &str,
        project: u64,
        answer: Value,
    ) -> (StatusCode, Value) {
        let (status, next) = self
            .post(
                token,
                &format!("/api/v1/projects/{project}/next"),
                json!({}),
            )
            .await;
        if status != StatusCode::OK {
            return (status, next);
        }
        let aid = next["assignment"]["id"].as_u64().expect("assignment id");
        let body = json!({"token": next["assignment"]["token"], "answer": answer});
        self.post(token, &format!("/api/v1/assignments/{aid}/submit"), body)
            .await
    }

    /// A project's export in `format`, as the server sent it.
    pub async fn export_text(&self, token: &str, project: u64, format: &str) -> String {
        let res = self
            .client
            .get(format!(
                "{}/api/v1/projects/{project}/export?format={format}",
                self.url
            ))
            .bearer_auth(token)
            .send()
            .await
            .expect("export");
        assert_eq!(res.status(), StatusCode::OK);
        res.text().await.expect("text")
    }

    pub async fn export(&self, token: &str, project: u64) -> Vec<Value> {
        self.export_text(token, project, "jsonl")
            .await
            .lines()
            .map(|l| serde_json::from_str(l).expect("jsonl line"))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// `n` pairwise tasks as JSON Lines with external ids `prefix-i`.
pub fn pairwise_tasks(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            json!({
                "external_id": format!("{prefix}-{i}"),
                "data": {
                    "prompt": format!("Question {i}: how do I boil an egg?"),
                    "responses": [
                        {"id": "a", "text": format!("Put egg {i} in boiling water for nine minutes.")},
                        {"id": "b", "text": "Microwave it in its shell."}
                    ]
                }
            })
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A valid answer for the shipped pairwise rubric.
pub fn pairwise_answer() -> Value {
    json!({
        "preference": {"pick": "left", "strength": 2},
        "justification": "A gives a safe, correct method; B risks the egg exploding."
    })
}

pub fn pairwise_project(name: &str, reviews: u32) -> Value {
    json!({"name": name, "rubric": "pairwise_preference", "router": "fixed_overlap", "reviews_per_task": reviews})
}
