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
    assert!(url.starts_with("DATABASE_URL=postgres://postgres:"), "a password in the URL: {url}");
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

/// Whether the test may act as root (create OS users, run as another user); prints `SKIPPED`
/// otherwise.
fn as_root() -> bool {
    if nix::unistd::Uid::effective().is_root() {
        return true;
    }
    testkit::skip_or_fail(testkit::External::Root, "needs root (to act as another local user)");
    false
}

/// A state directory the `postgres` OS user can reach (so the cluster stays inside it).
fn reachable_state() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let state = tempfile::tempdir().expect("state dir");
    std::fs::set_permissions(state.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod 755");
    state
}

fn lazyrec_db(state: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(bin()).args(args).arg("--state-dir").arg(state).env_remove("DATABASE_URL").output().expect("run")
}

/// `up`, returning the URL it printed and the port.
fn up(state: &std::path::Path) -> (String, u16) {
    let out = lazyrec_db(state, &["up"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let url = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("DATABASE_URL=").to_string();
    let port = url.rsplit_once(':').and_then(|(_, rest)| rest.split('/').next()?.parse().ok()).expect("a port");
    (url, port)
}

/// An unprivileged local user of our own, created once (idempotent).
fn intruder() -> nix::unistd::User {
    const NAME: &str = "lazyrec-intruder";
    if let Some(user) = nix::unistd::User::from_name(NAME).expect("users") {
        return user;
    }
    let out = Command::new("useradd")
        .args(["--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NAME])
        .output()
        .expect("useradd");
    // 9: created meanwhile by a concurrent test.
    assert!(out.status.success() || out.status.code() == Some(9), "{}", String::from_utf8_lossy(&out.stderr));
    nix::unistd::User::from_name(NAME).expect("users").expect("the user exists")
}

/// Runs `program args` as `user`, with an empty environment but PATH.
fn run_as(user: &nix::unistd::User, program: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    use std::os::unix::process::CommandExt;
    Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .current_dir("/")
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .output()
        .expect("run as another user")
}

fn psql(user: &nix::unistd::User, host: &str, port: u16, env: &[(&str, &str)]) -> std::process::Output {
    let port = port.to_string();
    run_as(
        user,
        "psql",
        &["-X", "-w", "-h", host, "-p", &port, "-U", "postgres", "-d", "lazyrec", "-c", "SELECT 1"],
        env,
    )
}

/// The private cluster is not a way into the machine: another local user cannot log in over
/// loopback (no password, a wrong one), cannot reach the socket, and cannot read the password;
/// the URL `up` printed (with the password) works.
#[test]
fn another_local_user_cannot_connect_to_the_private_cluster() {
    if !as_root() {
        return;
    }
    let state = reachable_state();
    let (url, port) = up(state.path());
    let pg = state.path().join("pg");
    let user = intruder();

    let loopback = psql(&user, "127.0.0.1", port, &[]);
    let wrong = psql(&user, "127.0.0.1", port, &[("PGPASSWORD", "postgres")]);
    let socket = psql(&user, pg.to_str().expect("utf-8 path"), port, &[]);
    let read = run_as(&user, "cat", &[pg.join("password").to_str().expect("utf-8 path")], &[]);
    let owner = run_as(&user, "psql", &["-X", "-w", &url, "-c", "SELECT 1"], &[]);
    let down = lazyrec_db(state.path(), &["down"]);

    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!loopback.status.success(), "no password: refused, got {:?}", String::from_utf8_lossy(&loopback.stdout));
    assert!(stderr(&loopback).contains("password"), "{}", stderr(&loopback));
    assert!(!wrong.status.success() && stderr(&wrong).contains("password authentication failed"), "{}", stderr(&wrong));
    assert!(!socket.status.success(), "the socket directory is private: {}", stderr(&socket));
    assert!(!read.status.success() && stderr(&read).contains("Permission denied"), "{}", stderr(&read));
    assert!(owner.status.success(), "the URL with the password connects: {}", stderr(&owner));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(pg.join("password")).expect("password file").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the password file is private");
    assert!(down.status.success(), "{}", stderr(&down));
}

/// A cluster made before passwords (trust authentication) gets one on the next `up`, and the
/// URL keeps working; without the password nobody gets in any more.
#[test]
fn up_gives_a_password_to_a_cluster_made_without_one() {
    if !as_root() {
        return;
    }
    let state = reachable_state();
    let _first = up(state.path());
    assert!(lazyrec_db(state.path(), &["down"]).status.success());
    let pg = state.path().join("pg");
    std::fs::remove_file(pg.join("password")).expect("forget the password");
    std::fs::write(pg.join("data/pg_hba.conf"), "local all all trust\nhost all all 127.0.0.1/32 trust\n")
        .expect("trust, as clusters were made before");
    let (url, port) = up(state.path());
    let user = intruder();
    let without = psql(&user, "127.0.0.1", port, &[]);
    let status = Command::new(bin()).args(["--database-url", &url, "status"]).output().expect("run");
    let down = lazyrec_db(state.path(), &["down"]);
    assert!(!without.status.success(), "trust is gone");
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(down.status.success());
}

/// `up` runs as root and hands the cluster directory to the `postgres` user: a symbolic link
/// planted in the data directory (to a file, to a directory) must not hand its target over.
#[test]
fn up_does_not_follow_a_symlink_planted_in_the_data_directory() {
    if !as_root() {
        return;
    }
    use std::os::unix::fs::MetadataExt;
    let state = reachable_state();
    let _first = up(state.path());
    assert!(lazyrec_db(state.path(), &["down"]).status.success());
    let victims = tempfile::tempdir().expect("victims");
    let file = victims.path().join("shadow");
    let dir = victims.path().join("etc");
    std::fs::write(&file, "secret").expect("victim file");
    std::fs::create_dir(&dir).expect("victim dir");
    std::fs::write(dir.join("passwd"), "secret").expect("victim file in dir");
    let data = state.path().join("pg/data");
    std::os::unix::fs::symlink(&file, data.join("planted-file")).expect("plant");
    std::os::unix::fs::symlink(&dir, data.join("planted-dir")).expect("plant");

    let again = lazyrec_db(state.path(), &["up"]);
    let down = lazyrec_db(state.path(), &["down"]);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    for victim in [&file, &dir, &dir.join("passwd")] {
        assert_eq!(std::fs::metadata(victim).expect("victim").uid(), 0, "{} was handed over", victim.display());
    }
    let postgres = nix::unistd::User::from_name("postgres").expect("users").expect("postgres user");
    let link = std::fs::symlink_metadata(data.join("planted-file")).expect("link");
    assert_eq!(link.uid(), postgres.uid.as_raw(), "the link itself belongs to postgres like the rest");
    assert!(down.status.success());
}
