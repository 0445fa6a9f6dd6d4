//! Authentication: argon2id password hashes, JWTs (HS256 pinned, one issuer per purpose, expiry,
//! a per-user generation claim for revocation), the signing secret, login rate limiting, and
//! the extractors that put "who is calling" into a handler's signature.

pub mod extract;
pub mod password;
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

/// Refuses logins for a username after too many failures within a window.
pub struct LoginLimiter {
    attempts: u32,
    window_ms: i64,
    failures: Mutex<HashMap<String, (u32, i64)>>,
}

impl LoginLimiter {
    pub fn new(attempts: u32, window_seconds: u64) -> Self {
        Self {
            attempts,
            window_ms: window_seconds as i64 * 1000,
            failures: Mutex::new(HashMap::new()),
        }
    }

    pub fn allowed(&self, username: &str, now: i64) -> bool {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(username) {
            Some((n, since)) if now - since < self.window_ms => *n < self.attempts,
            _ => true,
        }
    }

    pub fn failed(&self, username: &str, now: i64) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 100_000 {
            // Bound memory under a username-spraying attack: forget stale windows.
            let window = self.window_ms;
            map.retain(|_, (_, since)| now - *since < window);
        }
        let entry = map.entry(username.to_owned()).or_insert((0, now));
        if now - entry.1 >= self.window_ms {
            *entry = (0, now);
        }
        entry.0 += 1;
    }

    pub fn succeeded(&self, username: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(username);
    }
}
