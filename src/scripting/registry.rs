//! The loaded plugins. Each plugin name has a current version (compiled AST plus its source and
//! content hash) and, when the last load failed, the error. Every version's source is stored in
//! the database under its hash, so answers given under an older version can be checked and read
//! back later.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rhai::AST;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::rubric::Criterion;
use super::{ScriptEngine, ScriptError};
use crate::domain::{Id, PluginVersion, Task};
use crate::error::AppError;

pub use crate::domain::PluginKind;

/// The first 64 bits of a content hash: enough to tell versions apart in a cache key.
fn version_key(hash: &str) -> u64 {
    hash.get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            hash.hash(&mut h);
            h.finish()
        })
}

/// A bounded memo of `criteria(task)`: two generations of at most [`CRITERIA_CACHED`] entries
/// each; when the young one fills, it becomes the old one and the old one is dropped, so recent
/// tasks stay and memory stays flat.
#[derive(Default)]
struct CriteriaCache {
    generations: std::sync::Mutex<[CriteriaByKey; 2]>,
}

/// (rubric version key, task id) → criteria.
type CriteriaByKey = HashMap<(u64, u64), Arc<[Criterion]>>;

const CRITERIA_CACHED: usize = 4096;

impl CriteriaCache {
    fn get(&self, key: (u64, u64)) -> Option<Arc<[Criterion]>> {
        let gens = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        gens[0].get(&key).or_else(|| gens[1].get(&key)).cloned()
    }

    fn put(&self, key: (u64, u64), value: Arc<[Criterion]>) {
        let mut gens = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        if gens[0].len() >= CRITERIA_CACHED {
            let young = std::mem::take(&mut gens[0]);
            gens[1] = young;
        }
        gens[0].insert(key, value);
    }
}

/// Where the registry keeps every version it serves, and whom it tells what it loaded. The core
/// implements it over the store and the audit log; the registry knows neither.
pub trait VersionArchive: Send + Sync {
    /// Stores a version durably (called before the version serves).
    fn record(&self, version: &PluginVersion) -> Result<(), String>;
    fn version(&self, hash: &str) -> Result<Option<PluginVersion>, String>;
    /// Every stored version of one plugin, oldest first.
    fn versions(&self, kind: PluginKind, name: &str) -> Result<Vec<PluginVersion>, String>;
    /// The version that served last (`record` notes it), which a broken file falls back to.
    fn last_served(&self, kind: PluginKind, name: &str) -> Result<Option<PluginVersion>, String>;
    /// A load was attempted: `Ok(hash)` now serves, or `Err((attempted hash, why not))`.
    fn loaded(&self, kind: PluginKind, name: &str, outcome: Result<&str, (&str, &ScriptError)>);
}

impl PluginKind {
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
    /// Whether the rubric's `criteria(task)` reads its argument at all (see
    /// `analysis::reads_parameter`); when it does not, one result serves every task.
    pub criteria_reads_task: bool,
    /// Whether the rubric's `validate(task, answer)` or `score(task, answer)` reads its task;
    /// when neither does, checking an answer passes them `()` instead of converting the task.
    pub checks_read_task: bool,
    /// The task fields a router's `route(task)` may read (see `analysis::parameter_fields`);
    /// `None`: all of them. Importing builds only these, instead of converting every task
    /// whole.
    pub route_reads: Option<std::collections::BTreeSet<String>>,
}

impl Plugin {
    /// A compiled version, loaded now.
    pub fn new(
        name: &str,
        kind: PluginKind,
        file: String,
        hash: String,
        source: String,
        ast: AST,
    ) -> Self {
        let criteria_reads_task = super::analysis::reads_parameter(&ast, "criteria", 1);
        let route_reads = super::analysis::parameter_fields(&ast, "route", 1);
        let reads_task = |function: &str| {
            has_fn(&ast, function, 2) && super::analysis::reads_parameter(&ast, function, 2)
        };
        let checks_read_task = reads_task("validate") || reads_task("score");
        Self {
            name: name.to_owned(),
            kind,
            file,
            hash,
            source,
            ast,
            loaded_at: crate::now_ms(),
            criteria_reads_task,
            checks_read_task,
            route_reads,
        }
    }

    /// Whether `route(task)` may read this field of its task.
    pub fn route_reads(&self, field: &str) -> bool {
        self.route_reads.as_ref().is_none_or(|f| f.contains(field))
    }

