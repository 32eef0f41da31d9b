//! The routing shared by the replicas of a fleet: one versioned row of `lb_routing` in Postgres
//! is the source of truth; each replica follows it and keeps serving its last version (cached in
//! its routing file) while Postgres is unreachable.
//!
//! - **Start** ([`seed`]): the row is created from the configuration, or rewritten as a new
//!   version when this replica's configuration differs from the one the row was made on (or
//!   `routing.reset`); otherwise the row — admin changes included — is what the replica serves.
//! - **Change** ([`change`]): in one transaction the row is locked, changed, its version bumped,
//!   the change recorded in `release_events`, the routing file written, and a notification sent
//!   on [`CHANNEL`] (delivered at commit). The replica that made it swaps it in after the commit.
//! - **Follow** ([`follow`]): on a notification, and every `routing.poll_ms` besides, a replica
//!   reads the row and swaps in a newer version. A replica that started without Postgres seeds
//!   as soon as Postgres answers.
//!
//! Swaps happen under [`RoutingSync`]'s lock and only to a newer version, so a follower that read the
//! row just before a change commits never swaps an older table over it.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::core::Lb;
use crate::routing::{self, Routing, RoutingSpec};

/// The notification channel of routing changes (payload: the fleet).
pub const CHANNEL: &str = "lazyrec_lb_routing";

/// The fleet's row.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// Bumped by every change.
    pub version: i64,
    /// The fingerprint of the configuration the row derives from.
    pub config_fingerprint: String,
    /// The routing.
    pub spec: RoutingSpec,
}

/// The shared routing could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Postgres refused or is unreachable.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The row's spec is not a routing (written by another version of the load balancer?).
    #[error("the stored routing of fleet {fleet:?} is unreadable: {source}")]
    Malformed {
        /// The fleet.
        fleet: String,
        /// Why.
        source: serde_json::Error,
    },
    /// The routing file (this replica's cache) could not be written: the change is not made.
    #[error("routing file: {0:#}")]
    Cache(anyhow::Error),
}

/// A change that was not made.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The change does not apply to the current routing (bad input): 400.
    #[error("{0}")]
    Refused(String),
    /// The change could not be stored: 503, nothing changed.
    #[error("routing not saved, nothing changed: {0}")]
    NotSaved(#[from] StoreError),
}

/// A change that was made.
#[derive(Debug)]
pub struct Changed {
    /// The routing before.
    pub before: RoutingSpec,
    /// The stored routing after.
    pub after: Stored,
    /// When the new table was swapped in (every request stamped before was routed by the old).
    pub applied_at: chrono::DateTime<chrono::Utc>,
}

/// Serialises this replica's swaps (changes and follow-ups) and remembers whether the fleet's
/// row has been seeded by it.
#[derive(Debug, Default)]
pub struct RoutingSync {
    seeded: tokio::sync::Mutex<bool>,
}

/// Who wrote a row: `<host>:<pid>`.
pub fn replica_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string());
    let host = host.unwrap_or_else(|_| "?".into());
    format!("{host}:{}", std::process::id())
}

type Row = (i64, String, serde_json::Value);

fn stored(fleet: &str, (version, config_fingerprint, spec): Row) -> Result<Stored, StoreError> {
    let spec = serde_json::from_value(spec).map_err(|source| StoreError::Malformed { fleet: fleet.into(), source })?;
    Ok(Stored { version, config_fingerprint, spec })
}

/// The fleet's row, if any.
pub async fn load(pool: &PgPool, fleet: &str) -> Result<Option<Stored>, StoreError> {
    let row: Option<Row> = sqlx::query_as("SELECT version, config_fingerprint, spec FROM lb_routing WHERE fleet = $1")
        .bind(fleet)
        .fetch_optional(pool)
        .await?;
    row.map(|r| stored(fleet, r)).transpose()
}

