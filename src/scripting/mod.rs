//! Rhai plugins: one hardened engine shared by every script, rubric and router contracts, and
//! the registry of loaded versions.

pub mod contract;
pub mod engine;
pub mod helpers;
pub mod registry;
pub mod router;
pub mod rubric;
pub mod watch;

use serde::Serialize;

pub use engine::ScriptEngine;
pub use registry::{Plugin, PluginKind, Registry};

/// A script failure, with enough detail to find and fix it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScriptError {
    pub plugin: String,
    /// The entry point that was running, or `None` while compiling / loading.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    pub file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    pub message: String,
    /// The call ran past its wall-clock or operation budget.
    pub timed_out: bool,
}

impl ScriptError {
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

impl std::fmt::Display for ScriptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "plugin `{}` ", self.plugin)?;
        if let Some(function) = &self.function {
            write!(f, "in `{function}` ")?;
        }
        write!(f, "at {}", self.file)?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, ":{line}:{column}")?;
        }
        write!(f, ": {}", self.message)
    }
}
