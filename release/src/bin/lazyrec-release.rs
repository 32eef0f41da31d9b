//! `lazyrec-release`: the release controller (start, evaluate, promote, abort, rollback, list,
//! exporter).

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use lifecycle::BadInput;
use proto::admin::AdminClient;
use release::controller::{self, ControlError};
use release::decision::{self, Criteria, Decision};
use release::exit::Exit;
use release::online::{self, Window};
use release::{look, steps, store};

/// The release controller. `evaluate` judges a running experiment (nightly against main) from
/// recommendations_history and the ingested watches: conversion with an always-valid sequential
/// test (mSPRT), a sample-ratio-mismatch check, failure and p99-latency guardrails, and prints
/// promote, abort (with the failed criterion) or continue. Exit code 0 for promote, 3 for
/// continue, 4 for abort, 2 on bad input (`exit-codes` prints them for scripts).
///
/// Every command that changes the load balancer first reconciles a step a killed controller
/// left open (`reconcile`); SIGTERM during a step waits for the step to close.
#[derive(Parser, Debug)]
#[command(name = "lazyrec-release", version)]
struct Cli {
    #[command(flatten)]
    db: db::args::DatabaseArgs,
    /// Webhook for notifications (Slack-compatible JSON); none when unset. A secret: prefer the
    /// environment variable to the flag (command lines show in `ps`); logs name its host only.
    #[arg(long, env = "LAZYREC_RELEASE_WEBHOOK", global = true)]
    webhook: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Record a release, run the offline gate, route the nightly share to its deployed backends
    /// (`gate` then `route`). Exit 4 when the gate rejects it.
    Start(StartArgs),
    /// Record a release and run the offline gate only (the pipeline's first step): prints
    /// `release ID: gated` or `release ID: rejected` (exit 4).
    Gate(GateArgs),
    /// Route a gated release's experiment to its deployed nightly backends (after checking they
    /// are ready and serve its model version).
    Route {
        /// The release id (from `gate`).
        #[arg(long)]
        release: i64,
        /// The nightly's backend URLs (repeatable).
        #[arg(long = "nightly", required = true)]
        nightly: Vec<String>,
        #[command(flatten)]
        warmup: WarmupArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Post a message to the webhook (e.g. a pipeline that failed outside the controller).
    Notify {
        /// The text.
        text: String,
    },
    /// Judge a running experiment.
    Evaluate(EvaluateArgs),
    /// Make a deployed release's nightly main.
    Promote {
        /// The release id.
        release: i64,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop a release's experiment (share 0, nightly emptied).
    Abort {
        /// The release id.
        release: i64,
        /// Why (recorded).
        #[arg(long, default_value = "aborted by hand")]
        reason: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Put an earlier (promoted) release back on main; its servers are redeployed from its
    /// record (strategy, parameters, checked by model version) when they are gone.
    Rollback {
        /// The release to go back to.
        #[arg(long)]
        to: i64,
        /// The deploy step for a release whose servers are gone: run as `COMMAND STRATEGY TAG`
        /// with LAZYREC_RELEASE_PARAMS and DEPLOY_ROLE=rollback; prints the backend URLs.
        #[arg(long, env = "DEPLOY_COMMAND")]
        deploy_command: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Releases, newest first, with state and decision.
    List,
    /// Finish or undo a step a killed controller left open (every acting command does this
    /// first), then compare the records with the load balancer's state: exit 1 when they
    /// disagree, with one line per disagreement.
    Reconcile {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Print the exit codes as shell assignments (`eval "$(lazyrec-release exit-codes)"`).
    ExitCodes,
    /// Serve Prometheus metrics read from Postgres at each scrape: the releases (state, latest
    /// look's numbers, decisions), ingest (watermark, source positions, file lag) and online
    /// conversion by served variant (what monitoring/alerts.yml uses).
    Exporter {
        /// Where to listen.
        #[arg(long, default_value = "127.0.0.1:9187")]
        listen: std::net::SocketAddr,
        /// Online conversion covers the answers of this many seconds…
        #[arg(long, default_value_t = 900)]
        online_window_s: u32,
        /// …ending this many seconds ago: a watch this long after an answer counts as its conversion.
        #[arg(long, default_value_t = 600)]
        conversion_window_s: u32,
    },
}

#[derive(Args, Debug)]
struct AdminArgs {
    /// The load balancer's admin API.
    #[arg(long, env = "LAZYREC_LB_ADMIN_URL", default_value = "http://127.0.0.1:8084")]
    admin_url: String,
    /// Its bearer token.
    #[arg(long, env = "LAZYREC_LB_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: String,
}

#[derive(Args, Debug)]
struct OptionalAdmin {
    /// The load balancer's admin API (for --act).
    #[arg(long, env = "LAZYREC_LB_ADMIN_URL", default_value = "http://127.0.0.1:8084")]
    admin_url: String,
    /// Its bearer token (for --act).
    #[arg(long, env = "LAZYREC_LB_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Args, Debug)]
struct GateArgs {
    /// `release-recommender-nightly-<version>`.
    #[arg(long)]
    tag: String,
    /// The nightly's strategy (a registry name).
    #[arg(long)]
    strategy: String,
    /// Its parameters (JSON object).
    #[arg(long, default_value = "{}")]
    params: String,
    /// The model on main, the gate's reference (`name[:json]`).
    #[arg(long)]
    reference: String,
    /// The nightly share.
    #[arg(long, default_value_t = 0.2)]
    share: f64,
    /// Gate metric.
    #[arg(long, default_value = "ndcg@20")]
    gate_metric: String,
    /// Gate tolerance (relative: the candidate passes at ≥ (1 − tolerance) × the reference).
    #[arg(long, default_value_t = 0.02)]
    tolerance: f64,
    /// The commit.
    #[arg(long, env = "CI_COMMIT_SHA")]
    git_sha: Option<String>,
    /// The pipeline.
    #[arg(long, env = "CI_PIPELINE_ID")]
    pipeline_id: Option<String>,
    /// Content vectors for the gate (default: <state-dir>/qdrant-edge when it exists).
    #[command(flatten)]
    store: vectorstore::args::StoreArgs,
}

#[derive(Args, Debug)]
struct StartArgs {
    #[command(flatten)]
    gate: GateArgs,
    /// The nightly's backend URLs (repeatable), deployed by the pipeline's deploy step.
    #[arg(long = "nightly", required = true)]
    nightly: Vec<String>,
    #[command(flatten)]
    warmup: WarmupArgs,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Args, Debug, Clone, Copy)]
struct WarmupArgs {
    /// Before routing, replay this many recently served users' requests on each nightly backend
    /// (directly, not logged) so its caches are as warm as main's; 0 skips it.
    #[arg(long, default_value_t = controller::Warmup::default().users)]
    warm_users: i64,
    /// Warm-up requests in flight per backend.
    #[arg(long, default_value_t = controller::Warmup::default().concurrency)]
    warm_concurrency: usize,
}

impl From<WarmupArgs> for controller::Warmup {
    fn from(a: WarmupArgs) -> Self {
        Self { users: a.warm_users, concurrency: a.warm_concurrency }
    }
}

#[derive(Args, Debug)]
struct EvaluateArgs {
    /// The experiment (salt) of the load balancer's routing (or give --release).
    #[arg(long, required_unless_present = "release")]
    experiment: Option<String>,
    /// Evaluate this release's experiment (its salt and share), record the numbers on it
    /// (`online_metrics` and an `evaluate` event) and carry the previous look's p-value on.
    #[arg(long)]
    release: Option<i64>,
    /// With --release: carry out the decision (promote or abort) through the admin API.
    #[arg(long, requires = "release")]
    act: bool,
    #[command(flatten)]
    admin: OptionalAdmin,
    /// The configured nightly share.
    #[arg(long, default_value_t = 0.2)]
    share: f64,
    /// Conversion window in seconds: a watch this long after a response still counts.
    #[arg(long, default_value_t = 600)]
    window_s: u64,
    /// The always-valid p-value of the previous look (1 at the first).
    #[arg(long, default_value_t = 1.0)]
    previous_p: f64,
    /// Test level.
    #[arg(long, default_value_t = Criteria::default().alpha)]
    alpha: f64,
    /// mSPRT mixing scale (conversion points as a fraction).
    #[arg(long, default_value_t = Criteria::default().tau)]
    tau: f64,
    /// Non-inferiority margin (fraction).
    #[arg(long, default_value_t = Criteria::default().margin)]
    margin: f64,
    /// Responses per variant before a conversion decision.
    #[arg(long, default_value_t = Criteria::default().min_responses)]
    min_responses: u64,
    /// Seconds before a conversion decision.
    #[arg(long, default_value_t = Criteria::default().min_duration.as_secs())]
    min_duration_s: u64,
    /// Longest experiment, seconds.
    #[arg(long, default_value_t = Criteria::default().max_duration.as_secs())]
    max_duration_s: u64,
    /// Largest tolerated failure-rate increase (fraction).
    #[arg(long, default_value_t = Criteria::default().max_failure_increase)]
    max_failure_increase: f64,
    /// Largest tolerated p99 increase, ms.
    #[arg(long, default_value_t = Criteria::default().max_p99_increase_ms)]
    max_p99_increase_ms: f64,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

async fn evaluate(cli: &Cli, args: &EvaluateArgs) -> anyhow::Result<std::process::ExitCode> {
    for (name, p) in [("share", args.share), ("alpha", args.alpha), ("previous-p", args.previous_p)] {
        if !(p > 0.0 && p <= 1.0) {
            return Err(BadInput(format!("--{name} must be in (0, 1], got {p}")).into());
        }
    }
    let pool = pool(cli).await?;
    let criteria = Criteria {
        alpha: args.alpha,
        tau: args.tau,
        margin: args.margin,
        min_responses: args.min_responses,
        min_duration: Duration::from_secs(args.min_duration_s),
        max_duration: Duration::from_secs(args.max_duration_s),
        max_failure_increase: args.max_failure_increase,
        max_p99_increase_ms: args.max_p99_increase_ms,
        ..Criteria::default()
    };
    let conversion_window = chrono::Duration::seconds(args.window_s as i64);
    let e = match args.release {
        Some(id) => {
            let params = look::LookParams { conversion_window, previous_p: args.previous_p, criteria };
            let e = match look::look(&pool, id, &params).await {
                Err(ControlError::Store(store::StoreError::NotFound(_))) => {
                    return Err(BadInput(format!("no release {id}")).into());
                }
                Err(ControlError::Input(why)) => return Err(BadInput(why).into()),
                other => other?,
            };
            if args.act {
                let token =
                    args.admin.admin_token.clone().ok_or_else(|| BadInput("--act needs --admin-token".into()))?;
                let admin = AdminClient::new(&args.admin.admin_url, &token);
                look::act(&pool, &admin, &notifier(cli), id, &e.decision).await?;
            }
            e
        }
        None => {
            let experiment = args.experiment.clone().unwrap_or_default();
            let started = store::first_response(&pool, &experiment).await.context("finding the experiment's start")?;
            let Some(started) = started else {
                return Err(BadInput(format!("no responses recorded under experiment {experiment:?}")).into());
            };
            let until = chrono::Utc::now();
            let window = Window { experiment, since: started, until, conversion_window };
            let (main, nightly) = online::measure(&pool, &window).await.context("measuring the experiment")?;
            let switched = online::switched_users(&pool, &window).await.context("checking the assignment")?;
            let elapsed = (until - started).to_std().unwrap_or_default();
            decision::decide(main, nightly, switched, args.share, elapsed, args.previous_p, &criteria)
        }
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        for v in [&e.main, &e.nightly] {
            println!(
                "{:<8} requests {:>7}  users {:>6}  conversion {:>6.2} % ({} / {})  failures {:.2} %  p50 {:.1} ms  p99 {:.1} ms",
                v.variant,
                v.requests,
                v.users,
                100.0 * v.conversion.rate(),
                v.conversion.hits,
                v.conversion.n,
                100.0 * v.failure_rate(),
                v.p50_ms,
                v.p99_ms
            );
        }
        println!(
            "split: {:.2} % of users on nightly (SRM χ² {:.2}, p {:.3}); {} users changed variant",
            100.0 * e.srm.observed_share,
            e.srm.chi2,
            e.srm.p,
            e.switched_users
        );
        match &e.decision {
            Decision::Promote { reason } => println!("PROMOTE: {reason}"),
            Decision::Abort { criterion, reason } => println!("ABORT ({criterion:?}): {reason}"),
            Decision::Continue { reason } => println!("CONTINUE: {reason}"),
        }
    }
    Ok(match e.decision {
        Decision::Promote { .. } => Exit::Success,
        Decision::Continue { .. } => Exit::Continue,
        Decision::Abort { .. } => Exit::Stop,
    }
    .code())
}

async fn pool(cli: &Cli) -> anyhow::Result<sqlx::PgPool> {
    cli.db.pool(2).await
}

fn notifier(cli: &Cli) -> release::notify::Notifier {
    release::notify::Notifier::new(cli.webhook.clone())
}

fn admin_client(a: &AdminArgs) -> AdminClient {
    AdminClient::new(&a.admin_url, &a.admin_token)
}

async fn gate_step(cli: &Cli, pool: &sqlx::PgPool, args: &GateArgs) -> anyhow::Result<controller::GateStep> {
    let params: serde_json::Value =
        serde_json::from_str(&args.params).map_err(|e| BadInput(format!("--params is not JSON: {e}")))?;
    let reference: eval::models::ModelSpec = args.reference.parse().map_err(BadInput)?;
    let metric: eval::GateMetric = args.gate_metric.parse().map_err(|e: String| BadInput(e))?;
    if !(args.share > 0.0 && args.share < 1.0) {
        return Err(BadInput(format!("--share must be in (0, 1), got {}", args.share)).into());
    }
    let version = args
        .tag
        .strip_prefix("release-recommender-nightly-")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| BadInput(format!("tag {:?} is not release-recommender-nightly-<version>", args.tag)))?;
    // The version a server of this build reports for the model (X-Model-Version).
    // (Release servers search with the default search parameters.)
    let spec = strategy::ModelSpec { strategy: args.strategy.clone(), params: params.clone() };
    let model = strategy::Model::build(&spec, strategy::Search::default()).map_err(|e| BadInput(e.to_string()))?;
    let model_version = model.version().to_string();
    let release = store::NewRelease {
        tag: args.tag.clone(),
        version: version.to_string(),
        git_sha: args.git_sha.clone(),
        pipeline_id: args.pipeline_id.clone(),
        strategy: args.strategy.clone(),
        params,
        model_version,
        embedding_version: None,
        data_watermark: store::data_watermark(pool).await?,
        experiment_salt: args.tag.clone(),
        share: args.share,
    };
    let store = args.store.open_existing(Some(&cli.db.state_dir)).context("opening the vector store for the gate")?;
    Ok(controller::GateStep { release, reference, metric, tolerance: args.tolerance, store })
}

fn state_code(id: i64, state: store::State) -> std::process::ExitCode {
    println!("release {id}: {}", state.as_str());
    if state == store::State::Rejected { Exit::Stop.code() } else { Exit::Success.code() }
}

async fn start(cli: &Cli, args: &StartArgs) -> anyhow::Result<std::process::ExitCode> {
    let pool = pool(cli).await?;
    let s = controller::Start {
        gate: gate_step(cli, &pool, &args.gate).await?,
        backends: args.nightly.clone(),
        ready_within: Duration::from_secs(120),
        warmup: args.warmup.into(),
    };
    let (id, state) = controller::start(&pool, &admin_client(&args.admin), &notifier(cli), &s).await?;
    Ok(state_code(id, state))
}

async fn gate(cli: &Cli, args: &GateArgs) -> anyhow::Result<std::process::ExitCode> {
    let pool = pool(cli).await?;
    let g = gate_step(cli, &pool, args).await?;
    let (id, state) = controller::gate(&pool, &notifier(cli), &g).await?;
    Ok(state_code(id, state))
}

async fn list(cli: &Cli) -> anyhow::Result<std::process::ExitCode> {
    let pool = pool(cli).await?;
    for (id, tag, state, model, reason, at) in store::list(&pool).await? {
        println!("{id:>4}  {:<40} {state:<12} {model}  {at}  {}", tag.unwrap_or_default(), reason.unwrap_or_default());
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Runs `command`; SIGTERM or SIGINT ends it at once outside a step, and after the step closes
/// inside one (so the records and the load balancer agree when it exits).
async fn shielded(
    command: impl std::future::Future<Output = anyhow::Result<std::process::ExitCode>>,
) -> anyhow::Result<std::process::ExitCode> {
    tokio::pin!(command);
    tokio::select! {
        result = &mut command => result,
        () = lifecycle::shutdown_signal() => {
            if steps::in_step() {
                eprintln!("signal received: finishing the current step before exiting");
                let result = command.await;
                eprintln!("step closed; exiting on the signal");
                result.map(|_| std::process::ExitCode::from(143))
            } else {
                Err(anyhow::anyhow!("stopped by a signal (no step was open)"))
            }
        }
    }
}

async fn reconcile(cli: &Cli, admin: &AdminArgs) -> anyhow::Result<std::process::ExitCode> {
    let pool = pool(cli).await?;
    let admin = admin_client(admin);
    match steps::reconcile(&pool, &admin).await? {
        Some(r) => println!("step {} ({}) of release {}: {}", r.step_id, r.action, r.release_id, r.outcome),
        None => println!("no step was open"),
    }
    let lb = admin.state().await?;
    let problems = steps::disagreements(&pool, &lb).await?;
    for p in &problems {
        println!("DISAGREE: {p}");
    }
    if problems.is_empty() {
        println!("the records and the load balancer agree");
        Ok(Exit::Success.code())
    } else {
        Ok(Exit::Failure.code())
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    lifecycle::main_with_code(
        "warn",
        Some(2),
        shielded(async {
            match &cli.command {
                Command::Reconcile { admin } => reconcile(&cli, admin).await,
                Command::ExitCodes => {
                    print!("{}", Exit::shell());
                    Ok(Exit::Success.code())
                }
                Command::Evaluate(args) => evaluate(&cli, args).await,
                Command::Start(args) => start(&cli, args).await,
                Command::Gate(args) => gate(&cli, args).await,
                Command::Route { release, nightly, warmup, admin } => {
                    let pool = pool(&cli).await?;
                    let a = admin_client(admin);
                    let timeout = Duration::from_secs(120);
                    controller::route(&pool, &a, &notifier(&cli), *release, nightly, timeout, (*warmup).into()).await?;
                    println!("release {release}: deployed");
                    Ok(std::process::ExitCode::SUCCESS)
                }
                Command::Notify { text } => {
                    if !notifier(&cli).send(text, serde_json::json!({})).await {
                        eprintln!("not sent (no webhook, or it failed: see the log)");
                    }
                    Ok(std::process::ExitCode::SUCCESS)
                }
                Command::Promote { release, admin } => {
                    let pool = pool(&cli).await?;
                    controller::promote(&pool, &admin_client(admin), &notifier(&cli), *release, "promoted by hand")
                        .await?;
                    println!("release {release} promoted");
                    Ok(std::process::ExitCode::SUCCESS)
                }
                Command::Abort { release, reason, admin } => {
                    let pool = pool(&cli).await?;
                    controller::abort(&pool, &admin_client(admin), &notifier(&cli), *release, reason).await?;
                    println!("release {release} aborted");
                    Ok(std::process::ExitCode::SUCCESS)
                }
                Command::Rollback { to, deploy_command, admin } => {
                    let pool = pool(&cli).await?;
                    let deploy = deploy_command
                        .clone()
                        .map(|command| controller::CommandDeploy { command, role: "rollback".into() });
                    let deploy = deploy.as_ref().map(|d| d as &dyn controller::Deploy);
                    controller::rollback(
                        &pool,
                        &admin_client(admin),
                        &notifier(&cli),
                        *to,
                        deploy,
                        Duration::from_secs(120),
                    )
                    .await?;
                    println!("main is release {to} again");
                    Ok(std::process::ExitCode::SUCCESS)
                }
                Command::List => list(&cli).await,
                Command::Exporter { listen, online_window_s, conversion_window_s } => {
                    let pool = pool(&cli).await?;
                    let listener = tokio::net::TcpListener::bind(listen)
                        .await
                        .map_err(|e| BadInput(format!("cannot listen on {listen}: {e}")))?;
                    tracing::info!(%listen, "serving release metrics");
                    let windows = release::metrics::OnlineWindows {
                        online: chrono::TimeDelta::seconds(i64::from(*online_window_s)),
                        conversion: chrono::TimeDelta::seconds(i64::from(*conversion_window_s)),
                    };
                    release::metrics::serve(pool, listener, windows, lifecycle::shutdown_signal()).await?;
                    Ok(std::process::ExitCode::SUCCESS)
                }
            }
        }),
    )
}
