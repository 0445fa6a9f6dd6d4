//! The loaded plugins. Each plugin name has a current version (compiled AST plus its source and
//! content hash) and, when the last load failed, the error. Every version's source is stored in
//! the database under its hash, so answers given under an older version can be checked and read
//! back later.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rhai::AST;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::{ScriptEngine, ScriptError};
use crate::domain::PluginVersion;
use crate::error::AppError;
use crate::store::Store;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    Rubric,
    Router,
}

impl PluginKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Rubric => "rubric",
            PluginKind::Router => "router",
        }
    }

    /// Entry points a plugin of this kind must define, with their arity.
    fn required(self) -> &'static [(&'static str, usize)] {
        match self {
            PluginKind::Rubric => &[("criteria", 1)],
            PluginKind::Router => &[("route", 1)],
        }
    }
}

/// One compiled version of a plugin.
pub struct Plugin {
    pub name: String,
    pub kind: PluginKind,
    pub file: String,
    pub hash: String,
    pub source: String,
    pub ast: AST,
    pub loaded_at: i64,
}

impl Plugin {
    pub fn has_fn(&self, name: &str, arity: usize) -> bool {
        self.ast
            .iter_functions()
            .any(|f| f.name == name && f.params.len() == arity)
    }
}

/// What `GET /api/v1/plugins` shows of a plugin.
#[derive(Debug, Clone, Serialize)]
pub struct PluginStatus {
    pub name: String,
    pub kind: PluginKind,
    pub file: String,
    pub version: Option<String>,
    pub loaded_at: Option<i64>,
    pub status: &'static str,
    pub last_error: Option<ScriptError>,
}

#[derive(Default)]
struct Entry {
    current: Option<Arc<Plugin>>,
    error: Option<ScriptError>,
    file: String,
}

pub struct Registry {
    pub engine: ScriptEngine,
    store: Arc<dyn Store>,
    entries: RwLock<HashMap<(PluginKind, String), Entry>>,
    /// Versions other than the current one, compiled on demand from stored source.
    by_hash: RwLock<HashMap<String, Arc<Plugin>>>,
}

pub fn content_hash(source: &str) -> String {
    hex::encode(Sha256::digest(source.as_bytes()))
}

impl Registry {
    pub fn new(engine: ScriptEngine, store: Arc<dyn Store>) -> Self {
        Self {
            engine,
            store,
            entries: RwLock::new(HashMap::new()),
            by_hash: RwLock::new(HashMap::new()),
        }
    }

    /// Loads every `*.rhai` file of a folder. A missing folder loads nothing.
    pub fn load_dir(&self, kind: PluginKind, dir: &Path) -> Vec<ScriptError> {
        let mut errors = Vec::new();
        let Ok(read) = std::fs::read_dir(dir) else {
            tracing::warn!(kind = kind.as_str(), dir = %dir.display(), "plugin folder not found");
            return errors;
        };
        let mut files: Vec<PathBuf> = read
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
            .collect();
        files.sort();
        for file in files {
            if let Err(e) = self.load_file(kind, &file) {
                errors.push(e);
            }
        }
        errors
    }

