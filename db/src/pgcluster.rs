//! A private Postgres cluster started from the system's Postgres binaries.
//!
//! The project never needs a system-wide Postgres service: `lazyrec-db up` and the test harness
//! both run `initdb` into a directory of their own, start the server on a free loopback port with
//! its unix socket inside that directory (mode 0700) and password authentication (SCRAM, a
//! generated password in `<dir>/password`, mode 0600), and hand out a `DATABASE_URL` with it.
//! The private cluster is no shortcut around authentication: another local user can neither
//! enter the directory nor log in over loopback. Two lifetimes exist:
//!
//! * [`PgCluster::ensure_daemon`]: a long-lived cluster under the project's state directory
//!   (started with `pg_ctl`, survives the command, reused by the next one: idempotent);
//! * [`PgCluster::start_ephemeral`]: a throw-away cluster in a temporary directory whose server
//!   dies with the process that started it (tests, benchmarks).
//!
//! Postgres refuses to run as root, so when we are root the server runs as the `postgres` OS user
//! (created by Debian's package) and its directory is handed over to that user. When that user
//! cannot even reach the directory (a clone under root's home, mode 700 — common in containers),
//! the cluster lives under `/var/lib/lazyrec/pg-<hash of the path>` instead, and the directory
//! asked for becomes a symlink to it, so every command still finds it at the usual place.

use std::fs;
use std::io;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::dir::{Dir, Type as DirType};
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid, User};

/// What can go wrong while preparing or starting a private cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No `initdb`/`postgres` binaries were found.
    #[error(
        "Postgres server binaries not found (looked in $LAZYREC_PG_BINDIR, `pg_config --bindir`, /usr/lib/postgresql/*/bin and PATH); install them with `apt-get install postgresql` or run ci/setup.sh"
    )]
    BinariesNotFound,
    /// We are root and there is no unprivileged user to run the server as.
    #[error(
        "running as root but there is no `postgres` OS user to run the server as (install Debian's postgresql package)"
    )]
    NoServerUser,
    /// The server user cannot reach the cluster directory, and it already holds files.
    #[error(
        "the postgres OS user cannot enter {0} (a parent directory is not searchable for it); set LAZYREC_STATE_DIR to a directory it can reach, or `chmod o+x` the parents"
    )]
    Unreachable(PathBuf),
    /// A command we ran failed.
    #[error("{what} failed: {detail}")]
    Command {
        /// Which step.
        what: &'static str,
        /// Its output or exit status.
        detail: String,
    },
    /// The cluster was replaced by its promoted standby and must not serve as a primary again.
    #[error(
        "the cluster in {0} was replaced by its promoted standby ({1}); it must not run as a primary again: remove it, or make it a standby of the new primary"
    )]
    Fenced(PathBuf, String),
    /// The standby did not start streaming from the primary in time.
    #[error("the standby in {0} did not start streaming from the primary within {1:?}; see its log")]
    NotStreaming(PathBuf, Duration),
    /// The server did not accept connections in time.
    #[error("Postgres did not become ready within {0:?}; see its log at {1}")]
    NotReady(Duration, PathBuf),
    /// File-system trouble.
    #[error("{what} ({path}): {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ClusterError + 'a {
    move |source| ClusterError::Io { what, path: path.to_path_buf(), source }
}

/// Where the Postgres server programs live.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    bindir: PathBuf,
}

impl PgBinaries {
    /// Finds the server binaries: `$LAZYREC_PG_BINDIR`, `pg_config --bindir`, the newest
    /// `/usr/lib/postgresql/<v>/bin`, then `initdb` on `PATH`.
    pub fn locate() -> Result<Self, ClusterError> {
        let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
        if let Some(dir) = std::env::var_os("LAZYREC_PG_BINDIR").map(PathBuf::from) {
            return if has_server(&dir) { Ok(Self { bindir: dir }) } else { Err(ClusterError::BinariesNotFound) };
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if out.status.success() && has_server(&dir) {
                return Ok(Self { bindir: dir });
            }
        }
        let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v = e.file_name().to_str()?.parse::<u32>().ok()?;
                Some((v, e.path().join("bin")))
            })
            .filter(|(_, dir)| has_server(dir))
            .collect();
        versions.sort();
        if let Some((_, dir)) = versions.pop() {
            return Ok(Self { bindir: dir });
        }
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .find(|dir| has_server(dir))
            .map(|dir| Self { bindir: dir })
            .ok_or(ClusterError::BinariesNotFound)
    }

    fn program(&self, name: &str) -> PathBuf {
        self.bindir.join(name)
    }
}

