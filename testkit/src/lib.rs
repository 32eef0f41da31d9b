//! Test support shared by every crate's tests (a dev-dependency only): the real stacks
//! ([`stack`]: a fresh database per test with the default dataset, one embedded qdrant-edge
//! store per process, servers on free ports; [`fleet`]: main + nightly servers, load balancer
//! configuration, an HTTP client, a cuttable TCP proxy), hand-written history rows
//! ([`history`]), and the rule for optional externals.
//!
//! [`skip_or_fail`] is the one rule for a test whose optional external (a Kafka broker, a Qdrant
//! server, the course data under `../shared`, root) is missing:
//!
//! - the test returns early and passes, and the skip is **recorded**: a line in the file named by
//!   `LAZYREC_SKIP_LOG` (`ci/test.sh` sets it and prints the list at the end, since the test
//!   harness hides a passing test's output) and `SKIPPED: …` on stderr;
//! - unless `LAZYREC_REQUIRE` names the external (a comma-separated list, or `all`): then the
//!   test fails with the same reason, so a machine that is meant to have it cannot pass without.

use std::io::Write;

pub mod closed_loop;
pub mod fleet;
pub mod history;
pub mod stack;

/// The externals a test may depend on, as `LAZYREC_REQUIRE` names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum External {
    /// A Kafka-protocol broker (tansu, installed by `ci/install-kafka.sh`).
    Kafka,
    /// A Qdrant server (`QDRANT_URL`).
    Qdrant,
    /// The course data under `../shared/data` (`LAZYREC_SHARED_DATA`).
    SharedData,
    /// Running as root.
    Root,
}

impl External {
    /// The name `LAZYREC_REQUIRE` uses.
    pub fn name(self) -> &'static str {
        match self {
            External::Kafka => "kafka",
            External::Qdrant => "qdrant",
            External::SharedData => "shared-data",
            External::Root => "root",
        }
    }
}

/// Whether `LAZYREC_REQUIRE` (in `required`) names `external`.
pub fn is_required(required: Option<&str>, external: External) -> bool {
    required.is_some_and(|list| {
        list.split(',').map(str::trim).any(|name| name == "all" || name.eq_ignore_ascii_case(external.name()))
    })
}

/// Call where a test finds `external` missing, then return from the test. Panics (fails the
/// test) when `LAZYREC_REQUIRE` names it; otherwise records the skip and returns.
pub fn skip_or_fail(external: External, reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    let required = std::env::var("LAZYREC_REQUIRE").ok();
    if is_required(required.as_deref(), external) {
        panic!("{test}: LAZYREC_REQUIRE names {} but {reason}", external.name());
    }
    eprintln!("SKIPPED: {test}: {reason}");
    if let Some(path) = std::env::var_os("LAZYREC_SKIP_LOG") {
        let line = format!("{test}\t{}\t{}\n", external.name(), reason.replace(['\n', '\t'], " "));
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            panic!("{test}: cannot record the skip in {}: {e}", std::path::Path::new(&path).display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_lists_name_externals_or_all() {
        assert!(is_required(Some("kafka"), External::Kafka));
        assert!(is_required(Some("qdrant, kafka"), External::Kafka));
        assert!(is_required(Some("all"), External::Root));
        assert!(!is_required(Some("qdrant"), External::Kafka));
        assert!(!is_required(Some(""), External::Kafka));
        assert!(!is_required(None, External::SharedData));
    }

    #[test]
    fn a_skip_is_recorded_in_the_log() {
        let dir = std::env::temp_dir().join(format!("testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("skips");
        // The environment is process-wide: this is the only test here that sets it.
        // SAFETY-free: edition 2024 makes set_var unsafe, so write the log through a child.
        let status = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", "tests::child_skips", "--nocapture", "--include-ignored"])
            .env("LAZYREC_SKIP_LOG", &log)
            .env_remove("LAZYREC_REQUIRE")
            .status()
            .expect("child");
        assert!(status.success());
        let text = std::fs::read_to_string(&log).expect("log");
        assert_eq!(text, "tests::child_skips\tkafka\tno broker here\n");
        let status = std::process::Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", "tests::child_skips", "--include-ignored"])
            .env("LAZYREC_SKIP_LOG", &log)
            .env("LAZYREC_REQUIRE", "kafka")
            .stderr(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .status()
            .expect("child");
        assert!(!status.success(), "a required external that is missing fails the test");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    #[ignore = "run by a_skip_is_recorded_in_the_log in a child process"]
    fn child_skips() {
        skip_or_fail(External::Kafka, "no broker here");
    }
}
