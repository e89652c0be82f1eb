//! Headless chromium for browser tests, driven through chromedriver over
//! the W3C WebDriver protocol (JSON over HTTP, with the client of
//! `http.rs`), so the tests need no WebDriver crate.
//!
//! The binaries are Debian's `chromium` and `chromium-driver` packages
//! (`SYNCD_TEST_CHROMIUM`, `SYNCD_TEST_CHROMEDRIVER` to use others). Without
//! them a test is skipped with a note, except under `CI=true`, where it
//! fails. chromedriver and the browser it starts are killed when the
//! [`Browser`] is dropped, however the test ends.
#![allow(dead_code)]

use super::TempDir;
use super::http::request;
use base64::Engine;
use serde_json::{Value, json};
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::task::Poll;
use std::time::{Duration, Instant};

/// How long a lookup waits for the page to show what it looks for.
const WAIT: Duration = Duration::from_secs(10);

/// The key of an element reference in WebDriver replies.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process with one headless chromium session.
pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
    /// chromium's user data directory.
    profile: TempDir,
}

/// One element of the page.
pub struct Element<'b> {
    browser: &'b Browser,
    id: String,
}

fn binary(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var).map_or_else(|| default.into(), PathBuf::from)
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless chromium
    /// session with a profile of its own; `None` (the test skips) when they
    /// are not installed.
    pub async fn start() -> Option<Browser> {
        let driver_bin = binary("SYNCD_TEST_CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = binary("SYNCD_TEST_CHROMIUM", "/usr/bin/chromium");
        if let Some(absent) = [&driver_bin, &chromium].into_iter().find(|p| !p.exists()) {
            return super::missing(
                "chromium and chromedriver",
                format!(
                    "{} not found (apt-get install chromium chromium-driver)",
                    absent.display()
                ),
            );
        }
        // A port the system just handed out and took back: free in practice.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port")
            .port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that dropping the Browser kills
            // chromium with it.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", driver_bin.display()));
        // From here on, Drop ends chromedriver however the test ends.
        let mut browser = Browser {
            driver,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            session: String::new(),
            profile: TempDir::new("chromium"),
        };
        let started = Instant::now();
        while tokio::net::TcpStream::connect(browser.addr).await.is_err() {
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!("chromedriver exited at start ({status})");
            }
            assert!(
                started.elapsed() < WAIT,
                "chromedriver not listening on port {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         format!("--user-data-dir={}", browser.profile.0.display())],
            },
            "timeouts": {"pageLoad": 15_000, "script": 15_000},
        }}});
        let body = capabilities.to_string();
        // Listening is not yet serving: a connection closed without an
        // answer (status 0) is asked again, for as long as the start may
        // take; a refusal is final.
        let (status, reply) = loop {
            let (status, reply) =
                request(browser.addr, "POST", "/session", None, Some(body.as_bytes())).await;
            if status != 0 || started.elapsed() >= WAIT {
                break (status, reply);
            }
            if let Ok(Some(status)) = browser.driver.try_wait() {
                panic!("chromedriver exited at start ({status})");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_eq!(status, 200, "chromedriver refused the session: {reply}");
        browser.session = reply["value"]["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        Some(browser)
    }

    /// Sends one command of this session; the reply's `value`, or the
    /// WebDriver error as text.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let path = format!("/session/{}{path}", self.session);
        let body = body.map(|b| b.to_string());
        let (status, mut reply) =
            request(self.addr, method, &path, None, body.as_deref().map(str::as_bytes)).await;
        let value = reply["value"].take();
        if status == 200 {
            Ok(value)
        } else {
            Err(format!("{method} {path}: {status} {value}"))
        }
    }

    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, path, body)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Opens `url` and waits until it has loaded.
    pub async fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url }))).await;
    }

    /// The first element matching the CSS selector, once the page shows one
    /// (within [`WAIT`]).
    pub async fn find(&self, css: &str) -> Element<'_> {
        self.find_from("", css).await
    }

    /// Every element matching the CSS selector now.
    pub async fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        self.find_all_from("", css).await
    }

    async fn find_from(&self, scope: &str, css: &str) -> Element<'_> {
        let query = json!({"using": "css selector", "value": css});
        let started = Instant::now();
        loop {
            match self
                .call("POST", &format!("{scope}/element"), Some(query.clone()))
                .await
            {
                Ok(found) => return self.element(&found),
                Err(e) if e.contains("no such element") && started.elapsed() < WAIT => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("no `{css}` on the page after {WAIT:?}: {e}"),
            }
        }
    }

    async fn find_all_from(&self, scope: &str, css: &str) -> Vec<Element<'_>> {
        let query = json!({"using": "css selector", "value": css});
        let found = self
            .command("POST", &format!("{scope}/elements"), Some(query))
            .await;
        found
            .as_array()
            .expect("a list of elements")
            .iter()
            .map(|e| self.element(e))
            .collect()
    }

    fn element(&self, reference: &Value) -> Element<'_> {
        Element {
            browser: self,
            id: reference[ELEMENT]
                .as_str()
                .expect("an element reference")
                .to_owned(),
        }
    }

    /// Waits until the first element matching `css` shows `expected` (the
    /// page fills it in after a request); panics with what it shows after
    /// [`WAIT`].
    pub async fn wait_for_text(&self, css: &str, expected: &str) {
        self.find(css).await.wait_for_text(expected).await;
    }

    /// Runs `script` (a function body; `return` gives its value) in the
    /// page and answers its value.
    pub async fn script(&self, script: &str) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Sets the window's size, as a reviewer's screen or window would be.
    pub async fn resize(&self, width: u32, height: u32) {
        self.command(
            "POST",
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let encoded = self.command("GET", "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().expect("base64 text"))
            .expect("a base64 PNG")
    }

    /// The page's current DOM as HTML.
    pub async fn page_source(&self) -> String {
        let source = self.command("GET", "/source", None).await;
        source.as_str().unwrap_or_default().to_owned()
    }

    /// Writes a screenshot and the page source to `test-artifacts/` in the
    /// target directory, as `NAME.png` and `NAME.html`, and prints where.
    pub async fn save_artifacts(&self, name: &str) {
        let dir = super::build_dir()
            .parent()
            .map_or_else(super::build_dir, Path::to_path_buf)
            .join("test-artifacts");
        std::fs::create_dir_all(&dir).expect("create test-artifacts");
        let png = dir.join(format!("{name}.png"));
        let html = dir.join(format!("{name}.html"));
        let save = async {
            std::fs::write(&png, self.screenshot().await).expect("write screenshot");
            std::fs::write(&html, self.page_source().await).expect("write page source");
        };
        match tokio::time::timeout(WAIT, save).await {
            Ok(()) => eprintln!("browser artifacts: {} and {}", png.display(), html.display()),
            Err(_) => eprintln!("browser artifacts: the browser did not answer in {WAIT:?}"),
        }
    }

    /// Awaits `test`; if it panics (a failed assertion), saves a screenshot
    /// and the page source as `NAME.png` and `NAME.html` before the panic
    /// goes on.
    pub async fn saving_artifacts_on_panic<T>(&self, name: &str, test: impl Future<Output = T>) -> T {
        let mut test = std::pin::pin!(test);
        let outcome = std::future::poll_fn(|cx| {
            match std::panic::catch_unwind(AssertUnwindSafe(|| test.as_mut().poll(cx))) {
                Ok(Poll::Pending) => Poll::Pending,
                Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
                Err(panic) => Poll::Ready(Err(panic)),
            }
        })
        .await;
        match outcome {
            Ok(value) => value,
            Err(panic) => {
                self.save_artifacts(name).await;
                std::panic::resume_unwind(panic)
            }
        }
    }

    /// Ends the session (chromium quits), then chromedriver.
    pub async fn quit(self) {
        let _ = self.call("DELETE", "", None).await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the process group this Browser started
        // (chromedriver's own, see `process_group(0)`); no memory is shared.
        unsafe {
            libc::kill(-(self.driver.id() as libc::pid_t), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

impl Element<'_> {
    async fn command(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        let path = format!("/element/{}{what}", self.id);
        self.browser.command(method, &path, body).await
    }

    /// The first element inside this one matching `css` (waits like
    /// [`Browser::find`]).
    pub async fn find(&self, css: &str) -> Element<'_> {
        self.browser
            .find_from(&format!("/element/{}", self.id), css)
            .await
    }

    /// Every element inside this one matching `css` now.
    pub async fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        self.browser
            .find_all_from(&format!("/element/{}", self.id), css)
            .await
    }

    pub async fn click(&self) {
        self.command("POST", "/click", Some(json!({}))).await;
    }

    /// Empties an input.
    pub async fn clear(&self) {
        self.command("POST", "/clear", Some(json!({}))).await;
    }

    /// Types `text` into the element, as keystrokes.
    pub async fn type_text(&self, text: &str) {
        self.command("POST", "/value", Some(json!({ "text": text })))
            .await;
    }

    /// Waits until the element shows `expected`; panics with what it
    /// shows after [`WAIT`].
    pub async fn wait_for_text(&self, expected: &str) {
        let started = Instant::now();
        loop {
            let text = self.text().await;
            if text == expected {
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "after {WAIT:?} the page shows {text:?}, not {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the element's text contains `expected`; panics with
    /// what it shows after [`WAIT`].
    pub async fn wait_for_text_containing(&self, expected: &str) {
        let started = Instant::now();
        loop {
            let text = self.text().await;
            if text.contains(expected) {
                return;
            }
            assert!(
                started.elapsed() < WAIT,
                "after {WAIT:?} the page shows {text:?}, without {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The rendered text.
    pub async fn text(&self) -> String {
        let text = self.command("GET", "/text", None).await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// A DOM property, such as an input's `value`.
    pub async fn property(&self, name: &str) -> Value {
        self.command("GET", &format!("/property/{name}"), None).await
    }

    /// Whether a class is set on the element.
    pub async fn has_class(&self, class: &str) -> bool {
        let classes = self.property("className").await;
        classes
            .as_str()
            .is_some_and(|c| c.split_whitespace().any(|c| c == class))
    }
}
