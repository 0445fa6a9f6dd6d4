//! The server under test: started on a temporary data folder (or given by `--url`), its CPU
//! and memory read from `/proc`, and the generated tasks it imports.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;

use super::ADMIN_PASSWORD;

/// The server the bench talks to; killed on drop when the bench started it.
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) rubrics: Option<PathBuf>,
    pub(crate) child: Option<Child>,
    pub(crate) _dir: Option<tempfile::TempDir>,
    /// Extra settings the server was started with, for a restart.
    pub(crate) env: Vec<(String, String)>,
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
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

pub(crate) fn start_server(env: &[(&str, &str)]) -> Result<Target, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let here = std::env::current_dir().map_err(|e| e.to_string())?;
    // A copy of the rubrics, so the reload scenario can rewrite one without touching the repo.
    let rubrics = dir.path().join("rubrics");
    std::fs::create_dir_all(&rubrics).map_err(|e| e.to_string())?;
    if let Ok(entries) = std::fs::read_dir(here.join("rubrics")) {
        for e in entries.flatten() {
            let _ = std::fs::copy(e.path(), rubrics.join(e.file_name()));
        }
    }
    let (child, url) = spawn_server(dir.path(), &rubrics, env)?;
    Ok(Target {
        url,
        rubrics: Some(rubrics),
        child: Some(child),
        _dir: Some(dir),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    })
}

impl Target {
    /// Kills the server with SIGKILL and starts it again on the same data (a new port).
    pub(crate) fn kill_and_restart(&mut self) -> Result<(), String> {
        let (Some(dir), Some(rubrics)) = (&self._dir, &self.rubrics) else {
            return Err("only the bench's own server can be restarted".into());
        };
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (child, url) = spawn_server(dir.path(), rubrics, &env)?;
        self.child = Some(child);
        self.url = url;
        Ok(())
    }
}

/// Starts `assay serve` on a folder; returns the process and its URL once it listens.
fn spawn_server(
    dir: &std::path::Path,
    rubrics: &std::path::Path,
    env: &[(&str, &str)],
) -> Result<(Child, String), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let here = std::env::current_dir().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .arg("serve")
        .current_dir(dir)
        .env("ASSAY_STORAGE__DATA", dir.join("data"))
        .env("ASSAY_PLUGINS__RUBRICS", rubrics)
        .env("ASSAY_PLUGINS__PLUGINS", here.join("plugins"))
        .env("ASSAY_SERVER__BIND", "127.0.0.1:0")
        .env("ASSAY_ADMIN_PASSWORD", ADMIN_PASSWORD)
        // The bench's own server logs warnings only, unless ASSAY_BENCH_LOG asks for more
        // (`info` shows, for instance, how an import's time splits between its two passes).
        .env(
            "RUST_LOG",
            std::env::var("ASSAY_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .envs(env.iter().copied())
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
    Ok((child, url))
}

/// ~2.3 KB per task: a prompt and two responses.
/// Writes `n` generated tasks (JSON Lines) to a temporary file, so that even a million of them
/// (2.4 GB) is streamed to the server rather than held in memory.
pub(crate) fn generated_tasks(n: usize) -> Result<tempfile::NamedTempFile, String> {
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

pub(crate) fn proc_stat(pid: u32) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = (fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = hwm.split_whitespace().nth(1)?.parse().ok()?;
    Some((cpu, kb / 1024.0))
}
