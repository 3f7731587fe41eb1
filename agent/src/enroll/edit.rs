//! Rewrites the agent's configuration file after enrollment, keeping everything the operator
//! wrote: comments, order, formatting, and the keys enrollment does not set.

use std::path::Path;

use toml_edit::{DocumentMut, Item, TableLike, Value};

/// What enrollment sets in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    /// `[aggregator] endpoint`: `quic://host:port`.
    pub endpoint: String,
    /// `[aggregator] server_name`: the name the aggregator's certificate was verified against.
    pub server_name: String,
    /// `[aggregator] ca`, `cert` and `key`: where the files were written.
    pub ca: String,
    pub cert: String,
    pub key: String,
    /// Merged into `[labels]`; a label the file has already takes the token's value.
    pub labels: Vec<(String, String)>,
}

/// `text` (a configuration file, possibly empty) with `update` applied. A file that lists
/// several aggregators (`[aggregator] endpoints`) keeps them, and its `server_name`: the one
/// that answered is among them, behind the same service.
pub fn apply(text: &str, update: &Update) -> Result<String, String> {
    let mut doc: DocumentMut = text
        .parse()
        .map_err(|e: toml_edit::TomlError| e.to_string())?;
    let aggregator = table(&mut doc, "aggregator")?;
    if !aggregator.contains_key("endpoints") {
        set(aggregator, "endpoint", &update.endpoint);
        set(aggregator, "server_name", &update.server_name);
    }
    set(aggregator, "ca", &update.ca);
    set(aggregator, "cert", &update.cert);
    set(aggregator, "key", &update.key);
    if !update.labels.is_empty() {
        let labels = table(&mut doc, "labels")?;
        for (k, v) in &update.labels {
            set(labels, k, v);
        }
    }
    Ok(doc.to_string())
}

/// The table `name`, made if the file has none.
fn table<'d>(doc: &'d mut DocumentMut, name: &str) -> Result<&'d mut dyn TableLike, String> {
    doc.entry(name)
        .or_insert_with(toml_edit::table)
        .as_table_like_mut()
        .ok_or_else(|| format!("`{name}` is not a table"))
}

/// Sets `key` to the string `value`, keeping the comments around a value it replaces.
fn set(table: &mut dyn TableLike, key: &str, value: &str) {
    match table.get_mut(key).and_then(Item::as_value_mut) {
        Some(old) => {
            let decor = old.decor().clone();
            *old = Value::from(value);
            *old.decor_mut() = decor;
        }
        None => {
            table.insert(key, toml_edit::value(value));
        }
    }
}

/// A path as the configuration writes it.
pub fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update() -> Update {
        Update {
            endpoint: "quic://agg.example:4433".to_owned(),
            server_name: "agg.example".to_owned(),
            ca: "/etc/outpost/tls/ca.pem".to_owned(),
            cert: "/etc/outpost/tls/agent.pem".to_owned(),
            key: "/etc/outpost/tls/agent.key".to_owned(),
            labels: vec![
                ("env".to_owned(), "prod".to_owned()),
                ("role".to_owned(), "web".to_owned()),
            ],
        }
    }

    #[test]
    fn the_packaged_file_keeps_its_comments_and_gets_the_fields() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/agent.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let out = apply(&text, &update()).unwrap();
        // Every comment line is still there, in order.
        let comments = |t: &str| {
            t.lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(comments(&out), comments(&text));
        let v: crate::config::AgentConfig = toml::from_str(&out).unwrap();
        let a = &v.aggregator;
        assert_eq!(
            a.endpoint.as_ref().unwrap().get_ref(),
            "quic://agg.example:4433"
        );
        assert_eq!(a.server_name.as_deref(), Some("agg.example"));
        assert_eq!(a.cert, Path::new("/etc/outpost/tls/agent.pem"));
        assert_eq!(v.labels["env"], "prod");
        // Settings enrollment does not touch stay as they were.
        let before: crate::config::AgentConfig = toml::from_str(&text).unwrap();
        assert_eq!(v.data_dir, before.data_dir);
        assert_eq!(v.spool.max_bytes, before.spool.max_bytes);
        // Applying it again changes nothing.
        assert_eq!(apply(&out, &update()).unwrap(), out);
    }

    #[test]
    fn values_are_replaced_in_place_and_labels_merged() {
        let text = "\
# top
[aggregator]
endpoint = \"quic://old:1\" # the old one
keep_alive = \"5s\"

[labels]
# where it runs
env = \"dev\"
team = \"ops\"
";
        let out = apply(text, &update()).unwrap();
        assert!(
            out.contains("endpoint = \"quic://agg.example:4433\" # the old one\n"),
            "{out}"
        );
        assert!(out.contains("keep_alive = \"5s\"\n"), "{out}");
        assert!(
            out.contains("# where it runs\nenv = \"prod\"\nteam = \"ops\"\nrole = \"web\"\n"),
            "{out}"
        );
        assert!(out.starts_with("# top\n[aggregator]\n"), "{out}");
    }

    #[test]
    fn a_list_of_endpoints_and_its_server_name_are_kept() {
        let text = "\
[aggregator]
endpoints = [\"quic://a.example:4433\", \"quic://b.example:4433\"]
";
        let out = apply(text, &update()).unwrap();
        let v: crate::config::AgentConfig = toml::from_str(&out).unwrap();
        let a = &v.aggregator;
        assert!(a.endpoint.is_none(), "{out}");
        assert!(a.server_name.is_none(), "{out}");
        assert_eq!(a.endpoints.as_ref().unwrap().get_ref().len(), 2);
        assert_eq!(a.cert, Path::new("/etc/outpost/tls/agent.pem"));
        assert_eq!(v.labels["env"], "prod");
    }

    #[test]
    fn an_empty_file_gets_the_tables_and_a_broken_one_is_refused() {
        let out = apply("", &update()).unwrap();
        let v: crate::config::AgentConfig = toml::from_str(&out).unwrap();
        assert_eq!(v.aggregator.key, Path::new("/etc/outpost/tls/agent.key"));
        assert!(apply("[aggregator\n", &update()).is_err());
        let e = apply("aggregator = 3\n", &update()).unwrap_err();
        assert!(e.contains("`aggregator` is not a table"), "{e}");
    }
}
