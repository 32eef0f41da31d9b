//! The `lazyrec-db` command line: start the private Postgres, migrate, ingest logs, import the
//! catalog, users and MovieLens, refresh popularity, show status.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use sqlx::{Connection, PgConnection, PgPool};

use crate::import::{self, movielens};
use crate::ingest::{IngestOptions, IngestReport, Ingester};
use crate::parse::{DEFAULT_MAX_USER_ID, ParseConfig};
use crate::pgcluster::{self, PgCluster};
use crate::popularity::{self, PopularityParams};
use crate::source::{self, LineSource, StreamSource};

/// The database the project's own commands create in the private cluster.
pub const DATABASE_NAME: &str = "lazyrec";

#[derive(Parser, Debug)]
#[command(
    name = "lazyrec-db",
    version,
    about = "lazyrec's data layer: private Postgres, schema, course-log ingestion, catalog and MovieLens import",
    long_about = "lazyrec's data layer.\n\nWithout DATABASE_URL, commands use the project's private Postgres cluster under the state directory (start it with `lazyrec-db up`). With DATABASE_URL, they use that database instead."
)]
struct Cli {
    #[command(flatten)]
    db: crate::args::DatabaseArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start (or reuse) the private Postgres cluster, create and migrate the database, print DATABASE_URL.
    Up {
        /// Also run a hot standby (streaming, synchronous replication) in <state-dir>/pg-standby;
        /// DATABASE_URL then lists both hosts, primary first (see `lazyrec-db promote`). Once
        /// made, the standby is started by every `up`.
        #[arg(long)]
        standby: bool,
    },
    /// Stop the private Postgres cluster (and its standby).
    Down,
    /// Fail over: fence the primary (stopped if it still runs, never a primary again) and
    /// promote the hot standby; clients holding the two-host DATABASE_URL follow it.
    Promote,
    /// Apply pending schema migrations.
    Migrate,
    /// Ingest course log lines from files, directories or stdin, exactly once.
    Ingest(IngestArgs),
    /// Import the course catalog (course_catalog_union.jsonl or raw movie-API JSON).
    ImportCatalog {
        /// The catalog file.
        path: PathBuf,
    },
    /// Import course users (API JSON or user_id,age,occupation,gender CSV).
    ImportUsers {
        /// The users file.
        path: PathBuf,
    },
    /// Import MovieLens ml-latest-small: movies with course-style ids, ratings through the ingester.
    ImportMovielens(MovieLensArgs),
    /// Recompute the popularity table (stamped with the current watermark).
    Popularity {
        /// Window length in days, ending at the newest ingested event.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(i32).range(1..=3650))]
        window_days: i32,
        /// Weight of in-window activity versus TMDB popularity, 0..=1.
        #[arg(long, default_value_t = 0.7)]
        activity_weight: f64,
    },
    /// Load the bundled default dataset (MovieLens + TMDB overviews), then refresh popularity. Idempotent.
    LoadDefault(LoadDefaultArgs),
    /// Print table counts, the watermark and per-source positions.
    Status,
}

#[derive(Args, Debug)]
struct IngestArgs {
    /// Files or directories (a directory's files in name order); `-` or nothing reads stdin.
    paths: Vec<PathBuf>,
    /// Keep reading files as they grow (like `tail -f`); stop with Ctrl-C.
    #[arg(long)]
    follow: bool,
    /// Name under which stdin's position is stored (resume key).
    #[arg(long, default_value = "stdin")]
    source_name: String,
    /// Stdin replays the bytes of an earlier run under the same --source-name (the same file
    /// piped again): skip what was ingested. Without it such a run is refused.
    #[arg(long)]
    resume_stream: bool,
    /// The rating scale of the log: 5 (older course) or 10 (2026 course).
    #[arg(long, default_value_t = 5, value_parser = parse_scale)]
    rating_scale: i16,
    /// Largest plausible user id; larger ids are rejected as injected garbage.
    #[arg(long, default_value_t = DEFAULT_MAX_USER_ID)]
    max_user_id: i64,
    /// Lines per transaction.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    batch_lines: u64,
    /// Never draw a progress bar.
    #[arg(long)]
    no_progress: bool,
    /// Read a Kafka topic instead of files (one message per log line; with --follow, keep
    /// consuming). The position lives in Postgres with the events; the consumer group's offset
    /// is committed after each batch's transaction.
    #[arg(long, value_name = "TOPIC", requires = "kafka_brokers")]
    kafka_topic: Option<String>,
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    #[arg(long, value_name = "BROKERS", env = "LAZYREC_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// The consumer group offsets are committed under.
    #[arg(long, default_value = "lazyrec-ingest")]
    kafka_group: String,
}