    /// Compiles and checks one file and makes it the current version of its plugin. On failure
    /// the previous version (if any) stays current and the error is recorded.
    pub fn load_file(&self, kind: PluginKind, path: &Path) -> Result<Arc<Plugin>, ScriptError> {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let file = path.display().to_string();
        let result = std::fs::read_to_string(path)
            .map_err(|e| ScriptError {
                plugin: name.clone(),
                function: None,
                file: file.clone(),
                line: None,
                column: None,
                message: format!("cannot read: {e}"),
                timed_out: false,
            })
            .and_then(|source| self.compile_checked(kind, &name, &file, source));
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let entry = entries.entry((kind, name.clone())).or_default();
        entry.file = file.clone();
        match result {
            Ok(plugin) => {
                tracing::info!(kind = kind.as_str(), plugin = %name, version = %plugin.hash, "plugin loaded");
                entry.current = Some(plugin.clone());
                entry.error = None;
                Ok(plugin)
            }
            Err(e) => {
                tracing::error!(kind = kind.as_str(), plugin = %name, error = %e, "plugin failed to load");
                entry.error = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Compiles a source, checks its contract and stores the version.
    fn compile_checked(
        &self,
        kind: PluginKind,
        name: &str,
        file: &str,
        source: String,
    ) -> Result<Arc<Plugin>, ScriptError> {
        let ast = self.engine.compile(name, file, &source)?;
        let plugin = Plugin {
            name: name.to_owned(),
            kind,
            file: file.to_owned(),
            hash: content_hash(&source),
            source,
            ast,
            loaded_at: crate::now_ms(),
        };
        for (function, arity) in kind.required() {
            if !plugin.has_fn(function, *arity) {
                return Err(ScriptError {
                    plugin: name.to_owned(),
                    function: None,
                    file: file.to_owned(),
                    line: None,
                    column: None,
                    message: format!(
                        "a {} must define `fn {function}` with {arity} parameter(s)",
                        kind.as_str()
                    ),
                    timed_out: false,
                });
            }
        }
        let version = PluginVersion {
            hash: plugin.hash.clone(),
            kind: kind.as_str().to_owned(),
            name: name.to_owned(),
            source: plugin.source.clone(),
            first_seen_at: plugin.loaded_at,
        };
        if let Err(e) = self.store.put_plugin_version(&version) {
            tracing::error!(plugin = %name, error = %e, "could not store plugin version");
        }
        Ok(Arc::new(plugin))
    }

    /// The current version of a plugin, or why there is none.
    pub fn current(&self, kind: PluginKind, name: &str) -> Result<Arc<Plugin>, AppError> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        match entries.get(&(kind, name.to_owned())) {
            Some(Entry {
                current: Some(plugin),
                ..
            }) => Ok(plugin.clone()),
            Some(Entry { error: Some(e), .. }) => Err(AppError::PluginUnavailable {
                name: name.to_owned(),
                reason: e.to_string(),
            }),
            _ => Err(AppError::PluginUnavailable {
                name: name.to_owned(),
                reason: format!("no {} named `{name}` is installed", kind.as_str()),
            }),
        }
    }

    /// Whether a plugin of this name is known (loaded or failed).
    pub fn exists(&self, kind: PluginKind, name: &str) -> bool {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        entries.contains_key(&(kind, name.to_owned()))
    }

    /// A specific version of a plugin: the current one, one compiled earlier, or one compiled
    /// now from the source stored under its hash.
    pub fn version(
        &self,
        kind: PluginKind,
        name: &str,
        hash: &str,
    ) -> Result<Arc<Plugin>, AppError> {
        if let Ok(current) = self.current(kind, name) {
            if current.hash == hash {
                return Ok(current);
            }
        }
        if let Some(p) = self
            .by_hash
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(hash)
        {
            return Ok(p.clone());
        }
        let stored =
            self.store
                .plugin_version(hash)?
                .ok_or_else(|| AppError::PluginUnavailable {
                    name: name.to_owned(),
                    reason: format!("version {hash} is not stored"),
                })?;
        let ast = self
            .engine
            .compile(name, &format!("{name}@{hash}"), &stored.source)?;
        let plugin = Arc::new(Plugin {
            name: name.to_owned(),
            kind,
            file: format!("{name}@{hash}"),
            hash: hash.to_owned(),
            source: stored.source,
            ast,
            loaded_at: crate::now_ms(),
        });
        self.by_hash
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(hash.to_owned(), plugin.clone());
        Ok(plugin)
    }

    pub fn statuses(&self) -> Vec<PluginStatus> {
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<PluginStatus> = entries
            .iter()
            .map(|((kind, name), e)| PluginStatus {
                name: name.clone(),
                kind: *kind,
                file: e.file.clone(),
                version: e.current.as_ref().map(|p| p.hash.clone()),
                loaded_at: e.current.as_ref().map(|p| p.loaded_at),
                status: if e.error.is_some() { "error" } else { "ok" },
                last_error: e.error.clone(),
            })
            .collect();
        out.sort_by(|a, b| (a.kind.as_str(), &a.name).cmp(&(b.kind.as_str(), &b.name)));
        out
    }
}
