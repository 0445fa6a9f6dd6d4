//! `assay`: the review server and its command-line tools.

use std::process::ExitCode;

use clap::Parser;

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
