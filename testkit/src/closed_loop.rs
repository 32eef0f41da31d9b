//! The closed loop's stack, shared by the simulator's tests and the console's browser test:
//! the default dataset with each user's latest 20 % held out (the simulator's futures), two
//! servers (real embeddings) behind the load balancer (admin API on, token [`crate::fleet::TOKEN`]),
//! and the ingester following the simulator's log file, as `lazyrec-db ingest --follow` would.

use std::time::Duration;

use db::ingest::{IngestOptions, Ingester};
use db::parse::ParseConfig;
use db::source::{FileSource, LineSource};
use db::testing::TestDb;
use server::config::Variant;
use simulator::population::FutureItem;
use sqlx::Connection;

use crate::stack::{Stack, wait_ready};

/// The closed loop's stack: the default dataset with each user's latest 20 % held out, two
/// servers (real embeddings) behind the load balancer, and the ingester following the
/// simulator's log file, as `lazyrec-db ingest --follow` would.
pub struct ClosedLoop {
    /// What was loaded, with the held-out futures.
    pub loaded: db::cli::HeldOutLoad,
    /// Postgres and the store.
    pub stack: Stack,
    /// The main server.
    pub main: server::RunningServer,
    /// The nightly server (its own copy of the store).
    pub nightly: server::RunningServer,
    /// The load balancer (main and nightly routed; admin API on).
    pub lb: loadbalancer::RunningLb,
    /// Base URLs.
    pub main_url: String,
    /// Base URLs.
    pub nightly_url: String,
    /// Base URLs.
    pub lb_url: String,
    /// The simulator's log, followed by the ingester.
    pub log: std::path::PathBuf,
    /// The ingester following the log.
    pub ingester: tokio::task::JoinHandle<Result<db::ingest::IngestReport, db::ingest::IngestError>>,
    /// Where the log and the load balancer's state live.
    pub work: tempfile::TempDir,
    /// The nightly's copy of the store.
    pub nightly_edge: tempfile::TempDir,
}

impl ClosedLoop {
    /// Starts it; the servers cache a user's history for `history_ttl_ms` (default when None).
    pub async fn start(experiment: &str, history_ttl_ms: Option<u64>) -> Self {
        let db = TestDb::new().await;
        let loaded = db::cli::load_movielens_holding_out(
            &db.pool,
            &db.url,
            &db::import::movielens::MovieLensPaths::bundled(),
            false,
            0.2,
        )
        .await
        .expect("load with a held-out future");
        db::popularity::refresh(&db.pool, db::popularity::PopularityParams::default()).await.expect("popularity");
        let stack = Stack::with_db(db).await;
        let work = tempfile::tempdir().expect("work dir");
        let mut main_config = stack.config();
        if let Some(ttl) = history_ttl_ms {
            main_config.caches.user_history_ttl_ms = ttl;
        }
        let main = server::start(main_config.clone()).await.expect("main");
        let nightly_edge = stack.edge_copy().await;
        let mut nightly_config = main_config;
        nightly_config.variant = Variant::Nightly;
        nightly_config.store.edge_dir = Some(nightly_edge.path().to_path_buf());
        nightly_config.state_dir = nightly_edge.path().to_path_buf();
        let nightly = server::start(nightly_config).await.expect("nightly");
        let (main_url, nightly_url) = (format!("http://{}", main.http_addr), format!("http://{}", nightly.http_addr));
        wait_ready(&main_url).await;
        wait_ready(&nightly_url).await;
        let lb = loadbalancer::start(loadbalancer::config::Config {
            http_addr: "127.0.0.1:0".parse().expect("addr"),
            grpc_addr: "127.0.0.1:0".parse().expect("addr"),
            admin_addr: "127.0.0.1:0".parse().expect("addr"),
            main: vec![main_url.clone()],
            nightly: vec![nightly_url.clone()],
            experiment: experiment.into(),
            database_url: Some(stack.db.url.clone()),
            admin_token: Some(crate::fleet::TOKEN.into()),
            state_dir: work.path().join("lb"),
            ..loadbalancer::config::Config::default()
        })
        .await
        .expect("load balancer");
        let lb_url = format!("http://{}", lb.http_addr);
        wait_ready(&lb_url).await;
        let log = work.path().join("simulated.log");
        std::fs::write(&log, "").expect("create the log");
        let conn = sqlx::PgConnection::connect(&stack.db.url).await.expect("connect");
        let source: Box<dyn LineSource> =
            Box::new(FileSource::open(&log, Some(Duration::from_millis(100))).expect("follow the log"));
        let opts = IngestOptions {
            batch_lines: 2_000,
            parse: ParseConfig { rating_scale: 10, ..ParseConfig::default() },
            ..IngestOptions::default()
        };
        let ingester = tokio::spawn(Ingester::run_once(conn, opts, vec![source]));
        Self { loaded, stack, main, nightly, lb, main_url, nightly_url, lb_url, log, ingester, work, nightly_edge }
    }
}

/// The held-out ratings as the simulator's futures, per user.
pub fn db_futures(rows: &[db::import::movielens::FutureRating]) -> std::collections::BTreeMap<i64, Vec<FutureItem>> {
    let mut out: std::collections::BTreeMap<i64, Vec<FutureItem>> = Default::default();
    for f in rows {
        out.entry(f.user_id)
            .or_default()
            .push(FutureItem { movie: std::sync::Arc::from(f.movie_id.as_str()), rating: Some(f.rating) });
    }
    out
}
