//! Test harness: one private Postgres cluster per test process, one fresh migrated database per
//! test (cloned from a migrated template, so a new database costs ~50 ms), dropped afterwards.
//! Compiled in every build (not behind a feature), so test builds and the binaries share one
//! `db` and switching between `ci/test.sh` and `ci/up.sh` rebuilds nothing.
//!
//! ```text
//! let db = db::testing::TestDb::new().await;
//! sqlx::query("SELECT 1").execute(&db.pool).await?;
//! ```

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::{Connection, PgConnection, PgPool};

use crate::pgcluster::{Durability, PgCluster};

const TEMPLATE: &str = "lazyrec_template";

struct Shared {
    cluster: PgCluster,
}

static SHARED: OnceLock<Shared> = OnceLock::new();
static COUNTER: AtomicU64 = AtomicU64::new(0);

fn shared() -> &'static Shared {
    SHARED.get_or_init(|| {
        let cluster = PgCluster::start_ephemeral(None, Durability::Disposable)
            .unwrap_or_else(|e| panic!("starting the test Postgres: {e}"));
        let admin = cluster.url("postgres");
        let template_url = cluster.url(TEMPLATE);
        // The template is built on a runtime of its own: the caller's runtime is a test's, and
        // this runs once per process.
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async {
                let mut conn = PgConnection::connect(&admin).await.expect("connecting to the test cluster");
                sqlx::query(&format!("CREATE DATABASE {TEMPLATE}")).execute(&mut conn).await.expect("create template");
                let pool = PgPool::connect(&template_url).await.expect("connecting to the template");
                crate::MIGRATOR.run(&pool).await.expect("migrating the template");
            });
        })
        .join()
        .expect("template thread");
        Shared { cluster }
    })
}

/// A fresh, migrated database on the shared test cluster.
pub struct TestDb {
    /// A pool on the test database.
    pub pool: PgPool,
    /// Its URL (for child processes).
    pub url: String,
    name: String,
}

impl TestDb {
    /// Creates the database (starting the cluster on first use).
    pub async fn new() -> Self {
        let shared = shared();
        let name = format!("t_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut admin = PgConnection::connect(&shared.cluster.url("postgres")).await.expect("admin connection");
        sqlx::query(&format!("CREATE DATABASE {name} TEMPLATE {TEMPLATE}"))
            .execute(&mut admin)
            .await
            .expect("creating a test database");
        let url = shared.cluster.url(&name);
        let pool = crate::connect_pool(&url, 8).await.expect("connecting to the test database");
        Self { pool, url, name }
    }

    /// A fresh database without the migrations (a test applies them itself, e.g. one at a time
    /// with rows in between).
    pub async fn empty() -> Self {
        let shared = shared();
        let name = format!("t_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let mut admin = PgConnection::connect(&shared.cluster.url("postgres")).await.expect("admin connection");
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("creating a test database");
        let url = shared.cluster.url(&name);
        let pool = crate::connect_pool(&url, 8).await.expect("connecting to the test database");
        Self { pool, url, name }
    }

    /// The URL of a database of the same cluster that nothing listens for (for "DB down" tests
    /// use [`TestDb::dead_url`]).
    pub fn cluster_port() -> u16 {
        shared().cluster.port()
    }

    /// A URL on which no Postgres answers.
    pub fn dead_url() -> String {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        format!("postgres://postgres@127.0.0.1:{port}/nothing")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = shared().cluster.url("postgres");
        let name = self.name.clone();
        // Drop runs inside the test's runtime; the clean-up needs one of its own. The pool is not
        // closed politely (its sockets belong to the blocked test runtime): FORCE ends them.
        let _joined = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin).await {
                    let _dropped =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}
