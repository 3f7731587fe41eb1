//! How values go into columns and come back: JSON for nested values and attributes, small
//! integers and names for enums. Every writer here has its reader, and the tests hold them to
//! each other.

use std::fmt;

use outpost_common::event::{Attributes, FimChange, FimDetection, MetricKind, Severity};
use rusqlite::Row;
use rusqlite::types::Type;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize};

/// A JSON column, `None` when NULL.
pub(super) fn from_json_column<T: serde::de::DeserializeOwned>(
    r: &Row<'_>,
    idx: usize,
) -> rusqlite::Result<Option<T>> {
    r.get::<_, Option<String>>(idx)?
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(idx, Type::Text, Box::new(e)))
}

pub(super) fn to_json<T: Serialize>(value: &T) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// Attributes as a JSON object in their original order, or `None` when there are none.
pub(super) fn attributes_json<'b>(
    buf: &'b mut Vec<u8>,
    attributes: &Attributes,
) -> rusqlite::Result<Option<&'b str>> {
    if attributes.is_empty() {
        return Ok(None);
    }
    buf.clear();
    let conversion =
        |e: Box<dyn std::error::Error + Send + Sync>| rusqlite::Error::ToSqlConversionFailure(e);
    serde_json::to_writer(&mut *buf, &AttributesJson(attributes))
        .map_err(|e| conversion(Box::new(e)))?;
    std::str::from_utf8(buf)
        .map(Some)
        .map_err(|e| conversion(Box::new(e)))
}

/// Serialises key/value pairs as a JSON object without reordering them.
struct AttributesJson<'a>(&'a Attributes);

impl Serialize for AttributesJson<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// The syslog level, so that `severity <= 3` selects errors and worse.
pub(super) fn severity_level(s: Severity) -> i64 {
    match s {
        Severity::Emergency => 0,
        Severity::Alert => 1,
        Severity::Critical => 2,
        Severity::Error => 3,
        Severity::Warning => 4,
        Severity::Notice => 5,
        Severity::Info => 6,
        Severity::Debug => 7,
    }
}

pub(super) fn metric_kind_name(k: MetricKind) -> &'static str {
    match k {
        MetricKind::Gauge => "gauge",
        MetricKind::Counter => "counter",
    }
}

/// The name of a change, as stored and shown: `created`, `modified`, `metadata_changed`,
/// `deleted`, `moved`, `type_changed`.
pub fn fim_change_name(c: FimChange) -> &'static str {
    match c {
        FimChange::Created => "created",
        FimChange::Modified => "modified",
        FimChange::MetadataChanged => "metadata_changed",
        FimChange::Deleted => "deleted",
        FimChange::Moved => "moved",
        FimChange::TypeChanged => "type_changed",
    }
}

/// The name of how a change was found: `realtime`, `scheduled`, `rescan`.
pub fn fim_detection_name(d: FimDetection) -> &'static str {
    match d {
        FimDetection::Realtime => "realtime",
        FimDetection::Scheduled => "scheduled",
        FimDetection::Rescan => "rescan",
    }
}

pub(super) fn fim_detection_from_name(name: &str) -> Option<FimDetection> {
    match name {
        "realtime" => Some(FimDetection::Realtime),
        "scheduled" => Some(FimDetection::Scheduled),
        "rescan" => Some(FimDetection::Rescan),
        _ => None,
    }
}

/// The attributes a file-integrity change lists, as a JSON array; `None` when there are none.
pub(super) fn changed_json(changed: &[String]) -> rusqlite::Result<Option<String>> {
    if changed.is_empty() {
        Ok(None)
    } else {
        to_json(&changed).map(Some)
    }
}

/// The attributes from [`changed_json`]; NULL is none.
pub(super) fn changed_column(r: &Row<'_>, idx: usize) -> rusqlite::Result<Vec<String>> {
    Ok(from_json_column::<Vec<String>>(r, idx)?.unwrap_or_default())
}

/// The severity of a syslog level; `None` for a level no [`Severity`] has.
pub(super) fn severity_from_level(level: i64) -> Option<Severity> {
    Some(match level {
        0 => Severity::Emergency,
        1 => Severity::Alert,
        2 => Severity::Critical,
        3 => Severity::Error,
        4 => Severity::Warning,
        5 => Severity::Notice,
        6 => Severity::Info,
        7 => Severity::Debug,
        _ => return None,
    })
}

