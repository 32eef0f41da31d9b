//! Process lifecycle shared by every lazyrec binary: structured logs, the async runtime,
//! errors as one line with a non-zero exit, and graceful-shutdown signals.
//!
//! Kept apart from the data layer (`db`) and the services so that any binary — the data
//! command, the embedder, the server, the load balancer, the simulator — starts and stops the
//! same way without depending on a crate that owns something else.

/// The `main` of every lazyrec binary: structured logs to stderr (`RUST_LOG`, else
/// `default_filter`), a multi-threaded runtime, and errors as one line (the whole cause chain,
/// outermost first) with a non-zero exit — never a panic.
pub fn main_with(
    default_filter: &str,
    run: impl std::future::Future<Output = anyhow::Result<()>>,
) -> std::process::ExitCode {
    main_with_threads(default_filter, None, run)
}

/// [`main_with`] on a runtime of `threads` workers: `Some(1)` is a single-threaded runtime (no
/// cross-thread wake-ups: the cheapest for a proxy), `None` one worker per core.
pub fn main_with_threads(
    default_filter: &str,
    threads: Option<usize>,
    run: impl std::future::Future<Output = anyhow::Result<()>>,
) -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter)),
        )
        .init();
    let mut builder = match threads {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        Some(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n.max(1));
            b
        }
        None => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: the signal a service stops gracefully on.
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _interrupted = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
}

/// Resolves once `rx` holds `true` (or its sender is gone): the stop signal of a running service.
pub async fn stopped(mut rx: tokio::sync::watch::Receiver<bool>) {
    while !*rx.borrow() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
