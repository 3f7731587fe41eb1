//! The .deb and .rpm packages, with the real tools: `scripts/package` builds them, `lintian` and
//! `rpm` inspect them, `dpkg` installs, upgrades, removes and purges them on this machine, the
//! installed binaries run as the `outpost` user with the command lines of the units, and `rpm`
//! installs, upgrades and erases the .rpm packages to run their scriptlets. systemd
//! is not PID 1 here: the unit files are checked with `systemd-analyze verify` and scored with
//! `systemd-analyze security --offline=true`.
//!
//! The install test changes the system (packages, the `outpost` user, /etc/outpost,
//! /var/lib/outpost, /var/log/outpost), so it needs root. It purges any leftovers of an earlier
//! run first, and purges everything again at the end, also when it fails.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long to wait for a condition (a process to come up, an agent to connect) before failing.
const DEADLINE: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(250);
const PACKAGES: [&str; 2] = ["outpost-agent", "outpost-aggregator"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .to_path_buf()
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` with no standard input and returns its output, whatever its exit status.
fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)))
}

/// Runs `cmd`, fails the test unless it exits 0, and returns its standard output.
fn run(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// A command run as the `outpost` user, as the units run their commands.
fn as_outpost(argv: &[&str]) -> Command {
    let mut c = cmd(
        "setpriv",
        &[
            "--reuid=outpost",
            "--regid=outpost",
            "--init-groups",
            "--reset-env",
        ],
    );
    c.args(argv);
    c
}

fn wait_for<T>(what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) if start.elapsed() >= DEADLINE => {
                panic!("timed out after {DEADLINE:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

fn is_root() -> bool {
    run(&mut cmd("id", &["-u"])).trim() == "0"
}

fn require_root() {
    assert!(
        is_root(),
        "the package tests install, upgrade and purge .deb packages on this machine and need \
         root: run them as root (CI does), e.g. sudo -E cargo test -p outpost-tests --test packages"
    );
}

/// `dpkg-query` status abbreviation ("ii ", "rc ", ...), or None when dpkg knows no such package.
fn dpkg_status(package: &str) -> Option<String> {
    let out = output(&mut cmd(
        "dpkg-query",
        &["-W", "-f=${db:Status-Abbrev}", package],
    ));
    let s = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !s.starts_with("un") && !s.trim().is_empty()).then_some(s)
}

fn user_exists(db: &str, name: &str) -> bool {
    output(&mut cmd("getent", &[db, name])).status.success()
}

/// Purges both packages (deb and rpm) and whatever an interrupted run left behind; never panics.
fn cleanup() {
    let _ = output(&mut cmd(
        "dpkg",
        &["--purge", "outpost-agent", "outpost-aggregator"],
    ));
    for p in PACKAGES {
        if output(&mut cmd("rpm", &["-q", "--quiet", p]))
            .status
            .success()
        {
            let _ = output(&mut cmd("rpm", &["-e", "--nodeps", p]));
        }
    }
    for dir in ["/etc/outpost", "/var/lib/outpost", "/var/log/outpost"] {
        let _ = fs::remove_dir_all(dir);
    }
    if user_exists("passwd", "outpost") {
        let _ = output(&mut cmd("userdel", &["outpost"]));
    }
    if user_exists("group", "outpost") {
        let _ = output(&mut cmd("groupdel", &["outpost"]));
    }
}

fn purge_everything() {
    cleanup();
    for p in PACKAGES {
        assert_eq!(
            dpkg_status(p),
            None,
            "{p} is still known to dpkg after a purge"
        );
    }
    assert!(
        !user_exists("passwd", "outpost"),
        "cannot remove the user outpost"
    );
}

/// Purges at the end of the test, also when it fails.
struct PurgeOnDrop;

impl Drop for PurgeOnDrop {
    fn drop(&mut self) {
        cleanup();
    }
}

/// A started binary, stopped (SIGTERM, then SIGKILL) when dropped.
struct Service {
    name: String,
    child: Child,
}

impl Service {
    fn start(name: &str, argv: &[String]) -> Service {
        let args: Vec<&str> = argv.iter().map(String::as_str).collect();
        let mut c = as_outpost(&args);
        let log = fs::File::create(format!("/tmp/outpost-pkg-test-{name}.log"))
            .unwrap_or_else(|e| panic!("log of {name}: {e}"));
        let err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("log of {name}: {e}"));
        c.stdin(Stdio::null()).stdout(log).stderr(err);
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({}): {e}", describe(&c)));
        Service {
            name: name.to_owned(),
            child,
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(format!("/tmp/outpost-pkg-test-{}.log", self.name)).unwrap_or_default()
    }

    fn assert_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => panic!("{} exited ({status}):\n{}", self.name, self.log()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// SIGTERM, and waits for a clean exit.
    fn stop(mut self) {
        let pid = self.child.id().to_string();
        run(&mut cmd("kill", &["-TERM", &pid]));
        let name = self.name.clone();
        let status = wait_for(&format!("{name} to exit after SIGTERM"), || {
            self.child
                .try_wait()
                .map_err(|e| e.to_string())?
                .ok_or_else(|| "still running".to_owned())
        });
        assert!(
            status.success(),
            "{name} exited with {status}:\n{}",
            self.log()
        );
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Builds the four packages with `scripts/package` and copies them to `dir`: from the dev
/// profile's binaries that the suite built before the tests (`cargo build --workspace --bins`),
/// stripped, with fast compression. What is checked is the packaging, not the code generation,
/// and a release build of its own would take this test longer than the rest of the suite.
fn build_packages(revision: &str, dir: &Path) -> BTreeMap<String, PathBuf> {
    let mut c = Command::new(repo().join("scripts/package"));
    c.current_dir(repo())
        .arg("--no-build")
        .env("OUTPOST_PACKAGE_REVISION", revision)
        .env("OUTPOST_PACKAGE_PROFILE", "dev")
        .env("OUTPOST_PACKAGE_FAST", "1")
        .stderr(Stdio::inherit());
    let stdout = run(&mut c);
    fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut built = BTreeMap::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let src = Path::new(line.trim());
        let name = src
            .file_name()
            .unwrap_or_else(|| panic!("not a package path: {line}"))
            .to_string_lossy()
            .into_owned();
        let dest = dir.join(&name);
        fs::copy(src, &dest).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        let key = format!(
            "{}.{}",
            if name.starts_with("outpost-aggregator") {
                "outpost-aggregator"
            } else {
                "outpost-agent"
            },
            if name.ends_with(".deb") { "deb" } else { "rpm" }
        );
        assert!(
            name.contains(&format!("-{revision}")),
            "{name} lacks revision {revision}"
        );
        built.insert(key, dest);
    }
    assert_eq!(built.len(), 4, "expected 4 packages, got {built:?}");
    built
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("paths are UTF-8")
}

fn check_rpm(package: &str, rpm: &Path) {
    let rpm = path_str(rpm);
    let k = run(&mut cmd("rpm", &["-K", rpm]));
    assert!(k.contains("digests OK"), "rpm -K {rpm}: {k}");
    let scripts = run(&mut cmd("rpm", &["-qp", "--scripts", rpm]));
    for needle in [
        "preinstall scriptlet",
        "postinstall scriptlet",
        "preuninstall scriptlet",
        "postuninstall scriptlet",
        "outpost_script=pre\n",
        "useradd --system",
        "systemctl preset",
        "systemctl disable",
    ] {
        assert!(
            scripts.contains(needle),
            "{rpm}: no `{needle}` in scriptlets"
        );
    }
    let files = run(&mut cmd(
        "rpm",
        &[
            "-qp",
            "--qf",
            "[%{FILEFLAGS:fflags} %{FILEMODES:perms} %{FILEGROUPNAME} %{FILENAMES}\n]",
            rpm,
        ],
    ));
    let short = package.trim_start_matches("outpost-");
    for expected in [
        format!("-rwxr-xr-x root /usr/bin/{package}"),
        format!("cn -rw-r----- outpost /etc/outpost/{short}.toml"),
        format!("-rw-r--r-- root /usr/lib/systemd/system/{package}.service"),
    ] {
        assert!(
            files.lines().any(|l| l.trim() == expected.trim()),
            "{rpm}: no `{expected}` in\n{files}"
        );
    }
    let list = run(&mut cmd("rpm", &["-qlp", rpm]));
    assert!(list.contains(&format!("/usr/bin/{package}\n")), "{list}");
}

fn check_lintian(deb: &Path) {
    let out = output(&mut cmd(
        "lintian",
        &["--tag-display-limit", "0", path_str(deb)],
    ));
    let text = String::from_utf8_lossy(&out.stdout);
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
    assert!(
        errors.is_empty(),
        "lintian errors on {}:\n{}",
        deb.display(),
        errors.join("\n")
    );
    // lintian exits non-zero only for errors (and its own failures).
    assert!(
        out.status.success(),
        "lintian {} failed: {}\n{}",
        deb.display(),
        text,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `mode user group` of a path, e.g. "750 outpost outpost".
fn owner_mode(path: &str) -> String {
    run(&mut cmd("stat", &["-c", "%a %U %G", path]))
        .trim()
        .to_owned()
}

fn assert_owner_mode(path: &str, expected: &str) {
    assert_eq!(owner_mode(path), expected, "owner and mode of {path}");
}

/// The installed unit file of `package` (its path as dpkg lists it).
fn unit_file(package: &str) -> String {
    let list = run(&mut cmd("dpkg", &["-L", package]));
    list.lines()
        .find(|l| l.ends_with(&format!("/{package}.service")))
        .unwrap_or_else(|| panic!("{package} installs no unit file:\n{list}"))
        .to_owned()
}

/// The `ExecStart=` command line of an installed unit.
fn exec_start(unit: &str) -> Vec<String> {
    let text = fs::read_to_string(unit).unwrap_or_else(|e| panic!("{unit}: {e}"));
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap_or_else(|| panic!("{unit} has no ExecStart="));
    line.split_whitespace().map(str::to_owned).collect()
}

/// Replaces the line starting with `prefix` in a config file; fails if there is none.
fn edit_config(path: &str, prefix: &str, line: &str) {
    let text = fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut found = false;
    let edited: Vec<String> = text
        .lines()
        .map(|l| {
            if !found && l.starts_with(prefix) {
                found = true;
                line.to_owned()
            } else {
                l.to_owned()
            }
        })
        .collect();
    assert!(found, "{path} has no line starting with `{prefix}`");
    fs::write(path, edited.join("\n") + "\n").unwrap_or_else(|e| panic!("{path}: {e}"));
}

/// Every file under `dir` with its size and SHA-256, to show state survives an upgrade.
fn digests(dir: &str) -> BTreeMap<String, String> {
    let out = run(&mut cmd(
        "find",
        &[dir, "-type", "f", "-exec", "sha256sum", "{}", "+"],
    ));
    out.lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(sum, path)| (path.to_owned(), sum.to_owned()))
        .collect()
}

fn status_of_agent() -> Result<String, String> {
    let out = output(&mut as_outpost(&[
        "/usr/bin/outpost-aggregator",
        "--config",
        "/etc/outpost/aggregator.toml",
        "status",
        "--json",
    ]));
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("status --json: {e}"))?;
    v.as_array()
        .and_then(|a| a.iter().find(|e| e["agent_id"] == agent_id()))
        .map(|e| e["status"].as_str().unwrap_or_default().to_owned())
        .ok_or_else(|| format!("{} not listed: {v}", agent_id()))
}

/// The agent's id: enrolled by the postinst, it is the host's name.
fn agent_id() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("the host name")
        .trim()
        .to_owned()
}

fn dpkg_install(debs: &[&Path]) -> String {
    let mut c = cmd("dpkg", &["--force-confold", "--install"]);
    c.args(debs).env("DEBIAN_FRONTEND", "noninteractive");
    run(&mut c)
}

#[test]
fn packages_build_lint_install_run_upgrade_remove_and_purge() {
    require_root();
    purge_everything();
    let _purge = PurgeOnDrop;
    let work = tempfile::tempdir().expect("a temporary directory");

    // Build: revision 1, and revision 2 for the upgrade (the same binaries).
    let r1 = build_packages("1", &work.path().join("r1"));
    let r2 = build_packages("2", &work.path().join("r2"));

    for package in PACKAGES {
        check_lintian(&r1[&format!("{package}.deb")]);
        check_rpm(package, &r1[&format!("{package}.rpm")]);
    }

    // The aggregator first, started on a free loopback port; then an enrollment token dropped
    // at /etc/outpost/enroll.token, and the agent's package enrolls in its postinst: install the
    // package, nothing copied by hand.
    dpkg_install(&[&r1["outpost-aggregator.deb"]]);
    edit_config(
        "/etc/outpost/aggregator.toml",
        "listen = ",
        "listen = \"127.0.0.1:0\"",
    );
    let aggregator_unit = unit_file("outpost-aggregator");
    let mut aggregator = Service::start("aggregator", &exec_start(&aggregator_unit));
    let addr_file = "/var/lib/outpost/aggregator/listen.addr";
    let addr = wait_for("the aggregator's listen.addr", || {
        aggregator.assert_running()?;
        let text = fs::read_to_string(addr_file).map_err(|e| e.to_string())?;
        text.trim()
            .parse::<std::net::SocketAddr>()
            .map_err(|e| format!("{text:?}: {e}"))
    });
    // As the service user, so that the store's files stay the service's.
    let token = run(&mut as_outpost(&[
        "/usr/bin/outpost-aggregator",
        "--config",
        "/etc/outpost/aggregator.toml",
        "token",
        "create",
        "--enroll",
        "--uses",
        "1",
        "--endpoint",
        &format!("127.0.0.1:{}", addr.port()),
    ]));
    let token = token
        .split_whitespace()
        .find(|w| w.starts_with("outpost-enroll-"))
        .unwrap_or_else(|| panic!("no token in: {token}"))
        .to_owned();
    fs::write("/etc/outpost/enroll.token", format!("{token}\n")).expect("the token file");
    let mut install = cmd("dpkg", &["--force-confold", "--install"]);
    install
        .arg(&r1["outpost-agent.deb"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    let out = output(&mut install);
    let installed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && installed.contains("enrolled as"),
        "the agent's postinst enrolls with the token file:\n{installed}"
    );
    assert!(
        !Path::new("/etc/outpost/enroll.token").exists(),
        "the used token file is removed"
    );
    // The user, the directories and the modes.
    let passwd = run(&mut cmd("getent", &["passwd", "outpost"]));
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(fields.get(5), Some(&"/var/lib/outpost"), "{passwd}");
    assert!(
        fields.get(6).is_some_and(|s| s.ends_with("nologin")),
        "{passwd}"
    );
    assert!(user_exists("group", "outpost"));
    assert_owner_mode("/etc/outpost", "755 root root");
    assert_owner_mode("/etc/outpost/tls", "770 root outpost");
    assert_owner_mode("/etc/outpost/agent.toml", "640 root outpost");
    assert_owner_mode("/etc/outpost/aggregator.toml", "640 root outpost");
    // The agent's own identity, made on this host; the service renews it in place.
    assert_owner_mode("/etc/outpost/tls/agent.key", "600 outpost outpost");
    assert_owner_mode("/etc/outpost/tls/agent.pem", "644 outpost outpost");
    assert_owner_mode("/etc/outpost/rules.d", "755 root root");
    assert_owner_mode("/etc/outpost/rules.d/README", "644 root root");
    assert_owner_mode("/var/lib/outpost", "750 outpost outpost");
    assert_owner_mode("/var/lib/outpost/agent", "750 outpost outpost");
    assert_owner_mode("/var/lib/outpost/aggregator", "750 outpost outpost");
    assert_owner_mode("/var/log/outpost", "750 outpost outpost");
    // The PKI made by the aggregator's postinst: the service reads the server key, and the CA
    // key, with which it signs the certificates of enrolling and renewing agents.
    assert_owner_mode("/etc/outpost/tls/ca.key", "640 root outpost");
    assert_owner_mode("/etc/outpost/tls/agents", "770 root outpost");
    assert_owner_mode("/etc/outpost/tls/server.key", "640 root outpost");
    // An operator renewing the server certificate as root: the new key stays readable by the
    // service, and by no one else.
    run(&mut cmd(
        "outpost-aggregator",
        &[
            "pki",
            "issue-server",
            "--dir",
            "/etc/outpost/tls",
            "--force",
        ],
    ));
    assert_owner_mode("/etc/outpost/tls/server.key", "640 root outpost");
    for f in ["ca.pem", "server.pem", "crl.pem"] {
        assert!(Path::new("/etc/outpost/tls").join(f).is_file(), "{f}");
    }

    // The units as installed.
    let agent_unit = unit_file("outpost-agent");
    for unit in [&agent_unit, &aggregator_unit] {
        let out = output(&mut cmd("systemd-analyze", &["verify", unit]));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify {unit}: {}\n{stderr}",
            out.status
        );
    }

    // The installed binaries run.
    for p in PACKAGES {
        let v = run(&mut cmd(&format!("/usr/bin/{p}"), &["--version"]));
        assert!(v.starts_with(&format!("{p} 0.1.0")), "{p} --version: {v}");
    }
    run(&mut as_outpost(&[
        "/usr/bin/outpost-aggregator",
        "--config",
        "/etc/outpost/aggregator.toml",
        "check-config",
    ]));
    // Enrolled by the postinst: the configuration names the aggregator, and passes.
    let agent_config = fs::read_to_string("/etc/outpost/agent.toml").expect("agent.toml");
    assert!(
        agent_config.contains(&format!("quic://127.0.0.1:{}", addr.port())),
        "{agent_config}"
    );
    assert!(
        agent_config.contains("# Where to send events: quic://HOST:PORT."),
        "the enrollment kept the configuration's comments:\n{agent_config}"
    );
    run(&mut as_outpost(&[
        "/usr/bin/outpost-agent",
        "--config",
        "/etc/outpost/agent.toml",
        "check-config",
    ]));
    let mut agent = Service::start("agent", &exec_start(&agent_unit));
    wait_for("the agent online in `outpost-aggregator status`", || {
        aggregator.assert_running()?;
        agent.assert_running()?;
        let status = status_of_agent()?;
        if status == "online" {
            Ok(())
        } else {
            Err(status)
        }
    });
    wait_for("the agent's spool and log files", || {
        let spool = Path::new("/var/lib/outpost/agent/spool.db");
        let logs = fs::read_dir("/var/log/outpost")
            .map_err(|e| e.to_string())?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect::<Vec<_>>();
        let has = |p: &str| logs.iter().any(|l| l.starts_with(p));
        if spool.is_file() && has("outpost-agent.") && has("outpost-aggregator.") {
            Ok(())
        } else {
            Err(format!("spool {}, logs {logs:?}", spool.is_file()))
        }
    });
    agent.stop();
    aggregator.stop();
    // Files the services wrote belong to the service user.
    let spool = fs::metadata("/var/lib/outpost/agent/spool.db").expect("the spool");
    let store = fs::metadata("/var/lib/outpost/aggregator/aggregator.db").expect("the store");
    assert_eq!(spool.uid(), store.uid());
    assert_ne!(spool.uid(), 0, "the spool is owned by outpost, not root");

    // Upgrade to revision 2: state, CA and modified configuration are kept.
    let state_before = digests("/var/lib/outpost");
    assert!(
        state_before.keys().any(|k| k.ends_with("/agent/spool.db"))
            && state_before
                .keys()
                .any(|k| k.ends_with("/aggregator/aggregator.db")),
        "{state_before:?}"
    );
    let configs_before = digests("/etc/outpost");
    dpkg_install(&[&r2["outpost-aggregator.deb"], &r2["outpost-agent.deb"]]);
    for p in PACKAGES {
        let version = run(&mut cmd("dpkg-query", &["-W", "-f=${Version}", p]));
        assert_eq!(version, "0.1.0-2", "{p} after the upgrade");
    }
    assert_eq!(
        digests("/var/lib/outpost"),
        state_before,
        "state after upgrade"
    );
    // /etc/outpost/tls too: the CA, the server certificate and the agent's.
    assert_eq!(
        digests("/etc/outpost"),
        configs_before,
        "configuration after upgrade"
    );
    let leftovers = run(&mut cmd("find", &["/etc/outpost", "-name", "*.dpkg-*"]));
    assert!(leftovers.trim().is_empty(), "{leftovers}");
    assert_owner_mode("/etc/outpost/agent.toml", "640 root outpost");
    assert_owner_mode("/etc/outpost/aggregator.toml", "640 root outpost");
    if let Err(e) = status_of_agent() {
        panic!("the store does not know the agent after the upgrade: {e}");
    }

    // Remove: binaries go, configuration stays.
    run(&mut cmd(
        "dpkg",
        &["--remove", "outpost-agent", "outpost-aggregator"],
    ));
    for p in PACKAGES {
        assert!(
            !Path::new(&format!("/usr/bin/{p}")).exists(),
            "{p} binary after remove"
        );
        assert_eq!(dpkg_status(p).as_deref(), Some("rc "), "{p} after remove");
    }
    for f in ["/etc/outpost/agent.toml", "/etc/outpost/aggregator.toml"] {
        assert_eq!(
            digests(f).into_values().next(),
            configs_before.get(f).cloned(),
            "{f} after remove"
        );
    }

    // Purge: nothing of outpost is left.
    run(&mut cmd(
        "dpkg",
        &["--purge", "outpost-agent", "outpost-aggregator"],
    ));
    for p in PACKAGES {
        assert_eq!(dpkg_status(p), None, "{p} after purge");
    }
    let listed = output(&mut cmd("dpkg", &["-l", "outpost-*"]));
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("outpost-"),
        "dpkg -l after purge: {}",
        String::from_utf8_lossy(&listed.stdout)
    );
    for dir in ["/etc/outpost", "/var/lib/outpost", "/var/log/outpost"] {
        assert!(!Path::new(dir).exists(), "{dir} after purge");
    }
    assert!(
        !user_exists("passwd", "outpost"),
        "user outpost after purge"
    );
    assert!(
        !user_exists("group", "outpost"),
        "group outpost after purge"
    );

    // The rpm scriptlets, run by rpm itself (the dependencies name RHEL packages, hence --nodeps).
    rpm_install_upgrade_erase(&r1, &r2);
}

fn rpm_install_upgrade_erase(r1: &BTreeMap<String, PathBuf>, r2: &BTreeMap<String, PathBuf>) {
    let rpm = |args: &[&str], packages: &BTreeMap<String, PathBuf>| {
        let mut c = cmd("rpm", args);
        c.arg(&packages["outpost-aggregator.rpm"])
            .arg(&packages["outpost-agent.rpm"]);
        run(&mut c)
    };
    let installed = rpm(&["-i", "--nodeps"], r1);
    assert!(
        installed.contains("systemctl start outpost-agent"),
        "the agent's %post says what to do next:\n{installed}"
    );
    assert!(user_exists("passwd", "outpost"), "%pre creates the user");
    assert_owner_mode("/etc/outpost/tls", "770 root outpost");
    assert_owner_mode("/etc/outpost/agent.toml", "640 root outpost");
    assert_owner_mode("/etc/outpost/aggregator.toml", "640 root outpost");
    assert_owner_mode("/etc/outpost/tls/ca.key", "640 root outpost");
    assert_owner_mode("/etc/outpost/tls/server.key", "640 root outpost");
    assert_owner_mode("/var/lib/outpost/agent", "750 outpost outpost");
    assert_owner_mode("/var/lib/outpost/aggregator", "750 outpost outpost");
    assert_owner_mode("/var/log/outpost", "750 outpost outpost");

    let mut agent_toml = fs::read_to_string("/etc/outpost/agent.toml").expect("agent.toml");
    agent_toml.push_str("# a local change\n");
    fs::write("/etc/outpost/agent.toml", &agent_toml).expect("agent.toml");
    let before = digests("/etc/outpost");
    rpm(&["-U", "--nodeps"], r2);
    for p in PACKAGES {
        assert_eq!(
            run(&mut cmd("rpm", &["-q", "--qf", "%{VERSION}-%{RELEASE}", p])),
            "0.1.0-2",
            "{p} after rpm -U"
        );
    }
    assert_eq!(
        digests("/etc/outpost"),
        before,
        "configuration and CA after rpm -U"
    );

    run(&mut cmd(
        "rpm",
        &["-e", "--nodeps", "outpost-agent", "outpost-aggregator"],
    ));
    for p in PACKAGES {
        assert!(
            !Path::new(&format!("/usr/bin/{p}")).exists(),
            "{p} binary after rpm -e"
        );
    }
    // rpm keeps a modified configuration file as .rpmsave.
    assert_eq!(
        fs::read_to_string("/etc/outpost/agent.toml.rpmsave")
            .ok()
            .as_deref(),
        Some(agent_toml.as_str()),
        "the modified agent.toml after rpm -e"
    );
}

/// Exposure goals of `systemd-analyze security --offline=true` (lower is better).
const GOALS: [(&str, f64); 2] = [("outpost-aggregator", 2.0), ("outpost-agent", 3.5)];

#[test]
fn unit_files_meet_their_exposure_goals() {
    for (unit, goal) in GOALS {
        let path = repo().join(format!("packaging/{unit}.service"));
        let out = run(&mut cmd(
            "systemd-analyze",
            &["security", "--offline=true", path_str(&path)],
        ));
        let line = out
            .lines()
            .find(|l| l.contains("Overall exposure level"))
            .unwrap_or_else(|| panic!("no exposure level for {unit}:\n{out}"));
        let score: f64 = line
            .split(':')
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the score in `{line}`"));
        assert!(
            score <= goal,
            "{unit}: exposure {score} above the goal {goal}\n{out}"
        );
    }
}
