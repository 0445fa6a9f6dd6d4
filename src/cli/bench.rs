//! `assay bench`: the load generator. It starts its own server on a temporary data folder (or
//! uses `--url`), creates a project and experts, imports generated tasks, runs experts in a closed
//! next+submit loop, exports what was submitted, and reports rates, latency percentiles, errors,
//! duplicate hand-outs, and the server's CPU and peak memory. Loopback only; bounded in time.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// A running server to measure; by default the bench starts its own.
    #[arg(long)]
    url: Option<String>,
    /// Admin token for --url (or ASSAY_PASSWORD to log in as admin).
    #[arg(long, env = "ASSAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long, default_value = "loop", value_parser = ["loop", "import", "export", "reload", "pages"])]
    scenario: String,
    /// reload: the server's rubric folder (needed with --url; the bench's own server uses a copy).
    #[arg(long)]
    rubrics: Option<PathBuf>,
    /// reload: milliseconds between two saves of the rubric file.
    #[arg(long, default_value_t = 1000)]
    interval: u64,
    /// Concurrent experts.
    #[arg(long, default_value_t = 32)]
    experts: usize,
    /// Tasks to import.
    #[arg(long, default_value_t = 20_000)]
    tasks: usize,
    /// Reviews per task.
    #[arg(long, default_value_t = 1)]
    reviews: u32,
    /// Warm-up seconds (not measured).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

const ADMIN_PASSWORD: &str = "bench-admin-password";

#[derive(Serialize, Default)]
struct Latency {
    p50: f64,
    p95: f64,
    p99: f64,
    max: f64,
}

fn latency(mut micros: Vec<u64>) -> Latency {
    if micros.is_empty() {
        return Latency::default();
    }
    micros.sort_unstable();
    let at = |q: f64| micros[((micros.len() as f64 - 1.0) * q).round() as usize] as f64 / 1000.0;
    Latency {
        p50: at(0.5),
        p95: at(0.95),
        p99: at(0.99),
        max: at(1.0),
    }
}

#[derive(Serialize, Default)]
struct Report {
    scenario: String,
    experts: usize,
    tasks: usize,
    reviews: u32,
    loops: u64,
    loops_per_s: f64,
    latency_ms: HashMap<&'static str, Latency>,
    errors: HashMap<String, u64>,
    duplicates: u64,
    import: Option<Rate>,
    export: Option<Rate>,
    reload: Option<Reload>,
    server_cpu_percent: Option<f64>,
    peak_rss_mb: Option<f64>,
    /// loop: store flushes during the run and the writes each one made durable on average
    /// (from the server's `/metrics`).
    flushes: Option<u64>,
    writers_per_flush: Option<f64>,
    /// pages: server time per page (the `Server-Timing` header) and time seen by the client.
    pages: Option<std::collections::BTreeMap<&'static str, PageTiming>>,
}

#[derive(Serialize)]
struct PageTiming {
    requests: usize,
    server_ms: Latency,
    client_ms: Latency,
}

#[derive(Serialize)]
struct Rate {
    items: u64,
    seconds: f64,
    tasks_per_s: f64,
    mb_per_s: f64,
}

#[derive(Serialize)]
struct Reload {
    saves: u64,
    /// Time from a file save to the new version serving, in milliseconds.
    save_to_live_ms: Latency,
    /// Saves whose version never went live within 10 s.
    missed: u64,
}

