//! A real browser for tests: headless Chromium driven over WebDriver by chromedriver.
//!
//! [`Browser::start`] runs `chromedriver` on a free loopback port (killed when the browser is
//! dropped) and opens a session in a fresh Chromium profile. Its methods are blocking, over a
//! private single-threaded runtime, like the rest of the harness; any WebDriver failure fails the
//! test with what was being done and on which page.
//!
//! Besides driving pages, it watches what a person would not see: every entry Chromium logs at
//! level SEVERE (a CSP violation, a failed load, an uncaught exception, `console.error`) and
//! every request the page makes, read from chromedriver's `browser` and `performance` logs.
//! [`Browser::assert_clean`] fails the test if a page logged an error or sent a request to
//! another origin than the one under test. [`Browser::timing`] reads the page's own
//! Performance API: first contentful paint, DOMContentLoaded, load, and bytes transferred.
//!
//! ```no_run
//! use outpost_tests::Browser;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let browser = Browser::start(dir.path());
//! browser.goto("http://127.0.0.1:8080/login");
//! browser.fill("form#login input[name=token]", "secret");
//! browser.submit("form#login");
//! browser.wait_for_path("/fleet");
//! browser.assert_clean("http://127.0.0.1:8080");
//! ```

use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::fs::File;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::error::CmdError;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::DEADLINE;

/// Where Debian's `chromium` package puts the browser.
const CHROMIUM: &str = "/usr/bin/chromium";

/// Pause between two polls of a condition in the page.
const POLL: Duration = Duration::from_millis(100);

/// How long chromedriver may take to say it is ready, per attempt.
const DRIVER_START: Duration = Duration::from_secs(30);

/// Attempts at starting chromedriver: the free port picked may be taken before it binds it.
const DRIVER_ATTEMPTS: u32 = 4;

/// How long closing the session (and so Chromium) may take when the browser is dropped.
const CLOSE_DEADLINE: Duration = Duration::from_secs(20);

/// One entry of Chromium's browser log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// `SEVERE`, `WARNING`, `INFO`, …
    pub level: String,
    /// Where it came from (`console-api`, `network`, `security`, `javascript`, …), when given.
    pub source: String,
    pub message: String,
}

impl fmt::Display for LogEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} [{}] {}", self.level, self.source, self.message)
    }
}

/// What a page did wrong, as [`Browser::problems`] finds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Problems {
    /// Entries of level SEVERE in the browser log.
    pub errors: Vec<LogEntry>,
    /// Requests to another origin than the one allowed (URLs as sent).
    pub foreign_requests: Vec<String>,
}

impl Problems {
    pub fn is_empty(&self) -> bool {
        self.errors.is_empty() && self.foreign_requests.is_empty()
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.errors.is_empty() {
            writeln!(f, "errors in the browser's console:")?;
            for e in &self.errors {
                writeln!(f, "  {e}")?;
            }
        }
        if !self.foreign_requests.is_empty() {
            writeln!(f, "requests to another host:")?;
            for u in &self.foreign_requests {
                writeln!(f, "  {u}")?;
            }
        }
        Ok(())
    }
}

/// How fast a page came, from its Performance API (milliseconds since navigation start).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timing {
    /// The first paint of text or an image.
    pub first_contentful_paint_ms: f64,
    /// `domContentLoadedEventEnd`: the document parsed and its deferred scripts run.
    pub dom_content_loaded_ms: f64,
    /// `loadEventEnd`: the page complete, with its images, styles and scripts.
    pub load_ms: f64,
    /// Bytes over the wire (headers included), the document's and its resources'.
    pub transfer_bytes: u64,
    /// Bodies as sent (compressed, if they were), the document's and its resources'.
    pub encoded_body_bytes: u64,
    /// Resources fetched besides the document.
    pub resources: u64,
}

/// A headless Chromium driven by chromedriver; see the module documentation.
pub struct Browser {
    /// `None` once closed; declared before the runtime that drives it.
    client: Option<Client>,
    runtime: tokio::runtime::Runtime,
    driver: Driver,
    dir: PathBuf,
    /// Logs read from chromedriver (which forgets what it hands out).
    seen: RefCell<Seen>,
    screenshots: RefCell<u32>,
    /// More to say when a wait times out (the state of the programs under test).
    diagnosis: Option<Box<dyn Fn() -> String>>,
}

