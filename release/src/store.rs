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

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};

use crate::steps::Intent;

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
    /// A stored value is not what the code wrote (a hand-edited or corrupt record).
    #[error("release {id}: malformed {what}: {detail}")]
    Malformed {
        /// The release.
        id: i64,
        /// Which value.
        what: &'static str,
        /// Why it does not read.
        detail: String,
    },
    /// Another step is open (another controller is acting, or one was killed: reconcile first).
    #[error("step {step_id} ({action}) of release {release_id} is still open: run `lazyrec-release reconcile`")]
    StepOpen {
        /// The open step.
        step_id: i64,
        /// Its release.
        release_id: i64,
        /// Its action.
        action: String,
    },
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
    transition_in(&mut tx, id, to, reason, details).await?;
    tx.commit().await?;
    Ok(())
}

/// [`transition`] inside a transaction.
async fn transition_in(
    tx: &mut Transaction<'_, Postgres>,
    id: i64,
    to: State,
    reason: &str,
    details: serde_json::Value,
) -> Result<(), StoreError> {
    let from: Option<String> = sqlx::query_scalar("SELECT state FROM releases WHERE release_id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut **tx)
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
    .execute(&mut **tx)
    .await?;
    sqlx::query("INSERT INTO release_events (release_id, step, details) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(format!("state.{}", to.as_str()))
        .bind(serde_json::json!({"before": from, "after": to.as_str(), "reason": reason, "details": details}))
        .execute(&mut **tx)
        .await?;
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
    State::parse(&s).ok_or(StoreError::Malformed { id, what: "state", detail: s })
}

/// What the controller reads of a release to act on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The tag (empty for releases recorded without one).
    pub tag: String,
    /// The registry strategy.
    pub strategy: String,
    /// Its parameters.
    pub params: serde_json::Value,
    /// The model version its servers must report.
    pub model_version: String,
    /// The experiment salt (the tag when unset).
    pub experiment: String,
    /// The nightly share.
    pub share: f64,
    /// When the load balancer started its experiment.
    pub experiment_started_at: Option<DateTime<Utc>>,
    /// When the load balancer ended it.
    pub experiment_ended_at: Option<DateTime<Utc>>,
}

/// Release `id`'s record.
pub async fn record(pool: &PgPool, id: i64) -> Result<Record, StoreError> {
    type Row = (
        Option<String>,
        String,
        serde_json::Value,
        String,
        Option<String>,
        Option<f64>,
        Option<DateTime<Utc>>,
        Option<DateTime<Utc>>,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT tag, strategy, params, model_version, experiment_salt, share, experiment_started_at, experiment_ended_at
         FROM releases WHERE release_id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let (tag, strategy, params, model_version, salt, share, started, ended) =
        row.ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    let tag = tag.unwrap_or_default();
    Ok(Record {
        experiment: salt.unwrap_or_else(|| tag.clone()),
        share: share.unwrap_or(0.2),
        tag,
        strategy,
        params,
        model_version,
        experiment_started_at: started,
        experiment_ended_at: ended,
    })
}

/// Release `tag`'s id and state, when it is recorded.
pub async fn by_tag(pool: &PgPool, tag: &str) -> Result<Option<(i64, State)>, StoreError> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT release_id, state FROM releases WHERE tag = $1").bind(tag).fetch_optional(pool).await?;
    match row {
        None => Ok(None),
        Some((id, s)) => match State::parse(&s) {
            Some(state) => Ok(Some((id, state))),
            None => Err(StoreError::Malformed { id, what: "state", detail: s }),
        },
    }
}

/// Stores the offline gate's evaluation on the release.
pub async fn set_offline_metrics(pool: &PgPool, id: i64, report: &serde_json::Value) -> Result<(), StoreError> {
    sqlx::query("UPDATE releases SET offline_metrics = $2 WHERE release_id = $1")
        .bind(id)
        .bind(report)
        .execute(pool)
        .await?;
    Ok(())
}

/// The p-value of release `id`'s latest look (the sequential test carries it between looks).
pub async fn previous_p(pool: &PgPool, id: i64) -> Result<Option<f64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT (details->'comparison'->>'p_always_valid')::float8 FROM release_events
         WHERE release_id = $1 AND step = 'evaluate' ORDER BY id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?
    .flatten())
}

