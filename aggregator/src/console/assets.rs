//! The console's stylesheet and script, built into the binary. Each is served under a name that
//! carries a hash of its content, so browsers may keep it for a year and still never run a stale
//! one after an upgrade.

use std::sync::LazyLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// One built-in file.
#[derive(Debug)]
pub struct Asset {
    stem: &'static str,
    extension: &'static str,
    pub content_type: &'static str,
    pub body: &'static str,
    path: LazyLock<String>,
}

impl Asset {
    /// Where it is served: `/assets/<stem>-<hash>.<extension>`.
    pub fn path(&self) -> &str {
        &self.path
    }

    fn response(&self) -> Response {
        (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(self.content_type),
                ),
                (
                    header::CACHE_CONTROL,
                    HeaderValue::from_static("public, max-age=31536000, immutable"),
                ),
            ],
            self.body,
        )
            .into_response()
    }
}

fn hashed(stem: &str, extension: &str, body: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    let hash: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("/assets/{stem}-{hash}.{extension}")
}

macro_rules! asset {
    ($stem:literal, $extension:literal, $content_type:literal) => {
        Asset {
            stem: $stem,
            extension: $extension,
            content_type: $content_type,
            body: include_str!(concat!("assets/", $stem, ".", $extension)),
            path: LazyLock::new(|| {
                hashed(
                    $stem,
                    $extension,
                    include_str!(concat!("assets/", $stem, ".", $extension)),
                )
            }),
        }
    };
}

pub static CSS: Asset = asset!("console", "css", "text/css; charset=utf-8");
pub static JS: Asset = asset!("console", "js", "text/javascript; charset=utf-8");

/// The asset served at `path`, if any.
pub fn serve(path: &str) -> Option<Response> {
    [&CSS, &JS]
        .into_iter()
        .find(|a| a.path() == path || format!("/assets/{}.{}", a.stem, a.extension) == path)
        .map(Asset::response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_named_by_their_content() {
        assert!(CSS.path().starts_with("/assets/console-"));
        assert!(CSS.path().ends_with(".css"));
        assert_ne!(CSS.path(), JS.path());
        assert!(serve(CSS.path()).is_some());
        assert!(serve("/assets/console.js").is_some(), "the plain name too");
        assert!(serve("/assets/other.css").is_none());
    }
}
