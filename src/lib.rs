//! Assay: a self-hosted review server for expert AI-training work.
//!
//! The crate is laid out by responsibility: `config` and `error` are shared by all; `domain`
//! holds the plain data types; `store` hides sled behind the `Store` trait; `scripting` runs the
//! Rhai rubric and routing plugins; `queue` hands out tasks under exact leases; `auth` issues and
//! checks tokens; `import` and `export` move data in and out; `web` is the HTTP surface; `app`
//! wires everything into one server.

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
pub mod queue;
pub mod scripting;
pub mod services;
pub mod store;
pub mod web;

/// Milliseconds since the Unix epoch, the one clock every record uses.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
