//! `lazyrec-report`: telemetry reports over a time range (feedback loop, popularity bias,
//! fairness by user group, input drift), as text tables or JSON.

use std::process::ExitCode;

use chrono::{DateTime, TimeDelta, Utc};
use clap::Parser;
use lifecycle::BadInput;
use report::{Params, Range, Report};

/// Analyse what the service did over a time range, from `recommendations_history` and the
/// ingested events: the most over-recommended movies against their organic watch share
/// (feedback loop), catalog coverage and the Gini of exposure (popularity bias), conversion and
/// exposure by user group with 95 % intervals (fairness), and the drift of watch length,
/// ratings, new users and cold starts between two windows.
#[derive(Parser, Debug)]
#[command(name = "lazyrec-report", version)]
struct Cli {
    #[command(flatten)]
    db: db::args::DatabaseArgs,
    /// From (RFC 3339; default: one hour before --until).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// To (RFC 3339; default: now).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// Drift baseline window start (default: the range's first half against its second half).
    #[arg(long, requires = "baseline_until")]
    baseline_since: Option<DateTime<Utc>>,
    /// Drift baseline window end.
    #[arg(long, requires = "baseline_since")]
    baseline_until: Option<DateTime<Utc>>,
    /// Conversion window in seconds: a watch this long after an answer listing the movie counts
    /// as its conversion (and is not organic).
    #[arg(long, default_value_t = 600)]
    window_s: u32,
    /// Movies in the feedback-loop table.
    #[arg(long, default_value_t = 15)]
    top: usize,
    /// "Popular" in the fairness table: the top N of the popularity list.
    #[arg(long, default_value_t = 100)]
    popular: i64,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let until = cli.until.unwrap_or_else(Utc::now);
    let since = cli.since.unwrap_or(until - TimeDelta::hours(1));
    if since >= until {
        return Err(BadInput(format!("--since {since} is not before --until {until}")).into());
    }
    let range = Range { since, until };
    let (first, second) = range.halves();
    let (baseline, current) = match (cli.baseline_since, cli.baseline_until) {
        (Some(s), Some(u)) if s < u => (Range { since: s, until: u }, range),
        (Some(s), Some(u)) => {
            return Err(BadInput(format!("--baseline-since {s} is not before --baseline-until {u}")).into());
        }
        _ => (first, second),
    };
    let pool = cli.db.pool(3).await?;
    let params = Params {
        range,
        baseline: Some(baseline),
        current: Some(current),
        conversion_window: TimeDelta::seconds(i64::from(cli.window_s)),
        top: cli.top,
        popular: cli.popular,
    };
    let report = Report::compute(&pool, &params).await?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.render());
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    lifecycle::main_with_code("warn,sqlx=error", Some(2), run(cli))
}