pub(super) fn metric_kind_from_name(name: &str) -> Option<MetricKind> {
    match name {
        "gauge" => Some(MetricKind::Gauge),
        "counter" => Some(MetricKind::Counter),
        _ => None,
    }
}

/// The change of a name from [`fim_change_name`].
pub fn fim_change_from_name(name: &str) -> Option<FimChange> {
    match name {
        "created" => Some(FimChange::Created),
        "modified" => Some(FimChange::Modified),
        "metadata_changed" => Some(FimChange::MetadataChanged),
        "deleted" => Some(FimChange::Deleted),
        "moved" => Some(FimChange::Moved),
        "type_changed" => Some(FimChange::TypeChanged),
        _ => None,
    }
}

/// Attributes from their JSON object (see [`attributes_json`]), in stored order, repeated keys
/// kept; NULL is no attributes.
pub(super) fn attributes_column(r: &Row<'_>, idx: usize) -> rusqlite::Result<Attributes> {
    Ok(from_json_column::<AttributesFromJson>(r, idx)?
        .map(|a| a.0)
        .unwrap_or_default())
}

/// Reads a JSON object into key/value pairs without reordering or merging them.
struct AttributesFromJson(Attributes);

impl<'de> Deserialize<'de> for AttributesFromJson {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> Visitor<'de> for Pairs {
            type Value = Attributes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Attributes, A::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(pair) = map.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                Ok(pairs)
            }
        }
        d.deserialize_map(Pairs).map(AttributesFromJson)
    }
}

/// A column held a value this build does not know (written by hand, or by a newer build).
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} `{value}`")]
pub(super) struct UnknownValue {
    pub(super) what: &'static str,
    pub(super) value: String,
}

/// Maps a name read from column `idx` with `parse`, failing with the column when unknown.
pub(super) fn parse_column<T>(
    idx: usize,
    what: &'static str,
    value: String,
    parse: impl FnOnce(&str) -> Option<T>,
) -> rusqlite::Result<T> {
    parse(&value).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            idx,
            Type::Text,
            Box::new(UnknownValue { what, value }),
        )
    })
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::*;

    #[test]
    fn every_enum_name_reads_back() {
        for s in Severity::ALL {
            assert_eq!(severity_from_level(severity_level(s)), Some(s));
        }
        assert_eq!(severity_from_level(8), None);
        for k in [MetricKind::Gauge, MetricKind::Counter] {
            assert_eq!(metric_kind_from_name(metric_kind_name(k)), Some(k));
        }
        for c in [
            FimChange::Created,
            FimChange::Modified,
            FimChange::MetadataChanged,
            FimChange::Deleted,
            FimChange::Moved,
            FimChange::TypeChanged,
        ] {
            assert_eq!(fim_change_from_name(fim_change_name(c)), Some(c));
        }
        assert_eq!(fim_change_from_name("renamed"), None);
        for d in [
            FimDetection::Realtime,
            FimDetection::Scheduled,
            FimDetection::Rescan,
        ] {
            assert_eq!(fim_detection_from_name(fim_detection_name(d)), Some(d));
        }
        assert_eq!(fim_detection_from_name("guess"), None);
    }

    #[test]
    fn attributes_read_back_in_order_with_repeats() {
        let conn = Connection::open_in_memory().unwrap();
        let mut buf = Vec::new();
        for attributes in [
            vec![],
            vec![
                ("z".to_owned(), "1".to_owned()),
                ("a".to_owned(), "2".to_owned()),
            ],
            vec![
                ("k".to_owned(), "1".to_owned()),
                ("k".to_owned(), "\0 \"ü\"".to_owned()),
            ],
        ] {
            let json = attributes_json(&mut buf, &attributes)
                .unwrap()
                .map(str::to_owned);
            let back = conn
                .query_row("SELECT ?1", [json], |r| attributes_column(r, 0))
                .unwrap();
            assert_eq!(back, attributes);
        }
        let err = conn
            .query_row("SELECT '{\"k\": 1}'", [], |r| attributes_column(r, 0))
            .unwrap_err();
        assert!(err.to_string().contains("string"), "{err}");
    }

    #[test]
    fn an_unknown_name_is_an_error_naming_it() {
        let err = parse_column(
            3,
            "metric kind",
            "histogram".to_owned(),
            metric_kind_from_name,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("unknown metric kind `histogram`"),
            "{err}"
        );
    }
}