/// The fleet's row after this replica's start: created from the configuration, rewritten when
/// the configuration differs from the row's (or `reset`), else as it is.
pub async fn seed(pool: &PgPool, config: &Config) -> Result<Stored, StoreError> {
    let fleet = &config.routing.fleet;
    let configured = routing::configured_spec(config);
    let fingerprint = routing::fingerprint(&configured);
    let spec =
        serde_json::to_value(&configured).map_err(|source| StoreError::Malformed { fleet: fleet.clone(), source })?;
    let mut tx = pool.begin().await?;
    let written: Option<(i64, String, serde_json::Value, bool)> = sqlx::query_as(
        "INSERT INTO lb_routing AS r (fleet, version, config_fingerprint, spec, updated_by)
         VALUES ($1, 1, $2, $3, $4)
         ON CONFLICT (fleet) DO UPDATE
            SET version = r.version + 1, config_fingerprint = EXCLUDED.config_fingerprint,
                spec = EXCLUDED.spec, updated_at = now(), updated_by = EXCLUDED.updated_by
          WHERE $5 OR r.config_fingerprint <> EXCLUDED.config_fingerprint
         RETURNING version, config_fingerprint, spec, (xmax = 0) AS inserted",
    )
    .bind(fleet)
    .bind(&fingerprint)
    .bind(&spec)
    .bind(replica_id())
    .bind(config.routing.reset)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((version, fp, spec, inserted)) = written else {
        tx.commit().await?;
        return load(pool, fleet).await?.ok_or_else(|| StoreError::Database(sqlx::Error::RowNotFound));
    };
    if !inserted {
        let reason = if config.routing.reset { "reset" } else { "the configuration changed" };
        sqlx::query("INSERT INTO release_events (release_id, step, details) VALUES (NULL, 'lb.configure', $1)")
            .bind(serde_json::json!({"fleet": fleet, "version": version, "reason": reason, "after": spec}))
            .execute(&mut *tx)
            .await?;
        tracing::warn!(
            fleet,
            version,
            reason,
            "routing: the configured routing replaces the fleet's (admin changes dropped)"
        );
    }
    sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(fleet).execute(&mut *tx).await?;
    tx.commit().await?;
    stored(fleet, (version, fp, spec))
}

/// Swaps `stored` in when it is newer than the table in effect; saves it to the routing file.
/// The caller holds the [`RoutingSync`] lock.
fn adopt(lb: &Lb, stored: &Stored) {
    let current = lb.routing.load_full();
    if stored.version <= current.version {
        return;
    }
    lb.routing.store(Arc::new(Routing::build(&stored.spec, stored.version, Some(&current))));
    lb.metrics.routing_version.set(stored.version);
    tracing::info!(fleet = %lb.config.routing.fleet, version = stored.version, before = current.version,
        experiment = %stored.spec.experiment, share = stored.spec.share, "routing: following the fleet's version");
    if let Err(e) = routing::save(&lb.config, stored.version, &stored.spec) {
        tracing::warn!(error = %format!("{e:#}"), "routing file not updated (a start without Postgres would serve an older routing)");
    }
}

/// Reads the fleet's row (seeding it first when this replica has not yet) and swaps in a newer
/// version.
pub async fn sync(lb: &Lb) -> Result<(), StoreError> {
    let mut seeded = lb.routing_sync.seeded.lock().await;
    let stored = match (*seeded, load(&lb.pool, &lb.config.routing.fleet).await?) {
        (true, Some(stored)) => stored,
        // Not seeded by this replica yet, or the row is gone (a restored database).
        _ => seed(&lb.pool, &lb.config).await?,
    };
    *seeded = true;
    adopt(lb, &stored);
    Ok(())
}

/// The first routing: the fleet's row (seeded) when Postgres answers within `wait`, else the
/// routing file's, else the configuration's. Returns the table and whether it came from
/// Postgres.
pub async fn initial(pool: &PgPool, config: &Config, wait: Duration) -> (Routing, bool) {
    match tokio::time::timeout(wait, seed(pool, config)).await {
        Ok(Ok(stored)) => {
            if let Err(e) = routing::save(config, stored.version, &stored.spec) {
                tracing::warn!(error = %format!("{e:#}"), "routing file not written");
            }
            tracing::info!(fleet = %config.routing.fleet, version = stored.version, "routing: the fleet's, from Postgres");
            (Routing::build(&stored.spec, stored.version, None), true)
        }
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => format!("no answer within {wait:?}"),
            };
            tracing::warn!(reason = %why, "routing: Postgres unreachable at start; serving the cached routing until it answers");
            let (version, spec) = routing::cached_spec(config);
            (Routing::build(&spec, version, None), false)
        }
    }
}

/// Marks the fleet's row as seeded by this replica (its start read it from Postgres).
pub async fn mark_seeded(lb: &Lb) {
    *lb.routing_sync.seeded.lock().await = true;
}

