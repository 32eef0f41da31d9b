//! `lazyrec-server`: serve recommendations (HTTP + gRPC) or check a configuration. A thin shell
//! over the `server` library. Offline evaluation is `lazyrec-eval` (the `eval` crate).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use server::config::Config;

#[derive(Parser, Debug)]
#[command(
    name = "lazyrec-server",
    version,
    about = "Movie recommendations by lazy inference: the user's history from Postgres, neighbours from Qdrant, reranked per request",
    long_about = "Serves GET /recommend/{user_id} (text/plain: up to 20 comma-separated movie ids, best first; JSON with \
                  Accept: application/json), /health, /ready, /metrics over HTTP, and recommender.v1.Recommender over gRPC \
                  (with health and reflection).\n\nConfiguration layers, later wins: defaults, --config FILE (TOML), \
                  LAZYREC_SERVER_* environment variables (nested keys joined by __), then the flags below."
)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, short, env = "LAZYREC_SERVER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Print the resolved configuration and the model version, validate, and exit.
    #[arg(long, global = true)]
    check_config: bool,
    /// HTTP listen address.
    #[arg(long, global = true)]
    http_addr: Option<SocketAddr>,
    /// gRPC listen address.
    #[arg(long, global = true)]
    grpc_addr: Option<SocketAddr>,
    /// main or nightly.
    #[arg(long, global = true, value_parser = ["main", "nightly"])]
    variant: Option<String>,
    #[command(flatten)]
    db: db::args::DatabaseOverrides,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve HTTP and gRPC until SIGINT/SIGTERM (the default).
    Serve,
}

fn resolve(cli: &Cli) -> anyhow::Result<Config> {
    let mut config = Config::load(cli.config.as_deref())?;
    if let Some(a) = cli.http_addr {
        config.http_addr = a;
    }
    if let Some(a) = cli.grpc_addr {
        config.grpc_addr = a;
    }
    if let Some(v) = &cli.variant {
        config.variant = v.parse().map_err(|e| anyhow::anyhow!("--variant: {e}"))?;
    }
    cli.db.apply(&mut config.database_url, &mut config.state_dir);
    config.validate()?;
    Ok(config)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = resolve(&cli)?;
    if cli.check_config {
        let model = config.model()?;
        println!("{}", config.render());
        println!("model version: {}", model.version());
        println!("configuration OK");
        return Ok(());
    }
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => {
            let running = server::start(config).await?;
            eprintln!(
                "lazyrec-server: HTTP on http://{} , gRPC on {} ({})",
                running.http_addr,
                running.grpc_addr,
                running.core.model_version()
            );
            let stop = running.stop_handle();
            tokio::spawn(async move {
                lifecycle::shutdown_signal().await;
                tracing::info!("shutting down: finishing in-flight requests");
                let _sent = stop.send(true);
            });
            running.wait().await
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    lifecycle::main_with("info,qdrant_edge=error,sqlx=warn", run(cli))
}
