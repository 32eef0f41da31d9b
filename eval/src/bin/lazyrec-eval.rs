//! `lazyrec-eval`: offline evaluation of recommenders on the data in Postgres or on benchmark
//! files, with the baselines in the same run, and the release gate. A thin shell over the `eval`
//! library.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use eval::dataset::{Dataset, Row, Split};
use eval::files::{self, Layout};
use eval::models::{BASELINES, Context, ModelSpec};
use eval::{GateMetric, Report};

/// Offline evaluation: ranking metrics at K (recall, NDCG, MAP, precision, hit-rate, MRR,
/// catalog coverage, popularity bias) of the baselines (toppop, itemknn-cf, ease) and the
/// serving strategies asked for with --model, every model fitted on the training part only.
///
/// Examples:
///   lazyrec-eval postgres --model neighbours-v1 --model neighbours-v2
///   lazyrec-eval files --train u1.base --test u1.test --model neighbours-v2
///   lazyrec-eval postgres --model popularity-v1 --model neighbours-v2 --no-baselines \
///       --gate --candidate neighbours-v2 --reference popularity-v1 --tolerance 0.02
///   lazyrec-eval postgres --validation 0.2 --model 'neighbours-v2:{"recency_decay":0.9}'
///
/// Tune parameters with --validation (a split carved from the training part), never on the test
/// split. Exit code 1 when the gate fails, 2 on bad input.
#[derive(Parser, Debug)]
#[command(name = "lazyrec-eval", version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The data in Postgres (watches and ratings up to the watermark), split per user by time
    /// (or with --split).
    Postgres {
        #[command(flatten)]
        db: DbArgs,
        #[command(flatten)]
        split: SplitArgs,
        /// Users with fewer items are not tested (they still train the models).
        #[arg(long, default_value_t = 10)]
        min_items: usize,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        eval: EvalArgs,
    },
    /// Given train and test files (`user item [rating [timestamp]]` by tab, comma or `::`; or
    /// `user item item …` lines).
    Files {
        /// Training file.
        #[arg(long)]
        train: PathBuf,
        /// Test file.
        #[arg(long)]
        test: PathBuf,
        #[command(flatten)]
        file: FileArgs,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        eval: EvalArgs,
    },
    /// One interactions file, split here: per user by time (`temporal`) or at random.
    File {
        /// The file.
        path: PathBuf,
        #[command(flatten)]
        split: SplitArgs,
        /// Temporal and held-out users: users with fewer items are not tested.
        #[arg(long, default_value_t = 2)]
        min_items: usize,
        #[command(flatten)]
        file: FileArgs,
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        eval: EvalArgs,
    },
    /// Write the interactions in Postgres as `user<TAB>item<TAB>rating<TAB>order` lines.
    Export {
        #[command(flatten)]
        db: DbArgs,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
    },
    /// Split an interactions file at random into train and test files (same layout as `export`).
    Split {
        /// Input file.
        path: PathBuf,
        /// Share of interactions in the test file.
        #[arg(long, default_value_t = 0.2)]
        share: f64,
        /// Seed.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Training output.
        #[arg(long)]
        train_out: PathBuf,
        /// Test output.
        #[arg(long)]
        test_out: PathBuf,
        #[command(flatten)]
        file: FileArgs,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum SplitKind {
    /// Each user's latest items held out.
    Temporal,
    /// A random share of all interactions held out.
    Random,
    /// A random share of users never trained on, each tested on a random part of their items.
    HeldOutUsers,
}

/// How `postgres` and `file` split what they read.
#[derive(Args, Debug)]
struct SplitArgs {
    /// How to split.
    #[arg(long, value_enum, default_value = "temporal")]
    split: SplitKind,
    /// Share held out (of each user's items for temporal and held-out users; of all
    /// interactions for random).
    #[arg(long, default_value_t = 0.2)]
    holdout: f64,
    /// Held-out-users split: the share of users never trained on.
    #[arg(long, default_value_t = 0.2)]
    held_out_users: f64,
}

impl SplitArgs {
    fn split(&self, min_items: usize, seed: u64) -> anyhow::Result<Split> {
        let holdout = share("--holdout", self.holdout)?;
        Ok(match self.split {
            SplitKind::Temporal => Split::Temporal { holdout, min_items },
            SplitKind::Random => Split::Random { share: holdout, seed },
            SplitKind::HeldOutUsers => {
                let users = share("--held-out-users", self.held_out_users)?;
                Split::HeldOutUsers { users, holdout, min_items, seed }
            }
        })
    }
}

/// The database flags (shared by every command).
type DbArgs = db::args::DatabaseArgs;

#[derive(Args, Debug)]
struct FileArgs {
    /// File layout.
    #[arg(long, value_enum, default_value = "auto")]
    layout: Layout,
    /// The top of the files' rating scale (5 for MovieLens, 10 for the 2026 course).
    #[arg(long, default_value_t = 5.0)]
    rating_scale: f64,
}

/// Where the content vectors come from (the shared store flags) and whether to read them.
#[derive(Args, Debug)]
struct StoreArgs {
    #[command(flatten)]
    store: vectorstore::args::StoreArgs,
    /// Do not load content vectors (strategies that need them are reported n/a).
    #[arg(long)]
    no_content: bool,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// A model to evaluate: a baseline or a registered strategy, optionally with JSON
    /// parameters: `neighbours-v2` or `neighbours-v2:{"max_seeds":10}`. Repeatable.
    #[arg(long = "model")]
    models: Vec<ModelSpec>,
    /// Leave the baselines out (toppop, itemknn-cf, ease run by default, with default
    /// parameters; give `--model ease:{"lambda":200}` to set theirs).
    #[arg(long)]
    no_baselines: bool,
    /// Cut-off; repeatable.
    #[arg(long = "k", default_values_t = [20])]
    ks: Vec<usize>,
    /// Parameters of the behaviour vectors (JSON), for strategies that use them.
    #[arg(long, default_value = "{}")]
    behaviour: String,
    /// Parameters of the item weights (JSON: lambda, dropout, relax, max_items, min_users, top_k), for
    /// strategies that use them.
    #[arg(long, default_value = "{}")]
    items: String,
    /// Evaluate on a validation split carved from the training part (this share held out)
    /// instead of the test split: for tuning.
    #[arg(long)]
    validation: Option<f64>,
    /// Seed of random splits.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Simulate cold users: evaluated users keep only their latest N training items.
    #[arg(long)]
    history: Option<usize>,
    /// Also write the report as JSON to this file (`-`: stdout, instead of the table).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Exit 1 when --candidate is worse than --reference on --gate-metric by more than
    /// --tolerance.
    #[arg(long, requires_all = ["candidate", "reference"])]
    gate: bool,
    /// Gate: the model under test (label or name).
    #[arg(long)]
    candidate: Option<String>,
    /// Gate: the model it must not be worse than.
    #[arg(long)]
    reference: Option<String>,
    /// Gate: allowed relative shortfall (0.02 = 2 %).
    #[arg(long, default_value_t = 0.0)]
    tolerance: f64,
    /// Gate: `<metric>@<k>`.
    #[arg(long, default_value = "ndcg@20")]
    gate_metric: GateMetric,
}

fn share(name: &str, v: f64) -> anyhow::Result<f64> {
    anyhow::ensure!(v > 0.0 && v < 1.0, "{name} must be in (0, 1), got {v}");
    Ok(v)
}

/// The content vectors' store: `--qdrant-url`, `--edge-dir`, or `default_state_dir`'s
/// qdrant-edge when it exists; none with `--no-content`.
fn open_store(
    args: &StoreArgs,
    default_state_dir: Option<&Path>,
) -> anyhow::Result<Option<std::sync::Arc<dyn vectorstore::VectorStore>>> {
    if args.no_content {
        return Ok(None);
    }
    args.store.open_existing(default_state_dir).context("opening the vector store")
}

async fn run_eval(
    data: Dataset,
    store: Option<std::sync::Arc<dyn vectorstore::VectorStore>>,
    args: EvalArgs,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.ks.iter().all(|&k| k > 0), "--k must be at least 1");
    anyhow::ensure!((0.0..1.0).contains(&args.tolerance), "--tolerance must be in [0, 1), got {}", args.tolerance);
    let behaviour: behaviour::Params =
        serde_json::from_str(&args.behaviour).map_err(|e| anyhow::anyhow!("--behaviour: {e}"))?;
    behaviour.check()?;
    let items: behaviour::items::ItemParams =
        serde_json::from_str(&args.items).map_err(|e| anyhow::anyhow!("--items: {e}"))?;
    items.check()?;
    let data = match args.validation {
        Some(v) => data.validation(share("--validation", v)?, args.seed),
        None => data,
    };
    let data = match args.history {
        Some(0) => anyhow::bail!("--history must be at least 1"),
        Some(n) => data.truncate_histories(n),
        None => data,
    };
    let content = match store {
        Some(store) => match eval::source::content_vectors(store.as_ref(), &data.items).await? {
            Some((collection, vectors)) => {
                let n = vectors.iter().flatten().count();
                eprintln!(
                    "content vectors: {n} of {} items from {} ({collection})",
                    data.items.len(),
                    store.describe()
                );
                Some(vectors)
            }
            None => {
                eprintln!("content vectors: none ({} has no live collection)", store.describe());
                None
            }
        },
        None => None,
    };
    let mut specs: Vec<ModelSpec> = Vec::new();
    if !args.no_baselines {
        for b in BASELINES {
            if !args.models.iter().any(|m| m.name == *b) {
                specs.push(b.parse().map_err(anyhow::Error::msg)?);
            }
        }
    }
    specs.extend(args.models.iter().cloned());
    anyhow::ensure!(!specs.is_empty(), "nothing to evaluate: give --model or drop --no-baselines");
    let context = Context { content, behaviour, items };
    let summary = data.summary();
    eprintln!("{}: {} users to evaluate, {} models", summary.name, summary.test_users, specs.len());
    let bar = indicatif::ProgressBar::new(specs.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} models {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if let Some(first) = specs.first() {
        bar.set_message(first.label.clone());
    }
    let mut next = specs.iter().skip(1);
    let report: Report = eval::evaluate(&data, &specs, &args.ks, &context, |r| {
        bar.inc(1);
        bar.println(format!(
            "  {} done in {:.1} s{}",
            r.label,
            r.seconds,
            r.error.as_deref().map(|e| format!(" (n/a: {e})")).unwrap_or_default()
        ));
        if let Some(n) = next.next() {
            bar.set_message(n.label.clone());
        }
    });
    bar.finish_and_clear();
    let verdict = if args.gate {
        let (c, r) = (args.candidate.as_deref().unwrap_or_default(), args.reference.as_deref().unwrap_or_default());
        Some(eval::gate(&report, c, r, &args.gate_metric, args.tolerance)?)
    } else {
        None
    };
    match args.json.as_deref() {
        Some(p) if p == Path::new("-") => {
            let value = serde_json::json!({ "report": report, "gate": verdict });
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        other => {
            print!("{}", report.render());
            if let Some(p) = other {
                let value = serde_json::json!({ "report": report, "gate": verdict });
                std::fs::write(p, serde_json::to_string_pretty(&value)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
        }
    }
    if let Some(v) = verdict {
        println!("{}", v.reason);
        if !v.pass {
            return Ok(ExitCode::from(1));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn postgres_rows(db: &DbArgs) -> anyhow::Result<(Vec<Row>, i64)> {
    let pool = db.pool(2).await?;
    let out = eval::source::postgres_rows(&pool).await.context("reading interactions")?;
    pool.close().await;
    anyhow::ensure!(!out.0.is_empty(), "no interactions in Postgres (load data first: lazyrec-db load-default)");
    Ok(out)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Postgres { db, split, min_items, store, eval } => {
            let split = split.split(min_items, eval.seed)?;
            let (rows, watermark) = postgres_rows(&db).await?;
            let data = Dataset::from_rows(&format!("postgres (watermark {watermark})"), &rows, split);
            let store = open_store(&store, Some(&db.state_dir))?;
            run_eval(data, store, eval).await
        }
        Command::Files { train, test, file, store, eval } => {
            let train_rows = files::read(&train, file.layout, file.rating_scale)?;
            let test_rows = files::read(&test, file.layout, file.rating_scale)?;
            let name = format!("{} + {}", train.display(), test.display());
            let data = Dataset::from_train_test(&name, &train_rows, &test_rows);
            let store = open_store(&store, None)?;
            run_eval(data, store, eval).await
        }
        Command::File { path, split, min_items, file, store, eval } => {
            let split = split.split(min_items, eval.seed)?;
            let rows = files::read(&path, file.layout, file.rating_scale)?;
            let data = Dataset::from_rows(&path.display().to_string(), &rows, split);
            let store = open_store(&store, None)?;
            run_eval(data, store, eval).await
        }
        Command::Export { db, out } => {
            let (rows, watermark) = postgres_rows(&db).await?;
            files::write(&out, &rows)?;
            eprintln!("{} interactions (watermark {watermark}) written to {}", rows.len(), out.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Split { path, share: s, seed, train_out, test_out, file } => {
            let s = share("--share", s)?;
            let rows = files::read(&path, file.layout, file.rating_scale)?;
            let (train, test) = eval::dataset::random_split_rows(rows, s, seed);
            files::write(&train_out, &train)?;
            files::write(&test_out, &test)?;
            eprintln!("{} train and {} test interactions written", train.len(), test.len());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
