//! `outpost-aggregator rules test`, run as people run it, over the default rule pack
//! (`packaging/rules.d`): for every rule, an input it is about and inputs just short of it, each
//! with its output kept in a golden file beside it in `tests/rules/`.
//!
//! A case is an input (`<input>.log`, an auth.log-style excerpt replayed with `--log`, or
//! `<input>.jsonl`, events replayed with `--events`), the arguments it needs, and its golden
//! output `<name>.out`. After a deliberate change of the pack, the engine or the output, write
//! the golden files anew and read the diff before committing it:
//!
//! ```text
//! OUTPOST_BLESS=1 cargo test -p outpost-aggregator --test rules_test
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// One run of `rules test` and its golden file.
struct Case {
    /// The golden file is `tests/rules/<name>.out`.
    name: &'static str,
    /// In `tests/rules/`: `.log` files are replayed with `--log`, `.jsonl` with `--events`.
    input: &'static str,
    /// Besides `--rules` and the input (and, for logs, the year and the source).
    args: &'static [&'static str],
}

const CASES: &[Case] = &[
    // Security, from auth.log as Debian writes it.
    case("ssh-brute-force", "ssh-brute-force.log", &[]),
    case("ssh-brute-force-seven", "ssh-brute-force-seven.log", &[]),
    // rsyslog's high-precision format: the agent keeps such lines whole, and they still count.
    case(
        "ssh-brute-force-rfc3339",
        "ssh-brute-force-rfc3339.log",
        &[],
    ),
    // Ubuntu's rsyslog folds repeats: eight failures in four lines, counted as four.
    case(
        "ssh-brute-force-repeated",
        "ssh-brute-force-repeated.log",
        &[],
    ),
    // With routes: the notifications, and the resolution five quiet minutes later.
    case(
        "ssh-brute-force-notified",
        "ssh-brute-force.log",
        &[
            "--config",
            "aggregator.toml",
            "--until",
            "2026-12-01T10:15:00Z",
        ],
    ),
    // A central syslog server's file: the hosts are those of the lines.
    case(
        "ssh-failures-across-hosts",
        "ssh-failures-across-hosts.log",
        &[],
    ),
    case(
        "ssh-failures-across-hosts-two",
        "ssh-failures-across-hosts-two.log",
        &[],
    ),
    case(
        "ssh-login-after-failures",
        "ssh-login-after-failures.log",
        &[],
    ),
    case(
        "ssh-login-after-failures-other-address",
        "ssh-login-after-failures-other-address.log",
        &[],
    ),
    case("sudo-auth-failure", "sudo-auth-failure.log", &[]),
    case(
        "sudo-auth-failure-json",
        "sudo-auth-failure.log",
        &["--json"],
    ),
    case("sudo-command", "sudo-command.log", &[]),
    // File integrity.
    case("accounts-changed", "accounts-changed.jsonl", &[]),
    case("sudoers-changed", "sudoers-changed.jsonl", &[]),
    case("sshd-config-changed", "sshd-config-changed.jsonl", &[]),
    case("fim-trail-broken", "fim-trail-broken.jsonl", &[]),
    // Hosts and agents.
    case("host-down", "host-down.jsonl", &[]),
    case("cpu-busy", "cpu-busy.jsonl", &[]),
    case("cpu-busy-short-of-it", "cpu-busy-short-of-it.jsonl", &[]),
    case("memory-full", "memory-full.jsonl", &[]),
    case("filesystem-full", "filesystem-full.jsonl", &[]),
    case("filesystem-full-soon", "filesystem-full-soon.jsonl", &[]),
    case("inodes-full", "inodes-full.jsonl", &[]),
    case("agent-dropping-data", "agent-dropping-data.jsonl", &[]),
    case("agent-clock-skew", "agent-clock-skew.jsonl", &[]),
    case(
        "agent-certificate-expiring",
        "agent-certificate-expiring.jsonl",
        &[],
    ),
];

/// Default rules that no case makes fire although one should, with why: each is a bug to fix,
/// and [`every_default_rule_fires_in_some_case`] fails once it fires, so that it leaves this
/// list with the fix.
const KNOWN_NOT_FIRING: &[(&str, &str)] = &[];

const fn case(name: &'static str, input: &'static str, args: &'static [&'static str]) -> Case {
    Case { name, input, args }
}

/// Where the inputs and golden files are; the runs start there, so that paths in the output
/// read the same wherever the repository is.
fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rules")
}

/// The default rule pack, from `cases_dir()`.
const PACK: &str = "../../../packaging/rules.d";

