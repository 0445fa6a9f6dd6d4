//! `assay`: the review server and its command-line tools.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = assay::cli::Cli::parse();
    assay::cli::init_logging();
    let runtime = match actix_web::rt::System::new().block_on(async { assay::cli::run(cli).await })
    {
        Ok(()) => return ExitCode::SUCCESS,
        Err(e) => e,
    };
    eprintln!("error: {runtime}");
    ExitCode::FAILURE
}