/// The OS identity the server runs as.
#[derive(Debug, Clone, Copy)]
struct RunAs {
    uid: Uid,
    gid: Gid,
}

impl RunAs {
    /// `None` when we can run Postgres as ourselves (not root).
    fn detect() -> Result<Option<Self>, ClusterError> {
        if !Uid::effective().is_root() {
            return Ok(None);
        }
        let user = User::from_name("postgres").ok().flatten().ok_or(ClusterError::NoServerUser)?;
        Ok(Some(Self { uid: user.uid, gid: user.gid }))
    }

    fn apply(self, cmd: &mut Command) {
        cmd.uid(self.uid.as_raw()).gid(self.gid.as_raw());
    }

    /// Whether the server user can enter `dir` (every ancestor searchable for it).
    fn can_reach(self, dir: &Path) -> bool {
        let mut cmd = Command::new("test");
        cmd.arg("-x").arg(dir).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        self.apply(&mut cmd);
        cmd.status().is_ok_and(|s| s.success())
    }

    /// Hands `path` (recursively) to the server user without ever following a symbolic link:
    /// every directory is opened with `O_NOFOLLOW` relative to its parent's descriptor and every
    /// entry is changed with `AT_SYMLINK_NOFOLLOW`, so a link planted in the tree (or a directory
    /// swapped for one while we walk) changes the link itself, never what it points to.
    fn chown_tree(self, path: &Path) -> Result<(), ClusterError> {
        let err = |source: nix::Error| ClusterError::Io {
            what: "handing the cluster directory to the postgres user",
            path: path.to_path_buf(),
            source: source.into(),
        };
        let top =
            Dir::open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(err)?;
        nix::unistd::fchown(&top, Some(self.uid), Some(self.gid)).map_err(err)?;
        self.chown_entries(top).map_err(err)
    }

