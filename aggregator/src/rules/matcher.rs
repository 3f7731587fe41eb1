//! Label matchers with Alertmanager's meanings, `name=value`, `name!=value`, `name=~regex` and
//! `name!~regex`, as routes, inhibitions and silences use them; and silences themselves.
//!
//! A regular expression is anchored at both ends, as Alertmanager anchors it: `severity=~"high"`
//! matches `high`, not `highest`. A label an alert does not have matches as the empty string, so
//! `team=""` selects alerts without a team and `team!=""` those with one. The matcher is the one
//! metric queries select series with ([`crate::store::series::Matcher`]), read here over labels.

use std::collections::BTreeMap;

pub use crate::store::series::{MatchOp, Matcher};

/// Parses a label matcher: `name=value`, `name!=value`, `name=~regex` or `name!~regex`, the value
/// in double quotes or not (with `\"` and `\\` inside quotes), as `amtool` writes it.
pub fn parse(text: &str) -> Result<Matcher, String> {
    let text = text.trim();
    let not_one = || format!("`{text}` is not a matcher (name=value, !=, =~ or !~)");
    let at = text.find(['=', '!']).ok_or_else(not_one)?;
    let (name, rest) = text.split_at(at);
    let name = name.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
    {
        return Err(format!(
            "`{name}` is not a label name (letters, digits, `_` and `.`)"
        ));
    }
    let (op, value) = [
        ("=~", MatchOp::Regex),
        ("!~", MatchOp::NotRegex),
        ("!=", MatchOp::NotEqual),
        ("=", MatchOp::Equal),
    ]
    .into_iter()
    .find_map(|(prefix, op)| rest.strip_prefix(prefix).map(|v| (op, v)))
    .ok_or_else(not_one)?;
    Matcher::new(name, op, &unquote(value.trim())?)
}

/// A matcher as [`parse`] reads it back, its value quoted: `name="value"`, `name=~"regex"`.
pub fn render(matcher: &Matcher) -> String {
    let op = match matcher.op {
        MatchOp::Equal => "=",
        MatchOp::NotEqual => "!=",
        MatchOp::Regex => "=~",
        MatchOp::NotRegex => "!~",
    };
    let value = matcher.value.replace('\\', "\\\\").replace('"', "\\\"");
    format!("{}{op}\"{value}\"", matcher.key)
}

/// Whether `labels` satisfy `matcher` (a label they lack reads as the empty string).
pub fn matches(matcher: &Matcher, labels: &BTreeMap<String, String>) -> bool {
    matcher.matches_value(labels.get(&matcher.key).map_or("", String::as_str))
}

/// The value of a matcher: as it is, or from double quotes with `\"` and `\\` escapes.
fn unquote(value: &str) -> Result<String, String> {
    let Some(inner) = value.strip_prefix('"') else {
        return Ok(value.to_owned());
    };
    let inner = inner
        .strip_suffix('"')
        .ok_or_else(|| format!("`{value}` opens a quote it does not close"))?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e @ ('"' | '\\')) => out.push(e),
                Some('n') => out.push('\n'),
                other => {
                    return Err(format!(
                        "`{value}`: unknown escape `\\{}`",
                        other.map(String::from).unwrap_or_default()
                    ));
                }
            },
            '"' => return Err(format!("`{value}`: a quote inside must be escaped")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Whether every matcher is satisfied by `labels` (an empty list matches everything).
pub fn all_match(matchers: &[Matcher], labels: &BTreeMap<String, String>) -> bool {
    matchers.iter().all(|m| matches(m, labels))
}

/// An inhibition: while an alert matching `source` fires, alerts matching `target` with the same
/// values of the `equal` labels (a label an alert lacks reads as empty) are not notified (a host
/// down silences its other alerts). An alert never inhibits itself, nor one that matches both
/// sides when it does too.
#[derive(Debug, Clone, PartialEq)]
pub struct Inhibition {
    pub source: Vec<Matcher>,
    pub target: Vec<Matcher>,
    pub equal: Vec<String>,
}

impl Inhibition {
    /// Whether an alert with `labels` is inhibited by one of the `firing` alerts' labels.
    pub fn inhibits(
        &self,
        labels: &BTreeMap<String, String>,
        firing: &[BTreeMap<String, String>],
    ) -> bool {
        let value =
            |l: &'_ BTreeMap<String, String>, n: &str| l.get(n).map_or(String::new(), Clone::clone);
        // As Alertmanager has it: an alert matching both sides cannot be inhibited by another
        // that matches both, or two of them would mute each other.
        let both_sides = all_match(&self.source, labels);
        all_match(&self.target, labels)
            && firing.iter().any(|source| {
                source != labels
                    && all_match(&self.source, source)
                    && !(both_sides && all_match(&self.target, source))
                    && self
                        .equal
                        .iter()
                        .all(|n| value(source, n) == value(labels, n))
            })
    }
}

/// A silence: alerts whose labels match all its matchers are not notified between its start and
/// its end.
#[derive(Debug, Clone, PartialEq)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<Matcher>,
    pub starts_ns: i64,
    pub ends_ns: i64,
    pub author: String,
    pub comment: String,
}

