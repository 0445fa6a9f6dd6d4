//! Configuration: built-in defaults, then `config.toml`, then `ASSAY_SECTION__KEY` environment
//! variables, then command-line flags. Unknown keys and bad values stop start-up with a message
//! that names what to fix. Relative paths in a config file resolve against the file's folder;
//! without a file they resolve against the working directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub plugins: PluginsConfig,
    pub queue: QueueConfig,
    pub auth: AuthConfig,
    pub scripting: ScriptingConfig,
    pub content: ContentConfig,
    pub audit: AuditConfig,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// "text" (default) or "json" (one object per line, for log collectors).
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The audit log.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// Events older than this many days are removed (with their seals; the chain continues
    /// from the last removed hash). 0 keeps everything.
    pub retention_days: u64,
}

/// How task content reaches pages.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContentConfig {
    /// URL prefixes task content may load images from (e.g. "https://cdn.example.com/");
    /// besides these only `data:image/` URLs are shown.
    pub image_origins: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub bind: String,
    /// HTTP worker threads; 0 means one per core.
    pub workers: usize,
    /// Threads of the blocking pool always left for storage work.
    pub blocking_threads: usize,
    /// Threads of the blocking pool that may run scripts at once (hand-out, submit checks,
    /// imports, reroutes).
    pub script_threads: usize,
    /// Of those, how many one project may hold at once, so a slow rubric cannot take them all.
    pub script_threads_per_project: usize,
    /// Threads of the blocking pool that may hash passwords at once (logins, password changes).
    pub hashing_threads: usize,
    /// Largest accepted request body for imports, in MiB.
    pub max_import_mb: u64,
    /// Largest accepted JSON body for everything else, in KiB.
    pub max_json_kb: u64,
    /// A request body may take this long; after it, it must have kept up
    /// `min_body_bytes_per_second` on average, or it is refused with 408.
    pub body_grace_seconds: u64,
    pub min_body_bytes_per_second: u64,
    /// Addresses of reverse proxies whose `X-Forwarded-For` / `X-Forwarded-Proto` are believed
    /// (for login limits per address and the Secure cookie). Empty: the peer address is used.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// When set, `/metrics` answers only requests with `Authorization: Bearer <this>`.
    pub metrics_token: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// Data folder: the database, the signing secret and import spool files.
    pub data: PathBuf,
    /// After each group flush also fdatasync the database files (survives power loss, not just
    /// a killed process).
    pub fsync: bool,
    /// Page cache of the embedded database, in MiB.
    pub cache_mb: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginsConfig {
    pub rubrics: PathBuf,
    pub plugins: PathBuf,
    pub templates: PathBuf,
    /// Reload changed scripts while running.
    pub watch: bool,
    /// Quiet time after the last file-system event before reloading, in milliseconds.
    pub debounce_ms: u64,
    /// Poll the folders on this interval (milliseconds) instead of waiting for file-system
    /// events; 0 uses events. For file systems that send none (some network mounts).
    pub poll_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Lease length for projects that do not set their own, in seconds.
    pub lease_seconds: u64,
    /// Gap between heartbeats after which the expert counts as idle, in seconds.
    pub idle_cutoff_seconds: u64,
    /// How often expired leases are swept back into the queue, in milliseconds.
    pub sweep_interval_ms: u64,
}