    fn chown_entries(self, mut dir: Dir) -> nix::Result<()> {
        let mut entries = Vec::new();
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name().to_owned();
            if name.as_bytes() != b"." && name.as_bytes() != b".." {
                entries.push((name, entry.file_type()));
            }
        }
        let mut subdirs = Vec::new();
        for (name, kind) in entries {
            match nix::unistd::fchownat(
                &dir,
                name.as_c_str(),
                Some(self.uid),
                Some(self.gid),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(()) | Err(Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
            if matches!(kind, Some(DirType::Directory) | None) {
                subdirs.push(name);
            }
        }
        for name in subdirs {
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            match Dir::openat(&dir, name.as_c_str(), flags, Mode::empty()) {
                Ok(sub) => self.chown_entries(sub)?,
                // Not a directory (any more), a symbolic link, or gone: nothing to descend into.
                Err(Errno::ENOTDIR | Errno::ELOOP | Errno::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Where clusters go whose directory the server user cannot reach.
const REACHABLE_ROOT: &str = "/var/lib/lazyrec";

/// The directory the cluster really lives in: `dir` itself when the server user can reach it,
/// else a directory under [`REACHABLE_ROOT`] that `dir` is made a symlink to. The returned
/// path is the one to hand to Postgres (it must not go through the unreachable ancestors).
fn reachable_dir(dir: &Path, run_as: Option<RunAs>) -> Result<PathBuf, ClusterError> {
    let Some(run_as) = run_as else { return Ok(dir.to_path_buf()) };
    if dir.is_symlink() {
        return fs::canonicalize(dir).map_err(io_err("resolving the cluster directory", dir));
    }
    fs::create_dir_all(dir).map_err(io_err("creating the cluster directory", dir))?;
    if run_as.can_reach(dir) {
        return Ok(dir.to_path_buf());
    }
    let canonical = fs::canonicalize(dir).map_err(io_err("resolving the cluster directory", dir))?;
    let empty = fs::read_dir(dir).map_err(io_err("listing", dir))?.next().is_none();
    if !empty {
        return Err(ClusterError::Unreachable(dir.to_path_buf()));
    }
    use sha2::Digest;
    let hash = hex::encode(&sha2::Sha256::digest(canonical.to_string_lossy().as_bytes())[..6]);
    let real = Path::new(REACHABLE_ROOT).join(format!("pg-{hash}"));
    fs::create_dir_all(&real).map_err(io_err("creating the cluster directory", &real))?;
    fs::remove_dir(dir).map_err(io_err("replacing the cluster directory by a symlink", dir))?;
    std::os::unix::fs::symlink(&real, dir).map_err(io_err("replacing the cluster directory by a symlink", dir))?;
    tracing::info!(asked = %dir.display(), real = %real.display(),
        "the postgres OS user cannot reach the state directory: the cluster lives elsewhere (symlinked)");
    Ok(real)
}

/// How the server is tuned: durable (the local stack) or fast and disposable (tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Default Postgres durability: what a user's data deserves.
    Durable,
    /// `fsync=off`, `synchronous_commit=off`, `full_page_writes=off`: for throw-away clusters.
    Disposable,
}

/// A running private cluster.
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    port: u16,
    /// The superuser's password (kept in `dir/password`).
    password: String,
    /// The server process when this value owns it (ephemeral clusters).
    child: Option<Child>,
    /// The temporary directory to delete when an ephemeral cluster stops.
    owns_dir: bool,
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The superuser created by `initdb`.
pub const SUPERUSER: &str = "postgres";

impl PgCluster {
    /// The TCP port the server listens on (loopback only).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster directory (data in `data/`, socket and log next to it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A connection URL for `database`, with the password (a secret: print it only where a person
    /// or a script needs it, and log it through [`crate::redact`]).
    pub fn url(&self, database: &str) -> String {
        url(self.port, Some(&self.password), database)
    }

    /// A URL of `database` listing this cluster and then `standby` (see [`crate::failover`]).
    pub fn url_with_standby(&self, standby: &PgCluster, database: &str) -> String {
        multi_host_url(&[self.port, standby.port], Some(&self.password), database)
    }

    /// Starts (or finds running) the project's long-lived cluster in `dir`.
    ///
    /// Idempotent: an initialised directory is reused, a running server is left alone, and the
    /// port is remembered in `dir/port` so the URL stays the same across runs.
    pub fn ensure_daemon(dir: &Path) -> Result<Self, ClusterError> {
        let bins = PgBinaries::locate()?;
        let run_as = RunAs::detect()?;
        fs::create_dir_all(dir).map_err(io_err("creating the cluster directory", dir))?;
        let dir = &reachable_dir(dir, run_as)?;
        if let Some(why) = fenced(dir) {
            return Err(ClusterError::Fenced(dir.to_path_buf(), why));
        }
        if !dir.join("data").join("PG_VERSION").is_file() {
            init_cluster(&bins, run_as, dir, Durability::Durable)?;
        }
        Self::start_daemon(&bins, run_as, dir)
    }

    /// Starts (or finds running) a hot standby of `primary` in `dir`, made by `pg_basebackup`
    /// the first time (streaming replication; `hot_standby_feedback` on, so the primary's
    /// vacuum does not cancel the reads served from it). Idempotent like [`Self::ensure_daemon`].
    pub fn ensure_standby_daemon(primary: &PgCluster, dir: &Path) -> Result<Self, ClusterError> {
        let bins = PgBinaries::locate()?;
        let run_as = RunAs::detect()?;
        fs::create_dir_all(dir).map_err(io_err("creating the standby directory", dir))?;
        let dir = &reachable_dir(dir, run_as)?;
        if let Some(why) = fenced(dir) {
            return Err(ClusterError::Fenced(dir.to_path_buf(), why));
        }
        if !dir.join("data").join("PG_VERSION").is_file() {
            base_backup(&bins, run_as, primary, dir)?;
        }
        Self::start_daemon(&bins, run_as, dir)
    }

    /// Starts the initialised cluster in `dir` with `pg_ctl` unless it runs.
    fn start_daemon(bins: &PgBinaries, run_as: Option<RunAs>, dir: &Path) -> Result<Self, ClusterError> {
        let data = dir.join("data");
        let port_file = dir.join("port");
        let remembered = fs::read_to_string(&port_file).ok().and_then(|s| s.trim().parse::<u16>().ok());
        if data.join("postmaster.pid").is_file()
            && pg_ctl_status(bins, run_as, &data)
            && let Some(port) = remembered
        {
            wait_ready(bins, run_as, dir, port, READY_TIMEOUT)?;
            let password = ensure_password(bins, run_as, dir, port)?;
            return Ok(Self { dir: dir.to_path_buf(), port, password, child: None, owns_dir: false });
        }
        let port = match remembered {
            Some(p) if port_is_free(p) => p,
            _ => free_port()?,
        };
        if let Some(run_as) = run_as {
            run_as.chown_tree(dir)?;
        }
        let log = dir.join("postgres.log");
        let mut cmd = Command::new(bins.program("pg_ctl"));
        cmd.arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!("-p {port} -k {} -c listen_addresses=127.0.0.1", dir.display()))
            .arg("-w")
            .arg("-t")
            .arg("60")
            .arg("start");
        run(cmd, run_as, "pg_ctl start")?;
        fs::write(&port_file, port.to_string()).map_err(io_err("remembering the port", &port_file))?;
        wait_ready(bins, run_as, dir, port, READY_TIMEOUT)?;
        let password = ensure_password(bins, run_as, dir, port)?;
        Ok(Self { dir: dir.to_path_buf(), port, password, child: None, owns_dir: false })
    }

    /// A disposable hot standby of this (ephemeral) cluster, next to it; it dies with the
    /// process like [`Self::start_ephemeral`].
    pub fn start_ephemeral_standby(&self) -> Result<Self, ClusterError> {
        let bins = PgBinaries::locate()?;
        let run_as = RunAs::detect()?;
        let parent = self.dir.parent().map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        let dir = parent.join(format!("lazyrec-pg-{}-{}", std::process::id(), unique_suffix()));
        fs::create_dir_all(&dir).map_err(io_err("creating the standby directory", &dir))?;
        base_backup(&bins, run_as, self, &dir)?;
        let port = free_port()?;
        let child = spawn_server_with_keeper(&bins, run_as, &dir, port)?;
        let standby =
            Self { dir: dir.clone(), port, password: self.password.clone(), child: Some(child), owns_dir: true };
        wait_ready(&bins, run_as, &dir, port, READY_TIMEOUT)?;
        Ok(standby)
    }

    /// Kills an ephemeral cluster's server with SIGKILL (a crash: tests of failover).
    pub fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _killed = child.kill();
            let _reaped = child.wait();
        }
    }

    /// Promotes this hot standby to a primary (`pg_ctl promote`, waiting until it accepts
    /// writes).
    pub fn promote(&self) -> Result<(), ClusterError> {
        let bins = PgBinaries::locate()?;
        let run_as = RunAs::detect()?;
        let mut cmd = Command::new(bins.program("pg_ctl"));
        cmd.arg("-D").arg(self.dir.join("data")).arg("-w").arg("-t").arg("60").arg("promote");
        run(cmd, run_as, "pg_ctl promote")
    }

    /// Stops the long-lived cluster in `dir` if it runs. Returns whether it was running.
    pub fn stop_daemon(dir: &Path) -> Result<bool, ClusterError> {
        let bins = PgBinaries::locate()?;
        let run_as = RunAs::detect()?;
        let resolved = if dir.is_symlink() {
            fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf())
        } else {
            dir.to_path_buf()
        };
        let dir = resolved.as_path();
        let data = dir.join("data");
        if !data.join("postmaster.pid").is_file() || !pg_ctl_status(&bins, run_as, &data) {
            return Ok(false);
        }
        let mut cmd = Command::new(bins.program("pg_ctl"));
        cmd.arg("-D").arg(&data).arg("-m").arg("fast").arg("-w").arg("stop");
        run(cmd, run_as, "pg_ctl stop")?;
        Ok(true)
    }

    /// Starts a disposable cluster in a fresh temporary directory under `parent` (or the
    /// system's temp dir). The server is a child of a keeper thread and is told to quit when
    /// this process exits, even on a panic or `kill -9`.
    pub fn start_ephemeral(parent: Option<&Path>, durability: Durability) -> Result<Self, ClusterError> {
        let bins = PgBinaries::locate()?;
        let run_as = RunAs::detect()?;
        let mut parent = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        fs::create_dir_all(&parent).map_err(io_err("creating the temp parent", &parent))?;
        if let Some(run_as) = run_as
            && !run_as.can_reach(&parent)
        {
            // A throw-away cluster can live anywhere: the system's temp dir is reachable.
            parent = std::env::temp_dir();
        }
        remove_stale_ephemeral(&parent);
        let dir = parent.join(format!("lazyrec-pg-{}-{}", std::process::id(), unique_suffix()));
        fs::create_dir_all(&dir).map_err(io_err("creating the cluster directory", &dir))?;
        init_cluster(&bins, run_as, &dir, durability)?;
        let password = read_password(&dir).map_err(io_err("reading the cluster password", &dir))?;
        let mut last_err = None;
        for _attempt in 0..3 {
            let port = free_port()?;
            let child = spawn_server_with_keeper(&bins, run_as, &dir, port)?;
            let mut cluster =
                Self { dir: dir.clone(), port, password: password.clone(), child: Some(child), owns_dir: true };
            match wait_ready(&bins, run_as, &dir, port, READY_TIMEOUT) {
                Ok(()) => return Ok(cluster),
                Err(e) => {
                    cluster.stop_child();
                    cluster.owns_dir = false;
                    last_err = Some(e);
                }
            }
        }
        let _removed = fs::remove_dir_all(&dir);
        Err(last_err.unwrap_or(ClusterError::NotReady(READY_TIMEOUT, dir)))
    }

    fn stop_child(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGINT is Postgres' "fast shutdown": roll back, close, exit.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _sent = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _killed = child.kill();
            let _reaped = child.wait();
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop_child();
        if self.owns_dir {
            let _removed = fs::remove_dir_all(&self.dir);
        }
    }
}

fn unique_suffix() -> String {
    use rand::Rng;
    format!("{:08x}", rand::rng().random::<u32>())
}

/// Removes cluster directories left by processes that no longer exist (e.g. a killed test run).
fn remove_stale_ephemeral(parent: &Path) {
    let Ok(entries) = fs::read_dir(parent) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("lazyrec-pg-")) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _removed = fs::remove_dir_all(entry.path());
        }
    }
}

