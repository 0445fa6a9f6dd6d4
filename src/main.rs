//! `assay`: the review server and its command-line tools.

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the review loop allocates and frees many small blocks on several threads; with
/// glibc's allocator that was ~15 % of the server's CPU, and mimalloc raised loops/s by a third.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
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

/// Options by their number in mimalloc 3's `mi_option_e` (`mimalloc.h`); the Rust bindings name
/// only the options every mimalloc version shares.
#[cfg(target_os = "linux")]
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
#[cfg(target_os = "linux")]
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Memory the server frees should leave the process, above all after the start-up scan of the
/// task index: with arenas committed eagerly it stays resident (idle RSS with 100,000 tasks:
/// 137 MB), and a delayed purge never runs in a server that has gone idle (96 MB; 90 MB with
/// both options). Options must be set before the first allocation reserves an arena, and the
/// Rust runtime allocates before `main`, so this runs as a constructor. An operator's
/// `MIMALLOC_*` environment variables still win.
#[cfg(target_os = "linux")]
extern "C" fn return_freed_memory() {
    for (name, option) in [
        (c"MIMALLOC_ARENA_EAGER_COMMIT", MI_OPTION_ARENA_EAGER_COMMIT),
        (c"MIMALLOC_PURGE_DELAY", MI_OPTION_PURGE_DELAY),
    ] {
        // `getenv`, not `std::env`: nothing may allocate before the options are set.
        // SAFETY: a NUL-terminated literal; no other thread exists this early.
        let overridden = unsafe { !libc::getenv(name.as_ptr()).is_null() };
        if !overridden {
            // SAFETY: sets a plain integer option; mimalloc reads it when it next needs it.
            unsafe { libmimalloc_sys::mi_option_set(option, 0) };
        }
    }
}

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static RETURN_FREED_MEMORY: extern "C" fn() = return_freed_memory;
