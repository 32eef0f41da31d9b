//! The offline gate: the candidate evaluated against the model on main on the data in Postgres
//! (the evaluator's library), before anything is deployed.

use sqlx::PgPool;

use crate::controller::ControlError;
use crate::notify::Notifier;
use crate::store::{self, NewRelease, State};

/// Why the gate could not run.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// Reading the interactions failed.
    #[error("reading the interactions")]
    Data(#[source] sqlx::Error),
    /// Reading content vectors failed.
    #[error("reading content vectors from {store}")]
    ContentVectors {
        /// The store.
        store: String,
        /// Its error.
        #[source]
        source: vectorstore::StoreError,
    },
    /// The evaluation has no verdict for these models.
    #[error(transparent)]
    Verdict(eval::GateError),
    /// The evaluation task panicked or was cancelled.
    #[error("the evaluation task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// The offline gate's verdict with the evaluation behind it.
#[derive(Debug, Clone)]
pub struct GateResult {
    /// Whether the candidate may be deployed.
    pub pass: bool,
    /// One line.
    pub reason: String,
    /// The evaluation (`lazyrec-eval`'s JSON), for `offline_metrics`.
    pub report: serde_json::Value,
}

/// Evaluates `candidate` against `reference` on the data in Postgres (per-user temporal split,
/// behaviour vectors from the training part; content vectors from `store`'s live collection
/// when given) and applies the gate.
pub async fn offline_gate(
    pool: &PgPool,
    store: Option<&dyn vectorstore::VectorStore>,
    candidate: &eval::models::ModelSpec,
    reference: &eval::models::ModelSpec,
    metric: &eval::GateMetric,
    tolerance: f64,
) -> Result<GateResult, GateError> {
    let (rows, _watermark) = eval::source::postgres_rows(pool).await.map_err(GateError::Data)?;
    let data = eval::dataset::Dataset::from_rows(
        "postgres",
        &rows,
        eval::dataset::Split::Temporal { holdout: 0.2, min_items: 10 },
    );
    let mut context = eval::models::Context::default();
    if let Some(store) = store {
        let vectors = eval::source::content_vectors(store, &data.items)
            .await
            .map_err(|e| GateError::ContentVectors { store: store.describe(), source: e })?;
        context.content = vectors.map(|(_collection, v)| v);
    }
    let (candidate, reference) = (candidate.clone(), reference.clone());
    let metric = metric.clone();
    tokio::task::spawn_blocking(move || {
        let specs = [reference.clone(), candidate.clone()];
        let report = eval::evaluate(&data, &specs, &[metric.k], &context, |_| {});
        let verdict =
            eval::gate(&report, &candidate.label, &reference.label, &metric, tolerance).map_err(GateError::Verdict)?;
        Ok(GateResult {
            pass: verdict.pass,
            reason: verdict.reason,
            report: serde_json::to_value(&report).unwrap_or_default(),
        })
    })
    .await
    .map_err(GateError::Task)?
}

/// What the gate step needs: the release and the reference to beat.
#[derive(Clone)]
pub struct GateStep {
    /// The release.
    pub release: NewRelease,
    /// The model currently on main (the gate's reference).
    pub reference: eval::models::ModelSpec,
    /// The gate metric.
    pub metric: eval::GateMetric,
    /// Relative tolerance of the gate.
    pub tolerance: f64,
    /// Where the gate reads content vectors (strategies that need them cannot be gated without).
    pub store: Option<std::sync::Arc<dyn vectorstore::VectorStore>>,
}

/// Records the release and runs the offline gate: `gated`, or `rejected` (also when the gate
/// cannot run: the error is returned after the release is recorded as rejected). Nothing is
/// deployed or routed. Returns the release id and its state.
pub async fn gate(pool: &PgPool, notify: &Notifier, g: &GateStep) -> Result<(i64, State), ControlError> {
    let written = match g.release.params.as_object() {
        Some(p) if !p.is_empty() => format!("{}:{}", g.release.strategy, g.release.params),
        _ => g.release.strategy.clone(),
    };
    let candidate: eval::models::ModelSpec = written.parse().map_err(ControlError::Input)?;
    // A gate killed before its verdict left the release `created`: the same tag resumes it.
    let id = match store::by_tag(pool, &g.release.tag).await? {
        Some((id, State::Created)) => {
            tracing::warn!(release = id, tag = %g.release.tag, "resuming the gate of a release left created");
            id
        }
        Some(_) | None => store::create(pool, &g.release).await?,
    };
    let tag = &g.release.tag;
    let verdict = match offline_gate(pool, g.store.as_deref(), &candidate, &g.reference, &g.metric, g.tolerance).await {
        Ok(verdict) => verdict,
        Err(e) => {
            // A gate that cannot run is a gate that did not pass: the release ends, recorded.
            let reason = format!("the offline gate could not run: {}", lifecycle::error_chain(&e));
            store::transition(pool, id, State::Rejected, &reason, serde_json::json!({"error": reason})).await?;
            notify
                .send(
                    &format!("release {tag} ({id}) rejected: {reason}"),
                    serde_json::json!({"id": id, "tag": tag, "state": "rejected"}),
                )
                .await;
            return Err(ControlError::Gate(e));
        }
    };
    store::set_offline_metrics(pool, id, &verdict.report).await?;
    let details = serde_json::json!({"gate": verdict.reason, "reference": g.reference.label});
    if !verdict.pass {
        store::transition(pool, id, State::Rejected, &verdict.reason, details).await?;
        notify
            .send(
                &format!("release {tag} ({id}) rejected by the offline gate: {}", verdict.reason),
                serde_json::json!({"id": id, "tag": tag, "state": "rejected"}),
            )
            .await;
        return Ok((id, State::Rejected));
    }
    store::transition(pool, id, State::Gated, &verdict.reason, details).await?;
    Ok((id, State::Gated))
}