fn init_cluster(
    bins: &PgBinaries,
    run_as: Option<RunAs>,
    dir: &Path,
    durability: Durability,
) -> Result<(), ClusterError> {
    let data = dir.join("data");
    private_dir(dir)?;
    let password_file = dir.join(PASSWORD_FILE);
    // A file left by an initialisation that failed half-way is replaced.
    let _stale = fs::remove_file(&password_file);
    write_password(&password_file, &new_password())?;
    if let Some(run_as) = run_as {
        run_as.chown_tree(dir)?;
    }
    let mut cmd = Command::new(bins.program("initdb"));
    cmd.arg("-D")
        .arg(&data)
        .arg("-U")
        .arg(SUPERUSER)
        .arg("--auth=scram-sha-256")
        .arg(format!("--pwfile={}", password_file.display()))
        .arg("--encoding=UTF8")
        .arg("--locale=C")
        .arg("--no-instructions");
    if durability == Durability::Disposable {
        cmd.arg("--no-sync");
    }
    run(cmd, run_as, "initdb")?;
    let conf = data.join("postgresql.conf");
    let mut extra = String::from(
        "\n# lazyrec private cluster\nmax_connections = 200\nshared_buffers = 256MB\nmax_wal_size = 4GB\ncheckpoint_timeout = 15min\nwal_compression = off\nlog_min_messages = warning\npassword_encryption = 'scram-sha-256'\nunix_socket_permissions = 0700\n",
    );
    if durability == Durability::Disposable {
        extra.push_str("fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n");
    }
    let mut text = fs::read_to_string(&conf).map_err(io_err("reading postgresql.conf", &conf))?;
    text.push_str(&extra);
    fs::write(&conf, text).map_err(io_err("writing postgresql.conf", &conf))?;
    write_hba(&data)
}

