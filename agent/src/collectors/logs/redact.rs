//! Redaction: secrets and personal data replaced before a line leaves the host.
//!
//! A [`Redactor`] applies its rules in order, each a regular expression and its replacement;
//! presets cover what operators ask for most ([`Preset`]). Matches a preset's check refuses (a
//! digit run that fails the Luhn check, a string of hex and colons that is no IPv6 address) are
//! left alone. [`Redactor::redact`] counts replacements per rule, for the agent's telemetry.

use std::borrow::Cow;
use std::net::Ipv6Addr;

use regex::{Captures, Regex};

/// Rules ready-made for what is most often redacted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Payment card numbers: 13 to 19 digits, with spaces or dashes between groups, that pass
    /// the Luhn check.
    CardNumbers,
    /// E-mail addresses.
    Emails,
    /// IPv4 addresses.
    Ipv4,
    /// IPv6 addresses (that `std` parses as such).
    Ipv6,
    /// The token of an `Authorization: Bearer …` value.
    BearerTokens,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 5] = [
        Preset::CardNumbers,
        Preset::Emails,
        Preset::Ipv4,
        Preset::Ipv6,
        Preset::BearerTokens,
    ];

    /// Its name, as configuration and telemetry spell it.
    pub fn name(self) -> &'static str {
        match self {
            Preset::CardNumbers => "card_numbers",
            Preset::Emails => "emails",
            Preset::Ipv4 => "ipv4",
            Preset::Ipv6 => "ipv6",
            Preset::BearerTokens => "bearer_tokens",
        }
    }

    /// The preset named `name`.
    pub fn from_name(name: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.name() == name)
    }

    fn rule(self) -> Rule {
        let (pattern, replacement, check): (&str, &str, Check) = match self {
            Preset::CardNumbers => (r"\b\d(?:[ -]?\d){12,18}\b", "[card]", Check::Luhn),
            Preset::Emails => (
                r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b",
                "[email]",
                Check::None,
            ),
            Preset::Ipv4 => (
                r"\b(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\b",
                "[ipv4]",
                Check::None,
            ),
            Preset::Ipv6 => (
                r"[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{0,4}){2,7}",
                "[ipv6]",
                Check::Ipv6,
            ),
            Preset::BearerTokens => (
                r"(?i)(\bbearer\s+)[A-Za-z0-9\-._~+/]+=*",
                "${1}[token]",
                Check::None,
            ),
        };
        Rule {
            name: self.name().to_owned(),
            // The presets' patterns are constants, checked by the tests.
            pattern: Regex::new(pattern).expect("a preset's pattern is valid"),
            replacement: replacement.to_owned(),
            check,
        }
    }
}

/// What a match must also pass to be replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    None,
    Luhn,
    Ipv6,
}

impl Check {
    fn passes(self, matched: &str) -> bool {
        match self {
            Check::None => true,
            Check::Luhn => luhn(matched),
            Check::Ipv6 => matched.parse::<Ipv6Addr>().is_ok(),
        }
    }
}

#[derive(Debug, Clone)]
struct Rule {
    name: String,
    pattern: Regex,
    replacement: String,
    check: Check,
}

/// An invalid redaction rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("redaction rule {name:?}: {reason}")]
pub struct RuleError {
    pub name: String,
    pub reason: String,
}

/// Rules applied in order to every line; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    rules: Vec<Rule>,
}

impl Redactor {
    /// No rules.
    pub fn new() -> Self {
        Redactor::default()
    }

    /// Adds a preset.
    pub fn with_preset(mut self, preset: Preset) -> Self {
        self.rules.push(preset.rule());
        self
    }

    /// Adds a rule: every match of `pattern` is replaced by `replacement`, in which `$1` or
    /// `${name}` stand for the pattern's groups.
    pub fn with_rule(
        mut self,
        name: &str,
        pattern: &str,
        replacement: &str,
    ) -> Result<Self, RuleError> {
        let pattern = Regex::new(pattern).map_err(|e| RuleError {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        self.rules.push(Rule {
            name: name.to_owned(),
            pattern,
            replacement: replacement.to_owned(),
            check: Check::None,
        });
        Ok(self)
    }

    /// The rules' names, in order: [`Redactor::redact`]'s counts follow it.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().map(|r| r.name.as_str())
    }

    /// Redacts `text` in place; adds the replacements each rule made to `counts` (one slot per
    /// rule, in order; grown if shorter).
    pub fn redact(&self, text: &mut String, counts: &mut Vec<u64>) {
        if counts.len() < self.rules.len() {
            counts.resize(self.rules.len(), 0);
        }
        for (rule, count) in self.rules.iter().zip(counts.iter_mut()) {
            let mut made = 0u64;
            let replaced = rule.pattern.replace_all(text, |caps: &Captures<'_>| {
                let matched = &caps[0];
                if rule.check.passes(matched) {
                    made += 1;
                    let mut out = String::new();
                    caps.expand(&rule.replacement, &mut out);
                    out
                } else {
                    matched.to_owned()
                }
            });
            if made > 0
                && let Cow::Owned(replaced) = replaced
            {
                *text = replaced;
                *count += made;
            }
        }
    }
}