#[derive(Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Session (login token) lifetime in hours.
    pub session_hours: u64,
    /// Signing secret. Prefer leaving it empty: a random one is then kept in the data folder.
    pub secret: String,
    /// Failed logins for one username from one address within `login_window_seconds` before
    /// that pair is refused (429).
    pub login_attempts: u32,
    /// Failed logins from one address, whatever the usernames, before it is refused.
    pub login_attempts_per_address: u32,
    /// Failed logins for one username from all addresses together before it is refused.
    pub login_attempts_per_user: u32,
    pub login_window_seconds: u64,
    /// The session cookie's `Secure` flag: "auto" (when the request came over HTTPS, directly
    /// or through a trusted proxy's `X-Forwarded-Proto`), "always" or "never".
    pub secure_cookie: SecureCookie,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecureCookie {
    Auto,
    Always,
    Never,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("session_hours", &self.session_hours)
            .field("secret", &if self.secret.is_empty() { "" } else { "***" })
            .field("login_attempts", &self.login_attempts)
            .field(
                "login_attempts_per_address",
                &self.login_attempts_per_address,
            )
            .field("login_attempts_per_user", &self.login_attempts_per_user)
            .field("login_window_seconds", &self.login_window_seconds)
            .field("secure_cookie", &self.secure_cookie)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScriptingConfig {
    pub max_operations: u64,
    pub max_call_depth: usize,
    pub max_expr_depth: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    pub max_variables: usize,
    /// Wall-clock limit of one script call, in milliseconds.
    pub timeout_ms: u64,
    /// Memory one script call may allocate (net), in MiB.
    pub max_memory_mb: usize,
    /// Wall-clock limit of all of a plugin's `tests()` cases together, in milliseconds.
    pub tests_budget_ms: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8080".into(),
            workers: 0,
            blocking_threads: 4,
            script_threads: 8,
            script_threads_per_project: 6,
            hashing_threads: 2,
            max_import_mb: 1024,
            max_json_kb: 2048,
            body_grace_seconds: 10,
            min_body_bytes_per_second: 4096,
            trusted_proxies: Vec::new(),
            metrics_token: String::new(),
        }
    }
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data: "data".into(),
            fsync: true,
            cache_mb: 128,
        }
    }
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            rubrics: "rubrics".into(),
            plugins: "plugins".into(),
            templates: "templates".into(),
            watch: true,
            debounce_ms: 100,
            poll_ms: 0,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            lease_seconds: 1800,
            idle_cutoff_seconds: 120,
            sweep_interval_ms: 1000,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_hours: 12,
            secret: String::new(),
            login_attempts: 10,
            login_attempts_per_address: 50,
            login_attempts_per_user: 100,
            login_window_seconds: 300,
            secure_cookie: SecureCookie::Auto,
        }
    }
}

impl Default for ScriptingConfig {
    fn default() -> Self {
        Self {
            max_operations: 5_000_000,
            max_call_depth: 48,
            max_expr_depth: 64,
            max_string_size: 1_048_576,
            max_array_size: 100_000,
            max_map_size: 10_000,
            max_variables: 1_000,
            timeout_ms: 1000,
            max_memory_mb: 64,
            tests_budget_ms: 10_000,
        }
    }
}