impl fmt::Debug for Browser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Browser")
            .field("driver", &self.driver)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct Seen {
    /// SEVERE entries not yet reported by [`Browser::problems`].
    errors: Vec<LogEntry>,
    /// Every entry of the browser log, for diagnoses.
    console: Vec<LogEntry>,
    /// Every request URL, in order.
    requests: Vec<String>,
    /// How many of `requests` [`Browser::problems`] already looked at.
    requests_checked: usize,
}

impl Browser {
    /// Starts chromedriver and a Chromium session whose profile, driver log and failure
    /// screenshots go under `dir` (which must exist). Fails the test, saying to run
    /// `scripts/test`, if Chromium or chromedriver is not installed.
    pub fn start(dir: &Path) -> Browser {
        let chromium = installed("chromium", Some(CHROMIUM));
        let chromedriver = installed("chromedriver", None);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("browser: cannot build a runtime: {e}"));
        let driver = Driver::start(&runtime, &chromedriver, dir);
        let profile = tempfile::Builder::new()
            .prefix("chromium-profile-")
            .tempdir_in(dir)
            .unwrap_or_else(|e| panic!("browser: cannot make a profile in {}: {e}", dir.display()))
            .keep();
        let capabilities = capabilities(&chromium, &profile);
        let client = runtime
            .block_on(
                ClientBuilder::new(HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&driver.url),
            )
            .unwrap_or_else(|e| {
                panic!(
                    "browser: chromedriver could not start Chromium ({}): {e}\nits log ends:\n{}",
                    chromium.display(),
                    driver.tail(20)
                )
            });
        let browser = Browser {
            client: Some(client),
            runtime,
            driver,
            dir: dir.to_owned(),
            seen: RefCell::new(Seen::default()),
            screenshots: RefCell::new(0),
            diagnosis: None,
        };
        // The first tab shows Chromium's new-tab page, which loads its own resources and may
        // log: leave it, and forget what it did.
        browser.goto("about:blank");
        browser.collect_logs();
        *browser.seen.borrow_mut() = Seen::default();
        browser
    }

    /// Adds what `diagnosis` says (such as [`crate::Env::diagnosis`]) to the report of a wait
    /// that timed out.
    pub fn diagnose_with(&mut self, diagnosis: impl Fn() -> String + 'static) {
        self.diagnosis = Some(Box::new(diagnosis));
    }

    fn client(&self) -> &Client {
        // Invariant: only `Drop` takes the client.
        self.client
            .as_ref()
            .unwrap_or_else(|| panic!("browser: the session is closed"))
    }

    /// Runs one WebDriver exchange to its end, failing the test with `what` on error.
    fn run<T>(&self, what: &str, fut: impl Future<Output = Result<T, CmdError>>) -> T {
        self.runtime
            .block_on(fut)
            .unwrap_or_else(|e| panic!("browser: {what}: {e}"))
    }

    /// Opens `url` and waits for its load event.
    pub fn goto(&self, url: &str) {
        self.run(&format!("open {url}"), self.client().goto(url));
    }

    /// Reloads the page.
    pub fn refresh(&self) {
        self.run("reload the page", self.client().refresh());
    }

    /// The address of the page shown.
    pub fn current_url(&self) -> String {
        self.run("read the address", self.client().current_url())
            .to_string()
    }

    /// The path of the page shown (`/fleet`), without the query.
    pub fn current_path(&self) -> String {
        self.run("read the address", self.client().current_url())
            .path()
            .to_owned()
    }

    /// The page's HTML as the browser has it now.
    pub fn source(&self) -> String {
        self.run("read the page source", self.client().source())
    }

    /// The first element matching `css`; fails the test if there is none.
    pub fn find(&self, css: &str) -> Element<'_> {
        self.try_find(css).unwrap_or_else(|| {
            panic!(
                "browser: no element matches `{css}` on {}\n{}",
                self.current_url(),
                self.page_excerpt()
            )
        })
    }

    /// The first element matching `css`, if any.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        match self.runtime.block_on(self.client().find(Locator::Css(css))) {
            Ok(inner) => Some(Element {
                browser: self,
                inner,
                css: css.to_owned(),
            }),
            Err(e) if e.is_no_such_element() => None,
            Err(e) => panic!("browser: find `{css}`: {e}"),
        }
    }

    /// Every element matching `css`, in document order.
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        self.run(
            &format!("find all `{css}`"),
            self.client().find_all(Locator::Css(css)),
        )
        .into_iter()
        .map(|inner| Element {
            browser: self,
            inner,
            css: css.to_owned(),
        })
        .collect()
    }

    /// The rendered text of the first element matching `css`; fails the test if there is none.
    ///
    /// Read in one step in the page, so that a part of the page replaced meanwhile (a refresh)
    /// cannot make it fail.
    pub fn text(&self, css: &str) -> String {
        self.try_text(css).unwrap_or_else(|| {
            panic!(
                "browser: no element matches `{css}` on {}\n{}",
                self.current_url(),
                self.page_excerpt()
            )
        })
    }

    /// The rendered text of the first element matching `css`, if any.
    pub fn try_text(&self, css: &str) -> Option<String> {
        self.execute_with(
            "const e = document.querySelector(arguments[0]); return e ? e.innerText : null;",
            vec![json!(css)],
        )
        .as_str()
        .map(str::to_owned)
    }

    /// The attribute `name` of the first element matching `css` (`None` if it has none); fails
    /// the test if no element matches. Read in one step, like [`Browser::text`].
    pub fn attr(&self, css: &str, name: &str) -> Option<String> {
        let found = self.execute_with(
            "const e = document.querySelector(arguments[0]);
             return e ? [e.getAttribute(arguments[1])] : null;",
            vec![json!(css), json!(name)],
        );
        match found {
            Value::Array(mut a) if a.len() == 1 => {
                a.pop().and_then(|v| v.as_str().map(str::to_owned))
            }
            _ => panic!(
                "browser: no element matches `{css}` on {}\n{}",
                self.current_url(),
                self.page_excerpt()
            ),
        }
    }

    /// How many elements match `css`.
    pub fn count(&self, css: &str) -> usize {
        let n = self.execute_with(
            "return document.querySelectorAll(arguments[0]).length;",
            vec![json!(css)],
        );
        n.as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or_else(|| panic!("browser: counting `{css}` gave {n}"))
    }

    /// The HTTP status the page shown came with (`0` if the browser does not say).
    pub fn status(&self) -> u16 {
        let status = self.execute(
            "const nav = performance.getEntriesByType('navigation')[0];
             return nav && nav.responseStatus ? nav.responseStatus : 0;",
        );
        status
            .as_u64()
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or_default()
    }

    /// Replaces the value of the input or textarea matching `css` by typing `value`.
    pub fn fill(&self, css: &str, value: &str) {
        self.find(css).fill(value);
    }

    /// Chooses the option with `value` in the `<select>` matching `css`.
    pub fn select(&self, css: &str, value: &str) {
        let e = self.find(css);
        self.run(
            &format!("select `{value}` in `{css}`"),
            e.inner.select_by_value(value),
        );
    }

    /// Clicks the element matching `css` (waiting for a navigation it starts).
    pub fn click(&self, css: &str) {
        self.find(css).click();
    }

    /// Submits the form matching `form_css` with its first submit button, as a person would.
    pub fn submit(&self, form_css: &str) {
        let form = self.run(
            &format!("find the form `{form_css}`"),
            self.client().form(Locator::Css(form_css)),
        );
        self.run(&format!("submit `{form_css}`"), form.submit());
    }

    /// Runs `script` (a function body: `return` gives the value) in the page.
    pub fn execute(&self, script: &str) -> Value {
        self.execute_with(script, Vec::new())
    }

    /// Runs `script` with `args` (as `arguments[i]`) in the page.
    pub fn execute_with(&self, script: &str, args: Vec<Value>) -> Value {
        self.run(
            &format!("run a script: {}", first_line(script)),
            self.client().execute(script, args),
        )
    }

    /// Polls `check` until it returns `Ok`, or fails the test after [`DEADLINE`] with `what`, the
    /// last `Err`, the page's address and text, a screenshot, and the diagnosis if one was
    /// given ([`Browser::diagnose_with`]).
    pub fn wait<T>(&self, what: &str, check: impl FnMut() -> Result<T, String>) -> T {
        self.wait_every(POLL, what, check)
    }

    /// [`Browser::wait`] polling every `poll`, for checks that reload a page.
    pub fn wait_every<T>(
        &self,
        poll: Duration,
        what: &str,
        check: impl FnMut() -> Result<T, String>,
    ) -> T {
        crate::env::poll_until(poll, check, |last| {
            let shot = self.failure_screenshot();
            let more = self.diagnosis.as_ref().map(|d| d()).unwrap_or_default();
            panic!(
                "browser: timed out after {DEADLINE:?} waiting for {what}\nlast seen: \
                 {last}\npage: {}\n{}\nscreenshot: {shot}\n{more}",
                self.current_url(),
                self.page_excerpt()
            )
        })
    }

    /// Waits until an element matches `css`, and answers the first.
    pub fn wait_for(&self, css: &str) -> Element<'_> {
        self.wait(&format!("an element matching `{css}`"), || {
            self.try_find(css).ok_or_else(|| "none yet".to_owned())
        })
    }

    /// Waits until the page shown has the path `path`.
    pub fn wait_for_path(&self, path: &str) {
        self.wait(&format!("the page {path}"), || {
            let now = self.current_path();
            if now == path { Ok(()) } else { Err(now) }
        });
    }

    /// A PNG of the window, written to `path` (its folder is made if missing).
    pub fn screenshot(&self, path: &Path) {
        let png = self.run("take a screenshot", self.client().screenshot());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .unwrap_or_else(|e| panic!("{}: cannot create: {e}", parent.display()));
        }
        std::fs::write(path, png)
            .unwrap_or_else(|e| panic!("{}: cannot write: {e}", path.display()));
    }

    /// Resizes the window (the page's layout width follows).
    pub fn set_window_size(&self, width: u32, height: u32) {
        self.run(
            &format!("resize the window to {width}x{height}"),
            self.client().set_window_size(width, height),
        );
    }

    /// Reads what chromedriver logged since the last read.
    fn collect_logs(&self) {
        let client = self.client();
        let browser = self.run("read the browser log", client.issue_cmd(ReadLog("browser")));
        let performance = self.run(
            "read the performance log",
            client.issue_cmd(ReadLog("performance")),
        );
        let mut seen = self.seen.borrow_mut();
        for entry in browser.as_array().into_iter().flatten() {
            let entry = LogEntry {
                level: entry["level"].as_str().unwrap_or_default().to_owned(),
                source: entry["source"].as_str().unwrap_or_default().to_owned(),
                message: entry["message"].as_str().unwrap_or_default().to_owned(),
            };
            if entry.level == "SEVERE" {
                seen.errors.push(entry.clone());
            }
            seen.console.push(entry);
        }
        for entry in performance.as_array().into_iter().flatten() {
            if let Some(url) = entry["message"].as_str().and_then(request_url) {
                seen.requests.push(url);
            }
        }
    }

    /// Every request the pages made since the browser started (URLs as sent, `data:` ones
    /// included), in order.
    pub fn requests(&self) -> Vec<String> {
        self.collect_logs();
        self.seen.borrow().requests.clone()
    }

    /// Every entry of the browser log since the browser started.
    pub fn console(&self) -> Vec<LogEntry> {
        self.collect_logs();
        self.seen.borrow().console.clone()
    }

    /// The errors logged and the requests sent to another origin than `allowed_origin`
    /// (`http://127.0.0.1:8080`) since the previous call. URLs without a network origin
    /// (`data:`, `about:`, the browser's own `chrome:`) are not requests to another host, nor
    /// are `blob:` URLs made by the allowed origin.
    pub fn problems(&self, allowed_origin: &str) -> Problems {
        self.collect_logs();
        let allowed = origin_of(allowed_origin)
            .unwrap_or_else(|| panic!("browser: `{allowed_origin}` has no origin"));
        let mut seen = self.seen.borrow_mut();
        let errors = std::mem::take(&mut seen.errors);
        let foreign_requests = seen.requests[seen.requests_checked..]
            .iter()
            .filter(|u| origin_of(u).is_some_and(|o| o != allowed))
            .cloned()
            .collect();
        seen.requests_checked = seen.requests.len();
        Problems {
            errors,
            foreign_requests,
        }
    }

    /// Fails the test if, since the previous check, a page logged an error (SEVERE) or sent a
    /// request to another origin than `allowed_origin`.
    pub fn assert_clean(&self, allowed_origin: &str) {
        let problems = self.problems(allowed_origin);
        assert!(
            problems.is_empty(),
            "browser: the page {} is not clean:\n{problems}",
            self.current_url()
        );
    }

    /// The page's timing and weight, once its load event has ended.
    pub fn timing(&self) -> Timing {
        const SCRIPT: &str = "
            const nav = performance.getEntriesByType('navigation')[0];
            const fcp = performance.getEntriesByName('first-contentful-paint')[0]
                || performance.getEntriesByType('paint')
                    .find(p => p.name === 'first-contentful-paint');
            if (!nav || !(nav.loadEventEnd > 0) || !fcp) { return null; }
            const resources = performance.getEntriesByType('resource');
            const sum = (key) => resources.reduce((n, r) => n + (r[key] || 0), nav[key] || 0);
            return {
                fcp: fcp.startTime,
                dcl: nav.domContentLoadedEventEnd,
                load: nav.loadEventEnd,
                transfer: sum('transferSize'),
                encoded: sum('encodedBodySize'),
                resources: resources.length,
            };";
        let figures = self.wait("the page's load event and first contentful paint", || {
            let v = self.execute(SCRIPT);
            if v.is_null() {
                Err("not yet".to_owned())
            } else {
                Ok(v)
            }
        });
        let ms = |key: &str| {
            figures[key]
                .as_f64()
                .unwrap_or_else(|| panic!("browser: timing `{key}` is not a number: {figures}"))
        };
        Timing {
            first_contentful_paint_ms: ms("fcp"),
            dom_content_loaded_ms: ms("dcl"),
            load_ms: ms("load"),
            // Byte counts are whole numbers, however JavaScript hands them over.
            transfer_bytes: ms("transfer") as u64,
            encoded_body_bytes: ms("encoded") as u64,
            resources: ms("resources") as u64,
        }
    }

    /// The start of the page's text, for failure messages.
    fn page_excerpt(&self) -> String {
        let text = self
            .runtime
            .block_on(self.client().execute(
                "return document.body ? document.body.innerText : ''",
                vec![],
            ))
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let mut out: String = text.chars().take(1500).collect();
        if out.len() < text.len() {
            out.push('…');
        }
        let mut console = String::new();
        for e in self.seen.borrow().console.iter().rev().take(10) {
            let _ = writeln!(console, "  {e}");
        }
        format!("page text:\n{out}\nlast console entries:\n{console}")
    }

    /// A screenshot for a failure message: its path, or why there is none.
    fn failure_screenshot(&self) -> String {
        let n = {
            let mut n = self.screenshots.borrow_mut();
            *n += 1;
            *n
        };
        let path = self.dir.join(format!("browser-failure-{n}.png"));
        match self.runtime.block_on(self.client().screenshot()) {
            Ok(png) => match std::fs::write(&path, png) {
                Ok(()) => path.display().to_string(),
                Err(e) => format!("{}: {e}", path.display()),
            },
            Err(e) => format!("none: {e}"),
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Closing the session makes chromedriver quit Chromium; the driver is killed after.
        if let Some(client) = self.client.take() {
            let _ = self
                .runtime
                .block_on(async { tokio::time::timeout(CLOSE_DEADLINE, client.close()).await });
        }
    }
}

