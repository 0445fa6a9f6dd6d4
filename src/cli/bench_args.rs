//! The options of `assay bench`. The load generator itself is part of the `assay` binary, not
//! of the server library (`src/bench/`).

use std::path::PathBuf;

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// A running server to measure; by default the bench starts its own.
    #[arg(long)]
    pub url: Option<String>,
    /// Admin token for --url (or ASSAY_PASSWORD to log in as admin).
    #[arg(long, env = "ASSAY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    #[arg(long, default_value = "loop", value_parser = ["loop", "import", "export", "reload", "pages", "isolation", "crash", "qa"])]
    pub scenario: String,
    /// reload: the server's rubric folder (needed with --url; the bench's own server uses a copy).
    #[arg(long)]
    pub rubrics: Option<PathBuf>,
    /// reload: milliseconds between two saves of the rubric file.
    #[arg(long, default_value_t = 1000)]
    pub interval: u64,
    /// Concurrent experts.
    #[arg(long, default_value_t = 32)]
    pub experts: usize,
    /// Tasks to import.
    #[arg(long, default_value_t = 20_000)]
    pub tasks: usize,
    /// Reviews per task.
    #[arg(long, default_value_t = 1)]
    pub reviews: u32,
    /// Warm-up seconds (not measured).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// crash: how many times the server is killed.
    #[arg(long, default_value_t = 100)]
    pub cycles: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}
