//! One database behind several hosts — a primary and its hot standby — and the rule every client
//! follows to stay on the right one.
//!
//! A URL may list hosts the way libpq does: `postgres://user:pw@h1:p1,h2:p2/db` with an optional
//! `target_session_attrs` (sqlx takes one host per URL, so the list is handled here):
//!
//! - `read-write` (the default when there are several hosts): the primary. Writers — the load
//!   balancer's log shipper, the ingester, the release controller — use it.
//! - `prefer-standby`: a hot standby when one answers, else the primary. The model server's
//!   request-path reads use it (`database_reads = "standby"`).
//! - `any`: the first host that answers.
//!
//! **The rule.** A pool starts on the first host, in list order, that fits its target, and
//! *stays* there while it fits. Every [`PROBE_EVERY`] one of its connections asks
//! `pg_is_in_recovery()`; when the host stops answering or no longer fits (a writer on a host
//! that is now a standby), every host is probed in list order with a fresh connection and the
//! pool's connect options move to the first that fits; its connections to the old host fail
//! their ping and are dropped. While no host fits (the primary is dead and the standby not yet
//! promoted) nothing moves: writes fail and are retried by their callers (the load balancer's
//! journal keeps the log), reads go on from the standby. Staying put while a host fits is what
//! keeps an old primary restarted by mistake from taking writers back; `lazyrec-db promote`
//! also fences it (see [`crate::pgcluster::fence`]).

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

/// How often a multi-host pool checks that its host still fits.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// How long a probe of one host may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// Which kind of host a pool wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The primary (`target_session_attrs=read-write`).
    ReadWrite,
    /// A standby if one answers, else the primary (`prefer-standby`).
    PreferStandby,
    /// Whatever answers first (`any`).
    Any,
}

impl Target {
    fn parse(value: &str) -> Result<Self, sqlx::Error> {
        match value {
            "read-write" | "primary" => Ok(Self::ReadWrite),
            "prefer-standby" | "standby" => Ok(Self::PreferStandby),
            "any" => Ok(Self::Any),
            other => Err(sqlx::Error::Configuration(
                format!("target_session_attrs={other:?}: expected read-write, prefer-standby or any").into(),
            )),
        }
    }
}

/// The hosts of one database and the kind of host wanted.
#[derive(Debug, Clone)]
pub struct Hosts {
    options: Vec<PgConnectOptions>,
    names: Vec<String>,
    target: Target,
}

impl Hosts {
    /// Parses a one- or many-host URL (see the module documentation).
    pub fn parse(url: &str) -> Result<Self, sqlx::Error> {
        let bad = |why: &str| sqlx::Error::Configuration(format!("{}: {why}", crate::redact(url)).into());
        let scheme_end = url.find("://").ok_or_else(|| bad("not a postgres:// URL"))? + 3;
        let (scheme, rest) = url.split_at(scheme_end);
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (userinfo, hostlist) = match authority.rfind('@') {
            Some(at) => (&authority[..=at], &authority[at + 1..]),
            None => ("", authority),
        };
        let (path, query) = match tail.find('?') {
            Some(q) => (&tail[..q], &tail[q + 1..]),
            None => (tail, ""),
        };
        let mut target = None;
        let kept: Vec<&str> = query
            .split('&')
            .filter(|kv| !kv.is_empty())
            .filter(|kv| match kv.strip_prefix("target_session_attrs=") {
                Some(value) => {
                    target = Some(value);
                    false
                }
                None => true,
            })
            .collect();
        let query = if kept.is_empty() { String::new() } else { format!("?{}", kept.join("&")) };
        let hosts: Vec<&str> = hostlist.split(',').filter(|h| !h.is_empty()).collect();
        if hosts.is_empty() {
            return Err(bad("no host"));
        }
        let mut options = Vec::with_capacity(hosts.len());
        for host in &hosts {
            options.push(crate::connect_options(&format!("{scheme}{userinfo}{host}{path}{query}"))?);
        }
        let target = match target {
            Some(value) => Target::parse(value)?,
            None if hosts.len() > 1 => Target::ReadWrite,
            None => Target::Any,
        };
        Ok(Self { options, names: hosts.iter().map(|h| h.to_string()).collect(), target })
    }

    /// The same hosts with another target.
    pub fn with_target(mut self, target: Target) -> Self {
        self.target = target;
        self
    }

    /// The same hosts with `f` applied to each host's options (application name, timeouts).
    pub fn map(mut self, f: impl Fn(PgConnectOptions) -> PgConnectOptions) -> Self {
        self.options = self.options.into_iter().map(f).collect();
        self
    }

    /// Host `i`'s connect options (the first host's when `i` is out of range).
    pub fn options(&self, i: usize) -> PgConnectOptions {
        self.options.get(i).unwrap_or(&self.options[0]).clone()
    }

    /// The kind of host wanted.
    pub fn target(&self) -> Target {
        self.target
    }

