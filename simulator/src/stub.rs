//! A trivial recommendation endpoint: a fixed list per user, computed from the id, for the
//! simulator's own benchmark and determinism test (the only fake: it stands in for a target
//! whose answers never change, so that what varies is the simulator).

use std::net::SocketAddr;

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::get;

/// The list the stub answers for `user` over `movies` ids `m0 … m<movies-1>`.
pub fn answer(user: i64, movies: u64) -> String {
    let movies = movies.max(1);
    (0..20u64)
        .map(|k| format!("m{}", (user.unsigned_abs().wrapping_mul(31).wrapping_add(k * 17)) % movies))
        .collect::<Vec<_>>()
        .join(",")
}

/// Serves `GET /recommend/{user}` on `addr` until the returned task is aborted.
pub async fn serve(addr: SocketAddr, movies: u64) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new().route("/recommend/{user}", get(recommend)).with_state(movies);
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "the stub endpoint stopped");
        }
    });
    Ok((local, task))
}

async fn recommend(State(movies): State<u64>, Path(user): Path<String>) -> (axum::http::StatusCode, String) {
    match user.parse::<i64>() {
        Ok(user) => (axum::http::StatusCode::OK, answer(user, movies)),
        Err(_) => (axum::http::StatusCode::BAD_REQUEST, "bad user id".into()),
    }
}
