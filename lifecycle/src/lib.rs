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
    main_with_code(default_filter, threads, async { run.await.map(|()| std::process::ExitCode::SUCCESS) })
}

/// An error in what the user gave (a flag, a file): [`main_with_code`] exits 2 for it, 1 for
/// any other failure.
#[derive(Debug)]
pub struct BadInput(pub String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

/// [`main_with_threads`] for a command whose success has several exit codes (e.g. a gate or a
/// decision); an error exits 2 when it is a [`BadInput`], else 1, always as one line.
pub fn main_with_code(
    default_filter: &str,
    threads: Option<usize>,
    run: impl std::future::Future<Output = anyhow::Result<std::process::ExitCode>>,
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
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<BadInput>() { std::process::ExitCode::from(2) } else { std::process::ExitCode::FAILURE }
        }
    }
}

/// An error and its causes on one line (`outer: inner: …`): client libraries such as hyper
/// print only the outermost layer ("client error (Connect)") and keep the reason in `source()`.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
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

#[cfg(test)]
mod tests {
    #[test]
    fn an_error_chain_keeps_every_cause_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("client error (Connect)")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"));
        assert_eq!(super::error_chain(&e), "client error (Connect): connection refused");
    }
}
