//! `assay`: the review server and its command-line tools.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    return_large_allocations();
    let cli = assay::cli::Cli::parse();
    assay::cli::init_logging();
    match actix_web::rt::System::new().block_on(assay::cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// glibc serves a large allocation (argon2 takes 19 MiB per password hash) with its own memory
/// map, but after the first one is freed it raises that threshold and keeps later ones in its
/// heaps, which it seldom gives back: 64 concurrent logins left the server at 540 MB resident.
/// A fixed 1 MiB threshold returns such memory at once (peak 99 MB, 21 MB after), and nothing on
/// the hot path allocates that much.
fn return_large_allocations() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: called first thing in `main`, before any other thread exists; `mallopt` only tunes
    // the allocator, and its status needs no handling (on failure the default stays).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