/// An element of the page, found by a CSS selector.
#[derive(Debug)]
pub struct Element<'b> {
    browser: &'b Browser,
    inner: fantoccini::elements::Element,
    css: String,
}

impl<'b> Element<'b> {
    /// Its rendered text.
    pub fn text(&self) -> String {
        self.browser.run(
            &format!("read the text of `{}`", self.css),
            self.inner.text(),
        )
    }

    /// Its attribute `name`.
    pub fn attr(&self, name: &str) -> Option<String> {
        self.browser.run(
            &format!("read `{name}` of `{}`", self.css),
            self.inner.attr(name),
        )
    }

    /// Its outer HTML.
    pub fn html(&self) -> String {
        self.browser.run(
            &format!("read the HTML of `{}`", self.css),
            self.inner.html(false),
        )
    }

    /// Clicks it (waiting for a navigation it starts).
    pub fn click(&self) {
        self.browser
            .run(&format!("click `{}`", self.css), self.inner.click());
    }

    /// Clears it (an input or textarea) and types `value`.
    pub fn fill(&self, value: &str) {
        self.browser
            .run(&format!("clear `{}`", self.css), self.inner.clear());
        self.browser.run(
            &format!("type into `{}`", self.css),
            self.inner.send_keys(value),
        );
    }