/// Applies `apply` to the fleet's routing: stored (row, `release_events`, routing file,
/// notification — one transaction), then swapped in here.
pub async fn change(
    lb: &Lb,
    action: &str,
    apply: impl FnOnce(&mut RoutingSpec) -> Result<(), String>,
) -> Result<Changed, ChangeError> {
    let mut seeded = lb.routing_sync.seeded.lock().await;
    let fleet = &lb.config.routing.fleet;
    if !*seeded {
        // The same first step as following: seed, then swap in what the row says.
        let stored = seed(&lb.pool, &lb.config).await?;
        *seeded = true;
        adopt(lb, &stored);
    }
    let mut tx = lb.pool.begin().await.map_err(StoreError::from)?;
    let row: Option<Row> =
        sqlx::query_as("SELECT version, config_fingerprint, spec FROM lb_routing WHERE fleet = $1 FOR UPDATE")
            .bind(fleet)
            .fetch_optional(&mut *tx)
            .await
            .map_err(StoreError::from)?;
    let current = stored(fleet, row.ok_or(StoreError::Database(sqlx::Error::RowNotFound))?)?;
    let before = current.spec.clone();
    let mut after = before.clone();
    apply(&mut after).map_err(ChangeError::Refused)?;
    let spec = serde_json::to_value(&after).map_err(|source| StoreError::Malformed { fleet: fleet.clone(), source })?;
    let (version,): (i64,) = sqlx::query_as(
        "UPDATE lb_routing SET version = version + 1, spec = $2, updated_at = now(), updated_by = $3
          WHERE fleet = $1 RETURNING version",
    )
    .bind(fleet)
    .bind(&spec)
    .bind(replica_id())
    .fetch_one(&mut *tx)
    .await
    .map_err(StoreError::from)?;
    sqlx::query("INSERT INTO release_events (release_id, step, details) VALUES (NULL, $1, $2)")
        .bind(format!("lb.{action}"))
        .bind(serde_json::json!({"before": before, "after": after, "fleet": fleet, "version": version}))
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(fleet)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    // The cache before the commit: a change this replica answered survives its restart without
    // Postgres. A commit that fails puts the cache back.
    routing::save(&lb.config, version, &after).map_err(StoreError::Cache)?;
    if let Err(e) = tx.commit().await {
        let table = lb.routing.load();
        if let Err(e) = routing::save(&lb.config, table.version, &table.spec()) {
            tracing::warn!(error = %format!("{e:#}"), "routing file not restored after a failed commit");
        }
        return Err(StoreError::from(e).into());
    }
    let after = Stored { version, config_fingerprint: current.config_fingerprint, spec: after };
    let previous = lb.routing.load_full();
    let table = Routing::build(&after.spec, version, Some(&previous));
    let applied_at = chrono::Utc::now();
    lb.routing.store(Arc::new(table));
    lb.metrics.routing_version.set(version);
    Ok(Changed { before, after, applied_at })
}

/// Follows the fleet's row until `stop`: on every notification on [`CHANNEL`] and every
/// `routing.poll_ms`.
pub async fn follow(lb: Arc<Lb>, stop: watch::Receiver<bool>) {
    let poll = Duration::from_millis(lb.config.routing.poll_ms);
    let stop = lifecycle::stopped(stop);
    tokio::pin!(stop);
    let mut listener: Option<PgListener> = None;
    let mut failing = false;
    loop {
        if listener.is_none() {
            listener = listen(&lb.pool).await;
        }
        match sync(&lb).await {
            Ok(()) if failing => {
                tracing::info!("routing: Postgres answers again; following the fleet's routing");
                failing = false;
            }
            Ok(()) => {}
            Err(e) if !failing => {
                tracing::warn!(error = %e, "routing: cannot read the fleet's routing; serving the last one");
                failing = true;
            }
            Err(_) => {}
        }
        let notified = async {
            match listener.as_mut() {
                Some(l) => l.recv().await.map(drop),
                None => std::future::pending().await,
            }
        };
        let lost = tokio::select! {
            waited = tokio::time::timeout(poll, notified) => match waited {
                Ok(Err(e)) => Some(e),
                Ok(Ok(())) | Err(_) => None,
            },
            () = &mut stop => return,
        };
        if let Some(e) = lost {
            tracing::debug!(error = %e, "routing: notification listener lost; polling");
            listener = None;
            // Do not spin on a listener that fails at once.
            tokio::time::sleep(poll.min(Duration::from_millis(200))).await;
        }
    }
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let mut listener = PgListener::connect_with(pool).await.ok()?;
    listener.listen(CHANNEL).await.ok()?;
    Some(listener)
}
