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

/// Every route of the server, in one place.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::web::api;
    cfg.route("/healthz", web::get().to(api::health::healthz))
        .route("/readyz", web::get().to(api::health::readyz))
        .route("/metrics", web::get().to(api::health::metrics))
        .service(
            web::scope("/api/v1")
                // The review loop's two calls first: routes are matched in order.
                .route("/projects/{id}/next", web::post().to(api::review::next))
                .route(
                    "/assignments/{id}/submit",
                    web::post().to(api::review::submit),
                )
                .route("/auth/login", web::post().to(api::auth::login))
                .route("/auth/logout", web::post().to(api::auth::logout))
                .route("/auth/me", web::get().to(api::auth::me))
                .route("/users", web::get().to(api::users::list))
                .route("/users", web::post().to(api::users::create))
                .route("/users/{id}", web::get().to(api::users::get))
                .route("/users/{id}", web::patch().to(api::users::update))
                .route("/users/{id}/revoke", web::post().to(api::users::revoke))
                .route("/projects", web::get().to(api::projects::list))
                .route("/projects", web::post().to(api::projects::create))
                .route("/projects/{id}", web::get().to(api::projects::get))
                .route("/projects/{id}", web::patch().to(api::projects::update))
                .route(
                    "/projects/{id}/members",
                    web::get().to(api::projects::members),
                )
                .route(
                    "/projects/{id}/members/{user}",
                    web::put().to(api::projects::set_member),
                )
                .route(
                    "/projects/{id}/members/{user}",
                    web::delete().to(api::projects::remove_member),
                )
                .route("/projects/{id}/stats", web::get().to(api::projects::stats))
                .route(
                    "/projects/{id}/reroute",
                    web::post().to(api::projects::reroute),
                )
                .route("/projects/{id}/broken", web::get().to(api::tasks::broken))
                .route(
                    "/projects/{id}/broken/retry",
                    web::post().to(api::tasks::retry_broken),
                )
                .route("/projects/{id}/tasks", web::post().to(api::tasks::import))
                .route("/projects/{id}/tasks", web::get().to(api::tasks::list))
                .route("/projects/{id}/export", web::get().to(api::export::export))
                .route("/tasks/{id}", web::get().to(api::tasks::get))
                .route(
                    "/tasks/{id}/submissions",
                    web::get().to(api::tasks::submissions),
                )
                .route(
                    "/assignments/{id}/heartbeat",
                    web::post().to(api::review::heartbeat),
                )
                .route("/assignments/{id}/skip", web::post().to(api::review::skip))
                .route(
                    "/assignments/{id}/release",
                    web::post().to(api::review::release),
                )
                .route("/projects/{id}/qa/next", web::post().to(api::qa::next))
                .route("/qa/{id}/heartbeat", web::post().to(api::qa::heartbeat))
                .route("/qa/{id}/release", web::post().to(api::qa::release))
                .route("/qa/{id}/verdict", web::post().to(api::qa::verdict))
                .route("/me/submissions", web::get().to(api::qa::my_submissions))
                .route("/plugins", web::get().to(api::plugins::list))
                .route(
                    "/plugins/{kind}/{name}/versions",
                    web::get().to(api::plugins::versions),
                )
                .route(
                    "/plugins/{kind}/{name}/versions/{hash}",
                    web::get().to(api::plugins::version),
                )
                .route("/audit", web::get().to(api::audit::recent))
                .route("/audit/verify", web::get().to(api::audit::verify))
                .default_service(web::to(api::not_found)),
        )
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
                templates.reload();
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