    /// The first element inside it matching `css`; fails the test if there is none.
    pub fn find(&self, css: &str) -> Element<'b> {
        let inner = self.browser.run(
            &format!("find `{css}` in `{}`", self.css),
            self.inner.find(Locator::Css(css)),
        );
        Element {
            browser: self.browser,
            inner,
            css: format!("{} {css}", self.css),
        }
    }

    /// Every element inside it matching `css`.
    pub fn find_all(&self, css: &str) -> Vec<Element<'b>> {
        self.browser
            .run(
                &format!("find all `{css}` in `{}`", self.css),
                self.inner.find_all(Locator::Css(css)),
            )
            .into_iter()
            .map(|inner| Element {
                browser: self.browser,
                inner,
                css: format!("{} {css}", self.css),
            })
            .collect()
    }
}

/// chromedriver's log endpoint (`POST /session/{id}/se/log`): hands out, and forgets, what was
/// logged of one type since the last read.
#[derive(Debug)]
struct ReadLog(&'static str);

impl WebDriverCompatibleCommand for ReadLog {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/se/log",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (reqwest::Method, Option<String>) {
        (
            reqwest::Method::POST,
            Some(json!({ "type": self.0 }).to_string()),
        )
    }
}

/// The URL of a `Network.requestWillBeSent` event, from the text of a performance log entry.
fn request_url(message: &str) -> Option<String> {
    let event: Value = serde_json::from_str(message).ok()?;
    let event = &event["message"];
    if event["method"] != "Network.requestWillBeSent" {
        return None;
    }
    event["params"]["request"]["url"]
        .as_str()
        .map(str::to_owned)
}

