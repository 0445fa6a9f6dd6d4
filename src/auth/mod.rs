//! Authentication: argon2id password hashes, JWTs (HS256 pinned, one issuer per purpose, expiry,
//! a per-user generation claim for revocation), the signing secret, login rate limiting, and
//! the extractors that put "who is calling" into a handler's signature.

pub mod extract;
pub mod password;
pub mod revoked;
pub mod tokens;

pub use extract::{Admin, Caller};
pub use tokens::{AssignmentClaims, Keys, SessionClaims};

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

/// Reads the signing secret from the config/environment, or from `secret.key` in the data
/// folder, creating it (mode 0600) on first start. A key file readable by others is refused.
pub fn load_or_create_secret(configured: &str, data_dir: &Path) -> Result<Vec<u8>, String> {
    if !configured.is_empty() {
        return Ok(configured.as_bytes().to_vec());
    }
    let path = data_dir.join("secret.key");
    if path.exists() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(format!(
                    "{} is readable by other users (mode {:o}); run `chmod 600 {}`",
                    path.display(),
                    mode & 0o777,
                    path.display()
                ));
            }
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        if text.trim().is_empty() {
            return Err(format!(
                "{} is empty (was the server stopped while it was first written?); delete it and \
                 a new one is made at the next start (everyone signs in again), or set \
                 auth.secret",
                path.display()
            ));
        }
        let secret = hex::decode(text.trim())
            .map_err(|_| format!("{} does not hold a hex secret", path.display()))?;
        if secret.len() < 32 {
            return Err(format!(
                "{} holds a secret shorter than 32 bytes",
                path.display()
            ));
        }
        return Ok(secret);
    }
    let secret: [u8; 32] = rand::random();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    file.write_all(hex::encode(secret).as_bytes())
        .and_then(|_| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(secret.to_vec())
}

/// Failed logins counted per key within a window, for one kind of key.
struct FailureWindow {
    attempts: u32,
    failures: HashMap<String, (u32, i64)>,
}

impl FailureWindow {
    fn new(attempts: u32) -> Self {
        Self {
            attempts,
            failures: HashMap::new(),
        }
    }

    fn allowed(&self, key: &str, now: i64, window_ms: i64) -> bool {
        match self.failures.get(key) {
            Some((n, since)) if now - since < window_ms => *n < self.attempts,
            _ => true,
        }
    }

    fn failed(&mut self, key: &str, now: i64, window_ms: i64) {
        if self.failures.len() > 100_000 {
            // Bound memory under a spraying attack: forget stale windows.
            self.failures
                .retain(|_, (_, since)| now - *since < window_ms);
        }
        let entry = self.failures.entry(key.to_owned()).or_insert((0, now));
        if now - entry.1 >= window_ms {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

/// Refuses logins after too many failures within a window, counted three ways:
///
/// - per username *and* address (`login_attempts`): guessing one account from one place;
/// - per address (`login_attempts_per_address`): one place spraying many usernames;
/// - per username from anywhere (`login_attempts_per_user`, higher): guessing spread over many
///   addresses.
///
/// So no one can lock an account out from their own address alone: the strict limit is tied
/// to the address the failures come from. Keys are capped before they reach this.
pub struct LoginLimiter {
    window_ms: i64,
    windows: Mutex<[FailureWindow; 3]>,
}

impl LoginLimiter {
    pub fn new(config: &crate::config::AuthConfig) -> Self {
        Self {
            window_ms: config.login_window_seconds as i64 * 1000,
            windows: Mutex::new([
                FailureWindow::new(config.login_attempts),
                FailureWindow::new(config.login_attempts_per_address),
                FailureWindow::new(config.login_attempts_per_user),
            ]),
        }
    }

    fn keys(username: &str, address: &str) -> [String; 3] {
        [
            format!("{address}\0{username}"),
            address.to_owned(),
            username.to_owned(),
        ]
    }

    pub fn allowed(&self, username: &str, address: &str, now: i64) -> bool {
        let windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let keys = Self::keys(username, address);
        windows
            .iter()
            .zip(&keys)
            .all(|(w, key)| w.allowed(key, now, self.window_ms))
    }

    pub fn failed(&self, username: &str, address: &str, now: i64) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let keys = Self::keys(username, address);
        for (w, key) in windows.iter_mut().zip(&keys) {
            w.failed(key, now, self.window_ms);
        }
    }

    /// A success clears the account's count from that address (not the address's own count,
    /// so one valid account does not unlock spraying).
    pub fn succeeded(&self, username: &str, address: &str) {
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let [pair, _, _] = Self::keys(username, address);
        windows[0].failures.remove(&pair);
    }
}
