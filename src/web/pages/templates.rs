//! Page templates and static assets. The defaults are compiled into the binary; a file with the
//! same name in the templates folder (`NAME.hbs`, or `static/NAME` for an asset) overrides one,
//! and the plugin watcher calls [`Templates::reload`] when the folder changes. A template that
//! does not compile keeps the previous version serving and its error (line and column) is shown
//! on the plugins page. Rendering is strict: a field a template names must exist.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use handlebars::{
    Context, Handlebars, Helper, HelperResult, Output, RenderContext, RenderErrorReason,
};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::error::AppError;

macro_rules! embedded {
    ($($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../../templates/", $name, ".hbs")))),*]
    };
}

/// Every default template, by name. Partials are templates too (`{{> task_view}}`).
const DEFAULT_TEMPLATES: &[(&str, &str)] = embedded!(
    "layout",
    "login",
    "home",
    "review",
    "nothing_left",
    "start_review",
    "qa",
    "my_work",
    "submissions",
    "stats",
    "admin_projects",
    "admin_project",
    "admin_users",
    "admin_audit",
    "admin_plugins",
    "admin_plugin",
    "task_view",
    "answer_view",
    "criterion",
    "kind_likert",
    "kind_choice",
    "kind_multi",
    "kind_pairwise",
    "kind_ranking",
    "kind_number",
    "kind_boolean",
    "kind_text",
    "kind_rewrite",
    "kind_spans",
    "kind_per_item",
);

const DEFAULT_ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../../templates/static/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../templates/static/app.js"),
    ),
    (
        "answer_form.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../templates/static/answer_form.js"),
    ),
    (
        "review.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../templates/static/review.js"),
    ),
    (
        "qa.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../templates/static/qa.js"),
    ),
];

/// A static file as served: bytes, type and a strong validator.
pub struct Asset {
    pub body: Vec<u8>,
    pub content_type: &'static str,
    pub etag: String,
}

/// One template's state, for the plugins page.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateStatus {
    pub name: String,
    /// `default` (embedded) or `override` (from the templates folder).
    pub source: &'static str,
    pub status: &'static str,
    pub last_error: Option<String>,
}

struct Loaded {
    registry: Arc<Handlebars<'static>>,
    assets: Arc<BTreeMap<String, Arc<Asset>>>,
    /// Changes whenever any asset changes; pages put it in asset URLs so caches can keep them.
    asset_version: Arc<str>,
    /// What each name was last built from, to skip unchanged folders and keep old versions.
    sources: BTreeMap<String, (String, &'static str)>,
    errors: BTreeMap<String, String>,
}

pub struct Templates {
    dir: PathBuf,
    loaded: RwLock<Loaded>,
}

fn hash(bytes: &[u8]) -> String {
    hex::encode(&Sha256::digest(bytes)[..8])
}

fn override_files(dir: &Path, ext: Option<&str>) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        // Editor temp and backup files are not templates.
        if name.starts_with('.') || name.ends_with('~') || !path.is_file() {
            continue;
        }
        match ext {
            Some(ext) => {
                if let Some(stem) = name.strip_suffix(ext) {
                    out.push((stem.to_owned(), path.clone()));
                }
            }
            None => out.push((name.to_owned(), path.clone())),
        }
    }
    out
}

impl Templates {
    pub fn load(dir: &Path) -> Self {
        let t = Templates {
            dir: dir.to_owned(),
            loaded: RwLock::new(Loaded {
                registry: Arc::new(Handlebars::new()),
                assets: Arc::default(),
                asset_version: Arc::from(""),
                sources: BTreeMap::new(),
                errors: BTreeMap::new(),
            }),
        };
        t.reload();
        t
    }

