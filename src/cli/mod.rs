//! Command-line interface: `serve`, `import`, `export`, `backup`, `restore`, `user add`,
//! `audit verify`, `check`, `bench`.

pub mod bench_args;
mod client;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::{CliOverrides, Config};
use crate::domain::GlobalRole;

#[derive(Parser)]
#[command(
    name = "assay",
    version,
    about = "Self-hosted review server for expert AI-training work"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args, Clone)]
pub struct ConfigArgs {
    /// Configuration file (TOML). Default: ./config.toml when it exists; without one,
    /// built-in defaults and ASSAY_* variables apply.
    #[arg(long, env = "ASSAY_CONFIG")]
    config: Option<PathBuf>,
    /// Data folder (overrides storage.data).
    #[arg(long)]
    data: Option<PathBuf>,
}

#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// Base URL of a running server.
    #[arg(long, env = "ASSAY_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API token; if absent, logs in with --user and ASSAY_PASSWORD.
    #[arg(long, env = "ASSAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Username to log in with when no token is given.
    #[arg(long, default_value = "admin")]
    user: String,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server.
    Serve {
        #[command(flatten)]
        config: ConfigArgs,
        /// Address to listen on (overrides server.bind).
        #[arg(long)]
        bind: Option<String>,
        /// Create the demo project, its tasks and two demo experts if they are missing.
        #[arg(long)]
        demo: bool,
    },
    /// Import tasks from a JSON, JSON Lines or Label Studio file into a project of a running
    /// server.
    Import {
        file: PathBuf,
        #[arg(long)]
        project: u64,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Export a project's submissions from a running server as JSON Lines.
    Export {
        #[arg(long)]
        project: u64,
        /// Output file; standard output when absent.
        #[arg(long, short)]
        out: Option<PathBuf>,
        #[arg(long, default_value = "jsonl")]
        format: String,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Take a consistent backup: from a running server (`--url`, an admin's token in
    /// ASSAY_TOKEN) while it serves, or from a stopped server's data folder (`--data`).
    Backup {
        /// The backup file to write (written beside it, then renamed once checked).
        #[arg(long, short)]
        out: PathBuf,
        /// Back up the data folder directly instead (the server must be stopped).
        #[command(flatten)]
        local: ConfigArgs,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Restore a backup into a data folder that has no database yet (the server stopped).
    Restore {
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Check rubric and router scripts offline: compile, contract, tests() (like `nginx -t`).
    Check {
        /// Script files (`rubrics/NAME.rhai`, `plugins/NAME.rhai`) or folders of them.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        config: ConfigArgs,
    },
    /// Measure a server under load (starts its own unless --url is given).
    Bench(bench_args::BenchArgs),
    /// Manage users directly in the data folder (the server must be stopped).
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Check the audit log's hash chain in the data folder (the server must be stopped; a
    /// running one answers `GET /api/v1/audit/verify`).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Seal what is not sealed yet, then check every event against the chain; exits 1 on any
    /// edit, deletion or event slipped in, and prints the head to record elsewhere.
    Verify {
        #[command(flatten)]
        config: ConfigArgs,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from ASSAY_PASSWORD. With --url, through the API of a
    /// running server (an admin's --token or ASSAY_TOKEN); without, in the data folder of a
    /// stopped one.
    Add {
        username: String,
        #[arg(long, value_parser = parse_role, default_value = "member")]
        role: GlobalRole,
        /// Comma-separated skills (pools).
        #[arg(long, value_delimiter = ',')]
        skills: Vec<String>,
        /// Base URL of a running server.
        #[arg(long, env = "ASSAY_URL")]
        url: Option<String>,
        /// An admin's API token (with --url).
        #[arg(long, env = "ASSAY_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        config: ConfigArgs,
    },
}

fn parse_role(s: &str) -> Result<GlobalRole, String> {
    match s {
        "admin" => Ok(GlobalRole::Admin),
        "member" => Ok(GlobalRole::Member),
        _ => Err("role must be `admin` or `member`".into()),
    }
}

/// Logs to stderr: text (colours only on a terminal) or one JSON object per line
/// (`log.format = "json"`, from the server's configuration, or `ASSAY_LOG__FORMAT`).
pub fn init_logging(format: crate::config::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,actix_server=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        crate::config::LogFormat::Json => builder.json().try_init(),
        crate::config::LogFormat::Text => builder.try_init(),
    };
}

/// The log format for a command: the server's configuration for `serve`, else the environment.
pub fn log_format(cli: &Cli) -> crate::config::LogFormat {
    if let Command::Serve { config, bind, .. } = &cli.command {
        if let Ok(config) = load_config(config, bind.clone()) {
            return config.log.format;
        }
    }
    match std::env::var("ASSAY_LOG__FORMAT").as_deref() {
        Ok("json") => crate::config::LogFormat::Json,
        _ => crate::config::LogFormat::Text,
    }
}

fn load_config(args: &ConfigArgs, bind: Option<String>) -> Result<Config, String> {
    let overrides = CliOverrides {
        bind,
        data: args.data.clone(),
    };
    Config::load(args.config.as_deref(), &overrides).map_err(|e| e.to_string())
}

pub async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve { config, bind, demo } => serve(load_config(&config, bind)?, demo).await,
        Command::Bench(_) => Err("`assay bench` runs from the assay binary".into()),
        Command::Check { paths, config } => check(&load_config(&config, None)?, &paths),
        Command::Import {
            file,
            project,
            server,
        } => client::import(&server.url, server.token, &server.user, &file, project).await,
        Command::Export {
            project,
            out,
            format,
            server,
        } => {
            client::export(
                &server.url,
                server.token,
                &server.user,
                project,
                &format,
                out.as_deref(),
            )
            .await
        }
        Command::User {
            command:
                UserCommand::Add {
                    username,
                    role,
                    skills,
                    url: Some(url),
                    token,
                    ..
                },
        } => {
            let password = std::env::var("ASSAY_PASSWORD")
                .map_err(|_| "set the new user's password in ASSAY_PASSWORD".to_owned())?;
            let token = token.ok_or("give an admin's token with --token or ASSAY_TOKEN")?;
            let role = if role == GlobalRole::Admin {
                "admin"
            } else {
                "member"
            };
            let body = serde_json::json!({"username": username, "password": password,
                "role": role, "skills": skills});
            let user = client::add_user(&url, &token, body).await?;
            println!(
                "created user `{}` with id {}",
                user["username"].as_str().unwrap_or(""),
                user["id"]
            );
            Ok(())
        }
        Command::User {
            command:
                UserCommand::Add {
                    username,
                    role,
                    skills,
                    url: None,
                    config,
                    ..
                },
        } => {
            let config = load_config(&config, None)?;
            user_add(config, username, role, skills)
        }
        Command::Audit {
            command: AuditCommand::Verify { config },
        } => audit_verify(load_config(&config, None)?),
        Command::Backup { out, local, server } => {
            let part = out.with_extension("part");
            let written = if local.data.is_some() {
                backup_offline(load_config(&local, None)?, &part)
            } else {
                client::backup(&server.url, server.token, &server.user, &part).await
            };
            let checked = written.and_then(|_| {
                let mut file = std::fs::File::open(&part)
                    .map_err(|e| format!("cannot read {}: {e}", part.display()))?;
                // Durable before it takes its name.
                file.sync_all().map_err(|e| e.to_string())?;
                crate::store::backup::verify(&mut file)
            });
            match checked {
                Ok(summary) => {
                    std::fs::rename(&part, &out)
                        .map_err(|e| format!("cannot rename to {}: {e}", out.display()))?;
                    println!(
                        "backup {}: {} bytes, {} entries in {} trees, schema {}, sha256 {}",
                        out.display(),
                        summary.bytes,
                        summary.entries,
                        summary.trees,
                        summary.header.schema_version,
                        summary.sha256
                    );
                    Ok(())
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&part);
                    Err(e)
                }
            }
        }
        Command::Restore { file, config } => {
            let config = load_config(&config, None)?;
            let data = &config.storage.data;
            std::fs::create_dir_all(data)
                .map_err(|e| format!("cannot create {}: {e}", data.display()))?;
            let mut input = std::fs::File::open(&file)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let summary = crate::store::backup::restore(&mut input, &data.join("db"))?;
            println!(
                "restored {} entries in {} trees (schema {}, taken at {} ms) into {}",
                summary.entries,
                summary.trees,
                summary.header.schema_version,
                summary.header.created_at,
                data.display()
            );
            Ok(())
        }
    }
}

/// Backs up a stopped server's data folder (opening it fails while a server holds it).
fn backup_offline(config: Config, part: &std::path::Path) -> Result<(), String> {
    use crate::store::Store;
    let store =
        crate::store::SledStore::open(&config.storage.data.join("db"), config.storage.fsync)
            .map_err(|e| e.to_string())?;
    let mut file = std::fs::File::create(part)
        .map_err(|e| format!("cannot create {}: {e}", part.display()))?;
    store.backup(&mut file).map_err(|e| e.to_string())?;
    file.sync_all().map_err(|e| e.to_string())
}

fn audit_verify(config: Config) -> Result<(), String> {
    use crate::store::Store;
    let store =
        crate::store::SledStore::open(&config.storage.data.join("db"), config.storage.fsync)
            .map_err(|e| e.to_string())?;
    store
        .seal_audit(crate::now_ms() + 1)
        .map_err(|e| e.to_string())?;
    let check = store.verify_audit().map_err(|e| e.to_string())?;
    store.flush().map_err(|e| e.to_string())?;
    println!(
        "{} events, {} sealed; head {} {}",
        check.events, check.sealed, check.head_seq, check.head_hash
    );
    if check.problems.is_empty() {
        println!("ok: every event is intact and in the chain");
        Ok(())
    } else {
        for p in &check.problems {
            println!("problem: {p}");
        }
        Err(format!(
            "the audit log fails its check ({} problems)",
            check.problems.len()
        ))
    }
}

async fn serve(config: Config, demo: bool) -> Result<(), String> {
    tracing::info!(?config, "starting");
    // The data is confidential: every file and folder the server creates (database, spool,
    // snapshot, secret) is for its own user only, 0600 / 0700.
    #[cfg(unix)]
    // SAFETY: sets the process's file-mode mask; no memory is involved.
    unsafe {
        libc::umask(0o077);
    }
    let state = crate::app::build_state(config)?;
    let admin_password = std::env::var("ASSAY_ADMIN_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty());
    if let Some(generated) =
        crate::services::users::ensure_first_admin(state.core.store().as_ref(), admin_password)
            .map_err(|e| format!("cannot create the first admin: {e}"))?
    {
        println!("created user `admin` with password: {generated}");
        println!("(shown once; set ASSAY_ADMIN_PASSWORD before the first start to choose it)");
    }
    if demo {
        crate::demo::seed(&state).await?;
    }
    crate::app::serve(state)
        .await
        .map_err(|e| format!("server failed: {e}"))
}

fn user_add(
    config: Config,
    username: String,
    role: GlobalRole,
    skills: Vec<String>,
) -> Result<(), String> {
    let password = std::env::var("ASSAY_PASSWORD")
        .map_err(|_| "set the new user's password in ASSAY_PASSWORD".to_owned())?;
    let store =
        crate::store::SledStore::open(&config.storage.data.join("db"), config.storage.fsync)
            .map_err(|e| {
                format!("{e} (while the server runs, add users through it: --url and --token)")
            })?;
    let new = crate::services::users::NewUser {
        username,
        password,
        role,
        skills,
        hourly_rate: None,
    };
    let user = crate::services::users::create_blocking(&store, new).map_err(|e| e.to_string())?;
    crate::store::Store::flush(&store).map_err(|e| e.to_string())?;
    println!("created user `{}` with id {}", user.username, user.id);
    Ok(())
}

/// `assay check`: every file is compiled and checked as the server would; errors are printed
/// as file:line:col and make the exit status non-zero.
fn check(config: &Config, paths: &[PathBuf]) -> Result<(), String> {
    let engine = crate::scripting::ScriptEngine::new(&config.scripting);
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| crate::scripting::registry::is_plugin_file(p))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    let mut failed = 0;
    for file in &files {
        match crate::scripting::registry::check_file(&engine, file) {
            Ok((kind, cases)) => println!(
                "ok     {} ({}, {cases} test case(s))",
                file.display(),
                kind.as_str()
            ),
            Err(e) => {
                failed += 1;
                let position = match (e.line, e.column) {
                    (Some(l), Some(c)) => format!(":{l}:{c}"),
                    _ => String::new(),
                };
                let function = e.function.map(|f| format!(" in `{f}`")).unwrap_or_default();
                println!("error  {}{position}{function}: {}", e.file, e.message);
            }
        }
    }
    if failed > 0 {
        return Err(format!(
            "{failed} of {} file(s) failed the check",
            files.len()
        ));
    }
    Ok(())
}