impl Silence {
    /// Whether it is in force at `now_ns`: from its start, until (not at) its end.
    pub fn active(&self, now_ns: i64) -> bool {
        self.starts_ns <= now_ns && now_ns < self.ends_ns
    }

    /// Whether it silences an alert with `labels` at `now_ns`.
    pub fn silences(&self, labels: &BTreeMap<String, String>, now_ns: i64) -> bool {
        self.active(now_ns) && all_match(&self.matchers, labels)
    }
}

/// The ids of the silences in force at `now_ns` that silence an alert with `labels`.
pub fn silenced_by<'a>(
    silences: &'a [Silence],
    labels: &BTreeMap<String, String>,
    now_ns: i64,
) -> Vec<&'a str> {
    silences
        .iter()
        .filter(|s| s.silences(labels, now_ns))
        .map(|s| s.id.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_rendered_matcher_reads_back_the_same() {
        for text in [
            r#"a="b""#,
            r#"path=~"/etc/.*""#,
            r#"x!="say \"hi\" \\ bye""#,
            "team!~ops|dev",
        ] {
            let m = parse(text).unwrap();
            assert_eq!(parse(&render(&m)).unwrap(), m, "{text}");
        }
        assert_eq!(
            render(&parse("team!~ops|dev").unwrap()),
            r#"team!~"ops|dev""#
        );
    }

    #[test]
    fn the_four_operators_match_as_alertmanager_matches() {
        let alert = labels(&[
            ("alertname", "cpu-busy"),
            ("severity", "high"),
            ("host", "web-1"),
        ]);
        let cases = [
            ("severity=high", true),
            ("severity = \"high\"", true),
            ("severity!=high", false),
            ("severity=~\"high|critical\"", true),
            // Anchored at both ends.
            ("severity=~hig", false),
            ("host=~web-.*", true),
            ("host!~\"db-.*\"", true),
            // A missing label is the empty string.
            ("team=\"\"", true),
            ("team!=\"\"", false),
            ("team=~\".*\"", true),
        ];
        for (text, expected) in cases {
            let m = parse(text).unwrap();
            assert_eq!(matches(&m, &alert), expected, "{text} ({m:?})");
        }
    }

    #[test]
    fn a_matcher_that_cannot_be_read_says_why() {
        let cases = [
            ("severity", "not a matcher"),
            ("=high", "not a label name"),
            ("sev erity=high", "not a label name"),
            ("host=~\"(web\"", "not a regular expression"),
            ("host=\"web", "does not close"),
            ("host=\"w\"e\"", "must be escaped"),
            ("host=\"w\\x\"", "unknown escape"),
        ];
        for (text, why) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
        let quoted = parse(r#"comment="say \"hi\" \\ bye""#).unwrap();
        assert_eq!(quoted.value, r#"say "hi" \ bye"#);
    }

    #[test]
    fn a_host_down_inhibits_the_host_s_other_alerts_and_no_other_host_s() {
        let down = Inhibition {
            source: vec![parse("alertname=host-down").unwrap()],
            target: vec![parse("alertname!=host-down").unwrap()],
            equal: vec!["host".to_owned()],
        };
        let host_down = |h: &str| labels(&[("alertname", "host-down"), ("host", h)]);
        let busy = |h: &str| labels(&[("alertname", "cpu-busy"), ("host", h)]);
        let firing = [host_down("web-1"), busy("web-2")];
        assert!(down.inhibits(&busy("web-1"), &firing));
        assert!(!down.inhibits(&busy("web-2"), &firing));
        // The source itself is no target; and a source alert does not inhibit itself anyway.
        assert!(!down.inhibits(&host_down("web-1"), &firing));
        let any = Inhibition {
            target: vec![],
            ..down.clone()
        };
        assert!(!any.inhibits(&host_down("web-1"), &firing));
        // A label neither has counts as equal (Alertmanager's rule): both lack `dc`.
        let by_dc = Inhibition {
            equal: vec!["dc".to_owned()],
            ..down
        };
        assert!(by_dc.inhibits(&busy("web-9"), &firing));
    }

    #[test]
    fn a_silence_holds_from_its_start_until_its_end_for_alerts_matching_all_its_matchers() {
        let silence = Silence {
            id: "s1".to_owned(),
            matchers: vec![
                parse("alertname=cpu-busy").unwrap(),
                parse("host=~web-.*").unwrap(),
            ],
            starts_ns: 100,
            ends_ns: 200,
            author: "ops".to_owned(),
            comment: "deploy".to_owned(),
        };
        let web = labels(&[("alertname", "cpu-busy"), ("host", "web-1")]);
        let db = labels(&[("alertname", "cpu-busy"), ("host", "db-1")]);
        assert!(!silence.silences(&web, 99));
        assert!(silence.silences(&web, 100));
        assert!(silence.silences(&web, 199));
        assert!(!silence.silences(&web, 200));
        assert!(!silence.silences(&db, 150));
        let silences = [
            silence.clone(),
            Silence {
                id: "s2".to_owned(),
                matchers: vec![],
                ..silence
            },
        ];
        assert_eq!(silenced_by(&silences, &web, 150), ["s1", "s2"]);
        assert_eq!(silenced_by(&silences, &db, 150), ["s2"]);
    }
}
