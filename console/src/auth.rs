//! The admin token: every page but `/login` and `/health` needs it, as `Authorization: Bearer
//! <token>` or as the cookie `/login` sets (SameSite=Strict, HttpOnly; it holds the token's
//! SHA-256, never the token). Without it: 401 and a page that says so, with the login form.

use std::sync::Arc;

use axum::extract::{Form, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use sha2::{Digest, Sha256};

use crate::App;

/// The session cookie's name.
pub const COOKIE: &str = "lazyrec_console";

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Equal without an early exit on the first differing byte.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Whether `headers` carry the token (bearer) or the cookie made from it.
pub fn authorized(headers: &HeaderMap, token: &str) -> bool {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| same(t.trim().as_bytes(), token.as_bytes()));
    if bearer {
        return true;
    }
    let want = digest(token);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')))
        .any(|v| same(v.as_bytes(), want.as_bytes()))
}

/// The middleware in front of every page.
pub async fn require(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    if authorized(request.headers(), &app.config.token) {
        return next.run(request).await;
    }
    let back = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| "/".into());
    unauthorized("This console needs the admin token.", &back)
}

fn unauthorized(why: &str, back: &str) -> Response {
    let body = crate::html::frame(
        "Token required",
        "",
        maud::html! {
            h1 { "401 — token required" }
            p #auth-message .error { (why) " The token is in " code { ".state/run/admin-token" } " on the stack's machine." }
            form method="post" action="/login" {
                input type="hidden" name="next" value=(back);
                label { "Admin token " input type="password" name="token" autofocus; }
                " " button type="submit" { "Sign in" }
            }
        },
    );
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], Html(body.into_string())).into_response()
}

/// `GET /login`.
#[derive(serde::Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

/// The login form.
pub async fn login_form(Query(q): Query<LoginQuery>) -> Response {
    unauthorized("Sign in with the admin token.", q.next.as_deref().unwrap_or("/"))
}

/// `POST /login`'s form.
#[derive(serde::Deserialize)]
pub struct Login {
    token: String,
    next: Option<String>,
}

/// Checks the token, sets the cookie, goes back to the page asked for.
pub async fn login(State(app): State<Arc<App>>, Form(form): Form<Login>) -> Response {
    // Only a path on this console (never another site).
    let next = form.next.filter(|n| n.starts_with('/') && !n.starts_with("//")).unwrap_or_else(|| "/".into());
    if !same(form.token.trim().as_bytes(), app.config.token.as_bytes()) {
        tracing::warn!("console sign-in with a wrong token");
        return unauthorized("That is not the admin token.", &next);
    }
    let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", digest(&app.config.token));
    ([(header::SET_COOKIE, cookie)], Redirect::to(&next)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_token_or_the_cookie_made_from_it_and_nothing_else_is_authorized() {
        let mut h = HeaderMap::new();
        assert!(!authorized(&h, "s3cret"));
        h.insert(header::AUTHORIZATION, "Bearer s3cret".parse().expect("header"));
        assert!(authorized(&h, "s3cret"));
        assert!(!authorized(&h, "s3cre"));
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, format!("a=b; {COOKIE}={}", digest("s3cret")).parse().expect("header"));
        assert!(authorized(&h, "s3cret"));
        // The token itself as the cookie does not pass: the cookie holds its digest.
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, format!("{COOKIE}=s3cret").parse().expect("header"));
        assert!(!authorized(&h, "s3cret"));
    }
}