/// Overrides given on the command line; they win over file and environment.
#[derive(Debug, Default, Clone)]
pub struct CliOverrides {
    pub bind: Option<String>,
    pub data: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// Loads the configuration from all sources, in order of precedence.
    pub fn load(file: Option<&Path>, cli: &CliOverrides) -> Result<Self, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_from(file, &env, cli)
    }

    /// Like [`Config::load`] with an explicit environment (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: &[(String, String)],
        cli: &CliOverrides,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                text.parse::<toml::Table>()
                    .map_err(|e| ConfigError::Parse {
                        path: path.to_owned(),
                        message: e.to_string(),
                    })?
            }
            None => toml::Table::new(),
        };
        for (var, raw) in env {
            apply_env_override(&mut table, var, raw)?;
        }
        let mut config: Config = Config::deserialize(toml::Value::Table(table)).map_err(|e| {
            let message = e.to_string();
            match file {
                Some(path) => ConfigError::Parse {
                    path: path.to_owned(),
                    message,
                },
                None => ConfigError::Invalid(message),
            }
        })?;
        if let Some(bind) = &cli.bind {
            config.server.bind = bind.clone();
        }
        if let Some(data) = &cli.data {
            config.storage.data = data.clone();
        }
        let base = file
            .and_then(Path::parent)
            .map(Path::to_owned)
            .unwrap_or_default();
        config.resolve_paths(&base, cli);
        config.check()?;
        Ok(config)
    }

    fn resolve_paths(&mut self, base: &Path, cli: &CliOverrides) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && !base.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        // A `--data` flag is relative to where the command was typed, not to the config file.
        if cli.data.is_none() {
            resolve(&mut self.storage.data);
        }
        resolve(&mut self.plugins.rubrics);
        resolve(&mut self.plugins.plugins);
        resolve(&mut self.plugins.templates);
    }

    fn check(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.server.bind.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::Invalid(format!(
                "server.bind `{}` is not an address like 127.0.0.1:8080",
                self.server.bind
            )));
        }
        if self.queue.lease_seconds == 0 {
            return bad("queue.lease_seconds must be at least 1");
        }
        if self.queue.sweep_interval_ms == 0 {
            return bad("queue.sweep_interval_ms must be at least 1");
        }
        if self.auth.session_hours == 0 {
            return bad("auth.session_hours must be at least 1");
        }
        if !self.auth.secret.is_empty() && self.auth.secret.len() < 32 {
            return bad("auth.secret must be at least 32 characters long");
        }
        if self.scripting.timeout_ms == 0
            || self.scripting.max_operations == 0
            || self.scripting.max_memory_mb == 0
            || self.scripting.tests_budget_ms == 0
        {
            return bad("scripting.timeout_ms, max_operations, max_memory_mb and tests_budget_ms must be at least 1");
        }
        if self.server.max_import_mb == 0 || self.server.max_json_kb == 0 {
            return bad("server.max_import_mb and server.max_json_kb must be at least 1");
        }
        Ok(())
    }
}

/// `ASSAY_QUEUE__LEASE_SECONDS=60` sets `queue.lease_seconds`. The value is read as a TOML
/// literal when it is one (numbers, booleans) and as a string otherwise.
fn apply_env_override(table: &mut toml::Table, var: &str, raw: &str) -> Result<(), ConfigError> {
    let Some(rest) = var.strip_prefix("ASSAY_") else {
        return Ok(());
    };
    let Some((section, key)) = rest.split_once("__") else {
        return Ok(());
    };
    let (section, key) = (section.to_ascii_lowercase(), key.to_ascii_lowercase());
    let value = format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    let entry = table
        .entry(section.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    match entry {
        toml::Value::Table(t) => {
            t.insert(key, value);
            Ok(())
        }
        _ => Err(ConfigError::Env {
            var: var.to_owned(),
            message: format!("`{section}` is not a section"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_overrides_file_and_cli_overrides_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(
            &path,
            "[queue]\nlease_seconds = 60\n[storage]\ndata = \"d\"\n",
        )
        .unwrap();
        let env = vec![
            ("ASSAY_QUEUE__LEASE_SECONDS".to_owned(), "90".to_owned()),
            ("ASSAY_SERVER__BIND".to_owned(), "127.0.0.1:9999".to_owned()),
        ];
        let cli = CliOverrides {
            bind: Some("127.0.0.1:7777".into()),
            data: None,
        };
        let config = Config::load_from(Some(&path), &env, &cli).unwrap();
        assert_eq!(config.queue.lease_seconds, 90);
        assert_eq!(config.server.bind, "127.0.0.1:7777");
        assert_eq!(config.storage.data, dir.path().join("d"));
        assert_eq!(config.plugins.rubrics, dir.path().join("rubrics"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let env = vec![("ASSAY_QUEUE__LEASE_SECONDZ".to_owned(), "90".to_owned())];
        let err = Config::load_from(None, &env, &CliOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("lease_secondz"), "{err}");
        let env = vec![("ASSAY_QUEUE__LEASE_SECONDS".to_owned(), "soon".to_owned())];
        let err = Config::load_from(None, &env, &CliOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        let env = vec![("ASSAY_SERVER__BIND".to_owned(), "nowhere".to_owned())];
        let err = Config::load_from(None, &env, &CliOverrides::default()).unwrap_err();
        assert!(err.to_string().contains("server.bind"), "{err}");
    }
}