/// The origin (`scheme://host:port`, default ports filled in) of `url`; `None` for URLs without
/// one (`data:`, `about:`, or unparsable).
fn origin_of(url: &str) -> Option<String> {
    match url::Url::parse(url).ok()?.origin() {
        url::Origin::Tuple(scheme, host, port) => Some(format!("{scheme}://{host}:{port}")),
        url::Origin::Opaque(_) => None,
    }
}

fn first_line(script: &str) -> &str {
    script
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
}

/// The capabilities of a session: headless Chromium as root in a container, with its browser
/// and network events logged.
fn capabilities(chromium: &Path, profile: &Path) -> fantoccini::wd::Capabilities {
    let args = [
        "--headless=new".to_owned(),
        // The tests run as root in a container, where Chromium's sandbox cannot start.
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        // No calls home: this machine's network is closed, and a test's requests are its own.
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--disable-quic".to_owned(),
        "--no-first-run".to_owned(),
        "--no-default-browser-check".to_owned(),
        // A page's request to anywhere but loopback (which Chromium never proxies) goes to a
        // proxy that is not there, so that nothing leaves the machine; the performance log still
        // shows it, and the test fails on it.
        "--proxy-server=http://127.0.0.1:9".to_owned(),
        "--window-size=1280,900".to_owned(),
        format!("--user-data-dir={}", profile.display()),
    ];
    let caps = json!({
        "browserName": "chrome",
        "acceptInsecureCerts": true,
        "goog:chromeOptions": {
            "binary": chromium.display().to_string(),
            "args": args,
        },
        "goog:loggingPrefs": { "browser": "ALL", "performance": "ALL" },
    });
    match caps {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// `fixed` if it is a file, else `name` on PATH; fails the test saying how to install it.
fn installed(name: &str, fixed: Option<&str>) -> PathBuf {
    if let Some(fixed) = fixed.map(PathBuf::from).filter(|p| p.is_file()) {
        return fixed;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed: the browser tests drive a real Chromium through \
                 chromedriver; run scripts/test, which installs them (Debian packages chromium \
                 and chromium-driver)"
            )
        })
}