/// The file in the cluster directory that holds the superuser's password (mode 0600).
pub const PASSWORD_FILE: &str = "password";

/// The file that marks a cluster replaced by its promoted standby (holds why and when).
pub const FENCED_FILE: &str = "fenced";

/// Why the cluster in `dir` must not run as a primary again, if it was fenced.
pub fn fenced(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join(FENCED_FILE)).ok().map(|s| s.trim().to_string())
}

/// Marks the cluster in `dir` as replaced (see [`fenced`]).
pub fn fence(dir: &Path, why: &str) -> Result<(), ClusterError> {
    let path = dir.join(FENCED_FILE);
    fs::write(&path, format!("{why}\n")).map_err(io_err("fencing the old primary", &path))
}

/// Copies `primary` into `dir` with `pg_basebackup` (WAL streamed, standby configuration
/// written) and configures it as a hot standby on its own port.
fn base_backup(bins: &PgBinaries, run_as: Option<RunAs>, primary: &PgCluster, dir: &Path) -> Result<(), ClusterError> {
    // The primary must let the replication user in over loopback (clusters made before
    // standbys existed get the line now).
    write_hba(&primary.dir.join("data"))?;
    let mut reload = Command::new(bins.program("pg_ctl"));
    reload.arg("-D").arg(primary.dir.join("data")).arg("reload");
    run(reload, run_as, "pg_ctl reload")?;
    private_dir(dir)?;
    let data = dir.join("data");
    // A copy that failed half-way is started again.
    if data.exists() {
        fs::remove_dir_all(&data).map_err(io_err("removing a partial standby copy", &data))?;
    }
    let password_file = dir.join(PASSWORD_FILE);
    let _stale = fs::remove_file(&password_file);
    write_password(&password_file, &primary.password)?;
    if let Some(run_as) = run_as {
        run_as.chown_tree(dir)?;
    }
    let mut cmd = Command::new(bins.program("pg_basebackup"));
    cmd.arg("-D")
        .arg(&data)
        .arg("-h")
        .arg("127.0.0.1")
        .arg("-p")
        .arg(primary.port.to_string())
        .arg("-U")
        .arg(SUPERUSER)
        .arg("--wal-method=stream")
        .arg("--write-recovery-conf")
        .arg("--checkpoint=fast")
        .arg("--no-password")
        // The environment, not the command line: arguments are visible in `ps`.
        .env("PGPASSWORD", &primary.password);
    run(cmd, run_as, "pg_basebackup")?;
    let conf = data.join("postgresql.conf");
    let mut text = fs::read_to_string(&conf).map_err(io_err("reading postgresql.conf", &conf))?;
    text.push_str(
        "\n# lazyrec hot standby\nhot_standby = on\nhot_standby_feedback = on\ncluster_name = 'lazyrec_standby'\n# a lost primary is retried (and a promotion noticed) every 500 ms, not every 5 s\nwal_retrieve_retry_interval = '500ms'\n",
    );
    fs::write(&conf, text).map_err(io_err("writing postgresql.conf", &conf))?;
    // pg_basebackup does not copy the primary's pid file, but an old port file would lie.
    let _stale = fs::remove_file(dir.join("port"));
    if let Some(run_as) = run_as {
        run_as.chown_tree(dir)?;
    }
    Ok(())
}