/// The server the bench talks to; killed on drop when the bench started it.
struct Target {
    url: String,
    rubrics: Option<PathBuf>,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Target {
    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

fn start_server() -> Result<Target, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let here = std::env::current_dir().map_err(|e| e.to_string())?;
    // A copy of the rubrics, so the reload scenario can rewrite one without touching the repo.
    let rubrics = dir.path().join("rubrics");
    std::fs::create_dir_all(&rubrics).map_err(|e| e.to_string())?;
    if let Ok(entries) = std::fs::read_dir(here.join("rubrics")) {
        for e in entries.flatten() {
            let _ = std::fs::copy(e.path(), rubrics.join(e.file_name()));
        }
    }
    let mut child = Command::new(exe)
        .arg("serve")
        .current_dir(dir.path())
        .env("ASSAY_STORAGE__DATA", dir.path().join("data"))
        .env("ASSAY_PLUGINS__RUBRICS", &rubrics)
        .env("ASSAY_PLUGINS__PLUGINS", here.join("plugins"))
        .env("ASSAY_SERVER__BIND", "127.0.0.1:0")
        .env("ASSAY_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start the server: {e}"))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Some(url) = line.strip_prefix("assay listening on ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| "the server did not start")?;
    Ok(Target {
        url,
        rubrics: Some(rubrics),
        child: Some(child),
        _dir: Some(dir),
    })
}

/// ~2.3 KB per task: a prompt and two responses.
/// Writes `n` generated tasks (JSON Lines) to a temporary file, so that even a million of them
/// (2.4 GB) is streamed to the server rather than held in memory.
fn generated_tasks(n: usize) -> Result<tempfile::NamedTempFile, String> {
    use std::io::Write;
    let file = tempfile::NamedTempFile::new().map_err(|e| e.to_string())?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file.as_file());
    let filler =
        "The committee reviewed the evidence in detail and found that the proposed change \
                  would reduce the error rate while keeping latency within the agreed budget. ";
    for i in 0..n {
        let a = filler.repeat(6);
        let b = filler.repeat(5);
        let line = json!({
            "external_id": format!("bench-{i}"),
            "data": {"prompt": format!("Task {i}: summarise the committee's finding in two sentences."),
                     "responses": [{"id": "a", "text": a}, {"id": "b", "text": b}]},
            "meta": {"domain": "general"}
        });
        serde_json::to_writer(&mut out, &line).map_err(|e| e.to_string())?;
        out.write_all(b"\n").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    drop(out);
    Ok(file)
}

fn proc_stat(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = hwm.split_whitespace().nth(1)?.parse().ok()?;
    Some((cpu, kb / 1024.0))
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> Result<(u16, Value), String> {
    let mut req = client.request(method, url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.map_err(|e| format!("transport: {e}"))?;
    let status = res.status().as_u16();
    let text = res.text().await.map_err(|e| format!("transport: {e}"))?;
    Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

async fn login(
    client: &reqwest::Client,
    url: &str,
    user: &str,
    password: &str,
) -> Result<String, String> {
    let res = client
        .post(format!("{url}/api/v1/auth/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = res.json().await.map_err(|e| e.to_string())?;
    v["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("login of {user} failed: {v}"))
}

pub async fn run(args: BenchArgs) -> Result<(), String> {
    let target = match &args.url {
        Some(url) => Target {
            url: url.clone(),
            rubrics: args.rubrics.clone(),
            child: None,
            _dir: None,
        },
        None => start_server()?,
    };
    let url = target.url.clone();
    let api = format!("{url}/api/v1");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .map_err(|e| e.to_string())?;
    let admin = match &args.token {
        Some(t) => t.clone(),
        None => {
            let pw = if args.url.is_some() {
                std::env::var("ASSAY_PASSWORD")
                    .map_err(|_| "give --token or ASSAY_PASSWORD for --url")?
            } else {
                ADMIN_PASSWORD.to_owned()
            };
            login(&client, &url, "admin", &pw).await?
        }
    };
    let run_id = format!("{:08x}", rand::random::<u32>());
    let live = match (args.scenario.as_str(), &target.rubrics) {
        ("reload", Some(dir)) => {
            Some(prepare_live_rubric(&client, &api, &admin, dir, &run_id).await?)
        }
        ("reload", None) => return Err("the reload scenario needs --rubrics DIR with --url".into()),
        _ => None,
    };
    let rubric_name = live
        .as_ref()
        .map_or("pairwise_preference".to_owned(), |(name, _)| name.clone());
    let (status, project) = call(
        &client,
        reqwest::Method::POST,
        format!("{api}/projects"),
        &admin,
        Some(json!({
            "name": format!("bench {run_id}"), "rubric": rubric_name, "router": "fixed_overlap",
            "reviews_per_task": args.reviews, "lease_seconds": 600
        })),
    )
    .await?;
    if status != 201 {
        return Err(format!("cannot create the bench project: {project}"));
    }
    let pid = project["id"].as_u64().ok_or("no project id")?;
    let mut report = Report {
        scenario: args.scenario.clone(),
        experts: args.experts,
        tasks: args.tasks,
        reviews: args.reviews,
        ..Default::default()
    };

    // Import.
    let file = generated_tasks(args.tasks)?;
    let bytes = file.as_file().metadata().map_err(|e| e.to_string())?.len();
    let upload = tokio::fs::File::open(file.path())
        .await
        .map_err(|e| e.to_string())?;
    let body =
        reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(upload, 1 << 20));
    let started = Instant::now();
    let res = client
        .post(format!("{api}/projects/{pid}/tasks"))
        .bearer_auth(&admin)
        .header(reqwest::header::CONTENT_LENGTH, bytes)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if res.status().as_u16() != 201 {
        return Err(format!(
            "import failed: {}",
            res.text().await.unwrap_or_default()
        ));
    }
    let secs = started.elapsed().as_secs_f64();
    report.import = Some(Rate {
        items: args.tasks as u64,
        seconds: secs,
        tasks_per_s: args.tasks as f64 / secs,
        mb_per_s: bytes as f64 / 1e6 / secs,
    });
    drop(file);

    if args.scenario == "pages" {
        report.pages = Some(run_pages(&client, &url, &api, &admin, pid, &run_id).await?);
    } else if args.scenario != "import" {
        let reloader = live.map(|(name, file)| {
            let (client, api, admin) = (client.clone(), api.clone(), admin.clone());
            let (warmup, duration, interval) = (args.warmup, args.duration, args.interval);
            tokio::spawn(async move {
                reload_loop(
                    &client, &api, &admin, &name, &file, warmup, duration, interval,
                )
                .await
            })
        });
        run_loop(
            &args,
            &client,
            &api,
            &admin,
            pid,
            &run_id,
            &target,
            &mut report,
        )
        .await?;
        if let Some(r) = reloader {
            report.reload = Some(r.await.map_err(|e| e.to_string())??);
        }
        // Export everything submitted.
        let started = Instant::now();
        let res = client
            .get(format!("{api}/projects/{pid}/export?format=jsonl"))
            .bearer_auth(&admin)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let mut stream = res.bytes_stream();
        let (mut n, mut lines) = (0u64, 0u64);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            n += chunk.len() as u64;
            lines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        }
        let secs = started.elapsed().as_secs_f64();
        report.export = Some(Rate {
            items: lines,
            seconds: secs,
            tasks_per_s: lines as f64 / secs,
            mb_per_s: n as f64 / 1e6 / secs,
        });
    }
    if let Some((_, rss)) = target.pid().and_then(proc_stat) {
        report.peak_rss_mb = Some(rss);
    }
    print_report(&report, args.json);
    Ok(())
}

/// Creates an expert, makes them a member of the project and signs them in: (id, token).
async fn new_expert(
    client: &reqwest::Client,
    api: &str,
    admin: &str,
    pid: u64,
    name: &str,
) -> Result<(u64, String), String> {
    let (status, user) = call(
        client,
        reqwest::Method::POST,
        format!("{api}/users"),
        admin,
        Some(json!({"username": name, "password": "bench-expert-password"})),
    )
    .await?;
    if status != 201 {
        return Err(format!("cannot create expert: {user}"));
    }
    let uid = user["id"].as_u64().ok_or("no user id")?;
    call(
        client,
        reqwest::Method::PUT,
        format!("{api}/projects/{pid}/members/{uid}"),
        admin,
        Some(json!({"role": "expert"})),
    )
    .await?;
    let url = api.trim_end_matches("/api/v1");
    Ok((
        uid,
        login(client, url, name, "bench-expert-password").await?,
    ))
}

/// Requests each page many times with a session cookie and collects its render times.
async fn run_pages(
    client: &reqwest::Client,
    url: &str,
    api: &str,
    admin: &str,
    pid: u64,
    run_id: &str,
) -> Result<std::collections::BTreeMap<&'static str, PageTiming>, String> {
    const ROUNDS: usize = 200;
    let (_, expert) = new_expert(client, api, admin, pid, &format!("bench-{run_id}-pages")).await?;
    // Twenty answers so the submissions page has a full page to show.
    let answer = json!({"preference": {"pick": "left", "strength": 2}, "justification": "A is more complete and better supported by the evidence."});
    for _ in 0..20 {
        let (_, next) = call(
            client,
            reqwest::Method::POST,
            format!("{api}/projects/{pid}/next"),
            &expert,
            None,
        )
        .await?;
        let aid = next["assignment"]["id"]
            .as_u64()
            .ok_or("nothing to review")?;
        let body = json!({"token": next["assignment"]["token"], "answer": answer});
        call(
            client,
            reqwest::Method::POST,
            format!("{api}/assignments/{aid}/submit"),
            &expert,
            Some(body),
        )
        .await?;
    }
    let pages: [(&'static str, String, Option<&str>); 9] = [
        ("login", "/login".into(), None),
        ("home", "/".into(), Some(&expert)),
        ("review", format!("/p/{pid}/review"), Some(&expert)),
        (
            "submissions (20 per page)",
            format!("/p/{pid}/submissions"),
            Some(admin),
        ),
        ("stats", format!("/p/{pid}/stats"), Some(admin)),
        ("admin projects", "/admin/projects".into(), Some(admin)),
        (
            "admin project",
            format!("/admin/projects/{pid}"),
            Some(admin),
        ),
        ("admin users", "/admin/users".into(), Some(admin)),
        ("admin plugins", "/admin/plugins".into(), Some(admin)),
    ];
    let mut out = std::collections::BTreeMap::new();
    for (label, path, token) in pages {
        let (mut server, mut seen) = (Vec::with_capacity(ROUNDS), Vec::with_capacity(ROUNDS));
        for _ in 0..ROUNDS {
            let mut req = client.get(format!("{url}{path}"));
            if let Some(t) = token {
                req = req.header(reqwest::header::COOKIE, format!("assay_session={t}"));
            }
            let t0 = Instant::now();
            let res = req.send().await.map_err(|e| e.to_string())?;
            if res.status() != 200 {
                return Err(format!("{path}: HTTP {}", res.status()));
            }
            let timing = res
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split("dur=").nth(1))
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0);
            let _ = res.bytes().await.map_err(|e| e.to_string())?;
            seen.push(t0.elapsed().as_micros() as u64);
            server.push((timing * 1000.0) as u64);
        }
        out.insert(
            label,
            PageTiming {
                requests: ROUNDS,
                server_ms: latency(server),
                client_ms: latency(seen),
            },
        );
    }
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn run_loop(
    args: &BenchArgs,
    client: &reqwest::Client,
    api: &str,
    admin: &str,
    pid: u64,
    run_id: &str,
    target: &Target,
    report: &mut Report,
) -> Result<(), String> {
    let mut tokens = Vec::new();
    for i in 0..args.experts {
        tokens.push(new_expert(client, api, admin, pid, &format!("bench-{run_id}-{i}")).await?);
    }
    let answer = json!({"preference": {"pick": "left", "strength": 2}, "justification": "A is more complete and better supported by the evidence."});
    let warmup_end = Instant::now() + Duration::from_secs_f64(args.warmup);
    let end = warmup_end + Duration::from_secs_f64(args.duration);
    #[derive(Default)]
    struct Shared {
        next: Vec<u64>,
        submit: Vec<u64>,
        whole: Vec<u64>,
        errors: HashMap<String, u64>,
        handed: HashMap<u64, HashSet<u64>>,
        duplicates: u64,
        loops: u64,
    }
    let shared = Arc::new(Mutex::new(Shared::default()));
    let cpu_before = target.pid().and_then(proc_stat).map(|s| s.0);
    let flushes_before = flush_counts(client, &target.url).await;
    let mut workers = Vec::new();
    for (uid, token) in tokens {
        let (client, api, answer, shared) = (
            client.clone(),
            api.to_owned(),
            answer.clone(),
            shared.clone(),
        );
        workers.push(tokio::spawn(async move {
            let (mut next_l, mut sub_l, mut loop_l) = (Vec::new(), Vec::new(), Vec::new());
            let mut errors: HashMap<String, u64> = HashMap::new();
            let mut seen: Vec<u64> = Vec::new();
            let mut loops = 0u64;
            while Instant::now() < end {
                let t0 = Instant::now();
                let n = call(
                    &client,
                    reqwest::Method::POST,
                    format!("{api}/projects/{pid}/next"),
                    &token,
                    None,
                )
                .await;
                let t1 = Instant::now();
                let (status, next) = match n {
                    Ok(r) => r,
                    Err(e) => {
                        *errors.entry(e).or_default() += 1;
                        continue;
                    }
                };
                if status == 204 {
                    *errors.entry("queue empty".into()).or_default() += 1;
                    break;
                }
                if status != 200 {
                    *errors
                        .entry(format!(
                            "next {status} {}",
                            next["code"].as_str().unwrap_or("")
                        ))
                        .or_default() += 1;
                    continue;
                }
                let (Some(aid), Some(task)) = (
                    next["assignment"]["id"].as_u64(),
                    next["task"]["id"].as_u64(),
                ) else {
                    continue;
                };
                seen.push(task);
                let body = json!({"token": next["assignment"]["token"], "answer": answer});
                let s = call(
                    &client,
                    reqwest::Method::POST,
                    format!("{api}/assignments/{aid}/submit"),
                    &token,
                    Some(body),
                )
                .await;
                let t2 = Instant::now();
                match s {
                    Ok((201, _)) => {
                        if t0 >= warmup_end {
                            next_l.push((t1 - t0).as_micros() as u64);
                            sub_l.push((t2 - t1).as_micros() as u64);
                            loop_l.push((t2 - t0).as_micros() as u64);
                            loops += 1;
                        }
                    }
                    Ok((status, body)) => {
                        *errors
                            .entry(format!(
                                "submit {status} {}",
                                body["code"].as_str().unwrap_or("")
                            ))
                            .or_default() += 1
                    }
                    Err(e) => *errors.entry(e).or_default() += 1,
                }
            }
            let mut sh = shared.lock().unwrap_or_else(|p| p.into_inner());
            sh.next.extend(next_l);
            sh.submit.extend(sub_l);
            sh.whole.extend(loop_l);
            sh.loops += loops;
            for (k, v) in errors {
                *sh.errors.entry(k).or_default() += v;
            }
            for task in seen {
                if !sh.handed.entry(task).or_default().insert(uid) {
                    sh.duplicates += 1; // the same task handed to the same expert twice
                }
            }
        }));
    }
    for w in workers {
        let _ = w.await;
    }
    let measured = (Instant::now().min(end) - warmup_end)
        .as_secs_f64()
        .max(1e-9);
    let cpu_after = target.pid().and_then(proc_stat).map(|s| s.0);
    if let (Some((f0, w0)), Some((f1, w1))) =
        (flushes_before, flush_counts(client, &target.url).await)
    {
        let flushes = f1.saturating_sub(f0);
        report.flushes = Some(flushes);
        report.writers_per_flush =
            (flushes > 0).then(|| w1.saturating_sub(w0) as f64 / flushes as f64);
    }
    let mut sh = shared.lock().unwrap_or_else(|p| p.into_inner());
    // More experts on a task than it asked reviews for is a duplicate hand-out too.
    let over: u64 = sh
        .handed
        .values()
        .map(|e| (e.len() as u64).saturating_sub(u64::from(args.reviews)))
        .sum();
    report.duplicates = sh.duplicates + over;
    report.loops = sh.loops;
    report.loops_per_s = sh.loops as f64 / measured;
    report
        .latency_ms
        .insert("next", latency(std::mem::take(&mut sh.next)));
    report
        .latency_ms
        .insert("submit", latency(std::mem::take(&mut sh.submit)));
    report
        .latency_ms
        .insert("loop", latency(std::mem::take(&mut sh.whole)));
    report.errors = std::mem::take(&mut sh.errors);
    if let (Some(a), Some(b)) = (cpu_before, cpu_after) {
        report.server_cpu_percent = Some((b - a) / (measured + args.warmup) * 100.0);
    }
    Ok(())
}

/// Writes `bench_live_ID.rhai` (the pairwise rubric) and waits until the server serves it.
async fn prepare_live_rubric(
    client: &reqwest::Client,
    api: &str,
    admin: &str,
    dir: &std::path::Path,
    run_id: &str,
) -> Result<(String, PathBuf), String> {
    let name = format!("bench_live_{run_id}");
    let file = dir.join(format!("{name}.rhai"));
    let source = std::fs::read_to_string(dir.join("pairwise_preference.rhai"))
        .map_err(|e| format!("no pairwise_preference rubric to copy: {e}"))?;
    std::fs::write(&file, &source).map_err(|e| e.to_string())?;
    let hash = crate::scripting::registry::content_hash(&source);
    wait_live(client, api, admin, &name, &hash, Duration::from_secs(20))
        .await
        .ok_or("the bench rubric never went live (is the watcher on?)")?;
    Ok((name, file))
}

/// Polls the plugin list until `name` serves `hash`; returns how long it took.
async fn wait_live(
    client: &reqwest::Client,
    api: &str,
    admin: &str,
    name: &str,
    hash: &str,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if let Ok((200, list)) = call(
            client,
            reqwest::Method::GET,
            format!("{api}/plugins"),
            admin,
            None,
        )
        .await
        {
            let live = list
                .as_array()
                .is_some_and(|l| l.iter().any(|p| p["name"] == name && p["version"] == hash));
            if live {
                return Some(started.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

/// Rewrites the live rubric every `interval` ms during the measured window, alternating
/// in-place writes and write-then-rename saves, and times each until it serves.
#[allow(clippy::too_many_arguments)]
async fn reload_loop(
    client: &reqwest::Client,
    api: &str,
    admin: &str,
    name: &str,
    file: &std::path::Path,
    warmup: f64,
    duration: f64,
    interval: u64,
) -> Result<Reload, String> {
    tokio::time::sleep(Duration::from_secs_f64(warmup)).await;
    let base = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
    let end = Instant::now() + Duration::from_secs_f64(duration);
    let (mut saves, mut missed, mut took) = (0u64, 0u64, Vec::new());
    while Instant::now() + Duration::from_millis(interval) <= end {
        saves += 1;
        let source = format!("{base}\n// revision {saves}\n");
        let hash = crate::scripting::registry::content_hash(&source);
        let saved_at = Instant::now();
        let written = if saves % 2 == 0 {
            let tmp = file.with_extension("rhai.tmp");
            std::fs::write(&tmp, &source).and_then(|_| std::fs::rename(&tmp, file))
        } else {
            std::fs::write(file, &source)
        };
        written.map_err(|e| e.to_string())?;
        match wait_live(client, api, admin, name, &hash, Duration::from_secs(10)).await {
            Some(_) => took.push(saved_at.elapsed().as_micros() as u64),
            None => missed += 1,
        }
        let next = saved_at + Duration::from_millis(interval);
        tokio::time::sleep(next.saturating_duration_since(Instant::now())).await;
    }
    Ok(Reload {
        saves,
        save_to_live_ms: latency(took),
        missed,
    })
}

/// The server's flush count and the writes that waited for flushes, from `/metrics`.
async fn flush_counts(client: &reqwest::Client, url: &str) -> Option<(u64, u64)> {
    let text = client
        .get(format!("{url}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    let counter = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<u64>().ok())
    };
    Some((
        counter("assay_group_flushes_total")?,
        counter("assay_durable_writes_total")?,
    ))
}

fn print_report(r: &Report, as_json: bool) {
    if as_json {
        println!("{}", serde_json::to_string_pretty(r).unwrap_or_default());
        return;
    }
    println!(
        "scenario {}: {} experts, {} tasks, {} review(s) per task",
        r.scenario, r.experts, r.tasks, r.reviews
    );
    if let Some(i) = &r.import {
        println!(
            "import   {} tasks in {:.2} s: {:.0} tasks/s, {:.1} MB/s",
            i.items, i.seconds, i.tasks_per_s, i.mb_per_s
        );
    }
    if let Some(pages) = &r.pages {
        println!("pages    median / p95 server time (Server-Timing), median client time");
        for (name, t) in pages {
            println!(
                "  {name:<26} {:.2} ms / {:.2} ms, client {:.2} ms ({} requests)",
                t.server_ms.p50, t.server_ms.p95, t.client_ms.p50, t.requests
            );
        }
    } else if r.scenario != "import" {
        println!(
            "loop     {} loops, {:.0} loops/s, duplicates {}",
            r.loops, r.loops_per_s, r.duplicates
        );
        for phase in ["next", "submit", "loop"] {
            if let Some(l) = r.latency_ms.get(phase) {
                println!(
                    "  {phase:<7} p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                    l.p50, l.p95, l.p99, l.max
                );
            }
        }
        if !r.errors.is_empty() {
            println!("errors   {:?}", r.errors);
        }
        if let (Some(f), Some(w)) = (r.flushes, r.writers_per_flush) {
            println!("flushes  {f}, {w:.1} durable writes per flush");
        }
    }
    if let Some(e) = &r.export {
        println!(
            "export   {} records in {:.2} s: {:.0} records/s, {:.1} MB/s",
            e.items, e.seconds, e.tasks_per_s, e.mb_per_s
        );
    }
    if let Some(rl) = &r.reload {
        let l = &rl.save_to_live_ms;
        println!(
            "reload   {} saves, save-to-live p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms, missed {}",
            rl.saves, l.p50, l.p99, l.max, rl.missed
        );
    }
    if let Some(c) = r.server_cpu_percent {
        println!("server   cpu {c:.0}% (of one core)");
    }
    if let Some(m) = r.peak_rss_mb {
        println!("server   peak RSS {m:.1} MB");
    }
}
