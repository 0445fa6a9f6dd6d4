//! The HTTP client behind `assay import` and `assay export`.

use std::path::Path;

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn token(
    client: &reqwest::Client,
    url: &str,
    token: Option<String>,
    user: &str,
) -> Result<String, String> {
    if let Some(t) = token {
        return Ok(t);
    }
    let password = std::env::var("ASSAY_PASSWORD")
        .map_err(|_| "give --token (or ASSAY_TOKEN), or set ASSAY_PASSWORD to log in".to_owned())?;
    let res = client
        .post(format!("{url}/api/v1/auth/login"))
        .json(&serde_json::json!({"username": user, "password": password}))
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = res.status();
    let body: serde_json::Value = res.json().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "login failed: {}",
            body["message"].as_str().unwrap_or("unknown error")
        ));
    }
    body["token"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| "login returned no token".into())
}

/// `POST /api/v1/users` on a running server; the created user.
pub async fn add_user(
    url: &str,
    token: &str,
    body: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let url = url.trim_end_matches('/');
    let res = reqwest::Client::new()
        .post(format!("{url}/api/v1/users"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = res.status();
    let text = res.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(describe_error(status, &text));
    }
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn describe_error(status: reqwest::StatusCode, body: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(body) else {
        return format!("{status}: {body}");
    };
    let mut out = format!(
        "{status} {}: {}",
        v["code"].as_str().unwrap_or(""),
        v["message"].as_str().unwrap_or("")
    );
    if let Some(errors) = v["errors"].as_array() {
        for e in errors {
            let at = match (
                e.get("line").and_then(|l| l.as_u64()),
                e.get("record").and_then(|r| r.as_u64()),
            ) {
                (Some(l), _) => format!("line {l}"),
                (None, Some(r)) => format!("record {r}"),
                _ => e["field"].as_str().unwrap_or("").to_owned(),
            };
            out.push_str(&format!(
                "\n  {at}: {}",
                e["message"].as_str().unwrap_or("")
            ));
        }
    }
    out
}

pub async fn import(
    url: &str,
    tok: Option<String>,
    user: &str,
    file: &Path,
    project: u64,
) -> Result<(), String> {
    let client = reqwest::Client::new();
    let tok = token(&client, url, tok, user).await?;
    let f = tokio::fs::File::open(file)
        .await
        .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    let size = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let bar = ProgressBar::new(size);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} uploading [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .map_err(|e| e.to_string())?
        .progress_chars("=> "),
    );
    let progress = bar.clone();
    let stream = futures_util::stream::unfold(Some(f), move |file| {
        let progress = progress.clone();
        async move {
            let mut f = file?;
            let mut buf = vec![0u8; 256 * 1024];
            match f.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    progress.inc(n as u64);
                    Some((Ok(bytes::Bytes::from(buf)), Some(f)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    });
    let res = client
        .post(format!("{url}/api/v1/projects/{project}/tasks"))
        .bearer_auth(&tok)
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .map_err(|e| format!("upload failed: {e}"))?;
    bar.finish_and_clear();
    let status = res.status();
    let body = res.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(describe_error(status, &body));
    }
    println!("{body}");
    Ok(())
}

pub async fn export(
    url: &str,
    tok: Option<String>,
    user: &str,
    project: u64,
    format: &str,
    out: Option<&Path>,
) -> Result<(), String> {
    let path = format!("/api/v1/projects/{project}/export");
    let bytes = download(url, tok, user, &path, &[("format", format)], out).await?;
    if out.is_some() {
        eprintln!("exported {bytes} bytes");
    }
    Ok(())
}

/// Downloads a running server's backup into `out`.
pub async fn backup(url: &str, tok: Option<String>, user: &str, out: &Path) -> Result<(), String> {
    download(url, tok, user, "/api/v1/admin/backup", &[], Some(out))
        .await
        .map(|_| ())
}

/// Streams a GET's body into `out` (standard output when `None`); returns its length. The
/// query's values are sent encoded, whatever they hold.
async fn download(
    url: &str,
    tok: Option<String>,
    user: &str,
    path: &str,
    query: &[(&str, &str)],
    out: Option<&Path>,
) -> Result<u64, String> {
    let client = reqwest::Client::new();
    let tok = token(&client, url, tok, user).await?;
    let res = client
        .get(format!("{url}{path}"))
        .query(query)
        .bearer_auth(&tok)
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = res.status();
    if !status.is_success() {
        let body = res.text().await.unwrap_or_default();
        return Err(describe_error(status, &body));
    }
    let file = match out {
        Some(path) => Some(
            tokio::fs::File::create(path)
                .await
                .map_err(|e| format!("cannot create {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let mut sink: Box<dyn tokio::io::AsyncWrite + Unpin> = match file {
        Some(f) => Box::new(f),
        None => Box::new(tokio::io::stdout()),
    };
    let mut stream = res.bytes_stream();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("download failed: {e}"))?;
        bytes += chunk.len() as u64;
        sink.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    sink.flush().await.map_err(|e| e.to_string())?;
    Ok(bytes)
}
