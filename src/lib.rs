//! Assay: a self-hosted review server for expert AI-training work.
//!
//! The crate is laid out by responsibility, each layer using only those below it:
//!
//! - `domain` (plain data) and `error` (domain errors and their stable codes);
//! - `store` hides sled behind the `Store` trait; `scripting` runs the Rhai plugins; `queue` is
//!   the in-memory hand-out index; `auth` issues and checks tokens; `import`/`export` parse and
//!   stream data;
//! - `review`: the review core, the one owner of every task, lease and submission state change;
//! - `services`: users, projects and access, over the core;
//! - `web`: the HTTP surface (API, pages, the error-to-status mapping); `app` wires the core and
//!   the web parts into one server; `cli` is the command line.

pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod error;
pub mod export;
pub mod import;
pub mod memory;
pub mod metrics;
#[cfg(test)]
mod properties;
pub mod queue;
pub mod review;
pub mod scripting;
pub mod services;
pub mod store;
pub mod text;
pub mod watchdog;
pub mod web;

/// Milliseconds since the Unix epoch, the one clock every record uses.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
