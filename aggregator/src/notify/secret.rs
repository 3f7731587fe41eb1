//! Secrets in receiver configurations: webhook URLs that carry tokens, routing keys, passwords
//! and header values.
//!
//! A secret may be written inline (`url = "…"`), read from a file at load (`url_file = "…"`, trailing
//! line breaks trimmed, so files written by `echo` or an editor work) or taken from an environment variable
//! (`url_env = "…"`). Header values, which have no field name to suffix, say the same with a table:
//! `{ file = "…" }` or `{ env = "…" }`. Whatever the source, the value lives in a [`Secret`], whose
//! `Debug` prints `<secret>`, so a configuration or receiver can be logged whole.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

/// A value that must never be shown: its `Debug` prints `<secret>`, and it has no `Display`.
/// Read it with [`Secret::expose`] only where it is sent.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the request that carries it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

/// Where a secret comes from: the value of `x`, the file named by `x_file`, or the environment
/// variable named by `x_env`; a configuration gives exactly one of the three.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Inline(Secret),
    File(PathBuf),
    Env(String),
}

impl SecretSource {
    /// The one source the three fields give; `Err(n)` with how many were given when that is not
    /// exactly one.
    pub(crate) fn from_fields(
        inline: Option<&Secret>,
        file: Option<&PathBuf>,
        env: Option<&String>,
    ) -> Result<SecretSource, usize> {
        match (inline, file, env) {
            (Some(s), None, None) => Ok(SecretSource::Inline(s.clone())),
            (None, Some(p), None) => Ok(SecretSource::File(p.clone())),
            (None, None, Some(v)) => Ok(SecretSource::Env(v.clone())),
            _ => Err(usize::from(inline.is_some())
                + usize::from(file.is_some())
                + usize::from(env.is_some())),
        }
    }

    /// Reads the secret: the file is read now (trailing line breaks trimmed), the variable
    /// looked up with `env`. The error is a sentence naming the file or variable, never the value.
    pub(crate) fn read(&self, env: &dyn Fn(&str) -> Option<String>) -> Result<Secret, String> {
        let value = match self {
            SecretSource::Inline(s) => s.0.clone(),
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                text.trim_end_matches(['\n', '\r']).to_owned()
            }
            SecretSource::Env(name) => env(name).ok_or_else(|| {
                format!("the environment variable {name} is not set (or not valid UTF-8)")
            })?,
        };
        if value.trim().is_empty() {
            return Err(match self {
                SecretSource::Inline(_) => "is empty".to_owned(),
                SecretSource::File(path) => format!("{} is empty", path.display()),
                SecretSource::Env(name) => format!("the environment variable {name} is empty"),
            });
        }
        Ok(Secret(value))
    }
}

/// A header value as a webhook's `headers` table gives it: a string, or `{ file = "…" }`, or
/// `{ env = "…" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderValueConfig(pub SecretSource);

impl<'de> Deserialize<'de> for HeaderValueConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeaderValueVisitor;

        impl<'de> Visitor<'de> for HeaderValueVisitor {
            type Value = HeaderValueConfig;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a header value: a string, or a table with `file` or `env`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(HeaderValueConfig(SecretSource::Inline(Secret::new(v))))
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut source = None;
                while let Some(key) = map.next_key::<String>()? {
                    let next = match key.as_str() {
                        "file" => SecretSource::File(map.next_value()?),
                        "env" => SecretSource::Env(map.next_value()?),
                        other => return Err(de::Error::unknown_field(other, &["file", "env"])),
                    };
                    if source.replace(next).is_some() {
                        return Err(de::Error::custom(
                            "a header value comes from one of `file` or `env`, not both",
                        ));
                    }
                }
                source
                    .map(HeaderValueConfig)
                    .ok_or_else(|| de::Error::custom("a header value table needs `file` or `env`"))
            }
        }

        deserializer.deserialize_any(HeaderValueVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn debug_hides_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "<secret>");
        let h = HeaderValueConfig(SecretSource::Inline(s));
        assert!(!format!("{h:?}").contains("hunter2"));
    }

    #[test]
    fn file_loses_its_trailing_line_breaks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("key");
        std::fs::write(&path, "abc \n").expect("write");
        let s = SecretSource::File(path.clone())
            .read(&no_env)
            .expect("read");
        assert_eq!(s.expose(), "abc ");
        std::fs::write(&path, "abc\r\n\n").expect("write");
        let s = SecretSource::File(path).read(&no_env).expect("read");
        assert_eq!(s.expose(), "abc");
    }

    #[test]
    fn empty_and_missing_sources_are_refused() {
        let env = |name: &str| (name == "EMPTY").then(String::new);
        let err = SecretSource::Env("EMPTY".into()).read(&env).unwrap_err();
        assert_eq!(err, "the environment variable EMPTY is empty");
        let err = SecretSource::Env("UNSET".into()).read(&env).unwrap_err();
        assert!(err.contains("UNSET is not set"), "{err}");
        let err = SecretSource::Inline(Secret::new(" "))
            .read(&env)
            .unwrap_err();
        assert_eq!(err, "is empty");
    }

    #[test]
    fn header_values_come_from_a_string_or_a_table() {
        #[derive(Deserialize)]
        struct H {
            h: std::collections::BTreeMap<String, HeaderValueConfig>,
        }
        let h: H = toml::from_str(r#"h = { A = "x", B = { file = "/f" }, C = { env = "V" } }"#)
            .expect("parse");
        assert_eq!(h.h["A"].0, SecretSource::Inline(Secret::new("x")));
        assert_eq!(h.h["B"].0, SecretSource::File("/f".into()));
        assert_eq!(h.h["C"].0, SecretSource::Env("V".into()));
        for bad in [
            r#"h = { A = { path = "/f" } }"#,
            r#"h = { A = { file = "/f", env = "V" } }"#,
            r#"h = { A = {} }"#,
            r#"h = { A = 3 }"#,
        ] {
            assert!(toml::from_str::<H>(bad).is_err(), "{bad}");
        }
    }
}
