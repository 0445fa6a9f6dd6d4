//! Application state and the route table. `build_state` opens everything once; `create_app`
//! is used by `assay serve` and by nothing else, so tests exercise exactly what runs.

use std::sync::Arc;

use actix_web::{web, App, HttpServer};

use crate::auth::{self, Keys, LoginLimiter};
use crate::config::Config;
use crate::queue::Queue;
use crate::scripting::{PluginKind, Registry, ScriptEngine};
use crate::store::flush::GroupFlusher;
use crate::store::{SledStore, Store};

/// Cheap handles to everything a request may need.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    pub flusher: Arc<GroupFlusher>,
    pub registry: Arc<Registry>,
    pub queue: Arc<Queue>,
    pub keys: Arc<Keys>,
    pub login_limiter: Arc<LoginLimiter>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub templates: Arc<crate::web::pages::templates::Templates>,
}

/// Opens the store, loads plugins, rebuilds the queue and prepares keys.
pub fn build_state(config: Config) -> Result<AppState, String> {
    crate::services::init_pool(config.server.blocking_threads)
        .map_err(|e| format!("cannot start the blocking pool: {e}"))?;
    let data = &config.storage.data;
    std::fs::create_dir_all(data)
        .map_err(|e| format!("cannot create data folder {}: {e}", data.display()))?;
    let sled = SledStore::open_with_cache(
        &data.join("db"),
        config.storage.fsync,
        config.storage.cache_mb,
    )
    .map_err(|e| e.to_string())?;
    let store: Arc<dyn Store> = Arc::new(sled);
    let flush_store = store.clone();
    let flusher = GroupFlusher::start(move || flush_store.flush().map_err(|e| e.to_string()))
        .map_err(|e| format!("cannot start the flusher: {e}"))?;

    let registry = Registry::new(ScriptEngine::new(&config.scripting), store.clone());
    registry.load_dir(PluginKind::Rubric, &config.plugins.rubrics);
    registry.load_dir(PluginKind::Router, &config.plugins.plugins);

    // The hand-out index loads in the background so the server answers at once; lookups of
    // a project's queue (hand-outs, submits, imports) wait for it, `/readyz` says when it is done.
    let queue = Arc::new(Queue::loading());
    spawn_queue_load(store.clone(), queue.clone())
        .map_err(|e| format!("cannot start loading the queue: {e}"))?;

    let config_templates = config.plugins.templates.clone();
    let secret = auth::load_or_create_secret(&config.auth.secret, data)?;
    let keys = Keys::new(&secret, config.auth.session_hours);
    let login_limiter =
        LoginLimiter::new(config.auth.login_attempts, config.auth.login_window_seconds);
    Ok(AppState {
        config: Arc::new(config),
        store,
        flusher: Arc::new(flusher),
        registry: Arc::new(registry),
        queue,
        keys: Arc::new(keys),
        login_limiter: Arc::new(login_limiter),
        metrics: Arc::default(),
        templates: Arc::new(crate::web::pages::templates::Templates::load(
            &config_templates,
        )),
    })
}

/// Reads every open task and active lease into `queue` on a thread of its own. The store is
/// unusable if this fails (or panics), and requests would wait for the index forever, so the
/// process stops, as it would had opening the store failed.
fn spawn_queue_load(store: Arc<dyn Store>, queue: Arc<Queue>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("assay-queue-load".into())
        .spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                load_queue(&*store, &queue)
            }));
            let message = match outcome {
                Ok(Ok(())) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => "the loading thread panicked".to_owned(),
            };
            tracing::error!(error = %message, "cannot load the queue");
            eprintln!("error: cannot load the queue: {message}");
            std::process::exit(1);
        })
        .map(drop)
}

fn load_queue(store: &dyn Store, queue: &Queue) -> Result<(), crate::store::StoreError> {
    let started = std::time::Instant::now();
    let open = store.open_tasks()?;
    let active = store.active_assignments()?;
    let (open_count, active_count) = (open.len(), active.len());
    let read_ms = started.elapsed().as_millis() as u64;
    queue.load(open, active);
    crate::memory::give_back();
    tracing::info!(
        open_tasks = open_count,
        active_leases = active_count,
        read_ms,
        ms = started.elapsed().as_millis() as u64,
        "queue loaded"
    );
    Ok(())
}

/// Every route of the server, in one place.
pub fn configure(cfg: &mut web::ServiceConfig) {
    use crate::web::api;
    cfg.route("/healthz", web::get().to(api::health::healthz))
        .route("/readyz", web::get().to(api::health::readyz))
        .route("/metrics", web::get().to(api::health::metrics))
        .service(
            web::scope("/api/v1")
                .route("/auth/login", web::post().to(api::auth::login))
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
                .route("/projects/{id}/tasks", web::post().to(api::tasks::import))
                .route("/projects/{id}/tasks", web::get().to(api::tasks::list))
                .route("/projects/{id}/next", web::post().to(api::review::next))
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
                .route(
                    "/assignments/{id}/submit",
                    web::post().to(api::review::submit),
                )
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
                .default_service(web::to(api::not_found)),
        )
        .configure(crate::web::pages::configure);
}

/// Runs the HTTP server until it is stopped. Prints the bound address once it listens.
pub async fn serve(state: AppState) -> std::io::Result<()> {
    let bind = state.config.server.bind.clone();
    let workers = state.config.server.workers;
    let json_limit = state.config.server.max_json_kb as usize * 1024;
    crate::services::review::spawn_sweeper(state.clone());
    let plugins = &state.config.plugins;
    if plugins.watch {
        let scripts = vec![
            (PluginKind::Rubric, plugins.rubrics.clone()),
            (PluginKind::Router, plugins.plugins.clone()),
        ];
        // The override folder may not exist yet; create it so a first override is noticed.
        let _ = std::fs::create_dir_all(plugins.templates.join("static"));
        let mut folders: Vec<_> = scripts.iter().map(|(_, dir)| dir.clone()).collect();
        folders.push(plugins.templates.clone());
        folders.push(plugins.templates.join("static"));
        let (registry, templates) = (state.registry.clone(), state.templates.clone());
        let config = crate::scripting::watch::WatchConfig {
            folders,
            debounce: std::time::Duration::from_millis(plugins.debounce_ms),
            poll: (plugins.poll_ms > 0).then(|| std::time::Duration::from_millis(plugins.poll_ms)),
            on_change: Box::new(move || {
                crate::scripting::watch::rescan_plugins(&registry, &scripts);
                templates.reload();
            }),
        };
        crate::scripting::watch::spawn(config)?;
    }
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(crate::web::json_config(json_limit))
            .app_data(crate::web::query_config())
            .app_data(crate::web::path_config())
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
    server.run().await
}
