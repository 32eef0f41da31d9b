//! `lazyrec-db`: see `db::cli`.

fn main() -> std::process::ExitCode {
    db::cli::main_with("warn", db::cli::run())
}
