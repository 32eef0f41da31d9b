//! Crash-safe release steps: **record the intent, act, confirm** — and [`reconcile`], which
//! finishes or undoes a step a killed controller left open.
//!
//! Every step that changes the load balancer (`route`, `promote`, `abort`, `rollback`) first
//! records an [`Intent`] (`release_steps`, at most one open at a time), then calls the admin
//! API, then closes the step and moves the release's state in one transaction
//! ([`store::close_step`]). A controller killed anywhere in between leaves an open step and a
//! load balancer that either shows the intent applied or not; [`reconcile`] (run by every
//! `lazyrec-release` command before it acts, and on its own) reads `/admin/state` and:
//!
//! | step | the load balancer shows it applied | it does not |
//! |---|---|---|
//! | route | complete: `deployed` | undo: nightly emptied (the release stays `gated`) |
//! | promote | complete: `promoted` | undone (the swap is atomic: nothing moved) |
//! | abort | complete: `aborted` | act again (an abort is always safe), complete |
//! | rollback | complete: the old main `rolled_back`, the target `promoted` | undone |
//!
//! [`disagreements`] states the invariant the records and the load balancer keep between steps.
//! Fault points ([`fault`]) let a test kill the controller (SIGKILL) at each boundary.

use std::sync::atomic::{AtomicBool, Ordering};

use chrono::{DateTime, Utc};
use proto::admin::{AdminClient, AdminState, NightlyRequest};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::controller::ControlError;
use crate::store::{self, Close, Move, OpenStep, State};

/// What a step is about to do to the load balancer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Intent {
    /// Gated → deployed: the nightly routed to `backends` under `experiment` at `share`.
    Route {
        /// The nightly's backends.
        backends: Vec<String>,
        /// The experiment (salt).
        experiment: String,
        /// The nightly share.
        share: f64,
        /// The warm-up's numbers (requests, failed, seconds).
        warmup: serde_json::Value,
    },
    /// Deployed → promoted: the nightly becomes main.
    Promote {
        /// Why.
        reason: String,
    },
    /// Deployed (or gated) → aborted: the nightly emptied, share 0.
    Abort {
        /// Why.
        reason: String,
    },
    /// Main ← the release, on `backends`; the release main served before becomes rolled back.
    Rollback {
        /// The backends main gets.
        backends: Vec<String>,
        /// The release main served before (none when unrecorded).
        replaced: Option<i64>,
        /// The target's state before (`promoted` or `rolled_back`).
        target_was: State,
        /// The recorded backends a redeploy replaced.
        redeployed_over: Option<Vec<String>>,
    },
}

impl Intent {
    /// The action's name.
    pub fn action(&self) -> &'static str {
        match self {
            Intent::Route { .. } => "route",
            Intent::Promote { .. } => "promote",
            Intent::Abort { .. } => "abort",
            Intent::Rollback { .. } => "rollback",
        }
    }
}

static IN_STEP: AtomicBool = AtomicBool::new(false);

/// Whether a step is open in this process (SIGTERM then waits for it to close).
pub fn in_step() -> bool {
    IN_STEP.load(Ordering::SeqCst)
}

/// Marks this process inside a step until dropped.
#[derive(Debug)]
pub struct InStep(());

impl InStep {
    /// Enters a step.
    pub fn enter() -> Self {
        IN_STEP.store(true, Ordering::SeqCst);
        Self(())
    }
}

impl Drop for InStep {
    fn drop(&mut self) {
        IN_STEP.store(false, Ordering::SeqCst);
    }
}

/// The environment variable naming a fault point (`<action>:<boundary>`, e.g. `route:intent`,
/// `route:nightly`, `promote:act`) at which the controller kills itself with SIGKILL: how the
/// tests show that every boundary is recoverable. `<point>:sigterm` sends SIGTERM there instead
/// (the step then closes before the process exits, with code 143).
pub const FAULT_ENV: &str = "LAZYREC_RELEASE_FAULT";

/// Kills this process (SIGKILL, no clean-up) when [`FAULT_ENV`] names `point`; sends it SIGTERM
/// when it names `<point>:sigterm`.
pub fn fault(point: &str) {
    let asked = std::env::var(FAULT_ENV).unwrap_or_default();
    if asked.strip_suffix(":sigterm") == Some(point) {
        eprintln!("fault point {point}: SIGTERM");
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGTERM);
        // Let the signal reach its handler before the step goes on.
        std::thread::sleep(std::time::Duration::from_millis(200));
        return;
    }
    if asked == point {
        eprintln!("fault point {point}: SIGKILL");
        // SIGKILL cannot be caught: the process ends here, as in a crash.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGKILL);
        std::process::abort();
    }
}

/// What [`reconcile`] did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reconciled {
    /// The step found open.
    pub step_id: i64,
    /// Its release.
    pub release_id: i64,
    /// Its action.
    pub action: &'static str,
    /// `completed` or `undone`.
    pub outcome: &'static str,
}

fn nightly_is(lb: &AdminState, id: i64, backends: &[String]) -> bool {
    lb.nightly_release_id == Some(id) || (!backends.is_empty() && lb.nightly_urls() == backends)
}

fn applied_at(lb: &AdminState) -> Option<DateTime<Utc>> {
    lb.change.as_ref().map(|c| c.applied_at)
}

