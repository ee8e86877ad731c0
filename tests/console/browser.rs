//! A headless Chromium behind chromedriver, driven with fantoccini: started fresh for each test
//! (a new `--user-data-dir`), stopped when dropped. Waits poll the page with a generous deadline
//! and assert outcomes; nothing is timed.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use fantoccini::{elements::Element, Client, ClientBuilder, Locator};
use serde_json::{json, Value as Json};

/// One browser test at a time: they share the machine's two cores with everything else.
pub static BROWSERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a wait for the page may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(60);

pub struct Browser {
    pub client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

/// Where the screenshots go: `target/console-screenshots/` of the repository.
pub fn screenshots() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session through it.
    pub async fn start() -> Browser {
        let bin = std::env::var("RUNBOOK_TEST_CHROMEDRIVER_BIN").expect(
            "RUNBOOK_TEST_CHROMEDRIVER_BIN is not set: run the tests with scripts/test, which \
             installs chromium and chromium-driver",
        );
        let port = crate::util::free_port();
        let driver = Command::new(&bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let webdriver = format!("http://127.0.0.1:{port}");
        crate::util::eventually(30, "chromedriver to answer", || {
            let url = format!("{webdriver}/status");
            async move {
                let resp = reqwest::get(&url).await.ok()?;
                resp.status().is_success().then_some(())
            }
        })
        .await;
        let profile = tempfile::tempdir().unwrap();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&webdriver)
            .await
            .unwrap_or_else(|e| panic!("a Chromium session through {bin}: {e}"));
        Browser {
            client,
            driver,
            _profile: profile,
        }
    }

    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("goto {url}: {e}"));
    }

    pub async fn url(&self) -> String {
        self.client.current_url().await.unwrap().to_string()
    }

    pub async fn find(&self, css: &str) -> Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("find {css}: {e}"))
    }

    pub async fn click(&self, css: &str) {
        self.find(css)
            .await
            .click()
            .await
            .unwrap_or_else(|e| panic!("click {css}: {e}"));
    }

    pub async fn fill(&self, css: &str, text: &str) {
        let e = self.find(css).await;
        e.clear().await.unwrap();
        e.send_keys(text).await.unwrap();
    }

    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.unwrap_or_default()
    }

    pub async fn js(&self, script: &str) -> Json {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// Waits until the element `css` exists and its text contains `want`.
    pub async fn wait_text(&self, css: &str, want: &str) {
        let started = Instant::now();
        let mut seen = String::new();
        loop {
            if let Ok(e) = self.client.find(Locator::Css(css)).await {
                seen = e.text().await.unwrap_or_default();
                if seen.contains(want) {
                    return;
                }
            }
            if started.elapsed() > DEADLINE {
                let name = format!(
                    "failed-{}",
                    css.replace(|c: char| !c.is_alphanumeric(), "_")
                );
                self.screenshot(&name).await;
                panic!(
                    "`{css}` did not show `{want}` within {DEADLINE:?} at {}; it showed:\n{seen}",
                    self.url().await
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn wait_present(&self, css: &str) {
        let started = Instant::now();
        while self.client.find(Locator::Css(css)).await.is_err() {
            assert!(
                started.elapsed() < DEADLINE,
                "`{css}` did not appear within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Signs in with `token` through the sign-in page.
    pub async fn sign_in(&self, base: &str, token: &str) {
        self.goto(&format!("{base}/ui/login")).await;
        self.fill("#token", token).await;
        self.click("button[type=submit]").await;
        self.wait_text("h1", "Runs").await;
    }

    /// Saves a PNG of the window as `target/console-screenshots/NAME.png`.
    pub async fn screenshot(&self, name: &str) {
        match self.client.screenshot().await {
            Ok(png) => std::fs::write(screenshots().join(format!("{name}.png")), png).unwrap(),
            Err(e) => eprintln!("screenshot {name}: {e}"),
        }
    }

    /// Ends the session; chromedriver stops when the value drops.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    /// Stops chromedriver and the Chromium it started: a test that panicked never ended its
    /// session, and killing chromedriver alone leaves the browser running. The browser's
    /// processes are the ones whose command line names this test's own profile folder.
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let profile = format!("--user-data-dir={}", self._profile.path().display());
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        let ours: Vec<String> = procs
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|pid| pid.chars().all(|c| c.is_ascii_digit()))
            .filter(|pid| {
                // Chromium rewrites its processes' titles (the arguments joined by spaces), so
                // the folder is looked for as text; its random name is fixed-length.
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&profile))
                    .unwrap_or(false)
            })
            .collect();
        if !ours.is_empty() {
            let _ = Command::new("kill").arg("-KILL").args(&ours).status();
        }
    }
}
