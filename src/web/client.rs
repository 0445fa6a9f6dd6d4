//! Where a request comes from: its address and whether it came over HTTPS. A proxy's
//! `X-Forwarded-For` and `X-Forwarded-Proto` are believed only from the addresses in
//! `server.trusted_proxies`; anyone else could write them.

use std::net::IpAddr;

use actix_web::HttpRequest;

fn trusted_peer(req: &HttpRequest, trusted: &[IpAddr]) -> Option<IpAddr> {
    let peer = req.peer_addr()?.ip();
    trusted.contains(&peer).then_some(peer)
}

/// The client's address: the peer, or the nearest untrusted address a trusted proxy reports.
pub fn address(req: &HttpRequest, trusted: &[IpAddr]) -> String {
    let peer = req.peer_addr().map(|a| a.ip());
    if trusted_peer(req, trusted).is_some() {
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|a| a.trim().parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        // The last address not itself a trusted proxy is the one that reached the proxies.
        if let Some(client) = forwarded.iter().rev().find(|a| !trusted.contains(a)) {
            return client.to_string();
        }
    }
    peer.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
}

/// Whether the request reached us over HTTPS (directly, or at a trusted proxy).
pub fn is_https(req: &HttpRequest, trusted: &[IpAddr]) -> bool {
    if req.app_config().secure() {
        return true;
    }
    trusted_peer(req, trusted).is_some()
        && req
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// Whether the session cookie gets the `Secure` flag (see `auth.secure_cookie`).
pub fn secure_cookie(req: &HttpRequest, config: &crate::config::Config) -> bool {
    use crate::config::SecureCookie;
    match config.auth.secure_cookie {
        SecureCookie::Always => true,
        SecureCookie::Never => false,
        SecureCookie::Auto => is_https(req, &config.server.trusted_proxies),
    }
}
