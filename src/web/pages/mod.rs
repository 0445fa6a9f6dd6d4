//! Server-rendered pages: login, the expert's home, the review page, the lead's submissions,
//! project stats and the admin pages. Handlers gather data off the async workers, build plain
//! view models, and render them with the (hot-reloadable) templates. Writes from pages go
//! through the JSON API with the session cookie and a CSRF header (see `auth::extract`), so
//! every rule the API enforces holds for pages too.

pub mod markdown;
pub mod session;
pub mod templates;
pub mod view;

mod account;
mod admin;
mod assets;
mod home;
mod lead;
mod qa;
mod review;

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpResponse};
use serde_json::Value;

use crate::app::AppState;
pub use session::{PageError, Session};

pub type PageResult = Result<HttpResponse, PageError>;

/// Every page route.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/static/{name}", web::get().to(assets::serve))
        .service(
            web::scope("")
                .wrap(actix_web::middleware::from_fn(server_timing))
                .route("/login", web::get().to(account::login_page))
                .route("/login", web::post().to(account::login))
                .route("/logout", web::post().to(account::logout))
                .route("/", web::get().to(home::home))
                .route("/p/{id}/review", web::get().to(review::review))
                .route("/p/{id}/review", web::post().to(review::start))
                .route("/p/{id}/qa", web::get().to(qa::qa))
                .route("/p/{id}/qa", web::post().to(qa::start))
                .route("/me/work", web::get().to(qa::my_work))
                .route("/p/{id}/submissions", web::get().to(lead::submissions))
                .route("/p/{id}/stats", web::get().to(lead::stats))
                .route("/admin/projects", web::get().to(admin::projects))
                .route("/admin/projects/{id}", web::get().to(admin::project))
                .route("/admin/users", web::get().to(admin::users))
                .route("/admin/audit", web::get().to(admin::audit))
                .route("/admin/plugins", web::get().to(admin::plugins))
                .route("/admin/plugins/{kind}/{name}", web::get().to(admin::plugin)),
        );
}

/// Adds `Server-Timing: app;dur=…` (milliseconds spent producing the page) to page responses,
/// so render times can be read from any browser's network panel or measured by a script.
async fn server_timing(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let mut res = next.call(req).await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.3}")) {
        res.headers_mut()
            .insert(header::HeaderName::from_static("server-timing"), v);
    }
    Ok(res)
}

/// Renders `template` with the fields every page has: the user, the CSRF token, the title.
pub fn page(
    state: &AppState,
    session: Option<&Session>,
    template: &str,
    title: &str,
    mut data: Value,
) -> PageResult {
    if let Value::Object(map) = &mut data {
        map.insert("title".into(), Value::String(title.to_owned()));
        map.insert(
            "user".into(),
            match session {
                Some(s) => serde_json::json!({
                    "username": s.user.username, "is_admin": s.is_admin(),
                }),
                None => Value::Null,
            },
        );
        if !map.contains_key("csrf") {
            map.insert(
                "csrf".into(),
                Value::String(session.map(|s| s.csrf.clone()).unwrap_or_default()),
            );
        }
    }
    let html = state.templates.render(template, &data)?;
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // Pages hold one user's data: never cache them anywhere.
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(html))
}
