//! Headless Chromium over WebDriver (chromedriver): the live map's
//! benchmark (`edgeflow bench-web`) and its browser tests open the page,
//! read its data model (`window.edgeflow`) and take screenshots with it.
//! Debian's `chromium` and `chromium-driver` packages provide both
//! programs.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Where chromium and chromedriver are, if installed.
pub fn tools() -> Option<(PathBuf, PathBuf)> {
    let find = |name: &str| {
        ["/usr/bin", "/usr/local/bin"]
            .iter()
            .map(|d| PathBuf::from(d).join(name))
            .find(|p| p.is_file())
    };
    Some((find("chromium")?, find("chromedriver")?))
}

/// A headless Chromium session; the browser and its driver end when it
/// is dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    client: reqwest::Client,
    rt: tokio::runtime::Runtime,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session
    /// with a `width` x `height` window.
    pub fn start(width: u32, height: u32) -> anyhow::Result<Browser> {
        let (chromium, driver) = tools().ok_or_else(|| {
            anyhow::anyhow!(
                "chromium and chromedriver are needed (apt install chromium chromium-driver)"
            )
        })?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let mut browser = Browser {
            driver: child,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            client: reqwest::Client::new(),
            rt,
        };
        let started = Instant::now();
        while browser.try_call("GET", "/status", None).is_err() {
            anyhow::ensure!(
                started.elapsed() < Duration::from_secs(30),
                "chromedriver did not answer on port {port} within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", format!("--window-size={width},{height}"),
                         "--force-device-scale-factor=1"]
            }
        }}});
        let v = browser.call("POST", "/session", Some(caps))?;
        browser.session = (v["sessionId"].as_str())
            .ok_or_else(|| anyhow::anyhow!("no WebDriver session: {v}"))?
            .to_owned();
        Ok(browser)
    }

    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "POST" => (self.client.post(&url))
                .header("content-type", "application/json")
                .body(body.unwrap_or(json!({})).to_string()),
            "DELETE" => self.client.delete(&url),
            _ => self.client.get(&url),
        };
        let text = self.rt.block_on(async {
            let r = req.timeout(Duration::from_secs(60)).send().await?;
            r.text().await
        })?;
        let v: Value = serde_json::from_str(&text)?;
        Ok(v["value"].clone())
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let v = self.try_call(method, path, body)?;
        anyhow::ensure!(v.get("error").is_none(), "WebDriver {method} {path}: {v}");
        Ok(v)
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) -> anyhow::Result<()> {
        let path = format!("/session/{}/url", self.session);
        self.call("POST", &path, Some(json!({ "url": url })))
            .map(drop)
    }

    /// Runs `script` (a function body) in the page; its return value.
    pub fn eval(&self, script: &str) -> anyhow::Result<Value> {
        let path = format!("/session/{}/execute/sync", self.session);
        self.call("POST", &path, Some(json!({ "script": script, "args": [] })))
    }

    /// Waits until `script` returns true, at most `limit`.
    pub fn wait_for(&self, what: &str, script: &str, limit: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        while self.eval(script)? != json!(true) {
            anyhow::ensure!(start.elapsed() < limit, "the page: {what} within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// A PNG of the window.
    pub fn screenshot(&self) -> anyhow::Result<Vec<u8>> {
        let path = format!("/session/{}/screenshot", self.session);
        let v = self.call("GET", &path, None)?;
        let b64 = v
            .as_str()
            .ok_or_else(|| anyhow::anyhow!("no screenshot: {v}"))?;
        use base64::Engine as _;
        Ok(base64::engine::general_purpose::STANDARD.decode(b64)?)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let path = format!("/session/{}", self.session);
            let _ = self.try_call("DELETE", &path, None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
