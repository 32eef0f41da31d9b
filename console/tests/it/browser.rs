//! Debian's chromium, headless, driven over WebDriver by chromedriver (both from apt; ci/lib.sh
//! installs them), through fantoccini.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};

/// chromedriver's `POST /session/{id}/se/log`: the browser's console messages since the last call.
#[derive(Debug)]
struct BrowserLog;

impl WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(&self, base_url: &url::Url, session_id: Option<&str>) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!("session/{}/se/log", session_id.unwrap_or_default()))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(r#"{"type":"browser"}"#.to_string()))
    }
}

pub struct Browser {
    client: Client,
    driver: tokio::process::Child,
    _profile: tempfile::TempDir,
    shots: Vec<PathBuf>,
    timings: Vec<(String, u128)>,
}

fn binary(name: &str) -> PathBuf {
    let path = PathBuf::from("/usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run ci/test.sh (its set-up installs chromium and chromium-driver from apt)",
        path.display()
    );
    path
}

impl Browser {
    pub async fn start() -> Self {
        let chromium = binary("chromium");
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("port").local_addr().expect("addr").port();
        let driver = tokio::process::Command::new(binary("chromedriver"))
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("chromedriver");
        let profile = tempfile::tempdir().expect("profile");
        let caps = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1500",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let caps = match caps {
            serde_json::Value::Object(map) => map,
            _ => unreachable!("an object"),
        };
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let client = loop {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            match ClientBuilder::new(connector).capabilities(caps.clone()).connect(&url).await {
                Ok(c) => break c,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("no WebDriver session within 30 s: {e}"),
            }
        };
        Self { client, driver, _profile: profile, shots: Vec::new(), timings: Vec::new() }
    }

    pub async fn open(&mut self, url: &str) {
        let t = Instant::now();
        self.client.goto(url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        self.timings.push((url.rsplit_once("//").map_or(url, |u| u.1).to_string(), t.elapsed().as_millis()));
    }

    pub async fn url(&self) -> String {
        self.client.current_url().await.expect("url").to_string()
    }

    pub async fn text(&self, css: &str) -> String {
        let e = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("{css} not on the page: {e}"));
        e.text().await.expect("text").trim().to_string()
    }

    pub async fn exists(&self, css: &str) -> bool {
        !self.client.find_all(Locator::Css(css)).await.expect("find").is_empty()
    }

    pub async fn click(&mut self, css: &str) {
        let t = Instant::now();
        let page = self.client.find(Locator::Css("html")).await.expect("the page");
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("{css}: {e}"))
            .click()
            .await
            .expect("click");
        self.next_page(page).await;
        self.timings.push((format!("click {css}"), t.elapsed().as_millis()));
    }

    pub async fn sign_in(&mut self, token: &str) {
        let page = self.client.find(Locator::Css("html")).await.expect("the page");
        let form = self.client.form(Locator::Css("form[action='/login']")).await.expect("the login form");
        form.set_by_name("token", token).await.expect("token");
        form.submit().await.expect("submit");
        self.next_page(page).await;
    }

    /// Waits until `page` (the old document's root) is gone and the new one has its navigation:
    /// a form's response has loaded (the new page may be at the same URL).
    async fn next_page(&self, page: fantoccini::elements::Element) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while page.tag_name().await.is_ok() {
            assert!(Instant::now() < deadline, "the next page did not load within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.client.wait().for_element(Locator::Css("nav")).await.expect("the next page");
    }

    /// The browser console's errors (SEVERE) since the last call.
    pub async fn console_errors(&self) -> Vec<String> {
        let log = self.client.issue_cmd(BrowserLog).await.expect("the browser's log (chromedriver se/log)");
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }

    pub async fn expect_clean(&self, page: &str) {
        let errors = self.console_errors().await;
        assert!(errors.is_empty(), "{page}: browser console errors: {errors:?}");
    }

    /// A screenshot, saved as a test artefact (and into LAZYREC_SCREENSHOTS_DIR when set: the
    /// README's pictures).
    pub async fn shot(&mut self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let mut dirs = vec![PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots")];
        if let Some(d) = std::env::var_os("LAZYREC_SCREENSHOTS_DIR") {
            dirs.push(PathBuf::from(d));
        }
        for dir in dirs {
            std::fs::create_dir_all(&dir).expect("screenshot dir");
            let path = dir.join(format!("console-{name}.png"));
            std::fs::write(&path, &png).expect("write screenshot");
            self.shots.push(path);
        }
    }

    pub fn timings(&self) -> Vec<(String, u128)> {
        self.timings.clone()
    }

    pub async fn close(mut self) {
        println!("screenshots: {:?}", self.shots);
        self.client.close().await.expect("close the session");
        let _ = self.driver.kill().await;
    }
}
