//! Application state and the route table. `build_state` opens everything once; `create_app`
//! is used by `assay serve` and by nothing else, so tests exercise exactly what runs.

use std::sync::Arc;

use actix_web::{web, App, HttpServer};

use crate::config::Config;
use crate::review::ReviewCore;
use crate::web::pages::templates::Templates;

/// What a request may need: the review core, and the web's own parts (page templates). Derefs
/// to the core, so handlers read `state.config`, `state.keys`… directly.
#[derive(Clone)]
pub struct AppState {
    pub core: Arc<ReviewCore>,
    pub templates: Arc<Templates>,
}

impl std::ops::Deref for AppState {
    type Target = ReviewCore;
    fn deref(&self) -> &ReviewCore {
        &self.core
    }
}

/// Opens the review core (store, plugins, hand-out index, keys) and loads the page templates.
pub fn build_state(config: Config) -> Result<AppState, String> {
    let templates = Arc::new(Templates::load(&config.plugins.templates));
    crate::web::pages::markdown::allow_images_from(config.content.image_origins.clone());
    let core = ReviewCore::open(config)?;
    Ok(AppState { core, templates })
}

/// Declares the JSON API once: the routes registered under `/api/v1`, and the same list as
/// data (`API_ROUTES`) for the authorization-matrix test, so a route cannot be added without
/// the test knowing.
macro_rules! api_routes {
    ($($method:ident $path:literal => $handler:path,)*) => {
        /// Every JSON API route: (method, path under `/api/v1`).
        pub const API_ROUTES: &[(&str, &str)] = &[$((stringify!($method), $path),)*];

        fn api_scope() -> actix_web::Scope {
            web::scope("/api/v1")
                $(.route($path, web::$method().to($handler)))*
                .default_service(web::to(crate::web::api::not_found))
        }
    };
}

use crate::web::api;

api_routes! {
    post "/projects/{id}/next" => api::review::next,
    post "/assignments/{id}/submit" => api::review::submit,
    post "/auth/login" => api::auth::login,
    post "/auth/logout" => api::auth::logout,
    get "/auth/me" => api::auth::me,
    get "/users" => api::users::list,
    post "/users" => api::users::create,
    get "/users/{id}" => api::users::get,
    patch "/users/{id}" => api::users::update,
    post "/users/{id}/revoke" => api::users::revoke,
    get "/projects" => api::projects::list,
    post "/projects" => api::projects::create,
    get "/projects/{id}" => api::projects::get,
    patch "/projects/{id}" => api::projects::update,
    get "/projects/{id}/members" => api::projects::members,
    put "/projects/{id}/members/{user}" => api::projects::set_member,
    delete "/projects/{id}/members/{user}" => api::projects::remove_member,
    get "/projects/{id}/stats" => api::projects::stats,
    post "/projects/{id}/reroute" => api::projects::reroute,
    get "/projects/{id}/broken" => api::tasks::broken,
    post "/projects/{id}/broken/retry" => api::tasks::retry_broken,
    post "/projects/{id}/tasks" => api::tasks::import,
    get "/projects/{id}/tasks" => api::tasks::list,
    get "/projects/{id}/export" => api::export::export,
    get "/tasks/{id}" => api::tasks::get,
    get "/tasks/{id}/submissions" => api::tasks::submissions,
    post "/assignments/{id}/heartbeat" => api::review::heartbeat,
    post "/assignments/{id}/skip" => api::review::skip,
    post "/assignments/{id}/release" => api::review::release,
    post "/projects/{id}/qa/next" => api::qa::next,
    post "/qa/{id}/heartbeat" => api::qa::heartbeat,
    post "/qa/{id}/release" => api::qa::release,
    post "/qa/{id}/verdict" => api::qa::verdict,
    get "/me/submissions" => api::qa::my_submissions,
    get "/plugins" => api::plugins::list,
    get "/plugins/{kind}/{name}/versions" => api::plugins::versions,
    get "/plugins/{kind}/{name}/versions/{hash}" => api::plugins::version,
    get "/audit" => api::audit::recent,
    get "/audit/verify" => api::audit::verify,
    get "/admin/backup" => api::backup::backup,
    get "/openapi.json" => crate::web::openapi::serve,
}

/// Every route of the server, in one place.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(api::health::healthz))
        .route("/readyz", web::get().to(api::health::readyz))
        .route("/metrics", web::get().to(api::health::metrics))
        .service(api_scope())
        .configure(crate::web::pages::configure);
}

/// Runs the HTTP server until it is stopped. Prints the bound address once it listens.
pub async fn serve(state: AppState) -> std::io::Result<()> {
    let bind = state.config.server.bind.clone();
    let workers = state.config.server.workers;
    let json_limit = state.config.server.max_json_kb as usize * 1024;
    state.core.spawn_sweeper();
    state.core.spawn_audit_sealer();
    let plugins = &state.config.plugins;
    if plugins.watch {
        // The override folder may not exist yet; create it so a first override is noticed.
        let _ = std::fs::create_dir_all(plugins.templates.join("static"));
        let folders = vec![
            plugins.rubrics.clone(),
            plugins.plugins.clone(),
            plugins.templates.clone(),
            plugins.templates.join("static"),
        ];
        let (core, templates) = (state.core.clone(), state.templates.clone());
        let config = crate::scripting::watch::WatchConfig {
            folders,
            debounce: std::time::Duration::from_millis(plugins.debounce_ms),
            poll: (plugins.poll_ms > 0).then(|| std::time::Duration::from_millis(plugins.poll_ms)),
            on_change: Box::new(move || {
                core.rescan_plugins();
                // Changed templates get another try at the tasks whose page failed to render.
                if templates.reload() && core.is_ready() {
                    match core.retry_unrenderable() {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(tasks = n, "tasks set aside by a render retried"),
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot retry tasks set aside by a render")
                        }
                    }
                }
            }),
        };
        crate::scripting::watch::spawn(config)?;
    }
    let core = state.core.clone();
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(crate::web::json_config(json_limit))
            .app_data(crate::web::query_config())
            .app_data(crate::web::path_config())
            .wrap(actix_web::middleware::from_fn(
                crate::web::body_deadline::middleware,
            ))
            .wrap(crate::web::security_headers())
            .wrap(actix_web::middleware::from_fn(
                crate::web::request_id::middleware,
            ))
            .configure(configure)
    })
    .bind(&bind)?;
    let server = if workers > 0 {
        server.workers(workers)
    } else {
        server
    };
    for addr in server.addrs() {
        // Tests and scripts read this line to learn the port when binding to port 0.
        println!("assay listening on http://{addr}");
    }
    if let Some(addr) = server.addrs().first().copied() {
        crate::watchdog::spawn(core.clone(), addr)?;
    }
    let served = server.run().await;
    // Stopped (SIGTERM / SIGINT): commit what is queued, flush, and leave a snapshot of the
    // hand-out index for the next start.
    let _ = crate::review::blocking(move || {
        core.shutdown();
        Ok(())
    })
    .await;
    served
}