/// The users served most recently (within a day), most recent first: whose requests warm a
/// nightly before it is routed.
pub async fn recent_users(pool: &PgPool, limit: i64) -> Result<Vec<i64>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT user_id FROM recommendations_history WHERE user_id IS NOT NULL AND ts > now() - interval '1 day'
         GROUP BY user_id ORDER BY max(ts) DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// The backends release `id` was last deployed on (its `state.deployed` event, or a rollback
/// that redeployed it); empty when it never was. A record that does not read is an error, never
/// "never deployed" (which would redeploy it).
pub async fn deployed_backends(pool: &PgPool, id: i64) -> Result<Vec<String>, StoreError> {
    let backends: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT b FROM (
           SELECT id, COALESCE(details->'details'->'backends', details->'backends') AS b FROM release_events
           WHERE release_id = $1 AND step IN ('state.deployed', 'rollback.target', 'state.promoted')
         ) e WHERE b IS NOT NULL ORDER BY id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    match backends {
        None => Ok(Vec::new()),
        Some(b) => serde_json::from_value(b.clone()).map_err(|e| StoreError::Malformed {
            id,
            what: "deployed backends",
            detail: format!("{e}: {b}"),
        }),
    }
}

/// The ingest watermark now (none before the first ingest): what a new release is gated on.
pub async fn data_watermark(pool: &PgPool) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar("SELECT last_event_id FROM ingest_watermark").fetch_optional(pool).await?)
}

/// When the first response under `experiment` was recorded (none yet: `None`).
pub async fn first_response(pool: &PgPool, experiment: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(sqlx::query_scalar("SELECT min(ts) FROM recommendations_history WHERE experiment = $1")
        .bind(experiment)
        .fetch_one(pool)
        .await?)
}

/// A line of `lazyrec-release list`: id, tag, state, model version, decision reason, created.
pub type Listed = (i64, Option<String>, String, String, Option<String>, DateTime<Utc>);

/// Every release, newest first.
pub async fn list(pool: &PgPool) -> Result<Vec<Listed>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT release_id, tag, state, model_version, decision_reason, created_at FROM releases ORDER BY release_id DESC",
    )
    .fetch_all(pool)
    .await?)
}

/// An open step: its id, release and intent.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenStep {
    /// The step.
    pub step_id: i64,
    /// Its release.
    pub release_id: i64,
    /// What it was about to do.
    pub intent: Intent,
    /// When it was recorded.
    pub started_at: DateTime<Utc>,
}

/// Records the intent of a step about to act on the load balancer; refused while another step is
/// open.
pub async fn begin_step(pool: &PgPool, release_id: i64, intent: &Intent) -> Result<i64, StoreError> {
    if let Some(open) = open_step(pool).await? {
        return Err(StoreError::StepOpen {
            step_id: open.step_id,
            release_id: open.release_id,
            action: open.intent.action().into(),
        });
    }
    let value = serde_json::to_value(intent).map_err(|e| StoreError::Malformed {
        id: release_id,
        what: "step intent",
        detail: e.to_string(),
    })?;
    let inserted: Result<i64, sqlx::Error> =
        sqlx::query_scalar("INSERT INTO release_steps (release_id, intent) VALUES ($1, $2) RETURNING step_id")
            .bind(release_id)
            .bind(&value)
            .fetch_one(pool)
            .await;
    match inserted {
        Ok(id) => Ok(id),
        // Another controller opened one between the check and the insert.
        Err(sqlx::Error::Database(e)) if e.is_unique_violation() => match open_step(pool).await? {
            Some(open) => Err(StoreError::StepOpen {
                step_id: open.step_id,
                release_id: open.release_id,
                action: open.intent.action().into(),
            }),
            None => Err(StoreError::Db(sqlx::Error::Database(e))),
        },
        Err(e) => Err(e.into()),
    }
}

