//! One look at a release's experiment: measure both variants over the window the load balancer
//! applied, judge them ([`crate::decision::decide`], the previous look's p-value carried on),
//! record the numbers on the release, and — when asked — carry the decision out. The CLI's
//! `evaluate --release` and the console's buttons call this one code.

use proto::admin::AdminClient;
use sqlx::PgPool;

use crate::controller::{self, ControlError};
use crate::decision::{self, Criteria, Decision, Evaluation};
use crate::notify::Notifier;
use crate::online::{self, Window};
use crate::store::{self, StoreError};

/// What a look needs besides the release.
#[derive(Debug, Clone, Copy)]
pub struct LookParams {
    /// How long after a response a watch still counts as its conversion.
    pub conversion_window: chrono::Duration,
    /// An upper bound on the previous look's always-valid p-value (1 when none is known).
    pub previous_p: f64,
    /// The criteria (recorded with the look).
    pub criteria: Criteria,
}

/// Looks at release `id`'s experiment and records the look (`online_metrics` and an `evaluate`
/// event). A release without a recorded start and without responses is bad input.
pub async fn look(pool: &PgPool, id: i64, params: &LookParams) -> Result<Evaluation, ControlError> {
    let record = store::record(pool, id).await?;
    let previous = store::previous_p(pool, id).await?.unwrap_or(1.0).min(params.previous_p);
    // The window is the one the load balancer applied (its clock, recorded by route, promote and
    // abort); without a record, the first response under the experiment until now.
    let started = match record.experiment_started_at {
        Some(t) => Some(t),
        None => store::first_response(pool, &record.experiment).await?,
    };
    let Some(started) = started else {
        return Err(ControlError::Input(format!("no responses recorded under experiment {:?}", record.experiment)));
    };
    let now = chrono::Utc::now();
    let until = record.experiment_ended_at.map_or(now, |end| end.min(now));
    let window = Window {
        experiment: record.experiment.clone(),
        since: started,
        until,
        conversion_window: params.conversion_window,
    };
    let (main, nightly) = online::measure(pool, &window).await.map_err(StoreError::from)?;
    let switched = online::switched_users(pool, &window).await.map_err(StoreError::from)?;
    let elapsed = (until - started).to_std().unwrap_or_default();
    let e = decision::decide(main, nightly, switched, record.share, elapsed, previous, &params.criteria);
    let numbers = serde_json::to_value(&e).map_err(|err| ControlError::Input(format!("encoding the look: {err}")))?;
    store::record_online(pool, id, &numbers).await?;
    Ok(e)
}

/// Carries out a look's decision through the admin API: promote, abort, or nothing (continue).
pub async fn act(
    pool: &PgPool,
    admin: &AdminClient,
    notify: &Notifier,
    id: i64,
    decision: &Decision,
) -> Result<(), ControlError> {
    match decision {
        Decision::Promote { reason } => controller::promote(pool, admin, notify, id, reason).await,
        Decision::Abort { criterion, reason } => {
            controller::abort(pool, admin, notify, id, &format!("{criterion:?}: {reason}")).await
        }
        Decision::Continue { .. } => Ok(()),
    }
}
