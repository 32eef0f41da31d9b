//! Locating the shared real data (`../shared/data`), which tests use when it is present.

use std::path::PathBuf;

/// The shared data directory, or `None` (with a printed reason) when it is absent.
pub fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("LAZYREC_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data"));
    if dir.join("course").is_dir() {
        Some(dir)
    } else {
        eprintln!("SKIPPED: shared data not found at {} (set LAZYREC_SHARED_DATA)", dir.display());
        None
    }
}

/// The `lazyrec-db` binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_lazyrec-db"))
}
