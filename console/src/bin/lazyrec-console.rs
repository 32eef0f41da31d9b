//! `lazyrec-console`: the operators' web pages.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use lazyrec_console::{App, Config};
use lifecycle::BadInput;

/// Serve the operators' console: the overview (backends, routing, the last hour per variant,
/// ingest), releases (their looks as charts, events, decisions), a user (history, variant, last
/// answers, what each model answers now), provenance (one answer's inputs and its replay) and
/// reports (feedback loop, popularity bias, fairness, drift).
///
/// Every page needs the admin token (Authorization: Bearer, or sign in once in the browser).
/// Read-only unless started with --write, which adds the promote/abort/rollback buttons; they
/// call the release controller as `lazyrec-release` does.
#[derive(Parser, Debug)]
#[command(name = "lazyrec-console", version)]
struct Cli {
    #[command(flatten)]
    db: db::args::DatabaseArgs,
    #[command(flatten)]
    store: vectorstore::args::StoreArgs,
    /// Where to listen (loopback unless --allow-remote).
    #[arg(long, env = "LAZYREC_CONSOLE_LISTEN", default_value = "127.0.0.1:8088")]
    listen: SocketAddr,
    /// Listen on a non-loopback address (put TLS in front of it).
    #[arg(long)]
    allow_remote: bool,
    /// The admin token (default: the load balancer's admin token).
    #[arg(long, env = "LAZYREC_CONSOLE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding the token (e.g. .state/run/admin-token).
    #[arg(long, env = "LAZYREC_CONSOLE_TOKEN_FILE", conflicts_with = "token")]
    token_file: Option<PathBuf>,
    /// The load balancer's admin API.
    #[arg(long, env = "LAZYREC_LB_ADMIN_URL", default_value = "http://127.0.0.1:8084")]
    admin_url: String,
    /// Its bearer token (default: the console's token).
    #[arg(long, env = "LAZYREC_LB_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Show the promote/abort/rollback buttons (they change what users are served).
    #[arg(long)]
    write: bool,
    /// Where the release controller's notifications go (a webhook URL).
    #[arg(long, env = "LAZYREC_RELEASE_WEBHOOK")]
    webhook: Option<String>,
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    if !cli.listen.ip().is_loopback() && !cli.allow_remote {
        return Err(BadInput(format!("--listen {} is not a loopback address (add --allow-remote)", cli.listen)).into());
    }
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| BadInput(format!("reading the token file {}: {e}", f.display())))?
            .trim()
            .to_string(),
        (None, None) => cli.admin_token.clone().unwrap_or_default(),
    };
    if token.len() < 16 {
        return Err(BadInput(
            "the admin token is missing or shorter than 16 characters (--token or --token-file)".into(),
        )
        .into());
    }
    let pool = cli.db.pool(6).await?;
    let (store_args, state_dir) = (Arc::new(cli.store), cli.db.state_dir.clone());
    let config = Config {
        lb_admin_token: cli.admin_token.clone().unwrap_or_else(|| token.clone()),
        token,
        write: cli.write,
        lb_admin_url: cli.admin_url.clone(),
        store: Arc::new(move || store_args.open(&state_dir).context("opening the vector store")),
        webhook: cli.webhook.clone(),
    };
    let app = App::new(pool, config);
    let listener =
        tokio::net::TcpListener::bind(cli.listen).await.with_context(|| format!("binding {}", cli.listen))?;
    tracing::info!(url = %format!("http://{}", cli.listen), write = cli.write, "console listening");
    eprintln!(
        "lazyrec-console: http://{}/ ({})",
        cli.listen,
        if cli.write { "with write access" } else { "read-only" }
    );
    lazyrec_console::serve(listener, app, lifecycle::shutdown_signal()).await.context("serving")?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    lifecycle::main_with("info,sqlx=warn", run(cli))
}
