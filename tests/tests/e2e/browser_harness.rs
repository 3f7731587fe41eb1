//! The browser harness checked against pages served by the test itself: a clean page passes,
//! and each check it makes for the console's tests can fail — an error in the page's console, a
//! request to another host — while the page's timing comes out of the Performance API.

use std::panic::AssertUnwindSafe;

use axum::extract::Query;
use axum::response::{Html, IntoResponse};
use outpost_tests::Browser;

/// A loopback address, and so never off this machine, that is another host than 127.0.0.1.
const FOREIGN: &str = "http://127.0.0.2:9/x.png";

/// A 1×1 transparent PNG.
const PIXEL: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
    0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4,
    0x89, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x00, 0x01, 0x00, 0x00,
    0x05, 0x00, 0x01, 0x0d, 0x0a, 0x2d, 0xb4, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae,
    0x42, 0x60, 0x82,
];

fn page(title: &str, body: &str) -> Html<String> {
    // The icon is inline, or Chromium asks for /favicon.ico and logs the 404 as an error.
    Html(format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{title}</title>\
         <link rel=icon href=\"data:,\"></head><body>{body}</body></html>"
    ))
}

/// A server on a free loopback port for the pages of these tests; answers its base URL.
fn serve(runtime: &tokio::runtime::Runtime) -> String {
    let app = axum::Router::new()
        .route(
            "/clean",
            axum::routing::get(|| async {
                page(
                    "clean",
                    "<h1>All well</h1><p id=msg>Nothing to see.</p><img src=/pixel.png alt=''>",
                )
            }),
        )
        .route(
            "/pixel.png",
            axum::routing::get(|| async { ([("content-type", "image/png")], PIXEL) }),
        )
        .route(
            "/error",
            axum::routing::get(|| async {
                page(
                    "error",
                    "<p>Broken</p><script>console.error('boom from the page')</script>",
                )
            }),
        )
        .route(
            "/csp",
            axum::routing::get(|| async {
                (
                    [("content-security-policy", "default-src 'self'")],
                    page("csp", "<p style=\"color: red\">Inline style</p>"),
                )
            }),
        )
        .route(
            "/exception",
            axum::routing::get(|| async {
                page("exception", "<script>noSuchFunction()</script>")
            }),
        )
        .route(
            "/missing",
            axum::routing::get(|| async { page("missing", "<img src=/nowhere.png alt=''>") }),
        )
        .route(
            "/foreign",
            axum::routing::get(|| async {
                page(
                    "foreign",
                    &format!("<p>Elsewhere</p><img src=\"{FOREIGN}\" alt=''>"),
                )
            }),
        )
        .route(
            "/form",
            axum::routing::get(|| async {
                page(
                    "form",
                    "<form id=f action=/echo method=get>\
                     <input name=name value=old>\
                     <select name=color><option value=red>Red</option><option value=blue>Blue</option></select>\
                     <textarea name=notes></textarea>\
                     <button type=submit>Send</button></form>\
                     <ul><li class=item data-n=1>one</li><li class=item data-n=2>two</li></ul>",
                )
            }),
        )
        .route(
            "/echo",
            axum::routing::get(
                |Query(q): Query<std::collections::BTreeMap<String, String>>| async move {
                    let items: String = q
                        .iter()
                        .map(|(k, v)| format!("<li data-key=\"{k}\">{v}</li>"))
                        .collect();
                    page("echo", &format!("<ul id=echo>{items}</ul>")).into_response()
                },
            ),
        );
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap_or_else(|e| panic!("cannot bind: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("no address: {e}"));
    runtime.spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot build a runtime: {e}"))
}

/// The message of the panic `f` fails with; fails the test if it does not.
fn panic_message(what: &str, f: impl FnOnce()) -> String {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => panic!("{what} passed, and should have failed"),
        Err(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default(),
    }
}

#[test]
fn the_browser_checks_catch_console_errors_and_requests_to_other_hosts_and_time_the_page() {
    let runtime = runtime();
    let base = serve(&runtime);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let browser = Browser::start(dir.path());

    // A clean page passes, and its timing is read from the page.
    browser.goto(&format!("{base}/clean"));
    assert_eq!(browser.text("#msg"), "Nothing to see.");
    let timing = browser.timing();
    browser.assert_clean(&base);
    assert!(timing.first_contentful_paint_ms > 0.0, "{timing:?}");
    assert!(timing.dom_content_loaded_ms > 0.0, "{timing:?}");
    assert!(timing.load_ms >= timing.dom_content_loaded_ms, "{timing:?}");
    assert!(timing.resources >= 1, "the image is a resource: {timing:?}");
    assert!(
        timing.transfer_bytes > PIXEL.len() as u64,
        "the document and the image came over the wire: {timing:?}"
    );
    assert!(
        timing.encoded_body_bytes >= PIXEL.len() as u64,
        "{timing:?}"
    );
    let requests = browser.requests();
    assert!(
        requests.contains(&format!("{base}/clean"))
            && requests.contains(&format!("{base}/pixel.png")),
        "{requests:?}"
    );

    // console.error fails the check, with the message.
    browser.goto(&format!("{base}/error"));
    let message = panic_message("assert_clean on a page with console.error", || {
        browser.assert_clean(&base);
    });
    assert!(
        message.contains("errors in the browser's console")
            && message.contains("boom from the page"),
        "{message}"
    );
    // So do a CSP violation, an uncaught exception and a failed load.
    for (path, expected) in [
        ("/csp", "Content Security Policy"),
        ("/exception", "noSuchFunction"),
        ("/missing", "404"),
    ] {
        browser.goto(&format!("{base}{path}"));
        let problems = browser.wait(&format!("the error of {path} in the log"), || {
            let p = browser.problems(&base);
            if p.errors.is_empty() {
                Err("no error logged yet".to_owned())
            } else {
                Ok(p)
            }
        });
        assert!(
            problems
                .errors
                .iter()
                .any(|e| e.level == "SEVERE" && e.message.contains(expected)),
            "{path}: {problems}"
        );
    }
    // What was reported is not reported again.
    browser.goto(&format!("{base}/clean"));
    browser.assert_clean(&base);

    // A request to another host fails the check, with its URL.
    browser.goto(&format!("{base}/foreign"));
    let problems = browser.problems(&base);
    assert_eq!(
        problems.foreign_requests,
        vec![FOREIGN.to_owned()],
        "{problems}"
    );
    assert!(browser.requests().contains(&FOREIGN.to_owned()));
    browser.goto(&format!("{base}/foreign"));
    let message = panic_message("assert_clean on a page loading from another host", || {
        browser.assert_clean(&base);
    });
    assert!(
        message.contains("requests to another host") && message.contains(FOREIGN),
        "{message}"
    );
    // The same page is clean if its origin is the one allowed: only the origin decides.
    browser.goto(&format!("{base}/clean"));
    let other = browser.problems("http://127.0.0.3:1");
    assert!(
        other.foreign_requests.contains(&format!("{base}/clean")),
        "{other}"
    );
}

#[test]
fn the_browser_fills_selects_submits_and_reads_pages() {
    let runtime = runtime();
    let base = serve(&runtime);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let browser = Browser::start(dir.path());

    browser.goto(&format!("{base}/form"));
    assert_eq!(
        browser.attr("input[name=name]", "value").as_deref(),
        Some("old")
    );
    let items = browser.find_all("li.item");
    assert_eq!(
        items.iter().map(|i| i.attr("data-n")).collect::<Vec<_>>(),
        vec![Some("1".to_owned()), Some("2".to_owned())]
    );
    assert_eq!(browser.execute("return document.title"), "form");
    browser.fill("input[name=name]", "web-1");
    browser.select("select[name=color]", "blue");
    browser.fill("textarea[name=notes]", "host=web-1\nenv=prod");
    browser.submit("form#f");
    browser.wait_for_path("/echo");
    let echo = browser.wait_for("#echo");
    assert_eq!(echo.find("[data-key=name]").text(), "web-1");
    assert_eq!(browser.text("#echo [data-key=color]"), "blue");
    assert_eq!(
        browser.execute("return document.querySelector('[data-key=notes]').textContent"),
        "host=web-1\nenv=prod"
    );
    assert!(browser.current_url().starts_with(&format!("{base}/echo?")));
    browser.assert_clean(&base);

    // Screenshots are PNGs of the window's width.
    browser.set_window_size(390, 844);
    let shot = dir.path().join("shots").join("phone.png");
    browser.screenshot(&shot);
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
    assert_eq!(
        i64::from(width),
        browser
            .execute("return window.innerWidth * window.devicePixelRatio")
            .as_i64()
            .unwrap_or(-1)
    );
    assert!(browser.try_find("#nothing-here").is_none());
}