fn rules_test(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_outpost-aggregator"))
        .current_dir(cases_dir())
        .args(["rules", "test"])
        .args(args)
        .output()
        .expect("the outpost-aggregator binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The arguments of a case.
fn arguments(case: &Case) -> Vec<&'static str> {
    let mut args = vec!["--rules", PACK];
    if case.input.ends_with(".log") {
        args.extend(["--log", case.input, "--year", "2026"]);
        args.extend(["--source", "/var/log/auth.log"]);
    } else {
        args.extend(["--events", case.input]);
    }
    args.extend(case.args);
    args
}

/// Where `expected` and `actual` first differ, with both in full.
fn diff(expected: &str, actual: &str) -> String {
    let at = expected
        .lines()
        .zip(actual.lines())
        .position(|(e, a)| e != a)
        .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
    format!(
        "first difference at line {}\n--- expected\n{expected}--- actual\n{actual}---",
        at + 1
    )
}

/// Every case's output; each must have run without an error.
fn run_cases() -> Vec<(&'static Case, String)> {
    CASES
        .iter()
        .map(|case| {
            let out = rules_test(&arguments(case));
            assert!(
                out.status.success(),
                "{}: exit {}: {}",
                case.name,
                out.status,
                text(&out.stderr)
            );
            (case, text(&out.stdout))
        })
        .collect()
}

#[test]
fn every_case_matches_its_golden_file() {
    let bless = std::env::var_os("OUTPOST_BLESS").is_some();
    let mut failed = Vec::new();
    for (case, actual) in run_cases() {
        let golden = cases_dir().join(format!("{}.out", case.name));
        if bless {
            std::fs::write(&golden, &actual).expect("the golden file is written");
            continue;
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        if expected != actual {
            failed.push(format!("{}: {}", case.name, diff(&expected, &actual)));
        }
    }
    assert!(
        failed.is_empty(),
        "{} case(s) differ from their golden files (OUTPOST_BLESS=1 writes them anew):\n\n{}",
        failed.len(),
        failed.join("\n\n")
    );
}

/// The rules an output says fired.
fn fired_in(output: &str) -> BTreeSet<String> {
    output
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (_, kind, rule) = (words.next()?, words.next()?, words.next()?);
            (kind == "FIRED").then(|| rule.to_owned())
        })
        .collect()
}

#[test]
fn every_default_rule_fires_in_some_case() {
    let pack = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/rules.d");
    let rules = outpost_aggregator::rules::load_dir(&pack).expect("the pack loads");
    let fired: BTreeSet<String> = run_cases()
        .iter()
        .flat_map(|(_, output)| fired_in(output))
        .collect();
    for rule in &rules {
        let known = KNOWN_NOT_FIRING.iter().find(|(name, _)| *name == rule.name);
        match (fired.contains(&rule.name), known) {
            (true, None) | (false, Some(_)) => {}
            (false, None) => panic!("no case makes {} fire", rule.name),
            (true, Some((name, why))) => panic!(
                "{name} fires now: take it out of KNOWN_NOT_FIRING (it was there because {why})"
            ),
        }
    }
}

#[test]
fn the_binary_finds_ssh_password_guessing_in_an_auth_log() {
    let out = rules_test(&[
        "--rules",
        PACK,
        "--log",
        "ssh-brute-force.log",
        "--year",
        "2026",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fired = "2026-12-01T10:01:49Z  FIRED     ssh-brute-force  \
                 {host=\"web-1\", src_ip=\"203.0.113.7\"}  value=8";
    assert!(stdout.contains(fired), "{stdout}");
}

#[test]
fn a_bad_rule_file_exits_64_naming_its_line_and_column() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        "[[rule]]\nname = \"ssh-brute-force\"\nkind = \"frequency\"\nseverity = \"urgent\"\n",
    )
    .expect("the rule file is written");
    let out = rules_test(&[
        "--rules",
        dir.path().to_str().expect("a UTF-8 path"),
        "--log",
        "ssh-brute-force.log",
    ]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = text(&out.stderr);
    let place = format!("{}:4:12: unknown variant `urgent`", file.display());
    assert!(stderr.contains(&place), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn a_bad_input_exits_64_naming_the_file_and_line() {
    let out = rules_test(&["--rules", PACK, "--events", "ssh-brute-force.log"]);
    assert_eq!(out.status.code(), Some(64));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("ssh-brute-force.log:1:1: not JSON"),
        "{stderr}"
    );
    // A log line can be anything; a first line without a time cannot be placed on the clock.
    let out = rules_test(&["--rules", PACK, "--log", "host-down.jsonl"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        text(&out.stderr).contains("host-down.jsonl:1: no syslog timestamp"),
        "{}",
        text(&out.stderr)
    );
}
