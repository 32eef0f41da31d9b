//! `lazyrec-sim`: simulated users of the movie service. A thin shell over the `simulator` library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use lifecycle::BadInput;
use simulator::population::{self, PopulationSpec};
use simulator::report::{self, Report};
use simulator::run::{self, Config, Limit};
use simulator::sink::Output;
use simulator::user::Behaviour;

/// Simulated users of the movie service: each step a user asks `GET <target>/recommend/<id>`,
/// then maybe watches a recommended movie they would like (one from their held-out future),
/// maybe their next movie anyway, maybe rates it; every action is a course log line.
///
/// Examples:
///   lazyrec-db load-default --hold-out 0.2 --futures .state/futures.tsv   # on a fresh database
///   lazyrec-sim run --futures .state/futures.tsv --rate 50 --duration 5m --output file:.state/sim.log
///   lazyrec-db ingest --follow --rating-scale 10 .state/sim.log          # closes the loop
///   lazyrec-sim run … --output kafka:localhost:9092/movielog1 --json run.json
///   lazyrec-sim compare a.json b.json
///   lazyrec-sim bench --rate 5000 --duration 20s --output file:/tmp/sim.log
///
/// Ctrl-C stops issuing requests, waits for those in flight and still writes the report.
/// Exit code 2 on bad input.
#[derive(Parser, Debug)]
#[command(name = "lazyrec-sim", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a population against a target.
    Run(RunArgs),
    /// Compare the conversion of two runs' JSON reports (a − b, 95 % interval).
    Compare {
        /// The first report (e.g. the neighbours model as main).
        a: PathBuf,
        /// The second report (e.g. popularity as main).
        b: PathBuf,
    },
    /// The simulator alone against a trivial in-process endpoint: can it sustain the rate?
    Bench(BenchArgs),
    /// Serve the trivial endpoint (fixed list per user) until Ctrl-C.
    Stub {
        /// Listen address.
        #[arg(long, default_value = "127.0.0.1:8099")]
        addr: std::net::SocketAddr,
        /// Movie ids m0 … m<N-1>.
        #[arg(long, default_value_t = 1000)]
        movies: u64,
    },
}

#[derive(Args, Debug)]
struct Common {
    /// Requests per second (open loop: sent on schedule, whatever the answers take).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// How long (`90s`, `5m`, `1h`, or seconds); the default when --requests is not given: 60s.
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    duration: Option<Duration>,
    /// How many requests.
    #[arg(long)]
    requests: Option<u64>,
    /// The seed of every random choice (same seed + same answers = same actions).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Where the log lines go: file:PATH (appended), stdout, kafka:BROKERS/TOPIC, none.
    #[arg(long, default_value = "none")]
    output: Output,
    /// Time budget per request in ms (the course waits 600).
    #[arg(long, default_value_t = 600)]
    timeout_ms: u64,
    /// Steps allowed in flight; beyond, a due request is counted as not sent.
    #[arg(long, default_value_t = 20_000)]
    max_in_flight: usize,
    /// Write the report as JSON here too.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Never draw a progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Serve Prometheus metrics of the run here while it runs (requests, results, conversions
    /// by variant, log lines), e.g. 127.0.0.1:9191.
    #[arg(long)]
    metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The load balancer (or a server).
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    target: String,
    /// The users' futures (`lazyrec-db load-default --hold-out 0.2 --futures FILE`).
    #[arg(long)]
    futures: PathBuf,
    /// Simulate this many of the users (a seeded sample); all by default.
    #[arg(long)]
    users: Option<usize>,
    /// Share of the population that is new accounts (no history; cold start).
    #[arg(long, default_value_t = 0.05)]
    new_users: f64,
    /// Ids of new users count up from here.
    #[arg(long, default_value_t = 900_000)]
    new_user_base: i64,
    /// Rating scale of the futures file and the log (5 or 10); ratings outside it are refused.
    #[arg(long, default_value_t = 10)]
    rating_scale: i16,
    #[command(flatten)]
    behaviour: BehaviourArgs,
    #[command(flatten)]
    common: Common,
}