    pub fn has_fn(&self, name: &str, arity: usize) -> bool {
        has_fn(&self.ast, name, arity)
    }
}

fn has_fn(ast: &AST, name: &str, arity: usize) -> bool {
    ast.iter_functions()
        .any(|f| f.name == name && f.params.len() == arity)
}

/// What `GET /api/v1/plugins` shows of a plugin.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
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
    /// Hash of the last source tried, so an unchanged broken file is not re-reported.
    attempted: Option<String>,
    /// The file is gone; the last good version keeps serving the projects that use it.
    deleted: bool,
}

pub struct Registry {
    pub engine: ScriptEngine,
    archive: Arc<dyn VersionArchive>,
    entries: RwLock<HashMap<(PluginKind, String), Entry>>,
    /// Versions other than the current one, compiled on demand from stored source.
    by_hash: RwLock<HashMap<String, Arc<Plugin>>>,
    /// `criteria(task)` results by rubric version and task (see [`Registry::criteria`]).
    criteria: CriteriaCache,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

pub fn content_hash(source: &str) -> String {
    hex::encode(Sha256::digest(source.as_bytes()))
}

/// Whether a folder entry is a plugin file: `NAME.rhai`, not an editor's temp or backup file.
pub fn is_plugin_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    name.ends_with(".rhai") && !name.starts_with('.') && !name.starts_with('#') && name.len() > 5
}

fn plugin_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_plugin_file(p) && p.is_file())
        .collect();
    files.sort();
    files
}

