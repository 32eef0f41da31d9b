//! The command line: `up`/`down` on a private cluster of its own, and argument errors.

use std::process::Command;

use crate::data::bin;

#[test]
fn up_is_idempotent_and_down_stops_the_cluster() {
    let state = tempfile::tempdir().expect("state dir");
    let run = |args: &[&str]| {
        Command::new(bin())
            .args(args)
            .arg("--state-dir")
            .arg(state.path())
            .env_remove("DATABASE_URL")
            .output()
            .expect("run")
    };

    let first = run(&["up"]);
    let second = run(&["up"]);
    let status = run(&["status"]);
    let down = run(&["down"]);
    let after = run(&["status"]);

    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    let url = String::from_utf8_lossy(&first.stdout).to_string();
    assert!(url.starts_with("DATABASE_URL=postgres://postgres@127.0.0.1:"), "{url}");
    assert_eq!(String::from_utf8_lossy(&second.stdout), url, "a second `up` reuses the running cluster");
    assert!(String::from_utf8_lossy(&status.stdout).contains("watermark: 0"));
    assert!(down.status.success() && String::from_utf8_lossy(&down.stdout).contains("stopped"));
    assert!(!after.status.success(), "no database once the cluster is down");
    assert_eq!(String::from_utf8_lossy(&after.stderr).lines().count(), 1);
}

#[test]
fn a_bad_rating_scale_is_a_usage_error() {
    let out = Command::new(bin()).args(["ingest", "--rating-scale", "7", "x.log"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("use 5 or 10"));
}

/// A state directory under a parent the `postgres` OS user cannot enter (mode 700, like a clone
/// in root's home directory): as root, `up` still works (the cluster is placed where that user
/// can reach it, behind a symlink), and `down` stops it.
#[test]
fn up_works_from_a_directory_the_postgres_user_cannot_enter() {
    if !nix::unistd::Uid::effective().is_root() {
        testkit::skip_or_fail(
            testkit::External::Root,
            "needs root (Postgres runs as another OS user only when we are root)",
        );
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().expect("private parent");
    std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod 700");
    let state = home.path().join("clone").join(".state");
    let run = |args: &[&str]| {
        Command::new(bin()).args(args).arg("--state-dir").arg(&state).env_remove("DATABASE_URL").output().expect("run")
    };
    let up = run(&["up"]);
    assert!(up.status.success(), "{}", String::from_utf8_lossy(&up.stderr));
    let status = run(&["status"]);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(state.join("pg").is_symlink(), "the cluster lives elsewhere, behind a symlink");
    let real = std::fs::canonicalize(state.join("pg")).expect("resolve");
    let down = run(&["down"]);
    assert!(down.status.success() && String::from_utf8_lossy(&down.stdout).contains("stopped"));
    std::fs::remove_dir_all(&real).expect("clean up the relocated cluster");
}
