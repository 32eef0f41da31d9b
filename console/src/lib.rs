//! `lazyrec-console`: the operators' pages — [`pages::overview`] (backends, routing, traffic per
//! variant, ingest), [`pages::releases`] (every release; one release's looks as charts, its
//! events and decision, and the promote/abort/rollback buttons when started with `--write`),
//! [`pages::user`] (history, variant, last answers, what each model answers now),
//! [`pages::provenance`] (one answer's provenance and its replay) and [`pages::reports`]
//! (`lazyrec-report` as charts).
//!
//! Pages are rendered on the server (HTML with maud, charts as inline SVG with plotters): no
//! script, nothing fetched by the browser but the page itself. Every page needs the admin token
//! ([`auth`]); the console listens on loopback unless told otherwise, and changes nothing
//! unless started with `--write` — and then only through the release controller's own code
//! (`release::controller`, `release::look`), as the CLI does.
//!
//! Queries stay bounded as history grows: the overview reads the last hour (the `ts` index of
//! each monthly partition), a user's page that user's rows (`(user_id, ts)` index, newest 20), a
//! release its own events, provenance one row by key; reports read the range asked for, the
//! default one (the last hour) recomputed in the background every [`pages::reports::REFRESH`].

pub mod auth;
pub mod charts;
pub mod html;
pub mod pages;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use proto::admin::AdminClient;
use sqlx::PgPool;
use tokio::sync::OnceCell;
use vectorstore::VectorStore;

/// What the console is started with.
#[derive(Clone)]
pub struct Config {
    /// The admin token every page needs.
    pub token: String,
    /// Whether the promote/abort/rollback buttons exist.
    pub write: bool,
    /// The load balancer's admin API (base URL).
    pub lb_admin_url: String,
    /// The token of that API (usually the same admin token).
    pub lb_admin_token: String,
    /// Opens the vector store for replays (on first use).
    pub store: Arc<dyn Fn() -> anyhow::Result<Arc<dyn VectorStore>> + Send + Sync>,
    /// The release notifier's webhook (notifications of buttons' actions).
    pub webhook: Option<String>,
}

/// Shared by every handler.
pub struct App {
    /// Postgres (the primary or a standby: every page reads; only the buttons write).
    pub pool: PgPool,
    /// The configuration.
    pub config: Config,
    /// The load balancer's admin client.
    pub admin: AdminClient,
    /// The vector store, opened on the first replay.
    pub store: OnceCell<Arc<dyn VectorStore>>,
    /// Reports by range (hours), each kept for [`pages::reports::FRESH`]; the default range is
    /// recomputed in the background so that its page never waits for the queries.
    pub reports: moka::future::Cache<i64, Arc<pages::reports::Computed>>,
    /// A plain HTTP client (backends' answers).
    pub http: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Empty<hyper::body::Bytes>,
    >,
}

/// Why a page could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// Postgres failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// Postgres failed computing a report that several page loads were waiting for.
    #[error("database: {0}")]
    SharedDb(#[from] Arc<sqlx::Error>),
    /// Nothing by that name or id.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The release controller refused or failed.
    #[error("release controller: {0}")]
    Control(#[from] release::controller::ControlError),
    /// Something else failed (opening the store, a replay).
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let status = match &self {
            PageError::NotFound(_) => StatusCode::NOT_FOUND,
            PageError::BadRequest(_) => StatusCode::BAD_REQUEST,
            PageError::Control(release::controller::ControlError::Input(_)) => StatusCode::CONFLICT,
            PageError::Control(release::controller::ControlError::Store(
                release::store::StoreError::Transition { .. } | release::store::StoreError::StepOpen { .. },
            )) => StatusCode::CONFLICT,
            PageError::Db(_) | PageError::SharedDb(_) | PageError::Control(_) | PageError::Other(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "page failed");
        }
        let page = html::frame(
            "Error",
            "",
            maud::html! {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("error")) }
                p.error { (self.to_string()) }
            },
        );
        (status, Html(page.into_string())).into_response()
    }
}

/// The pages' result.
pub type PageResult = Result<Html<String>, PageError>;

impl App {
    /// A new application state.
    pub fn new(pool: PgPool, config: Config) -> Arc<Self> {
        let admin = AdminClient::new(&config.lb_admin_url, &config.lb_admin_token);
        let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
        let reports = moka::future::Cache::builder().max_capacity(16).time_to_live(pages::reports::FRESH).build();
        Arc::new(Self { pool, config, admin, store: OnceCell::new(), http, reports })
    }
}

/// Every route, behind the token.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(pages::overview::page))
        .route("/releases", get(pages::releases::list))
        .route("/releases/{id}", get(pages::releases::one))
        .route("/releases/{id}/{action}", post(pages::releases::act))
        .route("/users", get(pages::user::find))
        .route("/users/{id}", get(pages::user::page))
        .route("/provenance", get(pages::provenance::page))
        .route("/provenance/replay", post(pages::provenance::replay))
        .route("/reports", get(pages::reports::page))
        .layer(axum::middleware::from_fn_with_state(app.clone(), auth::require))
        .route("/health", get(|| async { "ok\n" }))
        .route("/login", get(auth::login_form).post(auth::login))
        .with_state(app)
}

/// Serves the console on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Arc<App>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let refresher = tokio::spawn(pages::reports::refresh_default(app.clone()));
    let served = axum::serve(listener, router(app)).with_graceful_shutdown(shutdown).await;
    refresher.abort();
    served
}