fn name_of(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn unreadable(path: &Path, e: std::io::Error) -> ScriptError {
    ScriptError {
        plugin: name_of(path),
        function: None,
        file: path.display().to_string(),
        line: None,
        column: None,
        message: format!("cannot read: {e}"),
        timed_out: false,
    }
}

/// Compiles a source and checks it fully: required functions and its own `tests()`. No side
/// effects, so `assay check` uses it as it is. Returns the plugin and its number of test cases.
pub fn prepare(
    engine: &ScriptEngine,
    kind: PluginKind,
    name: &str,
    file: &str,
    source: String,
) -> Result<(Plugin, usize), ScriptError> {
    let ast = engine.compile(name, file, &source)?;
    let hash = content_hash(&source);
    let plugin = Plugin::new(name, kind, file.to_owned(), hash, source, ast);
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
    if kind == PluginKind::Rubric {
        super::rubric::probe_criteria(engine, &plugin)?;
    }
    let cases = super::contract::run_tests(engine, &plugin)?;
    Ok((plugin, cases))
}

/// Checks a file offline, as the server would load it. The kind comes from the folder name
/// (`rubrics/` or `plugins/`), or else from the functions the file defines.
pub fn check_file(engine: &ScriptEngine, path: &Path) -> Result<(PluginKind, usize), ScriptError> {
    let source = std::fs::read_to_string(path).map_err(|e| unreadable(path, e))?;
    let folder = path
        .parent()
        .and_then(|p| p.file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("");
    let kind = match folder {
        "rubrics" => PluginKind::Rubric,
        "plugins" => PluginKind::Router,
        _ if source.contains("fn route(") => PluginKind::Router,
        _ => PluginKind::Rubric,
    };
    let (_, cases) = prepare(
        engine,
        kind,
        &name_of(path),
        &path.display().to_string(),
        source,
    )?;
    Ok((kind, cases))
}

/// What one rescan of a folder did.
#[derive(Debug, Default)]
pub struct Rescan {
    pub loaded: Vec<String>,
    pub failed: Vec<ScriptError>,
    pub deleted: Vec<String>,
}

impl Registry {
    pub fn new(engine: ScriptEngine, archive: Arc<dyn VersionArchive>) -> Self {
        Self {
            engine,
            archive,
            entries: RwLock::new(HashMap::new()),
            by_hash: RwLock::new(HashMap::new()),
            criteria: CriteriaCache::default(),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }
    }

    /// Compares a folder with what is loaded and (re)loads every file whose content changed.
    /// Called at start-up, after file-system events, and by the polling fallback.
    pub fn rescan(&self, kind: PluginKind, dir: &Path) -> Rescan {
        let mut report = Rescan::default();
        let files = plugin_files(dir);
        let present: Vec<String> = files.iter().map(|f| name_of(f)).collect();
        for path in files {
            let name = name_of(&path);
            let source = match std::fs::read_to_string(&path) {
                Ok(source) => source,
                Err(e) => {
                    // Not UTF-8, or not readable: an error an admin sees, like a syntax error.
                    if let Some(error) = self.unreadable_file(kind, &name, &path, e) {
                        report.failed.push(error);
                    }
                    continue;
                }
            };
            let hash = content_hash(&source);
            let unchanged = {
                let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
                entries
                    .get(&(kind, name.clone()))
                    .is_some_and(|e| e.attempted.as_deref() == Some(hash.as_str()) && !e.deleted)
            };
            if unchanged {
                continue;
            }
            match self.install(kind, &name, &path.display().to_string(), source) {
                Ok(_) => report.loaded.push(name),
                Err(e) => report.failed.push(e),
            }
        }
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        for ((k, name), entry) in entries.iter_mut() {
            if *k == kind && !entry.deleted && !present.contains(name) {
                entry.deleted = true;
                entry.attempted = None;
                // The error was about a file that is gone; what serves now is the last good one.
                entry.error = None;
                tracing::warn!(kind = kind.as_str(), plugin = %name, "plugin file deleted; its last version keeps serving");
                report.deleted.push(name.clone());
            }
        }
        report
    }

    /// Loads every plugin file of a folder (start-up).
    pub fn load_dir(&self, kind: PluginKind, dir: &Path) -> Vec<ScriptError> {
        if !dir.is_dir() {
            tracing::warn!(kind = kind.as_str(), dir = %dir.display(), "plugin folder not found");
        }
        self.rescan(kind, dir).failed
    }

    /// Records that a plugin file cannot be read; the previous version keeps serving. `None`
    /// when this failure was reported already.
    fn unreadable_file(
        &self,
        kind: PluginKind,
        name: &str,
        path: &Path,
        e: std::io::Error,
    ) -> Option<ScriptError> {
        let error = unreadable(path, e);
        let attempt = format!("unreadable:{}", error.message);
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let entry = entries.entry((kind, name.to_owned())).or_default();
        if entry.attempted.as_deref() == Some(attempt.as_str()) && !entry.deleted {
            return None;
        }
        tracing::error!(kind = kind.as_str(), plugin = %name, error = %error, "plugin file unreadable; the previous version keeps serving");
        entry.file = path.display().to_string();
        entry.attempted = Some(attempt);
        entry.deleted = false;
        entry.error = Some(error.clone());
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
        if entry.current.is_none() {
            entry.current = self.last_stored(kind, name);
        }
        Some(error)
    }

    /// Prepares a new version and swaps it in; on failure the previous version stays current
    /// and the error is recorded.
    fn install(
        &self,
        kind: PluginKind,
        name: &str,
        file: &str,
        source: String,
    ) -> Result<Arc<Plugin>, ScriptError> {
        let hash = content_hash(&source);
        let result = prepare(&self.engine, kind, name, file, source).map(|(p, _)| Arc::new(p));
        if let Ok(plugin) = &result {
            let version = PluginVersion {
                hash: plugin.hash.clone(),
                kind,
                name: name.to_owned(),
                source: plugin.source.clone(),
                first_seen_at: plugin.loaded_at,
            };
            // Stored durably before it serves: every answer given under it can be read back.
            if let Err(e) = self.archive.record(&version) {
                tracing::error!(plugin = %name, error = %e, "could not store plugin version");
            }
        }
        self.archive.loaded(
            kind,
            name,
            result
                .as_ref()
                .map(|_| hash.as_str())
                .map_err(|e| (hash.as_str(), e)),
        );
        let mut entries = self.entries.write().unwrap_or_else(|p| p.into_inner());
        let entry = entries.entry((kind, name.to_owned())).or_default();
        entry.file = file.to_owned();
        entry.attempted = Some(hash);
        entry.deleted = false;
        let replacing = entry.current.is_some();
        match &result {
            Ok(plugin) => {
                tracing::info!(kind = kind.as_str(), plugin = %name, version = %plugin.hash, "plugin loaded");
                entry.current = Some(plugin.clone());
                entry.error = None;
                if replacing {
                    self.reloads.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                tracing::error!(kind = kind.as_str(), plugin = %name, error = %e, "plugin failed to load; the previous version keeps serving");
                entry.error = Some(e.clone());
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                if entry.current.is_none() {
                    // Nothing served yet in this process (a start with a broken file): fall
                    // back to the last version that passed, from the database.
                    entry.current = self.last_stored(kind, name);
                }
            }
        }
        result
    }

    /// A task's criteria under a rubric version. Scripts see no clock, randomness or state, and
    /// a task's content never changes, so `criteria(task)` is a function of the version and the
    /// task: each pair is computed once (the hand-out and the submit of a task both need it),
    /// and once per version when `criteria` never reads its `task`.
    pub fn criteria(&self, rubric: &Plugin, task: &Task) -> Result<Arc<[Criterion]>, ScriptError> {
        self.criteria_of(rubric, task.id, Some(task))
    }

    /// [`Registry::criteria`] where the task may be left out (`None`) when the rubric's
    /// `criteria` never reads it: a hand-out then need not decode the task at all.
    pub fn criteria_of(
        &self,
        rubric: &Plugin,
        task_id: Id,
        task: Option<&Task>,
    ) -> Result<Arc<[Criterion]>, ScriptError> {
        let key = (
            version_key(&rubric.hash),
            if rubric.criteria_reads_task {
                task_id
            } else {
                0
            },
        );
        if let Some(found) = self.criteria.get(key) {
            return Ok(found);
        }
        let content = match task {
            Some(task) => super::rubric::task_value(task),
            // Never read: any task gives the same criteria.
            None if !rubric.criteria_reads_task => serde_json::json!({"id": task_id}),
            None => {
                return Err(ScriptError::contract(
                    rubric,
                    "criteria",
                    "reads its task, which was not given",
                ))
            }
        };
        let computed: Arc<[Criterion]> =
            super::rubric::criteria(&self.engine, rubric, &content)?.into();
        self.criteria.put(key, computed.clone());
        Ok(computed)
    }

    /// The version of a plugin that served last (before this process), compiled; the newest
    /// stored one when none is noted.
    fn last_stored(&self, kind: PluginKind, name: &str) -> Option<Arc<Plugin>> {
        let stored = match self.archive.last_served(kind, name) {
            Ok(Some(v)) => v,
            _ => self.archive.versions(kind, name).ok()?.pop()?,
        };
        let file = format!("{name}@{}", stored.hash);
        let ast = self.engine.compile(name, &file, &stored.source).ok()?;
        tracing::warn!(kind = kind.as_str(), plugin = %name, version = %stored.hash, "serving the last stored version");
        Some(Arc::new(Plugin::new(
            name,
            kind,
            file,
            stored.hash,
            stored.source,
            ast,
        )))
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
        let stored = self
            .archive
            .version(hash)
            .map_err(AppError::internal)?
            .ok_or_else(|| AppError::PluginUnavailable {
                name: name.to_owned(),
                reason: format!("version {hash} is not stored"),
            })?;
        let ast = self
            .engine
            .compile(name, &format!("{name}@{hash}"), &stored.source)?;
        let plugin = Arc::new(Plugin::new(
            name,
            kind,
            format!("{name}@{hash}"),
            hash.to_owned(),
            stored.source,
            ast,
        ));
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
                status: match (&e.error, e.deleted) {
                    (Some(_), _) => "error",
                    (None, true) => "deleted",
                    (None, false) => "ok",
                },
                last_error: e.error.clone(),
            })
            .collect();
        out.sort_by(|a, b| (a.kind.as_str(), &a.name).cmp(&(b.kind.as_str(), &b.name)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plugin(source: &str) -> Plugin {
        let ast = rhai::Engine::new().compile(source).expect("compiles");
        let (file, hash) = ("test.rhai".to_owned(), "0".to_owned());
        Plugin::new("test", PluginKind::Rubric, file, hash, source.into(), ast)
    }

    #[test]
    fn an_answer_check_gets_the_task_only_when_validate_or_score_reads_it() {
        let ignores =
            "fn validate(task, answer) { [] }\nfn score(task, answer) { #{ n: answer.n } }";
        assert!(!plugin(ignores).checks_read_task);
        assert!(!plugin("fn criteria(task) { task.data }").checks_read_task);
        for reads in [
            "fn validate(task, answer) { if task.data.x == 1 { [] } else { [] } }",
            "fn validate(task, answer) { [] }\nfn score(task, answer) { #{ n: task.id } }",
            "fn score(t, a) { let t2 = t; #{} }",
        ] {
            assert!(plugin(reads).checks_read_task, "{reads}");
        }
    }
}