/// Finishes or undoes the open step, if any, from the load balancer's state (see the module's
/// table). `None` when no step was open.
pub async fn reconcile(pool: &PgPool, admin: &AdminClient) -> Result<Option<Reconciled>, ControlError> {
    let Some(open) = store::open_step(pool).await? else { return Ok(None) };
    let _in_step = InStep::enter();
    let lb = admin.state().await?;
    let OpenStep { step_id, release_id: id, intent, started_at } = open;
    let lb_at = |action: &'static str| async move { store::lb_change_at(pool, action, started_at).await };
    let details = serde_json::json!({"reconciled": true, "intent": intent, "lb": lb});
    let (outcome, close) = match &intent {
        Intent::Route { backends, experiment, share, .. } => {
            let applied = lb.nightly_release_id == Some(id)
                && lb.nightly_urls() == *backends
                && lb.experiment == *experiment
                && (lb.share - share).abs() < 1e-9;
            if applied {
                let started = lb_at("start_experiment").await?;
                let moves = vec![Move { id, to: State::Deployed, reason: "nightly ready; experiment started".into() }];
                let mut d = details.clone();
                d["backends"] = serde_json::json!(backends);
                ("completed", Close { moves, details: d, experiment_started_at: started, ..close("completed") })
            } else {
                if nightly_is(&lb, id, backends) {
                    admin
                        .set_nightly(&NightlyRequest { backends: Vec::new(), share: Some(0.0), release_id: None })
                        .await?;
                }
                ("undone", close("undone"))
            }
        }
        Intent::Promote { reason } => {
            if lb.main_release_id == Some(id) {
                let ended = lb_at("promote").await?;
                let moves = vec![Move { id, to: State::Promoted, reason: reason.clone() }];
                ("completed", Close { moves, details, experiment_ended_at: ended, ..close("completed") })
            } else {
                ("undone", close("undone"))
            }
        }
        Intent::Abort { reason } => {
            let ended = if nightly_is(&lb, id, &[]) && !lb.nightly.is_empty() {
                let after = admin
                    .set_nightly(&NightlyRequest { backends: Vec::new(), share: Some(0.0), release_id: None })
                    .await?;
                applied_at(&after)
            } else {
                lb_at("set_nightly").await?
            };
            let moves = vec![Move { id, to: State::Aborted, reason: reason.clone() }];
            ("completed", Close { moves, details, experiment_ended_at: ended, ..close("completed") })
        }
        Intent::Rollback { backends, replaced, target_was, .. } => {
            if lb.main_release_id == Some(id) {
                let mut d = details.clone();
                d["backends"] = serde_json::json!(backends);
                let (moves, event) = rollback_moves(id, *replaced, *target_was);
                ("completed", Close { moves, details: d, event, ..close("completed") })
            } else {
                ("undone", close("undone"))
            }
        }
    };
    store::close_step(pool, step_id, close).await?;
    tracing::warn!(step = step_id, release = id, action = intent.action(), outcome, "reconciled a step left open");
    Ok(Some(Reconciled { step_id, release_id: id, action: intent.action(), outcome }))
}

/// A close with no moves (filled in by the caller).
pub fn close(outcome: &'static str) -> Close {
    Close {
        outcome,
        moves: Vec::new(),
        details: serde_json::Value::Null,
        experiment_started_at: None,
        experiment_ended_at: None,
        event: None,
    }
}

/// A rollback's moves: the replaced main → rolled back; the target → promoted again (when it was
/// rolled back) or a `rollback.target` event (it is still promoted).
pub fn rollback_moves(to: i64, replaced: Option<i64>, target_was: State) -> (Vec<Move>, Option<(i64, &'static str)>) {
    let mut moves = Vec::new();
    if let Some(current) = replaced {
        moves.push(Move { id: current, to: State::RolledBack, reason: format!("rollback to release {to}") });
    }
    if target_was == State::RolledBack {
        moves.push(Move { id: to, to: State::Promoted, reason: "rolled back to".into() });
        (moves, None)
    } else {
        (moves, Some((to, "rollback.target")))
    }
}

/// Where the records and the load balancer disagree (empty: they agree): no step is open; the
/// release main serves is `promoted`; the release the nightly serves is `deployed`; every
/// `deployed` release is the nightly's.
pub async fn disagreements(pool: &PgPool, lb: &AdminState) -> Result<Vec<String>, ControlError> {
    let mut out = Vec::new();
    if let Some(open) = store::open_step(pool).await? {
        out.push(format!("step {} ({}) of release {} is open", open.step_id, open.intent.action(), open.release_id));
    }
    let states = store::states(pool).await?;
    let state_of = |id: i64| states.iter().find(|(r, _)| *r == id).map(|(_, s)| *s);
    if let Some(main) = lb.main_release_id
        && state_of(main) != Some(State::Promoted)
    {
        out.push(format!("main serves release {main}, which is {:?} in the records", state_of(main)));
    }
    let nightly = lb.nightly_release_id.filter(|_| !lb.nightly.is_empty());
    if let Some(n) = nightly
        && state_of(n) != Some(State::Deployed)
    {
        out.push(format!("the nightly serves release {n}, which is {:?} in the records", state_of(n)));
    }
    for (id, _) in states.iter().filter(|(_, s)| *s == State::Deployed) {
        if nightly != Some(*id) {
            out.push(format!("release {id} is deployed in the records, but the nightly serves {nightly:?}"));
        }
    }
    Ok(out)
}
