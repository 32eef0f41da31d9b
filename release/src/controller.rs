//! The release lifecycle over the load balancer's admin API ([`proto::admin::AdminClient`]) and
//! Postgres: [`start`] (the offline gate, then [`route`]), [`promote`], [`abort`], [`rollback`].
//!
//! Every step that changes the load balancer is crash-safe ([`crate::steps`]): reconcile any
//! step left open, record the intent, act, then close the step and move the release's state in
//! one transaction. Every move goes through [`crate::store`] (allowed transitions only, one event
//! each).

use std::time::Duration;

use proto::admin::{AdminClient, AdminError, ExperimentRequest, MainRequest, NightlyRequest, PromoteRequest};
use sqlx::PgPool;

pub use crate::deploy::{CommandDeploy, Deploy, DeployError, Deployment};
pub use crate::gate::{GateError, GateResult, GateStep, gate, offline_gate};
use crate::notify::Notifier;
pub use crate::readiness::{ReadyError, wait_ready};
use crate::steps::{self, InStep, Intent, fault};
use crate::store::{self, Close, Move, State, StoreError};
pub use crate::warmup::{Warmup, warm};

/// Controller failures, each with its cause.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A release record could not be read or moved.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The load balancer's admin API refused or failed (nothing moved when it refused).
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// A backend is not ready or serves another model.
    #[error(transparent)]
    Ready(#[from] ReadyError),
    /// Deploying a release's servers failed.
    #[error("deploying release {id}")]
    Deploy {
        /// The release.
        id: i64,
        /// What the deploy step said.
        #[source]
        source: DeployError,
    },
    /// A release's servers are gone and there is no deploy step to start new ones.
    #[error("release {id}: its servers are gone ({gone}) and no deploy step was given")]
    NoDeployStep {
        /// The release.
        id: i64,
        /// Why the recorded ones do not serve it.
        gone: String,
    },
    /// The offline gate could not run.
    #[error("offline gate")]
    Gate(#[source] GateError),
    /// Bad input.
    #[error("{0}")]
    Input(String),
}

/// What `start` needs: the gate step, then the nightly's backends (deployed by the pipeline's
/// deploy step).
#[derive(Clone)]
pub struct Start {
    /// The release and its gate.
    pub gate: GateStep,
    /// The nightly's backends.
    pub backends: Vec<String>,
    /// How long to wait for them.
    pub ready_within: Duration,
    /// The warm-up before routing.
    pub warmup: Warmup,
}

/// Runs a step's act; when it fails (the admin API refused — nothing moved — or did not answer),
/// the step is reconciled at once from the load balancer's state, so an error leaves no step
/// open when the load balancer can be read.
async fn act<T>(
    pool: &PgPool,
    admin: &AdminClient,
    acting: impl std::future::Future<Output = Result<T, ControlError>>,
) -> Result<T, ControlError> {
    match acting.await {
        Ok(t) => Ok(t),
        Err(e) => {
            match steps::reconcile(pool, admin).await {
                Ok(done) => tracing::warn!(error = %e, reconciled = ?done, "a step's act failed; reconciled"),
                Err(again) => tracing::error!(error = %e, reconcile = %again, "a step's act failed; it stays open"),
            }
            Err(e)
        }
    }
}

/// A completed step's close: one release moves to `to`.
fn moved(id: i64, to: State, reason: &str, details: serde_json::Value) -> Close {
    Close { moves: vec![Move { id, to, reason: reason.to_string() }], details, ..steps::close("completed") }
}

/// Reconciles, checks that release `id` may become `to` from its state, then records `intent`:
/// the step's id and the guard that keeps SIGTERM waiting until the step closes.
async fn begin(
    pool: &PgPool,
    admin: &AdminClient,
    id: i64,
    to: State,
    intent: Intent,
) -> Result<(i64, InStep), ControlError> {
    steps::reconcile(pool, admin).await?;
    let state = store::state(pool, id).await?;
    if !state.can_move_to(to) {
        return Err(move_error(id, state, to.as_str()));
    }
    let in_step = InStep::enter();
    let step = store::begin_step(pool, id, &intent).await?;
    Ok((step, in_step))
}

fn move_error(id: i64, from: State, to: &'static str) -> ControlError {
    StoreError::Transition { id, from: from.as_str().into(), to }.into()
}

/// Routes a gated release's experiment to its deployed backends: waits until they are ready and
/// serve the release's model version (else the release is aborted before any user sees it),
/// warms them ([`warm`]), points the load balancer's nightly at them and starts the experiment
/// (salt and share from the release record).
pub async fn route(
    pool: &PgPool,
    admin: &AdminClient,
    notify: &Notifier,
    id: i64,
    backends: &[String],
    ready_within: Duration,
    warmup: Warmup,
) -> Result<(), ControlError> {
    if backends.is_empty() {
        return Err(ControlError::Input("a nightly needs at least one backend URL".into()));
    }
    steps::reconcile(pool, admin).await?;
    let state = store::state(pool, id).await?;
    if state != State::Gated {
        return Err(move_error(id, state, "deployed"));
    }
    let record = store::record(pool, id).await?;
    let tag = record.tag.clone();
    if let Err(e) = wait_ready(backends, ready_within, Some(&record.model_version)).await {
        let reason = lifecycle::error_chain(&e);
        store::transition(pool, id, State::Aborted, &reason, serde_json::json!({"backends": backends})).await?;
        notify
            .send(
                &format!("release {tag} ({id}) aborted before any traffic: {reason}"),
                serde_json::json!({"id": id, "tag": tag, "state": "aborted"}),
            )
            .await;
        return Err(e.into());
    }
    let (warmed, warm_failed, warm_s) = warm(pool, backends, warmup).await?;
    tracing::info!(release = id, warmed, warm_failed, warm_s, "nightly warmed with recent users' requests");
    let intent = Intent::Route {
        backends: backends.to_vec(),
        experiment: record.experiment.clone(),
        share: record.share,
        warmup: serde_json::json!({"requests": warmed, "failed": warm_failed, "seconds": warm_s}),
    };
    let _in_step = InStep::enter();
    let step = store::begin_step(pool, id, &intent).await?;
    fault("route:intent");
    let lb = act(pool, admin, async {
        admin
            .set_nightly(&NightlyRequest { backends: backends.to_vec(), share: Some(0.0), release_id: Some(id) })
            .await?;
        fault("route:nightly");
        let experiment = ExperimentRequest { experiment: Some(record.experiment.clone()), share: Some(record.share) };
        Ok(admin.start_experiment(&experiment).await?)
    })
    .await?;
    fault("route:act");
    let details = serde_json::json!({
        "backends": backends, "experiment": record.experiment, "share": record.share, "lb": lb,
        "warmup": {"requests": warmed, "failed": warm_failed, "seconds": warm_s},
    });
    let started = lb.change.as_ref().map(|c| c.applied_at);
    let close = moved(id, State::Deployed, "nightly ready; experiment started", details);
    store::close_step(pool, step, Close { experiment_started_at: started, ..close }).await?;
    notify
        .send(
            &format!("release {tag} ({id}) deployed as nightly for {:.0} % of users", 100.0 * record.share),
            serde_json::json!({"id": id, "tag": tag, "state": "deployed"}),
        )
        .await;
    Ok(())
}

/// [`gate`], then (when it passed) [`route`]. Returns the release id and its state.
pub async fn start(
    pool: &PgPool,
    admin: &AdminClient,
    notify: &Notifier,
    s: &Start,
) -> Result<(i64, State), ControlError> {
    if s.backends.is_empty() {
        return Err(ControlError::Input("a nightly needs at least one backend URL".into()));
    }
    // The gate does not touch the load balancer; `route` reconciles before it does.
    let (id, state) = gate(pool, notify, &s.gate).await?;
    if state != State::Gated {
        return Ok((id, state));
    }
    route(pool, admin, notify, id, &s.backends, s.ready_within, s.warmup).await?;
    Ok((id, State::Deployed))
}

/// The nightly of release `id` becomes main (one routing swap; the old main's servers keep
/// running for a rollback).
pub async fn promote(
    pool: &PgPool,
    admin: &AdminClient,
    notify: &Notifier,
    id: i64,
    reason: &str,
) -> Result<(), ControlError> {
    let (step, _in_step) =
        begin(pool, admin, id, State::Promoted, Intent::Promote { reason: reason.to_string() }).await?;
    fault("promote:intent");
    let (before, after) = act(pool, admin, async {
        let before = admin.state().await?;
        Ok((before, admin.promote(&PromoteRequest { release_id: Some(id) }).await?))
    })
    .await?;
    fault("promote:act");
    let details = serde_json::json!({"lb_before": before, "lb_after": after});
    let ended = after.change.as_ref().map(|c| c.applied_at);
    store::close_step(pool, step, Close { experiment_ended_at: ended, ..moved(id, State::Promoted, reason, details) })
        .await?;
    notify
        .send(&format!("release {id} promoted to main: {reason}"), serde_json::json!({"id": id, "state": "promoted"}))
        .await;
    Ok(())
}

/// Stops release `id`'s experiment: share 0, the nightly emptied.
pub async fn abort(
    pool: &PgPool,
    admin: &AdminClient,
    notify: &Notifier,
    id: i64,
    reason: &str,
) -> Result<(), ControlError> {
    let (step, _in_step) = begin(pool, admin, id, State::Aborted, Intent::Abort { reason: reason.to_string() }).await?;
    fault("abort:intent");
    let empty = NightlyRequest { backends: Vec::new(), share: Some(0.0), release_id: None };
    let after = act(pool, admin, async { Ok(admin.set_nightly(&empty).await?) }).await?;
    fault("abort:act");
    let ended = after.change.as_ref().map(|c| c.applied_at);
    let details = serde_json::json!({"lb_after": after});
    store::close_step(pool, step, Close { experiment_ended_at: ended, ..moved(id, State::Aborted, reason, details) })
        .await?;
    notify.send(&format!("release {id} aborted: {reason}"), serde_json::json!({"id": id, "state": "aborted"})).await;
    Ok(())
}

/// Puts release `to` back on main (it must have been promoted once). Its recorded backends are
/// used when they still serve its model; otherwise `deploy` starts new ones from its record
/// (strategy, parameters; checked by model version). The release on main becomes `rolled_back`.
pub async fn rollback(
    pool: &PgPool,
    admin: &AdminClient,
    notify: &Notifier,
    to: i64,
    deploy: Option<&dyn Deploy>,
    ready_within: Duration,
) -> Result<(), ControlError> {
    steps::reconcile(pool, admin).await?;
    let target = store::state(pool, to).await?;
    if !matches!(target, State::Promoted | State::RolledBack) {
        return Err(ControlError::Input(format!(
            "release {to} is {}: only a release that was promoted can be rolled back to",
            target.as_str()
        )));
    }
    let before = admin.state().await?;
    let current = before.main_release_id;
    if current == Some(to) {
        return Err(ControlError::Input(format!("release {to} is main already")));
    }
    let (backends, redeployed_over) = crate::deploy::serving_backends(pool, to, deploy, ready_within).await?;
    let intent = Intent::Rollback {
        backends: backends.clone(),
        replaced: current,
        target_was: target,
        redeployed_over: redeployed_over.clone(),
    };
    let _in_step = InStep::enter();
    let step = store::begin_step(pool, to, &intent).await?;
    fault("rollback:intent");
    let main = MainRequest { backends: backends.clone(), release_id: Some(to) };
    let after = act(pool, admin, async { Ok(admin.set_main(&main).await?) }).await?;
    fault("rollback:act");
    let (moves, event) = steps::rollback_moves(to, current, target);
    let details = serde_json::json!({
        "lb_before": before, "lb_after": after, "backends": backends, "redeployed_over": redeployed_over,
    });
    store::close_step(pool, step, Close { moves, details, event, ..steps::close("completed") }).await?;
    notify
        .send(
            &format!(
                "main rolled back to release {to} (was {}){}",
                current.map(|c| c.to_string()).unwrap_or("unrecorded".into()),
                if redeployed_over.is_some() { ", its servers redeployed from its record" } else { "" }
            ),
            serde_json::json!({"id": to, "state": "promoted", "replaced": current}),
        )
        .await;
    Ok(())
}