/// The open step, if any.
pub async fn open_step(pool: &PgPool) -> Result<Option<OpenStep>, StoreError> {
    let row: Option<(i64, i64, serde_json::Value, DateTime<Utc>)> =
        sqlx::query_as("SELECT step_id, release_id, intent, started_at FROM release_steps WHERE closed_at IS NULL")
            .fetch_optional(pool)
            .await?;
    let Some((step_id, release_id, intent, started_at)) = row else { return Ok(None) };
    let intent = serde_json::from_value(intent.clone()).map_err(|e| StoreError::Malformed {
        id: release_id,
        what: "step intent",
        detail: format!("{e}: {intent}"),
    })?;
    Ok(Some(OpenStep { step_id, release_id, intent, started_at }))
}

/// One state move of a closing step.
#[derive(Debug, Clone)]
pub struct Move {
    /// The release.
    pub id: i64,
    /// Its new state.
    pub to: State,
    /// Why.
    pub reason: String,
}

/// How a step closes: its outcome, the moves it makes (all or none), the experiment boundary the
/// load balancer applied, and an extra event (a rollback's target that stays promoted).
#[derive(Debug, Clone)]
pub struct Close {
    /// `completed` or `undone`.
    pub outcome: &'static str,
    /// State moves.
    pub moves: Vec<Move>,
    /// The numbers behind them (every move's event carries them).
    pub details: serde_json::Value,
    /// The experiment of the step's release started (route) at this time.
    pub experiment_started_at: Option<DateTime<Utc>>,
    /// The experiment of the step's release ended (promote, abort) at this time.
    pub experiment_ended_at: Option<DateTime<Utc>>,
    /// An event without a move: (release, step name).
    pub event: Option<(i64, &'static str)>,
}

/// Closes step `step_id` with its moves, in one transaction: the records change exactly when the
/// step is closed.
pub async fn close_step(pool: &PgPool, step_id: i64, close: Close) -> Result<(), StoreError> {
    let mut tx = pool.begin().await?;
    let release: Option<i64> = sqlx::query_scalar(
        "UPDATE release_steps SET closed_at = now(), outcome = $2 WHERE step_id = $1 AND closed_at IS NULL
         RETURNING release_id",
    )
    .bind(step_id)
    .bind(close.outcome)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(release) = release else {
        return Err(StoreError::NotFound(format!("open step {step_id}")));
    };
    for m in &close.moves {
        transition_in(&mut tx, m.id, m.to, &m.reason, close.details.clone()).await?;
    }
    if let Some((id, step)) = close.event {
        sqlx::query("INSERT INTO release_events (release_id, step, details) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(step)
            .bind(&close.details)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "UPDATE releases SET experiment_started_at = COALESCE($2, experiment_started_at),
                             experiment_ended_at = COALESCE($3, experiment_ended_at)
         WHERE release_id = $1",
    )
    .bind(release)
    .bind(close.experiment_started_at)
    .bind(close.experiment_ended_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// When the load balancer recorded its latest `lb.<action>` change since `since` (its own record
/// in `release_events`; reconcile's boundary when the controller died before reading the answer).
pub async fn lb_change_at(
    pool: &PgPool,
    action: &str,
    since: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(sqlx::query_scalar("SELECT max(at) FROM release_events WHERE release_id IS NULL AND step = $1 AND at >= $2")
        .bind(format!("lb.{action}"))
        .bind(since)
        .fetch_one(pool)
        .await?)
}

/// Every release with its state (for comparing the records with the load balancer).
pub async fn states(pool: &PgPool) -> Result<Vec<(i64, State)>, StoreError> {
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT release_id, state FROM releases ORDER BY release_id").fetch_all(pool).await?;
    rows.into_iter()
        .map(|(id, s)| {
            State::parse(&s).map(|state| (id, state)).ok_or(StoreError::Malformed { id, what: "state", detail: s })
        })
        .collect()
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
