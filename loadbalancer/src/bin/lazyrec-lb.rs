//! `lazyrec-lb`: the load balancer in front of the main and nightly servers. A thin shell over
//! the `loadbalancer` library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use lifecycle::BadInput;
use loadbalancer::config::Config;
use proto::admin::AdminClient;

// The request path allocates small, short-lived buffers on every request; mimalloc handles
// that pattern with far less time in the allocator than glibc's malloc (seen in a profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "lazyrec-lb",
    version,
    about = "Sticky main/nightly load balancer for lazyrec servers, logging every response to recommendations_history",
    long_about = "Serves GET /recommend/{user_id} (the course contract: up to 20 comma-separated movie ids on one line) \
                  and recommender.v1.Recommender over gRPC by forwarding to the user's variant: bucket = sha256(experiment, \
                  user) mod 10000, nightly when the bucket is under share × 10000. Fails over to other backends and the \
                  other variant within the deadline, then answers the cached popularity list (variant `fallback`). Every \
                  response is one row of recommendations_history, written ahead to a local journal before the response leaves \
                  (so a crash loses none) and shipped to Postgres in batches (kept while Postgres is down). \
                  The admin API (own port, bearer token) changes backends, share and experiment at run time.\n\n\
                  Configuration layers, later wins: defaults, --config FILE (TOML), LAZYREC_LB_* environment variables \
                  (nested keys joined by __), then the flags below. SIGINT/SIGTERM: stop accepting, finish in-flight \
                  requests, store the response log, exit.\n\n\
                  Replicas: every replica of a fleet (routing.fleet, on one database) follows the routing stored in \
                  Postgres (lb_routing; a change through any replica's admin API reaches the others within \
                  routing.poll_ms, at once by notification) and keeps serving its last routing while Postgres is down. \
                  Ports are bound with SO_REUSEPORT: a zero-downtime restart starts the new process, waits for its \
                  --ready-file, then stops the old one (set net.ipv4.tcp_migrate_req=1). Each replica takes its own \
                  journal slot under <state_dir>/loadbalancer."
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, env = "LAZYREC_LB_CONFIG")]
    config: Option<PathBuf>,
    /// Print the resolved configuration, validate it, and exit.
    #[arg(long)]
    check_config: bool,
    /// HTTP listen address (default 0.0.0.0:8082).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// gRPC listen address (default 127.0.0.1:8083).
    #[arg(long)]
    grpc_addr: Option<SocketAddr>,
    /// Admin API listen address (default 127.0.0.1:8084; served only with a token).
    #[arg(long)]
    admin_addr: Option<SocketAddr>,
    /// A main server's base URL, e.g. http://127.0.0.1:8080 (repeatable; replaces the configured list).
    #[arg(long = "main")]
    main: Vec<String>,
    /// A nightly server's base URL (repeatable; replaces the configured list).
    #[arg(long = "nightly")]
    nightly: Vec<String>,
    /// Share of users on nightly (default 0.2 when there is a nightly).
    #[arg(long)]
    share: Option<f64>,
    /// The experiment name: the assignment salt.
    #[arg(long)]
    experiment: Option<String>,
    /// Write the configured routing to the fleet's shared routing as a new version, even when
    /// the stored one was made on the same configuration (admin changes are dropped; the other
    /// replicas follow).
    #[arg(long)]
    reset_routing: bool,
    /// Once the ports are bound and the routing is read, write this process' id to FILE (a
    /// zero-downtime restart waits for it before stopping the old replica).
    #[arg(long, value_name = "FILE")]
    ready_file: Option<PathBuf>,
    #[command(flatten)]
    db: db::args::DatabaseOverrides,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ask a running load balancer's admin API (for scripts: typed, no JSON grepping).
    Admin {
        /// The admin API.
        #[arg(long, env = "LAZYREC_LB_ADMIN_URL", default_value = "http://127.0.0.1:8084")]
        admin_url: String,
        /// A file holding the bearer token (kept off the command line).
        #[arg(long, env = "LAZYREC_LB_ADMIN_TOKEN_FILE")]
        admin_token_file: Option<PathBuf>,
        /// The bearer token itself (else read from --admin-token-file).
        #[arg(long, env = "LAZYREC_LB_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        #[command(subcommand)]
        query: AdminQuery,
    },
}

