//! The storage watchdog: when a flush fails (a full disk, most often), it waits for the disk to
//! take writes again and brings the server back without an operator. sled stops every write
//! after its first I/O error, so when a plain flush still fails once space is back, the server
//! re-executes itself in place: same process id, same address, the store reopened from what was
//! durable (every acknowledged answer was).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::review::ReviewCore;

/// How often a failing store is checked.
const CHECK_EVERY: Duration = Duration::from_secs(1);
/// What the probe writes: enough that a nearly full disk still says no.
const PROBE_BYTES: usize = 1 << 20;

pub fn spawn(core: Arc<ReviewCore>, addr: SocketAddr) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("assay-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(CHECK_EVERY);
            let Some(error) = core.storage_failure() else {
                continue;
            };
            if !disk_takes_writes(&core.config.storage.data) {
                continue;
            }
            if core.storage_works() {
                tracing::warn!(previous = %error, "storage works again");
                continue;
            }
            tracing::warn!(previous = %error, "storage has space again; restarting in place to reopen it");
            let failed = restart_in_place(addr);
            tracing::error!(error = %failed, "cannot restart in place; restart the server");
            return;
        })
        .map(|_| ())
}

/// Writes, syncs and removes a probe file in the data folder.
fn disk_takes_writes(data: &std::path::Path) -> bool {
    use std::io::Write;
    let path = data.join(".space-probe");
    let written = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&vec![0u8; PROBE_BYTES])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&path);
    written.is_ok()
}

/// Replaces this process with a fresh start of the same command, listening where it did. Only
/// returns on failure.
fn restart_in_place(addr: SocketAddr) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => return e,
    };
    // The same arguments, with the address actually bound (port 0 became a real port).
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    let mut given = std::env::args_os().skip(1);
    while let Some(arg) = given.next() {
        if arg == "--bind" {
            given.next();
        } else if !arg.to_string_lossy().starts_with("--bind=") {
            args.push(arg);
        }
    }
    std::process::Command::new(exe)
        .args(args)
        .env("ASSAY_SERVER__BIND", addr.to_string())
        .exec()
}
