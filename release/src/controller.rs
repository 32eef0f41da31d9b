//! The release lifecycle over the load balancer's admin API and Postgres: `start` (record, offline
//! gate, nightly in, experiment on), `promote`, `abort`, `rollback`. Every move goes through
//! [`crate::store`] (allowed transitions only, one event each).

use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sqlx::PgPool;

use crate::notify::Notifier;
use crate::store::{self, NewRelease, State, StoreError};

/// Controller failures.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A release record could not be read or moved.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The load balancer's admin API refused or failed.
    #[error("load balancer admin {call}: {why}")]
    Admin {
        /// Which call.
        call: String,
        /// Its answer.
        why: String,
    },
    /// A backend never became ready.
    #[error("{0} did not answer /ready with 200 within {1:?}")]
    NotReady(String, Duration),
    /// A backend serves another model than the release's.
    #[error("{url} serves model {serves:?}, the release is {want:?}")]
    WrongModel {
        /// The backend.
        url: String,
        /// What it reports (`X-Model-Version` of `/ready`).
        serves: String,
        /// The release's model version.
        want: String,
    },
    /// Deploying a release's servers failed.
    #[error("deploying release {id}: {why}")]
    Deploy {
        /// The release.
        id: i64,
        /// What the deploy step said.
        why: String,
    },
    /// The offline gate could not run.
    #[error("offline gate: {0}")]
    Gate(String),
    /// Bad input.
    #[error("{0}")]
    Input(String),
}

/// The load balancer's admin API.
#[derive(Clone)]
pub struct Admin {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
    token: String,
}

impl Admin {
    /// `base` = `http://host:8084`.
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            http: Client::builder(TokioExecutor::new()).build_http(),
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        }
    }

    /// One call; the state document on success.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, ControlError> {
        let err = |why: String| ControlError::Admin { call: format!("{method} {path}"), why };
        let request = hyper::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.map(|b| b.to_string()).unwrap_or_default())))
            .map_err(|e| err(e.to_string()))?;
        let response = tokio::time::timeout(Duration::from_secs(30), self.http.request(request))
            .await
            .map_err(|_| err("no answer within 30 s".into()))?
            .map_err(|e| err(lifecycle::error_chain(&e)))?;
        let status = response.status();
        let bytes = response.into_body().collect().await.map_err(|e| err(lifecycle::error_chain(&e)))?.to_bytes();
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        if !status.is_success() {
            return Err(err(format!("{status}: {text}")));
        }
        serde_json::from_str(&text).map_err(|e| err(format!("not JSON ({e}): {text}")))
    }
}

