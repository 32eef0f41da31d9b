//! A main and a nightly server (each with its own copy of the qdrant-edge store) on one
//! database, load balancers in front of them, a shared HTTP client, and a cuttable TCP proxy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use loadbalancer::config::Config as LbConfig;
use server::RunningServer;
use server::config::Variant;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::stack::{Reply, Stack, wait_ready};

/// The admin token of the tests.
pub const TOKEN: &str = "test-admin-token-0123456789";

/// Two servers on one stack. End a test with [`Fleet::shutdown`]: a server must stop before
/// its store directory is deleted.
pub struct Fleet {
    /// The main server.
    pub main: Option<RunningServer>,
    /// The nightly server.
    pub nightly: Option<RunningServer>,
    /// Database and main's store.
    pub stack: Stack,
    _nightly_edge: tempfile::TempDir,
}

impl Fleet {
    /// Starts both servers and waits until they are ready.
    pub async fn new() -> Self {
        let stack = Stack::new().await;
        let main = server::start(stack.config()).await.expect("main server");
        let nightly_edge = stack.edge_copy().await;
        let mut config = stack.config();
        config.variant = Variant::Nightly;
        config.store.edge_dir = Some(nightly_edge.path().to_path_buf());
        config.state_dir = nightly_edge.path().to_path_buf();
        let nightly = server::start(config).await.expect("nightly server");
        wait_ready(&format!("http://{}", main.http_addr)).await;
        wait_ready(&format!("http://{}", nightly.http_addr)).await;
        Self { stack, main: Some(main), nightly: Some(nightly), _nightly_edge: nightly_edge }
    }

    /// Stops both servers gracefully.
    pub async fn shutdown(mut self) {
        for server in [self.main.take(), self.nightly.take()].into_iter().flatten() {
            server.shutdown().await.expect("server shutdown");
        }
    }

    /// Main's base URL.
    pub fn main_url(&self) -> String {
        format!("http://{}", self.main.as_ref().expect("main running").http_addr)
    }

    /// Nightly's base URL.
    pub fn nightly_url(&self) -> String {
        format!("http://{}", self.nightly.as_ref().expect("nightly running").http_addr)
    }

    /// A load-balancer config for this fleet: free ports, fast health checks, admin token, its
    /// own state directory.
    pub fn lb_config(&self, state_dir: &std::path::Path) -> LbConfig {
        LbConfig {
            http_addr: "127.0.0.1:0".parse().expect("addr"),
            grpc_addr: "127.0.0.1:0".parse().expect("addr"),
            admin_addr: "127.0.0.1:0".parse().expect("addr"),
            admin_token: Some(TOKEN.into()),
            main: vec![self.main_url()],
            nightly: vec![self.nightly_url()],
            experiment: "test-release-1".into(),
            database_url: Some(self.stack.db.url.clone()),
            state_dir: state_dir.to_path_buf(),
            health: loadbalancer::config::Health { interval_ms: 100, timeout_ms: 200, rise: 2, fall: 3 },
            fallback_refresh_ms: 500,
            // Test clients keep idle pooled connections: a short drain keeps shutdowns quick.
            front: loadbalancer::config::Front { drain_ms: 100, ..Default::default() },
            ..LbConfig::default()
        }
    }

    /// Rows in recommendations_history.
    pub async fn history_rows(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM recommendations_history")
            .fetch_one(&self.stack.db.pool)
            .await
            .expect("count")
    }
}

/// A shared keep-alive HTTP client (for load).
#[derive(Clone)]
pub struct Client(hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>);

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A new client.
    pub fn new() -> Self {
        Self(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http())
    }

    /// GET with optional headers; Err on transport failure (no response received).
    pub async fn try_request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Result<Reply, String> {
        let mut req = hyper::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = match body {
            None => {
                self.0.request(req.body(Empty::new()).map_err(|e| e.to_string())?).await.map_err(|e| e.to_string())?
            }
            Some(body) => {
                // A separate client type for bodies.
                let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                    .build_http::<http_body_util::Full<Bytes>>();
                let req = req
                    .header("content-type", "application/json")
                    .body(http_body_util::Full::new(Bytes::from(body.to_string())))
                    .map_err(|e| e.to_string())?;
                client.request(req).await.map_err(|e| e.to_string())?
            }
        };
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Reply { status, headers, body: String::from_utf8_lossy(&body).into_owned() })
    }

    /// GET that must get a response.
    pub async fn get(&self, url: &str) -> Reply {
        self.try_request("GET", url, &[], None).await.unwrap_or_else(|e| panic!("GET {url}: {e}"))
    }
}

/// A TCP proxy in front of a backend that can be cut at once (every connection closed, the
/// port refusing): a crashed server, as the load balancer sees it.
pub struct CutProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    tasks: Arc<tokio::sync::Mutex<JoinSet<()>>>,
    listener: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    /// Proxies to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let tasks: Arc<tokio::sync::Mutex<JoinSet<()>>> = Arc::default();
        let set = tasks.clone();
        let listener = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut set = set.lock().await;
                set.spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        let _ = inbound.set_nodelay(true);
                        let _ = outbound.set_nodelay(true);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, tasks, listener }
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Cuts it: the port stops accepting and every open connection is closed mid-stream.
    pub async fn cut(&self) {
        self.listener.abort();
        self.tasks.lock().await.abort_all();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A backend faked at the edge: it passes its health checks (`GET /ready` → 200) and answers
/// every other request at once with `status` (e.g. `"500 Internal Server Error"`) and `body`,
/// keeping connections alive. Returns where it listens.
pub async fn scripted_backend(status: &'static str, body: Vec<u8>) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let body: Arc<[u8]> = body.into();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Ok(n) = conn.read(&mut chunk).await else { return };
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let ready = buf.starts_with(b"GET /ready");
                        buf.drain(..end + 4);
                        let (status, body): (&str, &[u8]) = if ready { ("200 OK", b"ok") } else { (status, &body) };
                        let head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n", body.len());
                        if conn.write_all(head.as_bytes()).await.is_err() || conn.write_all(body).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}
