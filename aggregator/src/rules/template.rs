//! Annotation templates: `{{ host }}`, `{{ value }}` and `{{ labels.NAME }}` in a rule's
//! annotations are replaced by the alert's host, the value it measured and its labels when it
//! changes. Prometheus's spellings `{{ $value }}` and `{{ $labels.NAME }}` work too.
//!
//! That is the whole language: no logic, no functions. A placeholder that names nothing known is
//! refused when the rule file loads ([`check`]), so a typo is an error with its line rather than
//! an empty gap in a page sent at night.

use std::collections::BTreeMap;

/// One `{{ … }}` found in a template: its byte range and what it names.
struct Placeholder<'a> {
    start: usize,
    end: usize,
    name: &'a str,
}

/// The placeholders of `text`, in order; an error for an unclosed `{{`.
fn placeholders(text: &str) -> Result<Vec<Placeholder<'_>>, String> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find("{{").map(|i| from + i) {
        let close = text[open..]
            .find("}}")
            .map(|i| open + i)
            .ok_or_else(|| format!("`{{{{` at byte {open} is not closed with `}}}}`"))?;
        found.push(Placeholder {
            start: open,
            end: close + 2,
            name: text[open + 2..close].trim(),
        });
        from = close + 2;
    }
    Ok(found)
}

/// What a placeholder stands for.
enum Field<'a> {
    Host,
    Value,
    Label(&'a str),
}

fn field(name: &str) -> Option<Field<'_>> {
    let name = name.strip_prefix('$').unwrap_or(name);
    match name {
        "host" => Some(Field::Host),
        "value" => Some(Field::Value),
        _ => name
            .strip_prefix("labels.")
            .filter(|l| !l.is_empty())
            .map(Field::Label),
    }
}

/// Checks a template: every placeholder closed and naming `host`, `value` or `labels.NAME`.
pub fn check(text: &str) -> Result<(), String> {
    for p in placeholders(text)? {
        if field(p.name).is_none() {
            return Err(format!(
                "`{{{{ {} }}}}` names nothing an alert has (host, value, labels.NAME)",
                p.name
            ));
        }
    }
    Ok(())
}

/// Fills a checked template in. A label the alert lacks, a host it has none of (rules across
/// hosts) and a value it has none of read as the empty string.
pub fn render(text: &str, labels: &BTreeMap<String, String>, value: Option<f64>) -> String {
    let Ok(found) = placeholders(text) else {
        return text.to_owned();
    };
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for p in found {
        out.push_str(&text[from..p.start]);
        match field(p.name) {
            Some(Field::Host) => out.push_str(labels.get("host").map_or("", String::as_str)),
            Some(Field::Value) => {
                if let Some(v) = value {
                    out.push_str(&format_value(v));
                }
            }
            Some(Field::Label(name)) => out.push_str(labels.get(name).map_or("", String::as_str)),
            None => out.push_str(&text[p.start..p.end]),
        }
        from = p.end;
    }
    out.push_str(&text[from..]);
    out
}

/// A value as people read it: whole numbers without a fraction, others to four significant
/// decimals.
fn format_value(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// Every annotation of a rule, rendered for one alert.
pub fn render_all(
    annotations: &BTreeMap<String, String>,
    labels: &BTreeMap<String, String>,
    value: Option<f64>,
) -> BTreeMap<String, String> {
    annotations
        .iter()
        .map(|(k, t)| (k.clone(), render(t, labels, value)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> BTreeMap<String, String> {
        [("host", "web-1"), ("mountpoint", "/var")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn placeholders_are_filled_in_with_both_spellings() {
        let t = "{{ host }} {{$labels.mountpoint}} at {{ $value }} ({{value}}){{ labels.team }}.";
        assert_eq!(check(t), Ok(()));
        assert_eq!(
            render(t, &labels(), Some(0.91234)),
            "web-1 /var at 0.9123 (0.9123)."
        );
        assert_eq!(render("{{ value }}", &labels(), Some(42.0)), "42");
        assert_eq!(render("{{ value }}", &labels(), None), "");
        assert_eq!(render("no placeholder", &labels(), None), "no placeholder");
    }

    #[test]
    fn unknown_or_unclosed_placeholders_are_refused() {
        assert!(check("{{ hots }}").unwrap_err().contains("hots"));
        assert!(check("{{ labels. }}").is_err());
        assert!(check("on {{ host").unwrap_err().contains("not closed"));
    }
}