#[derive(Args, Debug)]
struct LoadDefaultArgs {
    /// Hold out each user's latest SHARE of ratings (0 < SHARE < 1): they are not ingested but
    /// written to --futures, as the simulated users' future (`lazyrec-sim --futures`).
    #[arg(long, value_name = "SHARE", requires = "futures")]
    hold_out: Option<f64>,
    /// Where the held-out ratings go (`user<TAB>movie<TAB>rating<TAB>unix seconds`, the log's 1–10 scale).
    #[arg(long, value_name = "FILE", requires = "hold_out")]
    futures: Option<PathBuf>,
    /// The directory holding the default dataset (`ml-latest-small/`, `tmdb/`; the repository's
    /// `db/data`). Default: `db/data` under the current directory, else the source tree the
    /// binary was built from.
    #[arg(long, value_name = "DIR", env = "LAZYREC_DEFAULT_DATA")]
    data_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct MovieLensArgs {
    /// The ml-latest-small directory (default: the bundled copy).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The ml-latest-small × TMDB join file (overviews).
    #[arg(long)]
    tmdb_join: Option<PathBuf>,
    /// The TMDB stats file (popularity, votes).
    #[arg(long)]
    tmdb_stats: Option<PathBuf>,
    /// The course's course_to_ml-latest-small.csv: report how many of our ids agree with it.
    #[arg(long)]
    check_mapping: Option<PathBuf>,
    /// The directory holding the default dataset, as for `load-default` (--dir, when given, wins).
    #[arg(long, value_name = "DIR", env = "LAZYREC_DEFAULT_DATA")]
    data_dir: Option<PathBuf>,
}

/// Runs the command line; the binary prints the error chain and exits non-zero on `Err`.
pub async fn run() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Up { standby } => {
            let url = up(&cli, *standby).await?;
            println!("DATABASE_URL={url}");
            Ok(())
        }
        Command::Promote => {
            let started = std::time::Instant::now();
            promote(&cli).await?;
            let url = crate::resolve_database_url(None, &cli.db.state_dir)?;
            eprintln!("promoted the standby in {:.2} s; the old primary is fenced", started.elapsed().as_secs_f64());
            println!("DATABASE_URL={url}");
            Ok(())
        }
        Command::Down => {
            let standby_dir = cli.db.state_dir.join(pgcluster::STANDBY_DIR);
            if standby_dir.join("data").exists() {
                PgCluster::stop_daemon(&standby_dir).context("stopping the standby")?;
            }
            let stopped =
                PgCluster::stop_daemon(&cli.db.state_dir.join("pg")).context("stopping the private cluster")?;
            println!(
                "{}",
                if stopped {
                    "stopped the private Postgres cluster"
                } else {
                    "the private Postgres cluster was not running"
                }
            );
            Ok(())
        }
        Command::Migrate => {
            let pool = pool(&cli).await?;
            crate::migrate(&pool).await.context("applying migrations")?;
            println!("migrations applied");
            Ok(())
        }
        Command::Ingest(args) => {
            let report = ingest(&cli, args).await?;
            println!("{}", report.render());
            Ok(())
        }
        Command::ImportCatalog { path } => {
            let pool = pool(&cli).await?;
            let (movies, skipped) = import::catalog::read_catalog(path).context("reading the catalog")?;
            for s in &skipped {
                eprintln!("skipped {}: {}", s.at, s.reason);
            }
            let source = format!("catalog:{}", file_name(path));
            let mut stats = import::upsert_movies(&pool, &movies, &source).await.context("writing movies")?;
            stats.skipped = skipped.len() as u64;
            println!("movies: {stats}");
            Ok(())
        }
        Command::ImportUsers { path } => {
            let pool = pool(&cli).await?;
            let (users, skipped) = import::users::read_users(path).context("reading users")?;
            let mut stats = import::users::upsert_users(&pool, &users, &format!("users:{}", file_name(path)))
                .await
                .context("writing users")?;
            stats.skipped = skipped;
            println!("users: {stats}");
            Ok(())
        }
        Command::ImportMovielens(args) => {
            let mut paths = match &args.dir {
                Some(dir) => movielens::MovieLensPaths { dir: dir.clone(), tmdb_join: None, tmdb_stats: None },
                None => {
                    movielens::MovieLensPaths::find_default(args.data_dir.as_deref()).map_err(lifecycle::BadInput)?
                }
            };
            let pool = pool(&cli).await?;
            if args.tmdb_join.is_some() {
                paths.tmdb_join = args.tmdb_join.clone();
            }
            if args.tmdb_stats.is_some() {
                paths.tmdb_stats = args.tmdb_stats.clone();
            }
            import_movielens(&cli, &pool, &paths, args.check_mapping.as_deref()).await
        }
        Command::Popularity { window_days, activity_weight } => {
            if !(0.0..=1.0).contains(activity_weight) {
                bail!("--activity-weight must be between 0 and 1, got {activity_weight}");
            }
            let pool = pool(&cli).await?;
            let params = PopularityParams { window_days: *window_days, activity_weight: *activity_weight };
            let run = popularity::refresh(&pool, params).await.context("refreshing popularity")?;
            println!("popularity: {} movies ranked at watermark {} (run {})", run.movies, run.watermark, run.run_id);
            Ok(())
        }
        Command::LoadDefault(args) => {
            let paths =
                movielens::MovieLensPaths::find_default(args.data_dir.as_deref()).map_err(lifecycle::BadInput)?;
            let pool = pool(&cli).await?;
            match (args.hold_out, &args.futures) {
                (Some(share), Some(futures)) => {
                    if !(share > 0.0 && share < 1.0) {
                        bail!("--hold-out must be between 0 and 1 (exclusive), got {share}");
                    }
                    let url = database_url(&cli)?;
                    let progress = std::io::stderr().is_terminal();
                    let loaded = load_movielens_holding_out(&pool, &url, &paths, progress, share).await?;
                    movielens::write_futures(futures, &loaded.futures)
                        .with_context(|| format!("writing {}", futures.display()))?;
                    println!(
                        "movies: {}\nratings: {} new events, watermark {}; {} held out for {} users in {}",
                        loaded.load.movies,
                        loaded.load.ratings.accepted.total(),
                        loaded.load.ratings.watermark,
                        loaded.futures.len(),
                        loaded.futures.iter().map(|f| f.user_id).collect::<std::collections::BTreeSet<_>>().len(),
                        futures.display()
                    );
                }
                _ => import_movielens(&cli, &pool, &paths, None).await?,
            }
            let run = popularity::refresh(&pool, PopularityParams::default()).await.context("refreshing popularity")?;
            println!("popularity: {} movies ranked at watermark {}", run.movies, run.watermark);
            Ok(())
        }
        Command::Status => {
            let pool = pool(&cli).await?;
            print!("{}", status(&pool).await?);
            Ok(())
        }
    }
}

