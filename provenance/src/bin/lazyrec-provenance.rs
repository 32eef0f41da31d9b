//! `lazyrec-provenance`: what made a past recommendation, and a replay that recomputes it.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use lifecycle::BadInput;
use provenance::replay::{self, Outcome, Replayer, Tally};

/// For any past recommendation (a request id of `recommendations_history`): `show` names the
/// model (strategy, parameters), the code (git sha, release, pipeline) and the data (watermark,
/// popularity run, vector collection, source ranges) that made it; `replay` recomputes it with
/// that model on that data and compares (exit 0 identical, 1 different, 3 not reproducible);
/// `prune` deletes old history with what only it referred to.
#[derive(Parser, Debug)]
#[command(name = "lazyrec-provenance", version)]
struct Cli {
    #[command(flatten)]
    db: db::args::DatabaseArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The model, code and data behind one answer.
    Show {
        /// The request id.
        request_id: String,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Recompute one answer (REQUEST_ID) or a sample (--sample N) and compare.
    Replay(ReplayArgs),
    /// Delete history older than --before together with what only it referred to: popularity
    /// run lists (never the latest run) and vector collections kept only because history named
    /// them (`retained`; never the live or previous one). Releases, models and events are kept.
    /// The cut must be at least an hour ago (answers of the last hour may still be in flight),
    /// before any running experiment's window, and before the oldest row still waiting in a
    /// load balancer's journal.
    Prune(PruneArgs),
}

#[derive(clap::Args, Debug)]
struct PruneArgs {
    /// Delete history rows older than this (RFC 3339, e.g. 2026-10-01T00:00:00Z).
    #[arg(long)]
    before: chrono::DateTime<chrono::Utc>,
    /// Print what would be deleted, delete nothing.
    #[arg(long)]
    dry_run: bool,
    /// Load-balancer journal directories whose unshipped rows the cut must not precede
    /// (repeatable; default: every replica's slot, `<state-dir>/loadbalancer/journal`,
    /// `journal-2`, …). A load balancer elsewhere
    /// must drain before a prune.
    #[arg(long = "journal-dir", value_name = "DIR")]
    journal_dirs: Vec<std::path::PathBuf>,
    #[command(flatten)]
    store: vectorstore::args::StoreArgs,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args, Debug)]
struct ReplayArgs {
    /// The request id (or give --sample).
    #[arg(required_unless_present = "sample")]
    request_id: Option<String>,
    /// Replay N random rows and print the share identical.
    #[arg(long, conflicts_with = "request_id")]
    sample: Option<i64>,
    /// With --sample: only rows at or after this time (RFC 3339).
    #[arg(long, requires = "sample")]
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// With --sample: the sample's seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    store: vectorstore::args::StoreArgs,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

async fn pool(cli: &Cli) -> anyhow::Result<sqlx::PgPool> {
    cli.db.pool(2).await
}

async fn show(cli: &Cli, request_id: &str, json: bool) -> anyhow::Result<ExitCode> {
    let pool = pool(cli).await?;
    let p = provenance::show::provenance(&pool, request_id)
        .await?
        .ok_or_else(|| BadInput(format!("no recommendation with request id {request_id:?}")))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        print!("{}", p.render());
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay_cmd(cli: &Cli, a: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let pool = pool(cli).await?;
    let store = a.store.open(&cli.db.state_dir).context("opening the vector store")?;
    // The search parameters come from each row's model record (`models.search`).
    let mut replayer = Replayer::new(pool.clone(), store);
    if let Some(id) = &a.request_id {
        let (recorded, outcome) = match replayer.replay(id).await {
            Err(replay::ReplayError::NotFound(id)) => {
                return Err(BadInput(format!("no recommendation with request id {id:?}")).into());
            }
            other => other?,
        };
        if a.json {
            println!("{}", serde_json::json!({"recorded": recorded, "replay": outcome}));
        } else {
            println!("recorded {}", recorded.movie_ids.join(","));
            match &outcome {
                Outcome::Identical => println!("replayed identical"),
                Outcome::Different { replayed } => {
                    println!("replayed {}", replayed.join(","));
                    println!("DIFFERENT");
                }
                Outcome::NotReproducible { why } => println!("NOT REPRODUCIBLE: {why}"),
            }
        }
        return Ok(match outcome {
            Outcome::Identical => ExitCode::SUCCESS,
            Outcome::Different { .. } => ExitCode::from(1),
            Outcome::NotReproducible { .. } => ExitCode::from(3),
        });
    }
    let n = a.sample.unwrap_or(0);
    if n <= 0 {
        return Err(BadInput(format!("--sample must be positive, got {n}")).into());
    }
    let ids = replay::sample(&pool, n, a.since, a.seed).await?;
    let bar = indicatif::ProgressBar::new(ids.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} rows {per_sec} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let started = Instant::now();
    let mut tally = Tally::default();
    for id in &ids {
        let (recorded, outcome) = replayer.replay(id).await?;
        tally.add(&recorded, &outcome);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let rate = tally.rows as f64 / started.elapsed().as_secs_f64().max(1e-9);
    if a.json {
        println!(
            "{}",
            serde_json::json!({"tally": tally, "identical_share": tally.identical_share(), "rows_per_s": rate})
        );
    } else {
        println!(
            "{} rows: {} identical, {} different, {} not reproducible → {:.2} % of the replayable identical ({rate:.0} rows/s)",
            tally.rows,
            tally.identical,
            tally.different,
            tally.not_reproducible.values().sum::<u64>(),
            100.0 * tally.identical_share()
        );
        for (why, count) in &tally.not_reproducible {
            println!("  not reproducible ({count}): {why}");
        }
        for (id, recorded, replayed) in &tally.first_differences {
            println!("  {id}\n    recorded {}\n    replayed {}", recorded.join(","), replayed.join(","));
        }
    }
    Ok(if tally.different == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The youngest cut `prune` accepts: answers of the last hour may still be on their way to
/// history, and a popularity run or collection replaced within it may still be served.
const PRUNE_MIN_AGE: chrono::TimeDelta = chrono::TimeDelta::hours(1);

async fn prune_cmd(cli: &Cli, a: &PruneArgs) -> anyhow::Result<ExitCode> {
    let newest = chrono::Utc::now() - PRUNE_MIN_AGE;
    if a.before > newest {
        return Err(BadInput(format!(
            "--before {} is less than an hour ago; the newest cut allowed now is {}",
            a.before.to_rfc3339(),
            newest.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ))
        .into());
    }
    let pool = pool(cli).await?;
    let journals =
        if a.journal_dirs.is_empty() { loadbalancer::journal_slots(&cli.db.state_dir) } else { a.journal_dirs.clone() };
    provenance::prune::check_cut(&pool, a.before, &journals).await.map_err(|e| match e {
        e @ provenance::prune::PruneError::CutTooRecent { .. } => anyhow::Error::from(BadInput(e.to_string())),
        e => anyhow::Error::from(e),
    })?;
    let store = a.store.open(&cli.db.state_dir).context("opening the vector store")?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} history rows deleted {per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    let report = provenance::prune::prune(&pool, store.as_ref(), a.before, a.dry_run, |n| bar.set_position(n)).await?;
    bar.finish_and_clear();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    lifecycle::main_with_code("warn,qdrant_edge=error", Some(2), async {
        match &cli.command {
            Command::Show { request_id, json } => show(&cli, request_id, *json).await,
            Command::Replay(a) => replay_cmd(&cli, a).await,
            Command::Prune(a) => prune_cmd(&cli, a).await,
        }
    })
}