/// What a backend's `GET /ready` said: ready or not, and the model version it serves.
async fn probe(http: &Client<HttpConnector, Full<Bytes>>, url: &str) -> Result<Option<String>, ControlError> {
    let uri: hyper::Uri = format!("{}/ready", url.trim_end_matches('/'))
        .parse()
        .map_err(|e| ControlError::Input(format!("backend {url}: {e}")))?;
    Ok(match tokio::time::timeout(Duration::from_secs(2), http.get(uri)).await {
        Ok(Ok(r)) if r.status() == 200 => Some(
            r.headers()
                .get(proto::contract::headers::MODEL_VERSION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
        ),
        _ => None,
    })
}

/// Waits until every URL answers `GET /ready` with 200; with `model`, each must also serve that
/// model version (a deploy step that started the wrong model is caught before any user sees it).
pub async fn wait_ready(urls: &[String], within: Duration, model: Option<&str>) -> Result<(), ControlError> {
    let http: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + within;
    for url in urls {
        loop {
            if let Some(serves) = probe(&http, url).await? {
                match model {
                    Some(want) if serves != want => {
                        return Err(ControlError::WrongModel { url: url.clone(), serves, want: want.to_string() });
                    }
                    _ => break,
                }
            }
            if Instant::now() >= deadline {
                return Err(ControlError::NotReady(url.clone(), within));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
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
) -> Result<GateResult, ControlError> {
    let (rows, _watermark) = eval::source::postgres_rows(pool).await?;
    let data = eval::dataset::Dataset::from_rows(
        "postgres",
        &rows,
        eval::dataset::Split::Temporal { holdout: 0.2, min_items: 10 },
    );
    let mut context = eval::models::Context::default();
    if let Some(store) = store {
        let vectors = eval::source::content_vectors(store, &data.items)
            .await
            .map_err(|e| ControlError::Gate(format!("reading content vectors from {}: {e}", store.describe())))?;
        context.content = vectors.map(|(_collection, v)| v);
    }
    let (candidate, reference) = (candidate.clone(), reference.clone());
    let metric = metric.clone();
    tokio::task::spawn_blocking(move || {
        let specs = [reference.clone(), candidate.clone()];
        let report = eval::evaluate(&data, &specs, &[metric.k], &context, |_| {});
        let verdict =
            eval::gate(&report, &candidate.label, &reference.label, &metric, tolerance).map_err(ControlError::Gate)?;
        Ok(GateResult {
            pass: verdict.pass,
            reason: verdict.reason,
            report: serde_json::to_value(&report).unwrap_or_default(),
        })
    })
    .await
    .map_err(|e| ControlError::Gate(format!("the evaluation task failed: {e}")))?
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

/// Records the release and runs the offline gate: `gated`, or `rejected` (also when the gate
/// cannot run: the error is returned after the release is recorded as rejected). Nothing is
/// deployed or routed. Returns the release id and its state.
pub async fn gate(pool: &PgPool, notify: &Notifier, g: &GateStep) -> Result<(i64, State), ControlError> {
    let written = match g.release.params.as_object() {
        Some(p) if !p.is_empty() => format!("{}:{}", g.release.strategy, g.release.params),
        _ => g.release.strategy.clone(),
    };
    let candidate: eval::models::ModelSpec = written.parse().map_err(|e: String| ControlError::Input(e))?;
    let id = store::create(pool, &g.release).await?;
    let tag = &g.release.tag;
    let verdict = match offline_gate(pool, g.store.as_deref(), &candidate, &g.reference, &g.metric, g.tolerance).await {
        Ok(verdict) => verdict,
        Err(e) => {
            // A gate that cannot run is a gate that did not pass: the release ends, recorded.
            let reason = format!("the offline gate could not run: {e}");
            store::transition(pool, id, State::Rejected, &reason, serde_json::json!({"error": e.to_string()})).await?;
            notify
                .send(
                    &format!("release {tag} ({id}) rejected: {reason}"),
                    serde_json::json!({"id": id, "tag": tag, "state": "rejected"}),
                )
                .await;
            return Err(e);
        }
    };
    sqlx::query("UPDATE releases SET offline_metrics = $2 WHERE release_id = $1")
        .bind(id)
        .bind(&verdict.report)
        .execute(pool)
        .await?;
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

/// How many recent users' requests warm a nightly before it is routed, and how many at once.
#[derive(Debug, Clone, Copy)]
pub struct Warmup {
    /// Distinct users, most recently served first (0: no warm-up).
    pub users: i64,
    /// Requests in flight per backend.
    pub concurrency: usize,
}

impl Default for Warmup {
    fn default() -> Self {
        Self { users: 1_000, concurrency: 8 }
    }
}

/// Replays the most recently served users' requests on each backend directly (not through the
/// load balancer: nothing is logged as history) so the nightly's caches hold what main's hold
/// and the latency guardrail compares models, not a cold cache with a warm one. Returns the
/// requests sent, those that failed, and the seconds it took.
pub async fn warm(pool: &PgPool, backends: &[String], w: Warmup) -> Result<(u64, u64, f64), ControlError> {
    use futures_util::StreamExt as _;
    if w.users <= 0 {
        return Ok((0, 0, 0.0));
    }
    let users: Vec<i64> = sqlx::query_scalar(
        "SELECT user_id FROM recommendations_history WHERE user_id IS NOT NULL AND ts > now() - interval '1 day'
         GROUP BY user_id ORDER BY max(ts) DESC LIMIT $1",
    )
    .bind(w.users)
    .fetch_all(pool)
    .await?;
    let http: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut failed = 0u64;
    for base in backends {
        let base = base.trim_end_matches('/');
        let outcomes: Vec<bool> = futures_util::stream::iter(users.iter().copied())
            .map(|user| {
                let http = http.clone();
                let uri = format!("{base}/recommend/{user}");
                async move {
                    let Ok(uri) = uri.parse::<hyper::Uri>() else { return false };
                    let request = hyper::Request::get(uri)
                        .header(proto::contract::headers::REQUEST_ID, format!("warmup-{user}"))
                        .body(Full::new(Bytes::new()));
                    let Ok(request) = request else { return false };
                    matches!(
                        tokio::time::timeout(Duration::from_secs(5), http.request(request)).await,
                        Ok(Ok(r)) if r.status() == 200
                    )
                }
            })
            .buffer_unordered(w.concurrency.max(1))
            .collect()
            .await;
        sent += outcomes.len() as u64;
        failed += outcomes.iter().filter(|ok| !**ok).count() as u64;
    }
    Ok((sent, failed, started.elapsed().as_secs_f64()))
}

/// Routes a gated release's experiment to its deployed backends: waits until they are ready and
/// serve the release's model version (else the release is aborted before any user sees it),
/// warms them ([`warm`]), points the load balancer's nightly at them and starts the experiment
/// (salt and share from the release record).
pub async fn route(
    pool: &PgPool,
    admin: &Admin,
    notify: &Notifier,
    id: i64,
    backends: &[String],
    ready_within: Duration,
    warmup: Warmup,
) -> Result<(), ControlError> {
    if backends.is_empty() {
        return Err(ControlError::Input("a nightly needs at least one backend URL".into()));
    }
    let state = store::state(pool, id).await?;
    if state != State::Gated {
        return Err(StoreError::Transition { id, from: state.as_str().into(), to: "deployed" }.into());
    }
    let (tag, model_version, salt, share): (Option<String>, String, Option<String>, Option<f64>) =
        sqlx::query_as("SELECT tag, model_version, experiment_salt, share FROM releases WHERE release_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await?;
    let tag = tag.unwrap_or_default();
    let (salt, share) = (salt.unwrap_or_else(|| tag.clone()), share.unwrap_or(0.2));
    if let Err(e) = wait_ready(backends, ready_within, Some(&model_version)).await {
        store::transition(pool, id, State::Aborted, &e.to_string(), serde_json::json!({"backends": backends})).await?;
        notify
            .send(
                &format!("release {tag} ({id}) aborted before any traffic: {e}"),
                serde_json::json!({"id": id, "tag": tag, "state": "aborted"}),
            )
            .await;
        return Err(e);
    }
    let (warmed, warm_failed, warm_s) = warm(pool, backends, warmup).await?;
    tracing::info!(release = id, warmed, warm_failed, warm_s, "nightly warmed with recent users' requests");
    admin
        .call("PUT", "/admin/nightly", Some(serde_json::json!({"backends": backends, "share": 0.0, "release_id": id})))
        .await?;
    let lb =
        admin.call("POST", "/admin/experiment", Some(serde_json::json!({"experiment": salt, "share": share}))).await?;
    store::transition(
        pool,
        id,
        State::Deployed,
        "nightly ready; experiment started",
        serde_json::json!({
            "backends": backends, "experiment": salt, "share": share, "lb": lb,
            "warmup": {"requests": warmed, "failed": warm_failed, "seconds": warm_s},
        }),
    )
    .await?;
    notify
        .send(
            &format!("release {tag} ({id}) deployed as nightly for {:.0} % of users", 100.0 * share),
            serde_json::json!({"id": id, "tag": tag, "state": "deployed"}),
        )
        .await;
    Ok(())
}

/// [`gate`], then (when it passed) [`route`]. Returns the release id and its state.
pub async fn start(pool: &PgPool, admin: &Admin, notify: &Notifier, s: &Start) -> Result<(i64, State), ControlError> {
    if s.backends.is_empty() {
        return Err(ControlError::Input("a nightly needs at least one backend URL".into()));
    }
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
    admin: &Admin,
    notify: &Notifier,
    id: i64,
    reason: &str,
) -> Result<(), ControlError> {
    let state = store::state(pool, id).await?;
    if state != State::Deployed {
        return Err(StoreError::Transition { id, from: state.as_str().into(), to: "promoted" }.into());
    }
    let before = admin.call("GET", "/admin/state", None).await?;
    let after = admin.call("POST", "/admin/promote", Some(serde_json::json!({"release_id": id}))).await?;
    store::transition(pool, id, State::Promoted, reason, serde_json::json!({"lb_before": before, "lb_after": after}))
        .await?;
    notify
        .send(&format!("release {id} promoted to main: {reason}"), serde_json::json!({"id": id, "state": "promoted"}))
        .await;
    Ok(())
}

/// Stops release `id`'s experiment: share 0, the nightly emptied.
pub async fn abort(pool: &PgPool, admin: &Admin, notify: &Notifier, id: i64, reason: &str) -> Result<(), ControlError> {
    let state = store::state(pool, id).await?;
    if !matches!(state, State::Deployed | State::Gated) {
        return Err(StoreError::Transition { id, from: state.as_str().into(), to: "aborted" }.into());
    }
    let after = admin.call("PUT", "/admin/nightly", Some(serde_json::json!({"backends": [], "share": 0.0}))).await?;
    store::transition(pool, id, State::Aborted, reason, serde_json::json!({"lb_after": after})).await?;
    notify.send(&format!("release {id} aborted: {reason}"), serde_json::json!({"id": id, "state": "aborted"})).await;
    Ok(())
}

/// The backends release `id` was last deployed on (its `state.deployed` event, or a rollback
/// that redeployed it); empty when it never was.
pub async fn deployed_backends(pool: &PgPool, id: i64) -> Result<Vec<String>, sqlx::Error> {
    let backends: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT b FROM (
           SELECT id, COALESCE(details->'details'->'backends', details->'backends') AS b FROM release_events
           WHERE release_id = $1 AND step IN ('state.deployed', 'rollback.target', 'state.promoted')
         ) e WHERE b IS NOT NULL ORDER BY id DESC LIMIT 1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(backends.and_then(|b| serde_json::from_value(b).ok()).unwrap_or_default())
}

/// What a deploy step gets: the release to (re)start servers for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Deployment {
    /// The release.
    pub release_id: i64,
    /// Its tag.
    pub tag: String,
    /// Its strategy and parameters.
    pub strategy: String,
    /// Parameters (JSON object).
    pub params: serde_json::Value,
    /// The model version its servers must report.
    pub model_version: String,
}

/// Starts servers for a release and returns their base URLs once started (the controller waits
/// for `/ready` and checks the model version). The command-line controller runs a command
/// (`--deploy-command`, e.g. `ci/deploy.sh` or a systemd/Kubernetes script).
#[async_trait::async_trait]
pub trait Deploy: Send + Sync {
    /// Deploys `d`; the URLs of its backends.
    async fn deploy(&self, d: &Deployment) -> Result<Vec<String>, String>;
}

/// A deploy step that runs `command STRATEGY TAG` (environment: `LAZYREC_RELEASE_ID`,
/// `LAZYREC_RELEASE_PARAMS`, `LAZYREC_MODEL_VERSION`, `DEPLOY_ROLE`); it prints the backends'
/// URLs, one per line, on stdout.
pub struct CommandDeploy {
    /// The command (run by `sh -c`, so it may carry arguments).
    pub command: String,
    /// `nightly` or `rollback` (the local deploy script picks a free slot either way).
    pub role: String,
}

#[async_trait::async_trait]
impl Deploy for CommandDeploy {
    async fn deploy(&self, d: &Deployment) -> Result<Vec<String>, String> {
        let output = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{} \"$0\" \"$1\"", self.command))
            .arg(&d.strategy)
            .arg(&d.tag)
            .env("LAZYREC_RELEASE_ID", d.release_id.to_string())
            .env("LAZYREC_RELEASE_PARAMS", d.params.to_string())
            .env("LAZYREC_MODEL_VERSION", &d.model_version)
            .env("DEPLOY_ROLE", &self.role)
            .stderr(std::process::Stdio::inherit())
            .output()
            .await
            .map_err(|e| format!("running {:?}: {e}", self.command))?;
        if !output.status.success() {
            return Err(format!("{:?} exited with {}", self.command, output.status));
        }
        let urls: Vec<String> = String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| l.starts_with("http://") || l.starts_with("https://"))
            .map(String::from)
            .collect();
        if urls.is_empty() {
            return Err(format!("{:?} printed no backend URL", self.command));
        }
        Ok(urls)
    }
}

/// The backends that serve release `id` now: its recorded ones when they answer `/ready` with
/// its model version, else freshly deployed from its record by `deploy` (an error without one).
async fn serving_backends(
    pool: &PgPool,
    id: i64,
    deploy: Option<&dyn Deploy>,
    ready_within: Duration,
) -> Result<(Vec<String>, Option<Vec<String>>), ControlError> {
    type Record = (Option<String>, String, serde_json::Value, String);
    let (tag, strategy, params, model_version): Record =
        sqlx::query_as("SELECT tag, strategy, params, model_version FROM releases WHERE release_id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?
            .ok_or_else(|| StoreError::NotFound(id.to_string()))?;
    let recorded = deployed_backends(pool, id).await?;
    let gone = if recorded.is_empty() {
        "it was never deployed: no backends recorded".to_string()
    } else {
        match wait_ready(&recorded, Duration::from_secs(2), Some(&model_version)).await {
            Ok(()) => return Ok((recorded, None)),
            Err(e) => e.to_string(),
        }
    };
    let Some(deploy) = deploy else {
        return Err(ControlError::Deploy {
            id,
            why: format!("its servers are gone ({gone}) and no deploy step was given"),
        });
    };
    tracing::info!(release = id, %gone, "redeploying the release from its record");
    let d = Deployment { release_id: id, tag: tag.unwrap_or_default(), strategy, params, model_version };
    let urls = deploy.deploy(&d).await.map_err(|why| ControlError::Deploy { id, why })?;
    wait_ready(&urls, ready_within, Some(&d.model_version)).await?;
    Ok((urls, Some(recorded)))
}

/// Puts release `to` back on main (it must have been promoted once). Its recorded backends are
/// used when they still serve its model; otherwise `deploy` starts new ones from its record
/// (strategy, parameters; checked by model version). The release on main becomes `rolled_back`.
pub async fn rollback(
    pool: &PgPool,
    admin: &Admin,
    notify: &Notifier,
    to: i64,
    deploy: Option<&dyn Deploy>,
    ready_within: Duration,
) -> Result<(), ControlError> {
    let target = store::state(pool, to).await?;
    if !matches!(target, State::Promoted | State::RolledBack) {
        return Err(ControlError::Input(format!(
            "release {to} is {}: only a release that was promoted can be rolled back to",
            target.as_str()
        )));
    }
    let before = admin.call("GET", "/admin/state", None).await?;
    let current = before["main_release_id"].as_i64();
    if current == Some(to) {
        return Err(ControlError::Input(format!("release {to} is main already")));
    }
    let (backends, redeployed_over) = serving_backends(pool, to, deploy, ready_within).await?;
    let after =
        admin.call("PUT", "/admin/main", Some(serde_json::json!({"backends": backends, "release_id": to}))).await?;
    let details = serde_json::json!({
        "lb_before": before, "lb_after": after, "backends": backends, "redeployed_over": redeployed_over,
    });
    if let Some(current) = current {
        store::transition(pool, current, State::RolledBack, &format!("rollback to release {to}"), details.clone())
            .await?;
    }
    if target == State::RolledBack {
        store::transition(pool, to, State::Promoted, "rolled back to", details).await?;
    } else {
        sqlx::query("INSERT INTO release_events (release_id, step, details) VALUES ($1, 'rollback.target', $2)")
            .bind(to)
            .bind(details)
            .execute(pool)
            .await?;
    }
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