    /// `host:port` of each host, in order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Whether there is more than one host (only then is anything probed).
    pub fn is_multi(&self) -> bool {
        self.options.len() > 1
    }

    /// Asks host `i` whether it is a standby (the error says why it did not answer).
    pub async fn in_recovery(&self, i: usize) -> Result<bool, String> {
        let options = self.options(i);
        let probe = async move {
            let mut conn = options.connect().await?;
            let standby: bool = sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(&mut conn).await?;
            let _closed = conn.close().await;
            Ok::<_, sqlx::Error>(standby)
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(standby)) => Ok(standby),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
        }
    }

    /// The first host in list order that fits the target (probing them all); when none does,
    /// an error naming what each host said.
    pub async fn choose(&self) -> Result<usize, sqlx::Error> {
        let mut primary = None;
        let mut said = Vec::new();
        for i in 0..self.options.len() {
            match (self.target, self.in_recovery(i).await) {
                (_, Err(e)) => said.push(format!("{}: {e}", self.names[i])),
                (Target::Any, Ok(_)) | (Target::ReadWrite, Ok(false)) | (Target::PreferStandby, Ok(true)) => {
                    return Ok(i);
                }
                (Target::PreferStandby, Ok(false)) => {
                    primary.get_or_insert(i);
                }
                (Target::ReadWrite, Ok(true)) => said.push(format!("{}: a standby", self.names[i])),
            }
        }
        primary.ok_or_else(|| {
            sqlx::Error::Configuration(format!("no {:?} host answers ({})", self.target, said.join("; ")).into())
        })
    }

    fn fits(&self, in_recovery: bool) -> bool {
        match self.target {
            Target::ReadWrite => !in_recovery,
            Target::PreferStandby => in_recovery,
            Target::Any => true,
        }
    }
}

/// A pool over `hosts` that connects on first use. With several hosts a background task puts
/// it on the host that fits and keeps it there (the rule above) until the pool is closed.
pub fn lazy_pool(pool_options: PgPoolOptions, hosts: Hosts) -> PgPool {
    let pool = pool_options.connect_lazy_with(hosts.options[0].clone());
    if hosts.is_multi() {
        tokio::spawn(follow(pool.clone(), Arc::new(hosts), None));
    }
    pool
}

/// A pool over `hosts`, connected now to the first host that fits (an error when none does),
/// and kept on the right host like [`lazy_pool`].
pub async fn connect_pool(pool_options: PgPoolOptions, hosts: Hosts) -> Result<PgPool, sqlx::Error> {
    if !hosts.is_multi() {
        return pool_options.connect_with(hosts.options[0].clone()).await;
    }
    let i = hosts.choose().await?;
    let pool = pool_options.connect_with(hosts.options[i].clone()).await?;
    tokio::spawn(follow(pool.clone(), Arc::new(hosts), Some(i)));
    Ok(pool)
}

/// Keeps `pool` on a host that fits (see the module documentation).
async fn follow(pool: PgPool, hosts: Arc<Hosts>, mut current: Option<usize>) {
    loop {
        if pool.is_closed() {
            return;
        }
        let fits = match current {
            None => false,
            Some(_) => {
                let asked = sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()").fetch_one(&pool);
                match tokio::time::timeout(PROBE_TIMEOUT, asked).await {
                    Ok(Ok(in_recovery)) => hosts.fits(in_recovery),
                    Ok(Err(_)) | Err(_) => false,
                }
            }
        };
        if !fits && let Ok(i) = hosts.choose().await {
            if current != Some(i) {
                let from = current.map(|c| hosts.names[c].as_str()).unwrap_or("none");
                tracing::warn!(from, to = %hosts.names[i], target = ?hosts.target, "database pool moved to another host");
                pool.set_connect_options(hosts.options[i].clone());
                current = Some(i);
            }
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_list_becomes_one_url_per_host() {
        let hosts = Hosts::parse("postgres://u:p%40ss@127.0.0.1:5001,127.0.0.1:5002/lazyrec?sslmode=disable").unwrap();
        assert_eq!(hosts.names(), ["127.0.0.1:5001", "127.0.0.1:5002"]);
        assert_eq!(hosts.target(), Target::ReadWrite, "several hosts: the primary by default");
        assert_eq!(hosts.options[1].get_port(), 5002);
        assert_eq!(hosts.options[0].get_database(), Some("lazyrec"));
        let one = Hosts::parse("postgres://u@localhost:5432/db").unwrap();
        assert!(!one.is_multi());
        assert_eq!(one.target(), Target::Any);
        let reads =
            Hosts::parse("postgres://u@a:1,b:2/db?target_session_attrs=prefer-standby&application_name=x").unwrap();
        assert_eq!(reads.target(), Target::PreferStandby);
        assert!(Hosts::parse("postgres://u@a:1,b:2/db?target_session_attrs=primary-please").is_err());
        assert!(Hosts::parse("u@a:1/db").is_err());
    }
}
