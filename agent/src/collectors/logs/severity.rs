//! Severity names, as programs write them, on the syslog scale: 0 emergency … 7 debug.

/// The syslog severity (0 emergency, 1 alert, 2 critical, 3 error, 4 warning, 5 notice,
/// 6 informational, 7 debug) a level name or number stands for, whatever its case; `None` for a
/// name no logging library in common use writes.
///
/// Besides syslog's own names and abbreviations, the usual aliases: `FATAL` and `PANIC` (Go,
/// log4j, PostgreSQL) as critical and emergency, `SEVERE` (java.util.logging) as error, `WARN`,
/// `TRACE`/`FINE`/`FINER`/`FINEST`/`VERBOSE` as debug, `CONFIG` as informational, and a single
/// digit 0–7.
pub fn from_name(name: &str) -> Option<u8> {
    let name = name.trim();
    if let [digit @ b'0'..=b'7'] = name.as_bytes() {
        return Some(digit - b'0');
    }
    let level = match name.to_ascii_lowercase().as_str() {
        "emerg" | "emergency" | "panic" => 0,
        "alert" => 1,
        "crit" | "critical" | "fatal" => 2,
        "err" | "error" | "severe" => 3,
        "warn" | "warning" => 4,
        "notice" => 5,
        "info" | "informational" | "information" | "config" => 6,
        "debug" | "trace" | "fine" | "finer" | "finest" | "verbose" => 7,
        _ => return None,
    };
    Some(level)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_aliases_map_to_the_syslog_scale() {
        let table = [
            ("EMERG", Some(0)),
            ("panic", Some(0)),
            ("alert", Some(1)),
            ("CRIT", Some(2)),
            ("Critical", Some(2)),
            ("FATAL", Some(2)),
            ("err", Some(3)),
            ("ERROR", Some(3)),
            ("SEVERE", Some(3)),
            ("WARN", Some(4)),
            ("warning", Some(4)),
            ("notice", Some(5)),
            ("INFO", Some(6)),
            ("informational", Some(6)),
            ("CONFIG", Some(6)),
            ("DEBUG", Some(7)),
            ("trace", Some(7)),
            ("FINEST", Some(7)),
            (" info ", Some(6)),
            ("0", Some(0)),
            ("7", Some(7)),
            ("8", None),
            ("10", None),
            ("", None),
            ("informative", None),
            ("ERRORS", None),
        ];
        for (name, want) in table {
            assert_eq!(from_name(name), want, "{name:?}");
        }
    }
}