/// The superuser's password of the cluster in `dir` (an error for a cluster made before
/// passwords, until the next `lazyrec-db up` gives it one).
pub fn read_password(dir: &Path) -> io::Result<String> {
    Ok(fs::read_to_string(dir.join(PASSWORD_FILE))?.trim().to_string())
}

/// A connection URL on the loopback port.
pub fn url(port: u16, password: Option<&str>, database: &str) -> String {
    multi_host_url(&[port], password, database)
}

/// A connection URL listing loopback ports in order (one port: a plain URL; several: a
/// primary-first host list, see [`crate::failover`]).
pub fn multi_host_url(ports: &[u16], password: Option<&str>, database: &str) -> String {
    let hosts: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let hosts = hosts.join(",");
    match password {
        Some(password) => format!("postgres://{SUPERUSER}:{password}@{hosts}/{database}"),
        None => format!("postgres://{SUPERUSER}@{hosts}/{database}"),
    }
}

/// The directory of the private cluster's hot standby, next to the primary's `pg`.
pub const STANDBY_DIR: &str = "pg-standby";

fn new_password() -> String {
    use rand::Rng;
    let bytes: [u8; 24] = rand::rng().random();
    hex::encode(bytes)
}

/// Writes the password file: created with mode 0600 (never readable by others, not even for a
/// moment) and refused if something already sits at that path.
fn write_password(path: &Path, password: &str) -> Result<(), ClusterError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(OFlag::O_NOFOLLOW.bits())
        .open(path)
        .map_err(io_err("creating the password file", path))?;
    file.write_all(format!("{password}\n").as_bytes()).map_err(io_err("writing the password file", path))
}

