//! `lazyrec-db`: see `db::cli`.

fn main() -> std::process::ExitCode {
    lifecycle::main_with("warn", db::cli::run())
}
