//! Releases in Postgres: a `releases` row per release, moved through its states only along the
//! allowed transitions, each move one transaction that also appends a `release_events` row with
//! the state before and after and the numbers that justified it.
//!
//! ```text
//! created ──► gated ──► deployed ──► promoted ──► rolled_back
//!    │          │           │            ▲             │
//!    ▼          ▼           ▼            └─────────────┘ (rollback --to: promoted again)
//! rejected   aborted     aborted
//! ```

use serde::{Deserialize, Serialize};
use sqlx::PgPool;

/// Where a release is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Recorded, nothing checked yet.
    Created,
    /// Passed the offline gate.
    Gated,
    /// Failed the offline gate (final).
    Rejected,
    /// Serving as nightly.
    Deployed,
    /// Serving as main.
    Promoted,
    /// Stopped as nightly (final).
    Aborted,
    /// Replaced on main by a rollback to an earlier release.
    RolledBack,
}

impl State {
    /// The value stored in `releases.state`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Gated => "gated",
            State::Rejected => "rejected",
            State::Deployed => "deployed",
            State::Promoted => "promoted",
            State::Aborted => "aborted",
            State::RolledBack => "rolled_back",
        }
    }

    /// Parses a stored value.
    pub fn parse(s: &str) -> Option<State> {
        [
            State::Created,
            State::Gated,
            State::Rejected,
            State::Deployed,
            State::Promoted,
            State::Aborted,
            State::RolledBack,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }

    /// Whether a release may move from `self` to `to`.
    pub fn can_move_to(self, to: State) -> bool {
        matches!(
            (self, to),
            (State::Created, State::Gated | State::Rejected)
                | (State::Gated, State::Deployed | State::Aborted)
                | (State::Deployed, State::Promoted | State::Aborted)
                | (State::Promoted, State::RolledBack)
                | (State::RolledBack, State::Promoted)
        )
    }
}

/// What `start` records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewRelease {
    /// `release-recommender-nightly-<version>`.
    pub tag: String,
    /// `<version>`.
    pub version: String,
    /// The commit.
    pub git_sha: Option<String>,
    /// The CI pipeline.
    pub pipeline_id: Option<String>,
    /// The registry strategy.
    pub strategy: String,
    /// Its parameters.
    pub params: serde_json::Value,
    /// `<strategy>@<params hash>+<git sha>`.
    pub model_version: String,
    /// The vector collection it reads.
    pub embedding_version: Option<String>,
    /// The data watermark at release time.
    pub data_watermark: Option<i64>,
    /// The experiment salt (the tag, by default).
    pub experiment_salt: String,
    /// The nightly share.
    pub share: f64,
}

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// No such release.
    #[error("no release {0}")]
    NotFound(String),
    /// A tag is recorded already.
    #[error("release {0} exists already (tags are unique; use a new version)")]
    Exists(String),
    /// The move is not allowed from the current state.
    #[error("release {id} is {from}; it cannot become {to}")]
    Transition {
        /// The release.
        id: i64,
        /// Its state.
        from: String,
        /// The state asked for.
        to: &'static str,
    },
}

/// Records a new release (state `created`) and its first event.
pub async fn create(pool: &PgPool, r: &NewRelease) -> Result<i64, StoreError> {
    let mut tx = pool.begin().await?;
    let id: Option<i64> = sqlx::query_scalar(
        "INSERT INTO releases (tag, version, git_sha, pipeline_id, strategy, params, model_version,
                               embedding_version, data_watermark, experiment_salt, share)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (tag) DO NOTHING RETURNING release_id",
    )
    .bind(&r.tag)
    .bind(&r.version)
    .bind(&r.git_sha)
    .bind(&r.pipeline_id)
    .bind(&r.strategy)
    .bind(&r.params)
    .bind(&r.model_version)
    .bind(&r.embedding_version)
    .bind(r.data_watermark)
    .bind(&r.experiment_salt)
    .bind(r.share)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = id else {
        return Err(StoreError::Exists(r.tag.clone()));
    };
    sqlx::query("INSERT INTO release_events (release_id, step, details) VALUES ($1, 'created', $2)")
        .bind(id)
        .bind(serde_json::to_value(r).unwrap_or_default())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}

/// Moves release `id` to `to` if allowed, with `details` (the numbers behind the move) in the
/// event; a final or decisive state (rejected, promoted, aborted, rolled back) also stores the
/// decision and its reason on the release.
pub async fn transition(
    pool: &PgPool,
    id: i64,
    to: State,
    reason: &str,
    details: serde_json::Value,
) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let from: Option<String> = sqlx::query_scalar("SELECT state FROM releases WHERE release_id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(from) = from else {
        return Err(StoreError::NotFound(id.to_string()));
    };
    if !State::parse(&from).is_some_and(|f| f.can_move_to(to)) {
        return Err(StoreError::Transition { id, from, to: to.as_str() });
    }
    let decisive = matches!(to, State::Rejected | State::Promoted | State::Aborted | State::RolledBack);
    sqlx::query(
        "UPDATE releases SET state = $2,
           decision = CASE WHEN $3 THEN $2 ELSE decision END,
           decision_reason = CASE WHEN $3 THEN $4 ELSE decision_reason END,
           decided_at = CASE WHEN $3 THEN now() ELSE decided_at END
         WHERE release_id = $1",
    )
    .bind(id)
    .bind(to.as_str())
    .bind(decisive)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO release_events (release_id, step, details) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(format!("state.{}", to.as_str()))
        .bind(serde_json::json!({"before": from, "after": to.as_str(), "reason": reason, "details": details}))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Stores an evaluation's numbers: the latest on the release (`online_metrics`), every one as an
/// event (`evaluate`).
pub async fn record_online(pool: &PgPool, id: i64, numbers: &serde_json::Value) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let updated = sqlx::query("UPDATE releases SET online_metrics = $2 WHERE release_id = $1")
        .bind(id)
        .bind(numbers)
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() == 0 {
        return Err(StoreError::NotFound(id.to_string()));
    }
    sqlx::query("INSERT INTO release_events (release_id, step, details) VALUES ($1, 'evaluate', $2)")
        .bind(id)
        .bind(numbers)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// A release's state by id.
pub async fn state(pool: &PgPool, id: i64) -> Result<State, StoreError> {
    let s: Option<String> =
        sqlx::query_scalar("SELECT state FROM releases WHERE release_id = $1").bind(id).fetch_optional(pool).await?;
    let s = s.ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    State::parse(&s).ok_or(StoreError::Transition { id, from: s, to: "a known state" })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_drawn_transitions_are_allowed() {
        use State::*;
        let all = [Created, Gated, Rejected, Deployed, Promoted, Aborted, RolledBack];
        let allowed: Vec<(State, State)> =
            all.iter().flat_map(|a| all.iter().map(move |b| (*a, *b))).filter(|(a, b)| a.can_move_to(*b)).collect();
        assert_eq!(
            allowed,
            [
                (Created, Gated),
                (Created, Rejected),
                (Gated, Deployed),
                (Gated, Aborted),
                (Deployed, Promoted),
                (Deployed, Aborted),
                (Promoted, RolledBack),
                (RolledBack, Promoted),
            ]
        );
        for s in all {
            assert_eq!(State::parse(s.as_str()), Some(s));
        }
    }
}