fn parse_scale(s: &str) -> Result<i16, String> {
    match s {
        "5" => Ok(5),
        "10" => Ok(10),
        other => Err(format!("{other:?} is not a rating scale; use 5 or 10")),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string())
}

/// Starts the private cluster (and its standby) unless DATABASE_URL is given; creates and
/// migrates the database.
async fn up(cli: &Cli, standby: bool) -> Result<String> {
    let url = match &cli.db.database_url {
        Some(url) => {
            if standby {
                bail!("--standby manages the private cluster; with DATABASE_URL, set up replication on your servers");
            }
            url.clone()
        }
        None => {
            let state = std::path::absolute(&cli.db.state_dir)
                .with_context(|| format!("resolving {}", cli.db.state_dir.display()))?;
            let (mut dir, standby_dir) = (state.join("pg"), state.join(pgcluster::STANDBY_DIR));
            if let Some(why) = pgcluster::fenced(&dir) {
                if standby {
                    bail!(
                        "the standby was promoted ({why}); a new standby of it is not made automatically: stop everything (`lazyrec-db down`), move {} away, and start again with `up --standby` after renaming {} to {}",
                        dir.display(),
                        standby_dir.display(),
                        dir.display()
                    );
                }
                // After a failover the promoted standby is the primary.
                dir = standby_dir.clone();
            }
            let with_standby = standby || (dir != standby_dir && standby_dir.join("data").join("PG_VERSION").exists());
            let primary_dir = dir.clone();
            let cluster = tokio::task::spawn_blocking(move || PgCluster::ensure_daemon(&primary_dir))
                .await
                .context("cluster start task")?
                .context("starting the private Postgres cluster")?;
            let mut admin =
                PgConnection::connect(&cluster.url("postgres")).await.context("connecting to the private cluster")?;
            let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(DATABASE_NAME)
                .fetch_one(&mut admin)
                .await
                .context("looking for the database")?;
            if !exists {
                sqlx::query(&format!("CREATE DATABASE {DATABASE_NAME}"))
                    .execute(&mut admin)
                    .await
                    .context("creating the database")?;
            }
            if with_standby {
                let started = tokio::task::spawn_blocking(move || {
                    PgCluster::ensure_standby_daemon(&cluster, &standby_dir).map(|standby| (cluster, standby))
                })
                .await
                .context("standby start task")?
                .context("starting the hot standby")?;
                let (cluster, _standby) = started;
                make_synchronous(&mut admin, &cluster).await?;
            }
            crate::resolve_database_url(None, &state)?
        }
    };
    let pool = crate::connect_pool(&url, 2).await.with_context(|| format!("connecting to {}", crate::redact(&url)))?;
    crate::migrate(&pool).await.context("applying migrations")?;
    Ok(url)
}

