#!/usr/bin/env python3
"""Alert latency, side by side in one run: Outpost (agent at its default 10 s metrics interval,
and a second agent at 1 s) and node_exporter + Prometheus (default 1m/1m, and 1s/1s) +
Alertmanager, all watching the same breaches; plus a log line only Outpost sees.

Started by scripts/bench-alert-latency, which builds the binaries, makes the work directory and
cleans up after it. Run as root (it mounts tmpfs file systems).

A metric breach is a brand-new 16 MiB tmpfs mounted under WORK/m/ and filled to ~97 % with one
file; t0 is taken when the write (and close) of that file returned. A log breach is a line
appended to WORK/breach.log, which the default agent tails; t0 is taken when the write returned.
Latency = when the webhook receiver got the request that first names the breach - t0.
"""

import json
import math
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BIN = sys.argv[1]
WORK = sys.argv[2]
DURATION = float(os.environ.get("DURATION", "720"))
SPACING = float(os.environ.get("SPACING", "15"))
DEADLINE = float(os.environ.get("DEADLINE", "180"))
WARMUP = float(os.environ.get("WARMUP", "15"))
SEED = os.environ.get("SEED")
RESULTS = os.environ.get("RESULTS")  # write every sample here as JSON lines, if set
FS_SIZE = 16 * 1024 * 1024
FILL = FS_SIZE - 512 * 1024  # 15.5 MiB: 96.9 % full
PREFILL = 14 * 1024 * 1024  # 87.5 %: below the threshold

MNT = os.path.join(WORK, "m")
LOGFILE = os.path.join(WORK, "breach.log")

