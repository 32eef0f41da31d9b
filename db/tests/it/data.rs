//! Locating the shared real data (`../shared/data`), which tests use when it is present.

use std::path::PathBuf;

/// This crate's directory at run time (cargo sets it for tests; a build cache made in another
/// checkout keeps that checkout's path in `env!`).
fn crate_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

/// The shared data directory, or `None` when it is absent (a recorded skip, or a failure when
/// `LAZYREC_REQUIRE` names `shared-data`).
pub fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("LAZYREC_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate_dir().join("../../shared/data"));
    if dir.join("course").is_dir() {
        Some(dir)
    } else {
        let reason = format!("shared data not found at {} (set LAZYREC_SHARED_DATA)", dir.display());
        testkit::skip_or_fail(testkit::External::SharedData, &reason);
        None
    }
}

/// The `lazyrec-db` binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lazyrec-db"))
}