#[derive(Args, Debug)]
struct BehaviourArgs {
    /// Probability of watching a liked movie at the top of the list.
    #[arg(long, default_value_t = Behaviour::default().accept)]
    accept: f64,
    /// Factor applied to that probability per list position.
    #[arg(long, default_value_t = Behaviour::default().position_decay)]
    position_decay: f64,
    /// Probability of watching a random recommended movie anyway.
    #[arg(long, default_value_t = Behaviour::default().noise)]
    noise: f64,
    /// Probability of watching the next movie of one's own future otherwise.
    #[arg(long, default_value_t = Behaviour::default().organic)]
    organic: f64,
    /// Probability of rating a watched movie.
    #[arg(long, default_value_t = Behaviour::default().rate)]
    rate_share: f64,
    /// Minutes watched per movie: uniform in 1..=N.
    #[arg(long, default_value_t = Behaviour::default().max_minutes)]
    max_minutes: u32,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Synthetic users.
    #[arg(long, default_value_t = 100_000)]
    users: usize,
    #[command(flatten)]
    common: Common,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = number.parse().map_err(|_| format!("{s:?} is not a duration (90s, 5m, 1h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("{s:?}: unit must be s, m or h")),
    };
    if !(secs > 0.0 && secs.is_finite()) {
        return Err(format!("{s:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Common {
    fn config(&self, target: String, behaviour: Behaviour) -> Config {
        Config {
            target,
            rate: self.rate,
            limit: match (self.requests, self.duration) {
                (Some(n), _) => Limit::Requests(n),
                (None, Some(d)) => Limit::Duration(d),
                (None, None) => Limit::Duration(Duration::from_secs(60)),
            },
            timeout: Duration::from_millis(self.timeout_ms),
            behaviour,
            seed: self.seed,
            max_in_flight: self.max_in_flight,
            output: self.output.clone(),
            progress: !self.no_progress && std::io::stderr().is_terminal(),
            trace: false,
            metrics: self.metrics_listen,
        }
    }
}

async fn execute(
    config: Config,
    population: Vec<population::SimUser>,
    json: Option<&PathBuf>,
) -> anyhow::Result<Report> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        lifecycle::shutdown_signal().await;
        eprintln!("stopping: waiting for the requests in flight, then the report");
        let _sent = stop_tx.send(true);
    });
    let finished = match run::run(config, population, stop_rx).await {
        Ok(f) => f,
        Err(run::RunError::Config(why)) => return Err(BadInput(why).into()),
        Err(e) => return Err(e.into()),
    };
    let report = finished.report;
    print!("{}", report.render());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

async fn run_cli(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            if args.rating_scale != 5 && args.rating_scale != 10 {
                return Err(BadInput(format!("--rating-scale must be 5 or 10, got {}", args.rating_scale)).into());
            }
            if !(0.0..1.0).contains(&args.new_users) {
                return Err(BadInput(format!("--new-users must be in [0, 1), got {}", args.new_users)).into());
            }
            let futures = population::read_futures(&args.futures).map_err(|e| BadInput(e.to_string()))?;
            if let Some(bad) =
                futures.values().flatten().find(|f| f.rating.is_some_and(|r| r < 1 || r > args.rating_scale))
            {
                return Err(BadInput(format!(
                    "{}: rating {:?} of {} is outside 1..={} (--rating-scale)",
                    args.futures.display(),
                    bad.rating,
                    bad.movie,
                    args.rating_scale
                ))
                .into());
            }
            let spec = PopulationSpec {
                users: args.users,
                new_share: args.new_users,
                new_user_base: args.new_user_base,
                seed: args.common.seed,
            };
            let people = population::build(&futures, &spec);
            let b = &args.behaviour;
            let behaviour = Behaviour {
                accept: b.accept,
                position_decay: b.position_decay,
                noise: b.noise,
                organic: b.organic,
                rate: b.rate_share,
                max_minutes: b.max_minutes,
            };
            behaviour.validate().map_err(BadInput)?;
            eprintln!(
                "population: {} users ({} new) from {}",
                people.len(),
                people.iter().filter(|u| u.new).count(),
                args.futures.display()
            );
            let config = args.common.config(args.target.clone(), behaviour);
            execute(config, people, args.common.json.as_ref()).await?;
            Ok(())
        }
        Command::Compare { a, b } => {
            let read = |p: &PathBuf| -> anyhow::Result<Report> {
                let text = std::fs::read_to_string(p).map_err(|e| BadInput(format!("reading {}: {e}", p.display())))?;
                Ok(serde_json::from_str(&text).map_err(|e| BadInput(format!("{}: not a report: {e}", p.display())))?)
            };
            let (ra, rb) = (read(&a)?, read(&b)?);
            let (_, text) = report::compare(&ra, &rb, &a.display().to_string(), &b.display().to_string());
            println!("{text}");
            Ok(())
        }
        Command::Bench(args) => {
            let (addr, stub) =
                simulator::stub::serve("127.0.0.1:0".parse()?, 1000).await.context("starting the stub")?;
            let people = population::synthetic(args.users, 1000, 50, args.common.seed);
            let config = args.common.config(format!("http://{addr}"), Behaviour::default());
            let report = execute(config, people, args.common.json.as_ref()).await?;
            stub.abort();
            println!(
                "bench: asked {:.0}/s, sent {:.0}/s, {} not sent, availability {:.2} %, {} log lines",
                report.rate,
                report.achieved_rate,
                report.not_sent,
                100.0 * report.availability.rate,
                report.lines.recommendation + report.lines.watch + report.lines.rate + report.lines.create_account
            );
            Ok(())
        }
        Command::Stub { addr, movies } => {
            let (local, task) = simulator::stub::serve(addr, movies).await.context("starting the stub")?;
            eprintln!("stub listening on http://{local}");
            lifecycle::shutdown_signal().await;
            task.abort();
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    lifecycle::main_with_code("warn", None, async { run_cli(cli).await.map(|()| ExitCode::SUCCESS) })
}