/// Whether the digits of `s` (other characters ignored) pass the Luhn check.
fn luhn(s: &str) -> bool {
    let digits: Vec<u32> = s.chars().filter_map(|c| c.to_digit(10)).collect();
    if digits.len() < 13 {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_presets() -> Redactor {
        Preset::ALL
            .into_iter()
            .fold(Redactor::new(), Redactor::with_preset)
    }

    fn redacted(r: &Redactor, line: &str) -> (String, Vec<u64>) {
        let mut text = line.to_owned();
        let mut counts = Vec::new();
        r.redact(&mut text, &mut counts);
        (text, counts)
    }

    #[test]
    fn presets_redact_real_world_lines() {
        let r = all_presets();
        let table = [
            (
                "Dec  1 10:00:01 web1 sshd[811]: Failed password for root from 203.0.113.9 port 52144 ssh2",
                "Dec  1 10:00:01 web1 sshd[811]: Failed password for root from [ipv4] port 52144 ssh2",
            ),
            (
                r#"2001:db8::1 - - [01/Dec/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 612"#,
                r#"[ipv6] - - [01/Dec/2026:10:00:00 +0000] "GET / HTTP/1.1" 200 612"#,
            ),
            (
                "payment from jane.doe@example.com card 4111 1111 1111 1111 ok",
                "payment from [email] card [card] ok",
            ),
            (
                "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.ZRrHA1JJJW8opsbCGfG_HACGpVUMN_a9IV7pAx_Zmeo",
                "Authorization: Bearer [token]",
            ),
            // Not a card: fails the Luhn check. Not an address: 10:00:01 is a time.
            (
                "order 4111 1111 1111 1112 at 10:00:01",
                "order 4111 1111 1111 1112 at 10:00:01",
            ),
            (
                "version 1.2.3.400 of 256.1.1.1",
                "version 1.2.3.400 of 256.1.1.1",
            ),
        ];
        for (line, want) in table {
            assert_eq!(redacted(&r, line).0, want, "{line}");
        }
    }

    #[test]
    fn replacements_are_counted_per_rule() {
        let r = all_presets()
            .with_rule("session", r"session=\w+", "session=[hidden]")
            .unwrap();
        let (text, counts) = redacted(
            &r,
            "a@b.io c@d.io 10.0.0.1 session=abc 4111-1111-1111-1111 fe80::1",
        );
        assert_eq!(
            text,
            "[email] [email] [ipv4] session=[hidden] [card] [ipv6]"
        );
        let names: Vec<&str> = r.names().collect();
        assert_eq!(
            names,
            [
                "card_numbers",
                "emails",
                "ipv4",
                "ipv6",
                "bearer_tokens",
                "session"
            ]
        );
        assert_eq!(counts, [1, 2, 1, 1, 0, 1]);
        // Counts add up over lines.
        let mut counts = counts;
        let mut more = "x@y.org".to_owned();
        r.redact(&mut more, &mut counts);
        assert_eq!(counts[1], 3);
    }

    #[test]
    fn a_bad_rule_is_refused_with_its_name() {
        let err = Redactor::new()
            .with_rule("broken", "(unclosed", "x")
            .unwrap_err();
        assert_eq!(err.name, "broken");
        assert!(
            err.to_string().starts_with("redaction rule \"broken\": "),
            "{err}"
        );
    }

    #[test]
    fn presets_are_named_for_configuration() {
        for p in Preset::ALL {
            assert_eq!(Preset::from_name(p.name()), Some(p));
        }
        assert_eq!(Preset::from_name("phone_numbers"), None);
    }

    #[test]
    fn the_luhn_check() {
        assert!(luhn("4111111111111111"));
        assert!(luhn("5500 0000 0000 0004"));
        assert!(!luhn("4111111111111112"));
        assert!(!luhn("0000 0000 0"));
    }
}