#[derive(Subcommand, Debug)]
enum AdminQuery {
    /// The state document (JSON), or one field of it: a scalar on one line, a backend list as
    /// one URL per line.
    State {
        /// A top-level field, e.g. main_release_id, nightly, experiment.
        #[arg(long)]
        field: Option<String>,
    },
    /// Exit 0 when URL is routed (as main or nightly), 1 when it is not.
    Routes {
        /// A backend's base URL.
        url: String,
    },
}

async fn admin(admin_url: &str, token: &str, query: &AdminQuery) -> anyhow::Result<ExitCode> {
    let state = AdminClient::new(admin_url, token).state().await?;
    match query {
        AdminQuery::Routes { url } => Ok(if state.routes(url) { ExitCode::SUCCESS } else { ExitCode::FAILURE }),
        AdminQuery::State { field: None } => {
            println!("{}", serde_json::to_string_pretty(&state)?);
            Ok(ExitCode::SUCCESS)
        }
        AdminQuery::State { field: Some(field) } => {
            let doc = serde_json::to_value(&state)?;
            let value = doc.get(field).ok_or_else(|| BadInput(format!("the state has no field {field:?}")))?;
            match value {
                serde_json::Value::Null => {}
                serde_json::Value::String(s) => println!("{s}"),
                serde_json::Value::Array(list) => {
                    for item in list {
                        println!(
                            "{}",
                            item.get("url").and_then(|u| u.as_str()).map_or(item.to_string(), str::to_string)
                        );
                    }
                }
                other @ (serde_json::Value::Bool(_) | serde_json::Value::Number(_) | serde_json::Value::Object(_)) => {
                    println!("{other}")
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn resolve(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(a) = cli.http_addr {
        config.http_addr = a;
    }
    if let Some(a) = cli.grpc_addr {
        config.grpc_addr = a;
    }
    if let Some(a) = cli.admin_addr {
        config.admin_addr = a;
    }
    if !cli.main.is_empty() {
        config.main = cli.main.clone();
    }
    if !cli.nightly.is_empty() {
        config.nightly = cli.nightly.clone();
    }
    if let Some(s) = cli.share {
        config.nightly_share = Some(s);
    }
    if let Some(e) = &cli.experiment {
        config.experiment = e.clone();
    }
    if cli.reset_routing {
        config.routing.reset = true;
    }
    cli.db.apply(&mut config.database_url, &mut config.state_dir);
    config.validate()?;
    Ok(config)
}

async fn run(cli: Cli, config: Config) -> anyhow::Result<()> {
    if cli.check_config {
        println!("{}", config.render());
        println!("configuration OK");
        return Ok(());
    }
    let running = loadbalancer::start(config).await?;
    if let Some(file) = &cli.ready_file {
        std::fs::write(file, format!("{}\n", std::process::id()))
            .map_err(|e| anyhow::anyhow!("writing the ready file {}: {e}", file.display()))?;
    }
    eprintln!(
        "lazyrec-lb: HTTP on http://{} , gRPC on {} , admin {}",
        running.http_addr,
        running.grpc_addr,
        running.admin_addr.map_or("disabled (no token)".to_string(), |a| format!("on http://{a}"))
    );
    let stop = running.stop_handle();
    tokio::spawn(async move {
        lifecycle::shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight requests, then storing the response log");
        let _sent = stop.send(true);
    });
    running.wait().await
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Admin { admin_url, admin_token_file, admin_token, query }) = &cli.command {
        return lifecycle::main_with_code("warn", Some(1), async {
            let token = match (admin_token, admin_token_file) {
                (Some(t), _) => t.clone(),
                (None, Some(file)) => std::fs::read_to_string(file)
                    .map_err(|e| BadInput(format!("reading the token from {}: {e}", file.display())))?
                    .trim()
                    .to_string(),
                (None, None) => {
                    return Err(
                        BadInput("the admin API needs --admin-token-file or LAZYREC_LB_ADMIN_TOKEN".into()).into()
                    );
                }
            };
            admin(admin_url, &token, query).await
        });
    }
    // The configuration decides the runtime, so it is resolved before the runtime exists.
    let config = match resolve(&cli) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let threads = (config.worker_threads > 0).then_some(config.worker_threads);
    lifecycle::main_with_threads("info,sqlx=warn", threads, run(cli, config))
}