/// Waits for the standby to stream from the primary, then makes commits wait for it
/// (`synchronous_standby_names = '*'`): a commit the primary acknowledged is on the standby's
/// disk, so a promotion after the primary dies loses no acknowledged write. The price: with the
/// standby down, commits wait (`lazyrec-db promote` or `ALTER SYSTEM RESET
/// synchronous_standby_names` on the primary lifts it).
async fn make_synchronous(admin: &mut PgConnection, cluster: &PgCluster) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let streaming: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
            .fetch_one(&mut *admin)
            .await
            .context("reading pg_stat_replication")?;
        if streaming > 0 {
            break;
        }
        if std::time::Instant::now() >= deadline {
            return Err(
                pgcluster::ClusterError::NotStreaming(cluster.dir().to_path_buf(), Duration::from_secs(30)).into()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for statement in [
        "ALTER SYSTEM SET synchronous_standby_names = '*'",
        "ALTER SYSTEM SET wal_keep_size = '1GB'",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::query(statement).execute(&mut *admin).await.with_context(|| format!("on the primary: {statement}"))?;
    }
    Ok(())
}

/// `lazyrec-db promote`: fence and stop the old primary, promote the standby, let it commit
/// without a standby of its own.
async fn promote(cli: &Cli) -> Result<()> {
    if cli.db.database_url.is_some() {
        bail!("promote manages the private cluster; with DATABASE_URL, promote your standby with its own tools");
    }
    let state =
        std::path::absolute(&cli.db.state_dir).with_context(|| format!("resolving {}", cli.db.state_dir.display()))?;
    let (primary_dir, standby_dir) = (state.join("pg"), state.join(pgcluster::STANDBY_DIR));
    if !standby_dir.join("data").join("standby.signal").exists() {
        bail!("no hot standby to promote in {} (start one with `lazyrec-db up --standby`)", standby_dir.display());
    }
    let standby = tokio::task::spawn_blocking(move || {
        // Fence first: from here on nothing resolves the old primary as a host, even if it is
        // restarted by mistake.
        let when = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        pgcluster::fence(&primary_dir, &format!("its standby {} was promoted at {when}", standby_dir.display()))?;
        // A primary that still runs is stopped (a failover on purpose); a dead one stays dead.
        if let Err(e) = PgCluster::stop_daemon(&primary_dir) {
            // A postmaster SIGKILLed a moment ago can still look alive (its pid not yet reaped,
            // its children exiting) and refuse a stop: look again a second later.
            std::thread::sleep(Duration::from_secs(1));
            if PgCluster::stop_daemon(&primary_dir).is_err() {
                return Err(e);
            }
        }
        let standby = PgCluster::ensure_daemon(&standby_dir)?;
        standby.promote()?;
        Ok::<_, pgcluster::ClusterError>(standby)
    })
    .await
    .context("promote task")?
    .context("promoting the standby")?;
    let mut admin =
        PgConnection::connect(&standby.url("postgres")).await.context("connecting to the promoted standby")?;
    for statement in ["ALTER SYSTEM RESET synchronous_standby_names", "SELECT pg_reload_conf()"] {
        sqlx::query(statement).execute(&mut admin).await.with_context(|| format!("on the new primary: {statement}"))?;
    }
    Ok(())
}

/// The URL to use: DATABASE_URL, else the running private cluster.
fn database_url(cli: &Cli) -> Result<String> {
    cli.db.url()
}

async fn pool(cli: &Cli) -> Result<PgPool> {
    let url = database_url(cli)?;
    crate::connect_pool(&url, 4).await.with_context(|| format!("connecting to Postgres at {}", crate::redact(&url)))
}

async fn ingest(cli: &Cli, args: &IngestArgs) -> Result<IngestReport> {
    let follow = args.follow.then_some(Duration::from_millis(250));
    let mut sources: Vec<Box<dyn LineSource>> = Vec::new();
    if let Some(topic) = &args.kafka_topic {
        if !args.paths.is_empty() {
            bail!("give either --kafka-topic or paths, not both");
        }
        let mut config = crate::kafka::KafkaConfig::new(args.kafka_brokers.clone().unwrap_or_default(), topic.clone());
        config.group = args.kafka_group.clone();
        config.follow = args.follow;
        let source = tokio::task::spawn_blocking(move || crate::kafka::KafkaSource::open(config))
            .await
            .context("kafka connect task")??;
        sources.push(Box::new(source));
    }
    let stdin_wanted =
        args.kafka_topic.is_none() && (args.paths.is_empty() || args.paths.iter().any(|p| p.as_os_str() == "-"));
    let files: Vec<PathBuf> = args.paths.iter().filter(|p| p.as_os_str() != "-").cloned().collect();
    if stdin_wanted {
        sources.push(Box::new(StreamSource::stdin(format!("stream:{}", args.source_name), Duration::from_secs(1))));
    }
    for file in source::file_sources(&files, follow)? {
        sources.push(Box::new(file));
    }
    let url = database_url(cli)?;
    let conn =
        crate::connect_one(&url).await.with_context(|| format!("connecting to Postgres at {}", crate::redact(&url)))?;
    let opts = IngestOptions {
        batch_lines: args.batch_lines as usize,
        parse: ParseConfig { rating_scale: args.rating_scale, max_user_id: args.max_user_id },
        progress: !args.no_progress && std::io::stderr().is_terminal(),
        resume_streams: args.resume_stream,
        ..IngestOptions::default()
    };
    Ok(Ingester::run_once(conn, opts, sources).await?)
}

async fn import_movielens(
    cli: &Cli,
    pool: &PgPool,
    paths: &movielens::MovieLensPaths,
    check: Option<&Path>,
) -> Result<()> {
    if let Some(mapping) = check {
        let catalog = movielens::read_catalog(paths).context("reading MovieLens")?;
        let agreement = movielens::mapping_agreement(&catalog, mapping).context("reading the course mapping")?;
        println!(
            "course-id agreement with {}: {}/{} ({:.1} %)",
            file_name(mapping),
            agreement.agree,
            agreement.total,
            100.0 * agreement.agree as f64 / agreement.total.max(1) as f64
        );
        for (ml, course, ours) in &agreement.examples {
            println!("  {ml}: course {course}, ours {ours}");
        }
    }
    let url = database_url(cli)?;
    let loaded = load_movielens(pool, &url, paths, std::io::stderr().is_terminal()).await?;
    println!("movies: {}", loaded.movies);
    if loaded.unknown_movies > 0 {
        eprintln!("warning: {} ratings name movies missing from movies.csv; skipped", loaded.unknown_movies);
    }
    println!(
        "ratings: {} new events, {} rejected, watermark {}",
        loaded.ratings.accepted.total(),
        loaded.ratings.rejected_total(),
        loaded.ratings.watermark
    );
    Ok(())
}

/// What [`load_movielens`] did.
#[derive(Debug)]
pub struct MovieLensLoad {
    /// The catalog import.
    pub movies: import::ImportStats,
    /// The ratings, ingested as course log lines.
    pub ratings: IngestReport,
    /// Ratings of movies missing from movies.csv (skipped).
    pub unknown_movies: u64,
}

/// [`load_movielens_holding_out`]'s result.
#[derive(Debug)]
pub struct HeldOutLoad {
    /// What was loaded.
    pub load: MovieLensLoad,
    /// The held-out ratings (each user's latest), in time order.
    pub futures: Vec<movielens::FutureRating>,
}

/// Like [`load_movielens`], but each user's latest `share` of ratings is held out (not
/// ingested) and returned: the future a simulated user lives through. The ingest source is
/// named after the share, so a full load and a held-out load never share a position.
pub async fn load_movielens_holding_out(
    pool: &PgPool,
    url: &str,
    paths: &movielens::MovieLensPaths,
    progress: bool,
    share: f64,
) -> Result<HeldOutLoad> {
    let catalog = movielens::read_catalog(paths).context("reading MovieLens")?;
    let movies =
        import::upsert_movies(pool, &catalog.movies, "movielens:ml-latest-small").await.context("writing movies")?;
    let split = movielens::ratings_split(paths, &catalog.ids, share).context("converting ratings")?;
    let name = format!("movielens:{}:ratings:hold-out-{share}", file_name(&paths.dir));
    let ratings = ingest_log(url, split.log, name, progress).await?;
    Ok(HeldOutLoad { load: MovieLensLoad { movies, ratings, unknown_movies: split.unknown }, futures: split.futures })
}

async fn ingest_log(url: &str, log: Vec<u8>, name: String, progress: bool) -> Result<IngestReport> {
    let conn = crate::connect_one(url).await.context("connecting for ingest")?;
    let opts = IngestOptions {
        parse: ParseConfig { rating_scale: movielens::RATING_SCALE, max_user_id: DEFAULT_MAX_USER_ID },
        progress,
        // The log is converted from the same files every time: the same bytes, so a reload
        // resumes by position (and adds nothing).
        resume_streams: true,
        ..IngestOptions::default()
    };
    let source = StreamSource::new(name, std::io::Cursor::new(log), Duration::from_secs(1));
    Ok(Ingester::run_once(conn, opts, vec![Box::new(source)]).await?)
}

/// Imports a MovieLens directory: the catalog (course-style ids) and its ratings converted to
/// course log lines through the ordinary ingester (idempotent: a re-run adds nothing).
pub async fn load_movielens(
    pool: &PgPool,
    url: &str,
    paths: &movielens::MovieLensPaths,
    progress: bool,
) -> Result<MovieLensLoad> {
    let catalog = movielens::read_catalog(paths).context("reading MovieLens")?;
    let movies =
        import::upsert_movies(pool, &catalog.movies, "movielens:ml-latest-small").await.context("writing movies")?;
    let (log, unknown_movies) = movielens::ratings_as_log(paths, &catalog.ids).context("converting ratings")?;
    let name = format!("movielens:{}:ratings", file_name(&paths.dir));
    let ratings = ingest_log(url, log, name, progress).await?;
    Ok(MovieLensLoad { movies, ratings, unknown_movies })
}

async fn status(pool: &PgPool) -> Result<String> {
    let mut out = String::new();
    let watermark: i64 = sqlx::query_scalar("SELECT last_event_id FROM ingest_watermark")
        .fetch_one(pool)
        .await
        .context("reading the watermark")?;
    out.push_str(&format!("watermark: {watermark}\n"));
    for table in [
        "movies",
        "users",
        "watch_events",
        "rating_events",
        "recommendation_events",
        "account_events",
        "user_watched",
        "ratings",
        "rejected_lines",
        "popularity",
        "recommendations_history",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .with_context(|| format!("counting {table}"))?;
        out.push_str(&format!("{table}: {n}\n"));
    }
    let sources: Vec<(String, i64, i64, i64, i64)> =
        sqlx::query_as("SELECT source, position, lines, accepted, rejected FROM ingest_sources ORDER BY source")
            .fetch_all(pool)
            .await
            .context("listing sources")?;
    for (source, position, lines, accepted, rejected) in sources {
        out.push_str(&format!(
            "source {source}: position {position}, lines {lines}, accepted {accepted}, rejected {rejected}\n"
        ));
    }
    Ok(out)
}
