//! Rhai plugins: one hardened engine shared by every script, rubric and router contracts, and
//! the registry of loaded versions.

pub mod analysis;
pub mod bounded;
pub mod contract;
pub mod engine;
pub mod helpers;
pub mod registry;
pub mod router;
pub mod rubric;
pub mod watch;

pub use engine::ScriptEngine;
pub use registry::{Plugin, PluginKind, Registry};

pub use crate::error::ScriptError;

impl ScriptError {
    /// The same error, saying which record or task the script was working on.
    pub fn about(mut self, what: impl std::fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }

    /// An error about what a script returned (no source position).
    pub fn contract(plugin: &Plugin, function: &str, message: impl Into<String>) -> Self {
        Self {
            plugin: plugin.name.clone(),
            function: Some(function.to_owned()),
            file: plugin.file.clone(),
            line: None,
            column: None,
            message: message.into(),
            timed_out: false,
        }
    }
}