/// chromedriver, in a process group of its own so that Chromium goes with it; killed on drop.
#[derive(Debug)]
struct Driver {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Driver {
    /// Starts chromedriver on a free loopback port and waits until `/status` says it is ready;
    /// tries again on another port if it does not come up.
    fn start(runtime: &tokio::runtime::Runtime, program: &Path, dir: &Path) -> Driver {
        let log = dir.join("chromedriver.log");
        let mut failures = String::new();
        for attempt in 1..=DRIVER_ATTEMPTS {
            let port = free_port();
            let out = File::options()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap_or_else(|e| panic!("{}: cannot open: {e}", log.display()));
            let err = out
                .try_clone()
                .unwrap_or_else(|e| panic!("{}: cannot clone: {e}", log.display()));
            let child = {
                use std::os::unix::process::CommandExt as _;
                Command::new(program)
                    .arg(format!("--port={port}"))
                    .arg("--allowed-ips=127.0.0.1")
                    .stdin(Stdio::null())
                    .stdout(Stdio::from(out))
                    .stderr(Stdio::from(err))
                    .process_group(0)
                    .spawn()
                    .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()))
            };
            let mut driver = Driver {
                child,
                url: format!("http://127.0.0.1:{port}"),
                log: log.clone(),
            };
            match driver.wait_ready(runtime) {
                Ok(()) => return driver,
                Err(why) => {
                    let _ = writeln!(failures, "attempt {attempt} on port {port}: {why}");
                }
            }
        }
        panic!(
            "browser: chromedriver did not come up:\n{failures}its log ends:\n{}",
            tail(&log, 20)
        )
    }

    fn wait_ready(&mut self, runtime: &tokio::runtime::Runtime) -> Result<(), String> {
        let http = reqwest::Client::new();
        let status = format!("{}/status", self.url);
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < DRIVER_START {
            if let Ok(Some(exit)) = self.child.try_wait() {
                return Err(format!("exited: {exit}"));
            }
            let answer = runtime.block_on(async {
                let response = http.get(&status).send().await?;
                response.json::<Value>().await
            });
            match answer {
                Ok(v) if v["value"]["ready"] == true => return Ok(()),
                Ok(v) => last = v.to_string(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(POLL);
        }
        Err(format!("not ready within {DRIVER_START:?}: {last}"))
    }

    fn tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The whole group: chromedriver and any browser it left behind.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("browser: cannot find a free loopback port: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_fill_in_default_ports_and_ignore_paths() {
        assert_eq!(
            origin_of("http://127.0.0.1:8080/fleet?q=1").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(
            origin_of("https://example.com/x").as_deref(),
            Some("https://example.com:443")
        );
        assert_eq!(
            origin_of("http://example.com").as_deref(),
            Some("http://example.com:80")
        );
        assert_ne!(
            origin_of("http://127.0.0.1:8080/"),
            origin_of("http://127.0.0.1:8081/")
        );
        assert_ne!(
            origin_of("http://127.0.0.1:8080/"),
            origin_of("https://127.0.0.1:8080/")
        );
        assert_eq!(
            origin_of("blob:http://127.0.0.1:8080/5c1f").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(origin_of("data:image/png;base64,AAAA"), None);
        assert_eq!(origin_of("about:blank"), None);
    }

    #[test]
    fn request_urls_come_from_request_events_only() {
        let sent = json!({ "message": { "method": "Network.requestWillBeSent",
            "params": { "request": { "url": "http://127.0.0.1:1/a.css" } } } });
        let received = json!({ "message": { "method": "Network.responseReceived",
            "params": { "response": { "url": "http://127.0.0.1:1/a.css" } } } });
        assert_eq!(
            request_url(&sent.to_string()).as_deref(),
            Some("http://127.0.0.1:1/a.css")
        );
        assert_eq!(request_url(&received.to_string()), None);
        assert_eq!(request_url("not json"), None);
    }
}