    /// Rebuilds from the defaults plus the folder's overrides. A template that fails to compile
    /// keeps the source it had before (or the default). Returns whether a template changed.
    pub fn reload(&self) -> bool {
        let mut wanted: BTreeMap<String, (String, &'static str)> = DEFAULT_TEMPLATES
            .iter()
            .map(|(n, s)| (n.to_string(), (s.to_string(), "default")))
            .collect();
        for (name, path) in override_files(&self.dir, Some(".hbs")) {
            match std::fs::read_to_string(&path) {
                Ok(src) => {
                    wanted.insert(name, (src, "override"));
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot read template")
                }
            }
        }
        let mut assets: BTreeMap<String, Arc<Asset>> = BTreeMap::new();
        for (name, content_type, body) in DEFAULT_ASSETS {
            assets.insert(
                name.to_string(),
                Arc::new(asset(body.as_bytes().to_vec(), content_type)),
            );
        }
        for (name, path) in override_files(&self.dir.join("static"), None) {
            let content_type = content_type_of(&name);
            if let Ok(body) = std::fs::read(&path) {
                assets.insert(name, Arc::new(asset(body, content_type)));
            }
        }
        let version: String = hash(
            assets
                .values()
                .map(|a| a.etag.as_str())
                .collect::<String>()
                .as_bytes(),
        );

        let mut loaded = match self.loaded.write() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        if *version != *loaded.asset_version {
            loaded.assets = Arc::new(assets);
            loaded.asset_version = Arc::from(version.as_str());
        }
        if wanted == loaded.sources && !loaded.registry.get_templates().is_empty() {
            return false;
        }
        let mut registry = new_registry();
        let mut sources = BTreeMap::new();
        let mut errors = BTreeMap::new();
        for (name, (src, origin)) in wanted {
            match registry.register_template_string(&name, &src) {
                Ok(()) => {
                    let before = loaded.sources.get(&name).map(|s| &s.0);
                    if before.is_some_and(|b| *b != src) {
                        tracing::info!(template = %name, "template reloaded");
                    }
                    sources.insert(name, (src, origin));
                }
                Err(e) => {
                    let message = format!("{name}.hbs: {e}");
                    tracing::warn!(error = %message, "template rejected; the previous version keeps serving");
                    errors.insert(name.clone(), message);
                    // Fall back to what served before, else the default.
                    let fallback = loaded.sources.get(&name).cloned().or_else(|| {
                        DEFAULT_TEMPLATES
                            .iter()
                            .find(|(n, _)| *n == name)
                            .map(|(_, s)| (s.to_string(), "default"))
                    });
                    if let Some((src, origin)) = fallback {
                        if registry.register_template_string(&name, &src).is_ok() {
                            sources.insert(name, (src, origin));
                        }
                    }
                }
            }
        }
        loaded.registry = Arc::new(registry);
        loaded.sources = sources;
        loaded.errors = errors;
        true
    }

    fn snapshot(&self) -> (Arc<Handlebars<'static>>, Arc<str>) {
        let loaded = match self.loaded.read() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        (loaded.registry.clone(), loaded.asset_version.clone())
    }

    /// Renders a page. `asset_version` is added to the data for the layout's asset URLs.
    pub fn render(&self, name: &str, data: &Value) -> Result<String, AppError> {
        let (registry, version) = self.snapshot();
        let mut data = data.clone();
        if let Value::Object(map) = &mut data {
            map.insert("asset_version".into(), Value::String(version.to_string()));
        }
        registry.render(name, &data).map_err(|e| {
            tracing::error!(template = name, error = %e, "template render failed");
            AppError::internal(format!("template {name}: {e}"))
        })
    }

    pub fn asset(&self, name: &str) -> Option<Arc<Asset>> {
        let loaded = match self.loaded.read() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        loaded.assets.get(name).cloned()
    }

    pub fn statuses(&self) -> Vec<TemplateStatus> {
        let loaded = match self.loaded.read() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        loaded
            .sources
            .iter()
            .map(|(name, (_, origin))| {
                let error = loaded.errors.get(name).cloned();
                TemplateStatus {
                    name: name.clone(),
                    source: origin,
                    status: if error.is_some() { "error" } else { "ok" },
                    last_error: error,
                }
            })
            .collect()
    }
}

fn asset(body: Vec<u8>, content_type: &'static str) -> Asset {
    let etag = format!("\"{}\"", hash(&body));
    Asset {
        body,
        content_type,
        etag,
    }
}

fn content_type_of(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn new_registry() -> Handlebars<'static> {
    let mut hb = Handlebars::new();
    hb.set_strict_mode(true);
    // `{{markdown text}}`: sanitized HTML (the sanitizer is what makes it safe to write as is).
    register(&mut hb, "markdown", |v| match v {
        Value::String(s) => super::markdown::render(s),
        Value::Null => String::new(),
        other => super::markdown::render(&format!("```json\n{other:#}\n```")),
    });
    // `{{json value}}`: pretty JSON, HTML-escaped.
    register(&mut hb, "json", |v| {
        handlebars::html_escape(&serde_json::to_string_pretty(v).unwrap_or_default())
    });
    // `{{datetime ms}}`: a UTC date and time.
    register(&mut hb, "datetime", |v| match v.as_i64() {
        Some(ms) => format_datetime(ms),
        None => "—".into(),
    });
    // `{{duration seconds}}`: `1 h 05 min`, `3 min 20 s`.
    register(&mut hb, "duration", |v| {
        let s = v.as_f64().unwrap_or(0.0).max(0.0) as u64;
        if s >= 3600 {
            format!("{} h {:02} min", s / 3600, (s % 3600) / 60)
        } else if s >= 60 {
            format!("{} min {} s", s / 60, s % 60)
        } else {
            format!("{s} s")
        }
    });
    hb
}

/// Registers a one-argument helper whose output `format` makes safe HTML itself.
fn register(hb: &mut Handlebars<'static>, name: &'static str, format: fn(&Value) -> String) {
    hb.register_helper(
        name,
        Box::new(
            move |h: &Helper,
                  _: &Handlebars,
                  _: &Context,
                  _: &mut RenderContext,
                  out: &mut dyn Output|
                  -> HelperResult {
                let value = h
                    .param(0)
                    .map(|p| p.value())
                    .ok_or(RenderErrorReason::ParamNotFoundForIndex(name, 0))?;
                out.write(&format(value))?;
                Ok(())
            },
        ),
    );
}

pub fn format_datetime(ms: i64) -> String {
    use actix_web::cookie::time::OffsetDateTime;
    match OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute()
        ),
        Err(_) => "—".into(),
    }
}