# Pipelines: name -> what it watches.
METRIC_PIPELINES = ["outpost-10s", "outpost-1s", "prom-1m", "prom-1s"]
LOG_PIPELINES = ["outpost-log"]
ALL_PIPELINES = METRIC_PIPELINES + LOG_PIPELINES
DESCRIPTION = {
    "outpost-10s": "Outpost, agent metrics every 10 s (default)",
    "outpost-1s": "Outpost, agent metrics every 1 s",
    "prom-1m": "Prometheus scrape/eval 1m (default) + Alertmanager",
    "prom-1s": "Prometheus scrape/eval 1s + Alertmanager",
    "outpost-log": "Outpost, log line (event-driven, default agent)",
}


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def free_port(kind=socket.SOCK_STREAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------------------------------------
# Webhook receiver: every request with its arrival time and body.

received = []  # (recv_ns, path, body)
received_lock = threading.Lock()
received_cv = threading.Condition(received_lock)


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        t = time.time_ns()
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        with received_cv:
            received.append((t, self.path.strip("/"), doc))
            received_cv.notify_all()

    def log_message(self, *a):
        pass


hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
hook.daemon_threads = True
HOOK = "http://127.0.0.1:%d" % hook.server_address[1]
threading.Thread(target=hook.serve_forever, daemon=True).start()

# ---------------------------------------------------------------------------------------------
# Processes.

procs = []


def start(name, args, **kw):
    err = open(os.path.join(WORK, name + ".err"), "w")
    p = subprocess.Popen(args, stdout=err, stderr=err, stdin=subprocess.DEVNULL, **kw)
    procs.append((name, p))
    return p


def stop_all():
    for _, p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.time() + 10
    for _, p in procs:
        try:
            p.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            p.kill()


mounted = []


def unmount_all():
    for m in list(mounted):
        subprocess.run(["umount", "-l", m], stderr=subprocess.DEVNULL)
        mounted.remove(m)


def on_signal(sig, _frame):
    raise KeyboardInterrupt()


signal.signal(signal.SIGTERM, on_signal)


def wait_for(what, check, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit("timed out waiting for " + what)


def http_ok(url):
    with urllib.request.urlopen(url, timeout=2) as r:
        r.read()  # all of it: node_exporter logs an error for a client that hangs up early
        return r.status == 200


def setup_outpost(n_log_rules):
    agg = os.path.join(WORK, "aggregator")
    subprocess.run([BIN + "/outpost-aggregator", "pki", "init", "--dir", WORK + "/tls"],
                   check=True, stdout=subprocess.DEVNULL)
    for a in ("lat-10s", "lat-1s"):
        subprocess.run([BIN + "/outpost-aggregator", "pki", "issue-agent", a, "--dir", WORK + "/tls"],
                       check=True, stdout=subprocess.DEVNULL)
    # Rules: the filesystem breach (every agent), and one log rule per log breach: a log rule has
    # one alert per host, which keeps firing (keep_firing_for, 5 min by default) and so would
    # notify the first breach only; a rule of its own gives each breach a fresh alert and group,
    # notified after group_wait = 0 like the metric breaches.
    rules = ['''[[rule]]
name = "bench-filesystem-full"
kind = "threshold"
severity = "high"
metric = "system.filesystem.utilization"
op = ">"
value = 0.9
labels = { pipeline = "metric" }
''']
    for i in range(n_log_rules):
        rules.append('''[[rule]]
name = "bench-log-%03d"
kind = "log"
severity = "high"
pattern = 'OUTPOST-LATENCY-BREACH id=l%03d\\b'
labels = { pipeline = "log", breach = "l%03d" }
''' % (i, i, i))
    write(agg + "/rules.d/bench.toml", "\n".join(rules))
    write(agg + "/aggregator.toml", f'''data_dir = "{agg}/data"
listen = "127.0.0.1:0"
[tls]
dir = "{WORK}/tls"
[log]
dir = "{WORK}/log"
[api]
listen = "127.0.0.1:0"
[retention]
# Keep every metric point a row for the whole run, so the breakdown can read its times.
metric_chunk = "7d"
[alerting]
rules_dir = "rules.d"
[alerting.route]
receiver = "outpost-10s"
group_by = ["..."]
group_wait = "0s"
routes = [
  {{ matchers = ["pipeline=log"], receiver = "outpost-log" }},
  {{ matchers = ["host=lat-1s"], receiver = "outpost-1s" }},
]
[[alerting.receivers]]
name = "outpost-10s"
webhook = {{ url = "{HOOK}/outpost-10s" }}
[[alerting.receivers]]
name = "outpost-1s"
webhook = {{ url = "{HOOK}/outpost-1s" }}
[[alerting.receivers]]
name = "outpost-log"
webhook = {{ url = "{HOOK}/outpost-log" }}
''')
    subprocess.run([BIN + "/outpost-aggregator", "--config", agg + "/aggregator.toml", "check-config"],
                   check=True, stdout=subprocess.DEVNULL)
    start("aggregator", [BIN + "/outpost-aggregator", "--config", agg + "/aggregator.toml", "run"])
    addr_file = agg + "/data/listen.addr"
    wait_for("the aggregator's listen.addr", lambda: os.path.getsize(addr_file) > 0)
    port = open(addr_file).read().strip().rsplit(":", 1)[1]
    excl = ", ".join('"%s"' % t for t in FS_EXCLUDE_TYPES)
    open(LOGFILE, "a").close()
    for agent, interval, logs in (("lat-10s", None, True), ("lat-1s", "1s", False)):
        d = os.path.join(WORK, agent)
        cfg = f'''data_dir = "{d}/data"
[aggregator]
endpoint = "quic://127.0.0.1:{port}"
server_name = "localhost"
ca = "{WORK}/tls/ca.pem"
cert = "{WORK}/tls/agents/{agent}.pem"
key = "{WORK}/tls/agents/{agent}.key"
[log]
dir = "{WORK}/log"
[fim]
# Off: its first baseline scan of /etc and /usr would only add CPU noise.
enabled = false
[metrics]
{'interval = "%s"' % interval if interval else '# interval: the default (10s)'}
[metrics.filesystem]
# The default list without tmpfs, and only the breach mounts.
exclude_types = [{excl}]
include_mountpoints = ["{MNT}/*"]
'''
        if logs:
            cfg += f'''[[logs.files]]
name = "breach"
include = ["{LOGFILE}"]
'''
        write(d + "/agent.toml", cfg)
        subprocess.run([BIN + "/outpost-agent", "--config", d + "/agent.toml", "check-config"],
                       check=True, stdout=subprocess.DEVNULL)
        start(agent, [BIN + "/outpost-agent", "--config", d + "/agent.toml", "run"])

    def both_connected():
        c = sqlite3.connect("file:%s/data/aggregator.db?mode=ro" % agg, uri=True, timeout=1)
        try:
            n = c.execute("SELECT count(*) FROM agents WHERE connected = 1").fetchone()[0]
        finally:
            c.close()
        return n >= 2

    wait_for("both agents to connect", both_connected, 60)
    return agg + "/data/aggregator.db"


# The agent's default exclude_types (agent/src/collectors/metrics/mod.rs FILESYSTEM_EXCLUDE_TYPES)
# without "tmpfs".
FS_EXCLUDE_TYPES = ["autofs", "binfmt_misc", "bpf", "cgroup", "cgroup2", "configfs", "debugfs",
                    "devpts", "devtmpfs", "efivarfs", "fusectl", "hugetlbfs", "mqueue", "nsfs",
                    "overlay", "proc", "pstore", "ramfs", "rpc_pipefs", "securityfs", "selinuxfs",
                    "squashfs", "sysfs", "tracefs"]


def setup_prometheus():
    node = free_port()
    start("node-exporter", ["prometheus-node-exporter", "--web.listen-address=127.0.0.1:%d" % node])
    am = free_port()
    write(WORK + "/am/alertmanager.yml", f'''route:
  receiver: prom-1m
  group_by: [alertname, mountpoint]
  group_wait: 0s
  routes:
    - matchers: ['alertname="BenchFilesystemFull1s"']
      receiver: prom-1s
receivers:
  - name: prom-1m
    webhook_configs: [{{url: "{HOOK}/prom-1m", send_resolved: false}}]
  - name: prom-1s
    webhook_configs: [{{url: "{HOOK}/prom-1s", send_resolved: false}}]
''')
    start("alertmanager", ["prometheus-alertmanager",
                           "--config.file=" + WORK + "/am/alertmanager.yml",
                           "--storage.path=" + WORK + "/am/data",
                           "--web.listen-address=127.0.0.1:%d" % am,
                           "--cluster.listen-address="])
    proms = {}
    for name, alertname, interval in (("prom-1m", "BenchFilesystemFull1m", None),
                                      ("prom-1s", "BenchFilesystemFull1s", "1s")):
        d = WORK + "/" + name
        sel = '{mountpoint=~"%s/.*"}' % MNT
        write(d + "/rules.yml", f'''groups:
  - name: bench
    rules:
      - alert: {alertname}
        expr: 1 - node_filesystem_avail_bytes{sel} / node_filesystem_size_bytes{sel} > 0.9
        for: 0s
''')
        glob = ("global:\n  scrape_interval: %s\n  evaluation_interval: %s\n" % (interval, interval)
                if interval else "# global: scrape_interval and evaluation_interval at their defaults (1m)\n")
        write(d + "/prometheus.yml", glob + f'''rule_files: ["{d}/rules.yml"]
alerting:
  alertmanagers:
    - static_configs: [{{targets: ["127.0.0.1:{am}"]}}]
scrape_configs:
  - job_name: node
    static_configs: [{{targets: ["127.0.0.1:{node}"]}}]
''')
        port = free_port()
        start(name, ["prometheus", "--config.file=" + d + "/prometheus.yml",
                     "--storage.tsdb.path=" + d + "/data",
                     "--web.listen-address=127.0.0.1:%d" % port])
        proms[name] = port
    wait_for("node_exporter", lambda: http_ok("http://127.0.0.1:%d/metrics" % node))
    wait_for("alertmanager", lambda: http_ok("http://127.0.0.1:%d/-/ready" % am))
    for name, port in proms.items():
        wait_for(name, lambda: http_ok("http://127.0.0.1:%d/-/ready" % port))
    return proms


# ---------------------------------------------------------------------------------------------
# Breaches.

class Breach:
    def __init__(self, key, kind, t0):
        self.key = key  # mount point, or "lNNN"
        self.kind = kind
        self.t0 = t0
        self.pipelines = METRIC_PIPELINES if kind == "metric" else LOG_PIPELINES
        self.got = {}  # pipeline -> (recv_ns, alert dict)
        self.done = False


breaches = []
by_key = {}


def match_new():
    """Assigns every webhook request not looked at yet to the breaches it names (first one
    wins)."""
    global scanned
    with received_lock:
        new = received[scanned:]
        scanned = len(received)
    for t, path, doc in new:
        if not doc:
            continue
        for a in doc.get("alerts", []):
            if a.get("status") != "firing":
                continue
            labels = a.get("labels", {})
            key = labels.get("mountpoint") or labels.get("breach")
            b = by_key.get(key)
            if b is None or path not in b.pipelines:
                continue
            b.got.setdefault(path, (t, a))


scanned = 0


def metric_breach(i):
    mp = os.path.join(MNT, "b%03d" % i)
    os.makedirs(mp, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", mp], check=True)
    mounted.append(mp)
    block = b"\xa5" * (1 << 20)
    fd = os.open(mp + "/fill", os.O_WRONLY | os.O_CREAT, 0o600)

    def fill(n):
        while n:
            n -= os.write(fd, block[:min(n, len(block))])

    # 14 MiB first (87.5 %, below the threshold), then the last 1.5 MiB, which crosses 90 %: the
    # breach happens within that one write, and t0 is when it returned.
    fill(PREFILL)
    fill(FILL - PREFILL)
    t0 = time.time_ns()
    os.close(fd)
    b = Breach(mp, "metric", t0)
    breaches.append(b)
    by_key[mp] = b


def log_breach(fd, i):
    line = ("OUTPOST-LATENCY-BREACH id=l%03d\n" % i).encode()
    key = "l%03d" % i
    b = Breach(key, "log", 0)
    by_key[key] = b  # before the write: the notification can only come after it
    os.write(fd, line)
    b.t0 = time.time_ns()
    breaches.append(b)


def settle(now_ns):
    """Unmounts breaches every pipeline notified, or whose deadline passed."""
    match_new()
    for b in breaches:
        if b.done:
            continue
        if all(p in b.got for p in b.pipelines) or now_ns - b.t0 > DEADLINE * 1e9:
            b.done = True
            if b.kind == "metric":
                subprocess.run(["umount", b.key], stderr=subprocess.DEVNULL)
                if subprocess.run(["mountpoint", "-q", b.key]).returncode != 0:
                    mounted.remove(b.key)


def run_breaches():
    rng = random.Random(SEED)
    n = 0
    fd = os.open(LOGFILE, os.O_WRONLY | os.O_APPEND)
    start_t = time.time()
    next_at = start_t
    while next_at < start_t + DURATION:
        while time.time() < next_at:
            settle(time.time_ns())
            time.sleep(min(0.2, max(0.0, next_at - time.time())))
        metric_breach(n)
        # The log breach halfway to the next metric breach, so the two do not share a moment.
        gap = SPACING * rng.uniform(0.6, 1.4)
        log_at = time.time() + gap / 2
        while time.time() < log_at:
            settle(time.time_ns())
            time.sleep(min(0.2, max(0.0, log_at - time.time())))
        log_breach(fd, n)
        n += 1
        next_at = next_at + gap
        if n % 8 == 0:
            log("%d breaches started" % n)
    os.close(fd)
    log("%d breaches started; waiting up to %.0f s for the last notifications" % (n, DEADLINE))
    while not all(b.done for b in breaches):
        settle(time.time_ns())
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# Results.

def percentile(xs, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * q
    f = math.floor(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)


def outpost_breakdown(db):
    """Per Outpost notification, from the aggregator's store: the sample that crossed (its time
    on the agent and its arrival) and when the notification was made."""
    c = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=5)
    agents = dict(c.execute("SELECT agent_key, agent_id FROM agents"))
    first_cross = {}  # (agent_id, mountpoint) -> (time_ns, received_ns)
    for series_id, agent_key, attrs in c.execute(
            "SELECT series_id, agent_key, attributes FROM metric_series WHERE name = 'system.filesystem.utilization'"):
        try:
            mp = json.loads(attrs).get("mountpoint")
        except ValueError:
            continue
        row = c.execute("SELECT time_ns, received_ns FROM metric_points WHERE series_id = ? AND value > 0.9 "
                        "ORDER BY time_ns LIMIT 1", (series_id,)).fetchone()
        if row:
            first_cross[(agents.get(agent_key), mp)] = row
    made = {}  # (receiver, key) -> created_ns of the first notification naming it
    for receiver, created_ns, message in c.execute("SELECT receiver, created_ns, message FROM outbox ORDER BY id"):
        try:
            m = json.loads(message)
        except ValueError:
            continue
        for a in m.get("alerts", []):
            lab = a.get("labels", {})
            key = lab.get("mountpoint") or lab.get("breach")
            made.setdefault((receiver, key), created_ns)
    c.close()
    return first_cross, made


def report(db):
    match_new()
    first_cross, made = outpost_breakdown(db)
    rows = []
    samples = []
    for p in ALL_PIPELINES:
        lat, parts = [], {"wait": [], "ship": [], "engine": [], "send": [], "to_made": []}
        missed = 0
        for b in breaches:
            if p not in b.pipelines:
                continue
            if p not in b.got:
                missed += 1
                samples.append({"pipeline": p, "breach": b.key, "t0_ns": b.t0, "latency_s": None})
                continue
            t, _alert = b.got[p]
            s = {"pipeline": p, "breach": b.key, "t0_ns": b.t0, "recv_ns": t, "latency_s": (t - b.t0) / 1e9}
            lat.append(s["latency_s"])
            if p.startswith("outpost"):
                host = {"outpost-10s": "lat-10s", "outpost-1s": "lat-1s", "outpost-log": "lat-10s"}[p]
                created = made.get((p, b.key))
                cross = first_cross.get((host, b.key)) if b.kind == "metric" else None
                if created:
                    s["made_ns"] = created
                    parts["send"].append((t - created) / 1e9)
                    parts["to_made"].append((created - b.t0) / 1e9)
                if cross:
                    s["sample_ns"], s["received_ns"] = cross
                    parts["wait"].append((cross[0] - b.t0) / 1e9)
                    parts["ship"].append((cross[1] - cross[0]) / 1e9)
                    if created:
                        parts["engine"].append((created - cross[1]) / 1e9)
            samples.append(s)
        rows.append((p, lat, missed, parts))
    out = []
    out.append("| pipeline | samples | missed | p50 s | p99 s | max s |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for p, lat, missed, _ in rows:
        out.append("| %s | %d | %d | %.3f | %.3f | %.3f |" % (
            DESCRIPTION[p], len(lat), missed, percentile(lat, 0.5), percentile(lat, 0.99),
            max(lat) if lat else float("nan")))
    out.append("")
    out.append("Outpost breakdown (p50 / max, seconds; from the aggregator's store):")
    out.append("")
    out.append("| pipeline | breach → sample taken | sample taken → at the aggregator | "
               "at the aggregator → notification made | breach → notification made | made → webhook got it |")
    out.append("|---|---:|---:|---:|---:|---:|")
    for p, lat, missed, parts in rows:
        if not p.startswith("outpost"):
            continue
        cell = lambda xs: ("%.3f / %.3f" % (percentile(xs, 0.5), max(xs))) if xs else "–"
        out.append("| %s | %s | %s | %s | %s | %s |" % (
            p, cell(parts["wait"]), cell(parts["ship"]), cell(parts["engine"]),
            cell(parts["to_made"]), cell(parts["send"])))
    if RESULTS:
        with open(RESULTS, "w") as f:
            for s in samples:
                f.write(json.dumps(s) + "\n")
    return "\n".join(out)


def main():
    n_log_rules = int(DURATION / (SPACING * 0.6)) + 4
    os.makedirs(MNT, exist_ok=True)
    try:
        log("starting Prometheus, Alertmanager and node_exporter")
        setup_prometheus()
        log("starting the aggregator and two agents")
        db = setup_outpost(n_log_rules)
        log("warming up for %.0f s" % WARMUP)
        time.sleep(WARMUP)
        load0 = open("/proc/loadavg").read().split()[:3]
        log("breaches every ~%.0f s for %.0f s (deadline %.0f s), loadavg %s" % (SPACING, DURATION, DEADLINE, " ".join(load0)))
        run_breaches()
        load1 = open("/proc/loadavg").read().split()[:3]
        for name, p in procs:
            if p.poll() is not None:
                log("warning: %s exited early with %s" % (name, p.returncode))
        print(report(db))
        print()
        print("breaches: %d metric, %d log; spacing ~%.0f s (uniform 0.6-1.4x), duration %.0f s, deadline %.0f s; "
              "loadavg before %s, after %s; p99 by linear interpolation between closest ranks"
              % (sum(b.kind == "metric" for b in breaches), sum(b.kind == "log" for b in breaches),
                 SPACING, DURATION, DEADLINE, "/".join(load0), "/".join(load1)))
    finally:
        stop_all()
        unmount_all()
        hook.shutdown()


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
