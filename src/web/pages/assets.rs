//! Static CSS and JavaScript, from the binary or the templates folder. Pages link them with a
//! version query (`?v=…`, changed whenever an asset changes), so browsers may keep them long.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::app::AppState;

pub async fn serve(
    state: web::Data<AppState>,
    name: web::Path<String>,
    req: HttpRequest,
) -> HttpResponse {
    let Some(asset) = state.templates.asset(&name) else {
        return HttpResponse::NotFound()
            .content_type("text/plain; charset=utf-8")
            .body("no such asset");
    };
    let versioned = req.query_string().starts_with("v=");
    let cache = if versioned {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=300"
    };
    let matches = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == asset.etag));
    let mut res = if matches {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    res.insert_header((header::CACHE_CONTROL, cache))
        .insert_header((header::ETAG, asset.etag.clone()));
    if matches {
        return res.finish();
    }
    res.content_type(asset.content_type)
        .body(asset.body.clone())
}
