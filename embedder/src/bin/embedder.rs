//! `embedder`: see `embedder::cli`.

fn main() -> std::process::ExitCode {
    lifecycle::main_with("warn,qdrant_edge=error", embedder::cli::run())
}