/// The cluster directory holds the socket, the log and the password: only its owner enters it.
fn private_dir(dir: &Path) -> Result<(), ClusterError> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io_err("making the cluster directory private", dir))
}

/// Password authentication (SCRAM) on the socket and on loopback, nothing else.
fn write_hba(data: &Path) -> Result<(), ClusterError> {
    let hba = data.join("pg_hba.conf");
    let text = "# lazyrec private cluster: password (SCRAM) authentication only, loopback and socket\n\
                # TYPE  DATABASE  USER  ADDRESS       METHOD\n\
                local   all       all                 scram-sha-256\n\
                host    all       all   127.0.0.1/32  scram-sha-256\n\
                host    all       all   ::1/128       scram-sha-256\n\
                # streaming replication to a hot standby (`lazyrec-db up --standby`)\n\
                host    replication all 127.0.0.1/32  scram-sha-256\n";
    fs::write(&hba, text).map_err(io_err("writing pg_hba.conf", &hba))
}

/// The password of a running cluster; a cluster made before passwords existed (`--auth=trust`)
/// gets one here: the superuser's password is set over the socket, `pg_hba.conf` is rewritten
/// to SCRAM and the server reloads it.
fn ensure_password(bins: &PgBinaries, run_as: Option<RunAs>, dir: &Path, port: u16) -> Result<String, ClusterError> {
    if let Ok(password) = read_password(dir) {
        return Ok(password);
    }
    let password = new_password();
    let path = dir.join(PASSWORD_FILE);
    private_dir(dir)?;
    write_password(&path, &password)?;
    let mut cmd = Command::new(bins.program("psql"));
    cmd.arg("-X")
        .arg("-q")
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg("-h")
        .arg(dir)
        .arg("-p")
        .arg(port.to_string())
        .arg("-U")
        .arg(SUPERUSER)
        .arg("-d")
        .arg("postgres")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(run_as) = run_as {
        run_as.apply(&mut cmd);
    }
    // The statement goes through stdin: a password on a command line is visible in `ps`.
    let set = (|| {
        let mut child = cmd.spawn()?;
        if let Some(mut stdin) = child.stdin.take() {
            use std::io::Write;
            stdin.write_all(format!("ALTER ROLE {SUPERUSER} PASSWORD '{password}';\n").as_bytes())?;
        }
        child.wait_with_output()
    })();
    let failed = |detail: String| {
        let _removed = fs::remove_file(&path);
        ClusterError::Command { what: "setting the superuser's password", detail }
    };
    match set {
        Ok(out) if out.status.success() => {}
        Ok(out) => return Err(failed(String::from_utf8_lossy(&out.stderr).trim().to_string())),
        Err(e) => return Err(failed(e.to_string())),
    }
    write_hba(&dir.join("data"))?;
    if let Some(run_as) = run_as {
        run_as.chown_tree(dir)?;
    }
    let mut reload = Command::new(bins.program("pg_ctl"));
    reload.arg("-D").arg(dir.join("data")).arg("reload");
    run(reload, run_as, "pg_ctl reload")?;
    tracing::info!(dir = %dir.display(), "the private cluster now requires a password (SCRAM)");
    Ok(password)
}

