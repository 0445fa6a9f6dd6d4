//! `assay`: the review server and its command-line tools.

use std::process::ExitCode;

use clap::Parser;

mod bench;

/// mimalloc: the review loop allocates and frees many small blocks on several threads; with
/// glibc's allocator that was ~15 % of the server's CPU, and mimalloc raised loops/s by a third.
/// Counted per thread, for the scripts' memory budget.
#[global_allocator]
static ALLOCATOR: assay::memory::Counting<mimalloc::MiMalloc> =
    assay::memory::Counting(mimalloc::MiMalloc);

fn main() -> ExitCode {
    let cli = assay::cli::Cli::parse();
    assay::cli::init_logging(assay::cli::log_format(&cli));
    let outcome = match cli.command {
        assay::cli::Command::Bench(args) => actix_web::rt::System::new().block_on(bench::run(args)),
        _ => actix_web::rt::System::new().block_on(assay::cli::run(cli)),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

/// `arena_eager_commit` in mimalloc 3's `mi_option_e` (`mimalloc.h`); the Rust bindings name only
/// the options every mimalloc version shares.
#[cfg(target_os = "linux")]
const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;

/// With arenas committed eagerly, memory freed after the start-up scan of the task index stays
/// resident (idle RSS with 100,000 tasks: 137 MB; see also `assay::memory`). The option must be
/// set before the first allocation reserves an arena, and the Rust runtime allocates before
/// `main`, so this runs as a constructor. An operator's `MIMALLOC_ARENA_EAGER_COMMIT` still wins.
#[cfg(target_os = "linux")]
extern "C" fn commit_arenas_on_demand() {
    // `getenv`, not `std::env`: nothing may allocate before the option is set.
    // SAFETY: a NUL-terminated literal; no other thread exists this early.
    let overridden = unsafe { !libc::getenv(c"MIMALLOC_ARENA_EAGER_COMMIT".as_ptr()).is_null() };
    if !overridden {
        // SAFETY: sets a plain integer option; mimalloc reads it when it reserves an arena.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, 0) };
    }
}

#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static COMMIT_ARENAS_ON_DEMAND: extern "C" fn() = commit_arenas_on_demand;