fn spawn_server_with_keeper(
    bins: &PgBinaries,
    run_as: Option<RunAs>,
    dir: &Path,
    port: u16,
) -> Result<Child, ClusterError> {
    let mut cmd = Command::new(bins.program("postgres"));
    cmd.arg("-D")
        .arg(dir.join("data"))
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir)
        .arg("-c")
        .arg("listen_addresses=127.0.0.1")
        .stdin(Stdio::null());
    let log = dir.join("postgres.log");
    let log_file = fs::File::create(&log).map_err(io_err("creating the server log", &log))?;
    let log_err = log_file.try_clone().map_err(io_err("creating the server log", &log))?;
    cmd.stdout(log_file).stderr(log_err);
    if let Some(run_as) = run_as {
        run_as.apply(&mut cmd);
    }
    // The parent-death signal fires when the *thread* that forked the child exits, so the fork
    // happens on a thread that lives as long as the process.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("pg-keeper".into())
        .spawn(move || {
            set_parent_death_signal(&mut cmd);
            let _sent = tx.send(cmd.spawn());
            loop {
                std::thread::park();
            }
        })
        .map_err(io_err("starting the keeper thread", dir))?;
    let spawned =
        rx.recv().map_err(|_| ClusterError::Command { what: "postgres", detail: "keeper thread died".into() })?;
    spawned.map_err(|e| ClusterError::Command { what: "starting postgres", detail: e.to_string() })
}

#[allow(unsafe_code)]
fn set_parent_death_signal(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which is
    // async-signal-safe; it allocates nothing and touches no locks.
    unsafe {
        cmd.pre_exec(|| nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGQUIT).map_err(io::Error::from));
    }
}

fn pg_ctl_status(bins: &PgBinaries, run_as: Option<RunAs>, data: &Path) -> bool {
    let mut cmd = Command::new(bins.program("pg_ctl"));
    cmd.arg("-D").arg(data).arg("status").stdout(Stdio::null()).stderr(Stdio::null());
    if let Some(run_as) = run_as {
        run_as.apply(&mut cmd);
    }
    cmd.status().map(|s| s.success()).unwrap_or(false)
}

fn wait_ready(
    bins: &PgBinaries,
    run_as: Option<RunAs>,
    dir: &Path,
    port: u16,
    timeout: Duration,
) -> Result<(), ClusterError> {
    let deadline = Instant::now() + timeout;
    loop {
        let mut cmd = Command::new(bins.program("pg_isready"));
        cmd.arg("-q").arg("-h").arg("127.0.0.1").arg("-p").arg(port.to_string()).arg("-U").arg(SUPERUSER);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        if let Some(run_as) = run_as {
            run_as.apply(&mut cmd);
        }
        if cmd.status().map(|s| s.success()).unwrap_or(false) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::NotReady(timeout, dir.join("postgres.log")));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn run(mut cmd: Command, run_as: Option<RunAs>, what: &'static str) -> Result<(), ClusterError> {
    if let Some(run_as) = run_as {
        run_as.apply(&mut cmd);
    }
    cmd.stdin(Stdio::null());
    let out = cmd.output().map_err(|e| ClusterError::Command { what, detail: e.to_string() })?;
    if out.status.success() {
        return Ok(());
    }
    let mut detail = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if detail.is_empty() {
        detail = String::from_utf8_lossy(&out.stdout).trim().to_string();
    }
    let detail = detail.lines().last().unwrap_or("no output").to_string();
    Err(ClusterError::Command { what, detail: format!("{} ({detail})", out.status) })
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port", Path::new("127.0.0.1")))?;
    listener.local_addr().map(|a| a.port()).map_err(io_err("finding a free port", Path::new("127.0.0.1")))
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}
