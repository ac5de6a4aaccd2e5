#!/usr/bin/env python3
"""Sluice side by side with nginx and HAProxy, in one run.

Every proxy forwards to the same small upstream (an nginx answering a fixed
body), with the same number of workers, and is driven by the same load
(wrk, keep-alive, 64 connections; h2load for HTTP/2). Rounds alternate the
order of the proxies; medians over rounds are reported, and ratios against
nginx (and against Sluice's own pass-through for filter chains).

Run through `bench/run`, which installs the tools and builds everything.
"""

import argparse
import asyncio
import http.client
import json
import os
import pathlib
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
class Build:
    """A Sluice binary and the plugins built for it."""

    def __init__(self, binary, plugins):
        self.binary, self.plugins = pathlib.Path(binary), pathlib.Path(plugins)
        self._known = {}

    def knows_listener_limits(self):
        """Whether this build takes listener limits (builds before them refuse the keys)."""
        return self.knows('max_connections = 1\n')

    def knows(self, toml):
        """Whether this build accepts `toml` after a listener (earlier builds refuse keys they lack)."""
        if toml not in self._known:
            with tempfile.TemporaryDirectory() as tmp:
                conf = pathlib.Path(tmp) / "probe.toml"
                conf.write_text('[[listeners]]\naddress = "127.0.0.1:0"\n' + toml)
                self._known[toml] = subprocess.run([str(self.binary), "check", "--config", str(conf)],
                                                   capture_output=True).returncode == 0
        return self._known[toml]


CURRENT = Build(ROOT / "target/release/sluice", ROOT / "target/wasm/wasm32-wasip2/release")
SLUICE = CURRENT.binary
# An earlier build to compare with in the same run (`--baseline DIR`), or None.
BASELINE = None
_building = CURRENT
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
BODY = "x" * 100
CERT = ROOT / "tests/fixtures/tls/cert.pem"
KEY = ROOT / "tests/fixtures/tls/key.pem"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HAPROXY_MAXCONN = 9_900


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def tree(pid):
    """pid and its descendants (nginx runs workers under a master)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(children.get(p, []))
    return pids


def rss_bytes(pid):
    total = 0
    for p in tree(pid):
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def cpu_seconds(pid):
    """(user, system) CPU seconds of a process tree."""
    user = system = 0
    for p in tree(pid):
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            user, system = user + int(fields[11]), system + int(fields[12])
        except OSError:
            pass
    return user / CLK_TCK, system / CLK_TCK


class Server:
    """A process serving on `port`, stopped on exit."""

    def __init__(self, name, argv, port, workdir, timeout=30.0):
        self.name, self.port = name, port
        self.log = open(workdir / f"{name}.log", "w")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=self.log, cwd=workdir)
        wait_port(port, timeout)

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def upstream(workdir, name="upstream", port=None):
    port = port or free_port()
    conf = workdir / f"{name}.conf"
    conf.write_text(f"""
daemon off; master_process off; worker_processes 1; error_log stderr warn; pid {workdir}/{name}.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 "{BODY}"; }}
    location = /big {{ alias {workdir}/big.bin; }} }}
}}
""")
    # A 1 MiB body, for throughput through TCP proxies.
    (workdir / "big.bin").write_bytes(b"x" * (1 << 20))
    return Server(name, [NGINX, "-c", str(conf), "-p", str(workdir)], port, workdir)


# GetBook's answer (tests/fixtures/proto/library/v1): Book { shelf: "s", id: 7,
# title: "Book 7" }, framed; and its request, GetBookRequest { shelf: "s", id: 7 }.
GRPC_REPLY = b"\x00\x00\x00\x00\x0d\x0a\x01s\x10\x07\x1a\x06Book 7"
GRPC_REQUEST = b"\x00\x00\x00\x00\x05\x0a\x01s\x10\x07"


def grpc_upstream(workdir, name="grpc-upstream"):
    """nginx as a gRPC server over h2c: every call answered with GRPC_REPLY
    and an OK status in the trailers (an upstream that costs next to nothing,
    so the proxy's share shows)."""
    port = free_port()
    conf = workdir / f"{name}.conf"
    conf.write_bytes(f"""
daemon off; master_process off; worker_processes 1; error_log stderr warn; pid {workdir}/{name}.pid;
events {{ worker_connections 4096; }}
http {{
  access_log off; keepalive_requests 1000000;
  server {{ listen 127.0.0.1:{port} http2;
    location / {{ default_type application/grpc; add_trailer grpc-status 0 always; return 200 """
                     .encode() + b'"' + GRPC_REPLY + b'"; }\n  }\n}\n')
    return Server(name, [NGINX, "-c", str(conf), "-p", str(workdir)], port, workdir)


def transcode_toml(port, up):
    """A route transcoding JSON to the library service at `up`, beside one passing gRPC through."""
    protos = ROOT / "tests/fixtures/proto"
    return sluice_toml(port, up).replace("[upstreams.u]\n", "[upstreams.u]\nprotocol = \"h2\"\n").replace(
        "[[routes]]", f"""[[routes]]
match = {{ path_prefix = "/v1" }}
upstream = "u"
[routes.transcode]
protos = ["library/v1/library.proto"]
include = ["{protos}"]

[[routes]]""", 1)


def nginx(workdir, workers, up, h2=False, tls=False):
    conf, port = nginx_conf(workdir, workers, up, h2, tls)
    return Server("nginx", [NGINX, "-c", str(conf), "-p", str(workdir)], port, workdir)


def nginx_conf(workdir, workers, up, h2=False, tls=False, master=True):
    """nginx proxying to `up` on a free port: its configuration file and port
    (without `master`, its one worker serves alone)."""
    port = free_port()
    listen = " ssl" if tls else ""
    listen += " http2" if h2 else ""
    certs = f"ssl_certificate {CERT}; ssl_certificate_key {KEY};" if tls else ""
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
daemon off; worker_processes {workers}; worker_rlimit_nofile 19000; error_log stderr warn;
master_process {"on" if master else "off"}; pid {workdir}/nginx.pid;
events {{ worker_connections 18000; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  upstream u {{ server 127.0.0.1:{up}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port}{listen}; {certs}
    location / {{
      proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    }}
  }}
}}
""")
    return conf, port


STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


def nginx_stream(workdir, workers, up):
    """nginx's `stream` module passing TCP to `up`."""
    port = free_port()
    conf = workdir / "nginx-stream.conf"
    conf.write_text(f"""
load_module {STREAM_MODULE};
daemon off; worker_processes {workers}; worker_rlimit_nofile 19000; error_log stderr warn; pid {workdir}/nginx-stream.pid;
events {{ worker_connections 18000; }}
stream {{ server {{ listen 127.0.0.1:{port}; proxy_pass 127.0.0.1:{up}; }} }}
""")
    return Server("nginx", pinned() + [NGINX, "-c", str(conf), "-p", str(workdir)], port, workdir)


def haproxy_tcp(workdir, workers, up):
    """HAProxy in `mode tcp` passing TCP to `up`."""
    port = free_port()
    conf = workdir / "haproxy-tcp.cfg"
    conf.write_text(f"""
global
  nbthread {workers}
  maxconn {HAPROXY_MAXCONN}
defaults
  mode tcp
  timeout connect 5s
  timeout client 300s
  timeout server 300s
frontend f
  bind 127.0.0.1:{port}
  default_backend b
backend b
  server s1 127.0.0.1:{up}
""")
    return Server("haproxy", pinned() + [HAPROXY, "-f", str(conf)], port, workdir)


def tcp_toml(port, up):
    return f"""
[[listeners]]
address = "127.0.0.1:{port}"
max_connections = 20000
max_connections_per_client = 20000
tcp = {{ upstream = "u" }}
[reload]
watch = false
[upstreams.u]
targets = ["127.0.0.1:{up}"]
balance = "round-robin"
"""


def haproxy(workdir, workers, up, h2=False, tls=False):
    port = free_port()
    bind = " proto h2" if h2 and not tls else ""
    if tls:
        combined = workdir / "haproxy.pem"
        combined.write_text(CERT.read_text() + KEY.read_text())
        bind = f" ssl crt {combined} alpn h2,http/1.1"
    conf = workdir / "haproxy.cfg"
    conf.write_text(f"""
global
  nbthread {workers}
  # HAProxy reserves two descriptors per connection; this keeps it under a 20,000 limit.
  maxconn {HAPROXY_MAXCONN}
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 60s
  timeout http-keep-alive 300s
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend f
  bind 127.0.0.1:{port}{bind}
  default_backend b
backend b
  server s1 127.0.0.1:{up}
""")
    return Server("haproxy", [HAPROXY, "-f", str(conf)], port, workdir)


def sluice_toml(port, up, filters="", plugins="", extra="", tls=False):
    certs = f'tls = {{ cert = "{CERT}", key = "{KEY}" }}' if tls else ""
    # As roomy as the nginx and HAProxy configurations (worker_connections, maxconn).
    return f"""
[[listeners]]
address = "127.0.0.1:{port}"
max_connections = 20000
max_connections_per_client = 20000
{certs}
[reload]
watch = false
{extra}
{plugins}
[upstreams.u]
targets = ["127.0.0.1:{up}"]

[[routes]]
upstream = "u"
filters = [{filters}]
"""


def pinned():
    """A command prefix that keeps a proxy on the last core, away from the
    load generator and the upstream (empty on one core)."""
    cores = os.cpu_count() or 1
    return ["taskset", "-c", str(cores - 1)] if cores > 1 and shutil.which("taskset") else []


def sluice(workdir, workers, toml_for_port, name="sluice", build=None, pin=False, wrap=None):
    """Sluice serving `toml_for_port(port)`; `wrap` is a command to run it
    under (valgrind), instead of pinning it."""
    global _building
    build = build or CURRENT
    port = free_port()
    conf = workdir / f"{name}.toml"
    _building = build  # plugin() paths in the configuration are this build's
    try:
        text = toml_for_port(port)
    finally:
        _building = CURRENT
    if not build.knows_listener_limits():
        text = "\n".join(l for l in text.splitlines() if not l.startswith("max_connections"))
    conf.write_text(text)
    prefix = wrap or (pinned() if pin else [])
    argv = prefix + [str(build.binary), "--workers", str(workers), "run", "--config", str(conf)]
    env_log = os.environ.get("RUST_LOG")
    os.environ["RUST_LOG"] = "warn"
    try:
        # Under valgrind, plugins compile ~50 times slower (once: cached).
        return Server(name, argv, port, workdir, timeout=900 if wrap else 30)
    finally:
        if env_log is None:
            del os.environ["RUST_LOG"]
        else:
            os.environ["RUST_LOG"] = env_log


def plugin(name):
    return _building.plugins / f"{name.replace('-', '_')}.wasm"


def with_baseline(targets, workdir, workers, toml_for_port):
    """`targets` plus the same Sluice configuration on the baseline build, if one was given."""
    if BASELINE:
        targets = targets + [("sluice (baseline)", lambda: sluice(workdir, workers, toml_for_port, "baseline", BASELINE))]
    return targets


def chain_toml(n):
    plugins = f'[plugins.noop]\npath = "{plugin("noop")}"\n'
    filters = ", ".join(['{ plugin = "noop" }'] * n)
    return lambda port, up: sluice_toml(port, up, filters, plugins)


def policies_toml(port, up):
    names = ["api-key-auth", "rate-limit", "transform", "router", "cache-policy"]
    plugins = "".join(f'[plugins.{n}]\npath = "{plugin(n)}"\n' for n in names)
    filters = """
  { plugin = "api-key-auth", config = { keys = [{ key = "bench-key", owner = "bench", claims = { plan = "gold" } }] } },
  { plugin = "rate-limit", config = { key = "identity", capacity = 1000000000, window_secs = 1 } },
  { plugin = "transform", config = { request_headers = { set = { x-bench = "1" } } } },
  { plugin = "router", config = { split = [{ upstream = "u", weight = 1 }] } },
  { plugin = "cache-policy", config = { paths = ["/cached-only"] } },
"""
    return sluice_toml(port, up, filters, plugins)


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(port, seconds, conns, headers=(), scheme="http", path="/", threads=2):
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{seconds}s", "--latency"]
    for h in headers:
        argv += ["-H", h]
    out = subprocess.run(argv + [f"{scheme}://127.0.0.1:{port}{path}"], capture_output=True, text=True, check=True).stdout
    latency = {}
    for pct, value, unit in re.findall(r"^\s+(50|99)(?:\.000)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        latency[pct] = float(value) * UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    socket_errors = sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1))) if socket_errors else 0
    transfer = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
    return {
        "mbps": float(transfer.group(1)) * {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1, "GB": 1024}[transfer.group(2)],
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),
        "p50": latency.get("50"),
        "p99": latency.get("99"),
        "errors": (int(errors.group(1)) if errors else 0) + socket_errors,
    }


def h2load(port, seconds, conns, scheme="http", path="/", extra=()):
    out = subprocess.run(
        ["h2load", "-c", str(conns), "-m", "10", "-t", "2", "-D", str(seconds), *extra,
         f"{scheme}://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, check=True,
    ).stdout
    mean = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", out)
    return {
        "rps": float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1)),
        "mean": float(mean.group(1)) * UNITS[mean.group(2)],
        "errors": int(re.search(r"(\d+) failed", out).group(1)),
    }


def median(rows, key):
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else float("nan")


def rounds(args, targets, measure):
    """Run `measure(server, seconds)` on each target for `args.rounds` rounds,
    rotating the order; targets are (name, start) pairs started per round."""
    results = {name: [] for name, _ in targets}
    for r in range(args.rounds):
        order = targets[r % len(targets):] + targets[: r % len(targets)]
        for name, start in order:
            with start() as server:
                measure(server, 2)  # warm-up: connections, pools, instances
                results[name].append(measure(server, args.seconds))
    return results


def table(title, results, base, columns):
    lines = [f"\n### {title}\n", "| | " + " | ".join(c[0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, rows in results.items():
        cells = []
        for label, key, fmt in columns:
            if key == "ratio":
                cells.append(f"{median(rows, 'rps') / median(results[base], 'rps'):.2f}×")
            else:
                cells.append(fmt.format(median(rows, key)))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


WRK_COLUMNS = [("req/s", "rps", "{:,.0f}"), ("vs nginx", "ratio", ""), ("p50 ms", "p50", "{:.2f}"), ("p99 ms", "p99", "{:.2f}"), ("errors", "errors", "{:.0f}")]


def scenario_pass(args, workdir, up):
    targets = with_baseline([
        ("nginx", lambda: nginx(workdir, args.workers, up.port)),
        ("haproxy", lambda: haproxy(workdir, args.workers, up.port)),
        ("sluice", lambda: sluice(workdir, args.workers, lambda p: sluice_toml(p, up.port))),
    ], workdir, args.workers, lambda p: sluice_toml(p, up.port))
    results = rounds(args, targets, lambda s, secs: wrk(s.port, secs, 64))
    return table("1. Pass-through, HTTP/1.1, 64 connections", results, "nginx", WRK_COLUMNS)


def scenario_chains(args, workdir, up):
    headers = ["x-api-key: bench-key"]
    targets = [("nginx", lambda: nginx(workdir, args.workers, up.port)),
               ("sluice, no filters", lambda: sluice(workdir, args.workers, lambda p: sluice_toml(p, up.port)))]
    for n in (1, 5, 10):
        targets.append((f"sluice, {n} noop filter{'s' if n > 1 else ''}",
                        lambda n=n: sluice(workdir, args.workers, lambda p: chain_toml(n)(p, up.port))))
    targets.append(("sluice, 5 policy plugins", lambda: sluice(workdir, args.workers, lambda p: policies_toml(p, up.port))))
    if BASELINE:
        targets.append(("baseline, no filters", lambda: sluice(workdir, args.workers, lambda p: sluice_toml(p, up.port), "baseline", BASELINE)))
        targets.append(("baseline, 5 noop filters", lambda: sluice(workdir, args.workers, lambda p: chain_toml(5)(p, up.port), "baseline", BASELINE)))
        targets.append(("baseline, 5 policy plugins", lambda: sluice(workdir, args.workers, lambda p: policies_toml(p, up.port), "baseline", BASELINE)))
    results = rounds(args, targets, lambda s, secs: wrk(s.port, secs, 64, headers))
    text = table("2. Filter chains (ratio to nginx; see below for ratio to Sluice's pass-through)", results, "nginx", WRK_COLUMNS)
    own = median(results["sluice, no filters"], "rps")
    extra = ["\n| chain | vs Sluice pass-through |", "|---|---|"]
    for name, rows in results.items():
        if name.startswith("sluice, ") and name != "sluice, no filters":
            extra.append(f"| {name[8:]} | {median(rows, 'rps') / own:.2f}× |")
    print("\n".join(extra), flush=True)
    return text + "\n" + "\n".join(extra)


def slope(points):
    """Least-squares slope of y over x."""
    mx = statistics.mean(x for x, _ in points)
    my = statistics.mean(y for _, y in points)
    return sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)


def scenario_cpu(args, workdir, up):
    """CPU time of the Sluice process per request, by chain length. User
    time is the gateway's own work; system time is mostly the loopback
    network, and grows per request as throughput (and so batching) falls."""
    counts = (0, 1, 5, 10)
    builds = [("sluice", CURRENT)] + ([("baseline", BASELINE)] if BASELINE else [])
    samples = {(b, n): [] for b, _ in builds for n in counts}
    # Rounds interleave the chain lengths (and builds), so a noisy moment hits all alike.
    for _ in range(args.rounds):
        for n in counts:
            for label, build in builds:
                with sluice(workdir, args.workers, lambda p: chain_toml(n)(p, up.port), build=build) as s:
                    wrk(s.port, 2, 64)
                    user0, sys0 = cpu_seconds(s.pid)
                    result = wrk(s.port, args.seconds, 64)
                    user1, sys1 = cpu_seconds(s.pid)
                    samples[(label, n)].append(((user1 - user0) / result["requests"] * 1e6,
                                                (sys1 - sys0) / result["requests"] * 1e6))
    lines = ["\n### 3. CPU per request in the Sluice process\n",
             "| build | filters | user µs/request | system µs/request | user µs added per filter |", "|---|---|---|---|---|"]
    fits = []
    for label, _ in builds:
        rows = {n: (statistics.median(u for u, _ in samples[(label, n)]), statistics.median(s for _, s in samples[(label, n)]))
                for n in counts}
        for n, (user, system) in rows.items():
            per = "" if n == 0 else f"{(user - rows[0][0]) / n:.2f}"
            lines.append(f"| {label} | {n} | {user:.1f} | {system:.1f} | {per} |")
        # The slope of a least-squares line through every sample: the cost of one more filter.
        points = [(n, u + sy) for n in counts for u, sy in samples[(label, n)]]
        user_points = [(n, u) for n in counts for u, _ in samples[(label, n)]]
        fits.append(f"{label}: fitted over 0–10 filters, one more filter adds {slope(user_points):.2f} µs of user CPU "
                    f"({slope(points):.2f} µs user + system) per request.")
    text = "\n".join(lines) + "\n\n" + "\n\n".join(fits)
    print(text, flush=True)
    return text


def scenario_h2(args, workdir, up):
    targets = [
        ("nginx", lambda: nginx(workdir, args.workers, up.port, h2=True)),
        ("haproxy", lambda: haproxy(workdir, args.workers, up.port, h2=True)),
        ("sluice", lambda: sluice(workdir, args.workers, lambda p: sluice_toml(p, up.port))),
    ]
    targets = with_baseline(targets, workdir, args.workers, lambda p: sluice_toml(p, up.port))
    results = rounds(args, targets, lambda s, secs: h2load(s.port, secs, 64))
    columns = [("req/s", "rps", "{:,.0f}"), ("vs nginx", "ratio", ""), ("mean ms", "mean", "{:.2f}"), ("errors", "errors", "{:.0f}")]
    return table("4. HTTP/2 cleartext (h2c, prior knowledge), 64 connections × 10 streams", results, "nginx", columns)


def grpc_calls(workdir):
    """h2load's arguments for GetBook called in gRPC, and as JSON through the transcoder."""
    data = workdir / "get-book.grpc"
    data.write_bytes(GRPC_REQUEST)
    grpc = ("/library.v1.Library/GetBook", ["-d", str(data), "-H", "content-type: application/grpc",
                                           "-H", "te: trailers"])
    json_call = ("/v1/shelves/s/books/7", [])
    return {"gRPC through Sluice": grpc, "JSON through the transcoder": json_call}


def scenario_translate(args, workdir, up):
    """One unary call (GetBook) to a gRPC upstream, made in gRPC through the
    gateway and as JSON through the transcoder, on the same Sluice."""
    calls = grpc_calls(workdir)
    results = {name: [] for name in calls}
    with grpc_upstream(workdir) as grpc:
        for r in range(args.rounds):
            with sluice(workdir, args.workers, lambda p: transcode_toml(p, grpc.port), pin=True) as server:
                order = list(calls.items())
                for name, (path, extra) in order[r % 2:] + order[:r % 2]:
                    h2load(server.port, 2, 64, path=path, extra=extra)
                    row = h2load(server.port, args.seconds, 64, path=path, extra=extra)
                    if row["errors"]:
                        sys.exit(f"{name}: {row['errors']} requests failed")
                    results[name].append(row)
    columns = [("req/s", "rps", "{:,.0f}"), ("vs gRPC", "ratio", ""), ("mean ms", "mean", "{:.2f}"), ("errors", "errors", "{:.0f}")]
    return table("13. Translation: a unary call as gRPC and as JSON (h2c, 64 connections × 10 streams; nginx as the gRPC server)",
                 results, "gRPC through Sluice", columns)


def scenario_tcp(args, workdir, up):
    """TCP proxies configured alike (one worker, each pinned to the same core, the same upstream): HTTP
    requests on kept connections, a new connection per request, and a 1 MiB
    body's throughput."""
    targets = [
        ("nginx stream", lambda: nginx_stream(workdir, args.workers, up.port)),
        ("haproxy mode tcp", lambda: haproxy_tcp(workdir, args.workers, up.port)),
        ("sluice tcp", lambda: sluice(workdir, args.workers, lambda p: tcp_toml(p, up.port), pin=True)),
    ]
    loads = [
        ("requests on 64 kept connections", "rps", lambda port, secs: wrk(port, secs, 64)),
        ("a connection per request, 64 at a time", "rps",
         lambda port, secs: wrk(port, secs, 64, headers=["Connection: close"])),
        ("1 MiB bodies, 8 connections (MiB/s)", "mbps", lambda port, secs: wrk(port, secs, 8, path="/big")),
    ]
    lines = ["\n### 14. TCP proxying (layer 4), one worker, the proxy pinned\n",
             "| load | " + " | ".join(name for name, _ in targets) + " | sluice vs nginx |",
             "|---" * (len(targets) + 2) + "|"]
    for title, key, load in loads:
        results = rounds(args, targets, lambda server, secs: load(server.port, secs))
        values = [median(results[name], key) for name, _ in targets]
        cells = " | ".join(f"{v:,.0f}" for v in values)
        lines.append(f"| {title} | {cells} | {values[2] / values[0]:.2f}× |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def scenario_tls(args, workdir, up):
    targets = [
        ("nginx", lambda: nginx(workdir, args.workers, up.port, h2=True, tls=True)),
        ("haproxy", lambda: haproxy(workdir, args.workers, up.port, h2=True, tls=True)),
        ("sluice", lambda: sluice(workdir, args.workers, lambda p: sluice_toml(p, up.port, tls=True))),
    ]
    targets = with_baseline(targets, workdir, args.workers, lambda p: sluice_toml(p, up.port, tls=True))
    h2 = rounds(args, targets, lambda s, secs: h2load(s.port, secs, 64, "https"))
    columns = [("req/s", "rps", "{:,.0f}"), ("vs nginx", "ratio", ""), ("mean ms", "mean", "{:.2f}"), ("errors", "errors", "{:.0f}")]
    text = table("4b. TLS, HTTP/2 by ALPN (h2load), 64 connections × 10 streams", h2, "nginx", columns)
    h1 = rounds(args, targets, lambda s, secs: wrk(s.port, secs, 64, scheme="https"))
    return text + table("4c. TLS, HTTP/1.1 (wrk), 64 connections", h1, "nginx", WRK_COLUMNS)


async def hold(port, count):
    """Open `count` keep-alive connections, one request each, and keep them open."""
    request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
    streams = []

    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))
        await reader.readexactly(length)
        streams.append(writer)

    for start in range(0, count, 500):
        await asyncio.gather(*(one() for _ in range(min(500, count - start))))
    return streams


def scenario_memory(args, workdir, up):
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    targets = with_baseline([
        ("nginx", lambda: nginx(workdir, args.workers, up.port)),
        ("haproxy", lambda: haproxy(workdir, args.workers, up.port)),
        ("sluice", lambda: sluice(workdir, args.workers, lambda p: sluice_toml(p, up.port))),
    ], workdir, args.workers, lambda p: sluice_toml(p, up.port))
    lines = [f"\n### 5. Memory with {args.idle:,} idle keep-alive connections\n", "| | RSS idle | RSS with connections | per connection |", "|---|---|---|---|"]
    for name, start in targets:
        # HAProxy cannot take more than its maxconn under this machine's descriptor limit.
        count = min(args.idle, HAPROXY_MAXCONN - 100) if name == "haproxy" else args.idle
        with start() as server:
            wrk(server.port, 1, 64)
            idle = rss_bytes(server.pid)

            async def measure():
                streams = await hold(server.port, count)
                await asyncio.sleep(2)
                held = rss_bytes(server.pid)
                for w in streams:
                    w.close()
                return held

            held = asyncio.run(measure())
        label = name if count == args.idle else f"{name} ({count:,} connections)"
        lines.append(f"| {label} | {idle / 2**20:.1f} MiB | {held / 2**20:.1f} MiB | {(held - idle) / count / 1024:.1f} KiB |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def scenario_reload(args, workdir, up):
    """Hot reload: file change to first response by the new version, and
    p99 latency during swaps against steady state; for a swap of plugin
    build and configuration, and for the `headers` plugin's configuration
    alone (one every ~300 ms)."""
    stamp = lambda build, label: (  # noqa: E731
        f'{{ plugin = "stamp", config = {{ label = "{label}" }} }}',
        f'[plugins.stamp]\npath = "{plugin(build)}"\n', "x-stamp", f"{build}:{label}")
    headers = lambda build, label: (  # noqa: E731
        f'{{ plugin = "headers", config = {{ response = {{ set = {{ x-version = "{label}" }} }} }} }}',
        f'[plugins.headers]\npath = "{plugin("headers")}"\n', "x-version", label)
    lines = ["\n### Hot reload (issue 4)\n"]
    for what, make, pause in [("plugin build and route configuration", stamp, 0.25),
                              ("the `headers` plugin's route configuration", headers, 0.3)]:
        lines += reload_swaps(args, workdir, up, what, make, pause)
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def reload_swaps(args, workdir, up, what, make, pause):
    """Rewrite the configuration with `make(build, label)` (filters, plugins,
    the header that shows the version and its value) every `pause` seconds
    under wrk load; how long each took to be live."""
    conf = workdir / "reload.toml"
    port = free_port()

    def write(build, label):
        filters, plugins, _, _ = make(build, label)
        text = sluice_toml(port, up.port, filters, plugins).replace("watch = false", "watch = true")
        tmp = conf.with_suffix(".new")
        tmp.write_text(text)
        os.replace(tmp, conf)

    write("stamp-a", "start")
    argv = [str(SLUICE), "--workers", str(args.workers), "run", "--config", str(conf)]
    with Server("sluice-reload", argv, port, workdir):
        wrk(port, 2, 64)
        steady = wrk(port, args.seconds, 64)
        delays, swaps = [], 0
        load = {}
        thread = threading.Thread(target=lambda: load.update(wrk(port, args.seconds, 64)))
        thread.start()
        probe = http.client.HTTPConnection("127.0.0.1", port)
        deadline = time.time() + args.seconds - 1
        while time.time() < deadline:
            swaps += 1
            build = "stamp-b" if swaps % 2 else "stamp-a"
            _, _, header, expected = make(build, f"swap{swaps}")
            changed = time.perf_counter()
            write(build, f"swap{swaps}")
            while True:
                probe.request("GET", "/")
                response = probe.getresponse()
                response.read()
                if response.getheader(header) == expected:
                    delays.append((time.perf_counter() - changed) * 1e3)
                    break
            time.sleep(pause)
        thread.join()
    delays.sort()
    return [
        f"{swaps} swaps of {what} by rewriting the file, one every ~{pause * 1000:.0f} ms, under wrk load.\n",
        "| | value |", "|---|---|",
        f"| file change → first response by the new version, median | {statistics.median(delays):.1f} ms |",
        f"| same, worst | {delays[-1]:.1f} ms |",
        f"| p99 latency, steady state | {steady['p99']:.2f} ms |",
        f"| p99 latency, during swaps | {load['p99']:.2f} ms |",
        f"| req/s steady / during swaps | {steady['rps']:,.0f} / {load['rps']:,.0f} |",
        f"| errors during swaps | {load['errors']} |\n",
    ]


def isolation_toml(port, up):
    return sluice_toml(port, up, plugins=f"""
[plugins.fault]
path = "{plugin("fault")}"
deny = ["http"]
""") + """
[[routes]]
match = { path_prefix = "/f" }
upstream = "u"
filters = [{ plugin = "fault", config = { on = { "/f/spin" = "spin", "/f/hog" = "hog" } } }]
"""


def scenario_isolation(args, workdir, up):
    """A misbehaving plugin hurts only its own requests: an unrelated
    route's throughput and p99 while 4 clients keep hitting a plugin that
    loops until its call timeout, or one that allocates until its memory
    limit, against the same route undisturbed."""
    runs = {"undisturbed": [], "4 clients on a looping plugin": [], "4 clients on a memory hog": []}
    disturbers = {"4 clients on a looping plugin": "/f/spin", "4 clients on a memory hog": "/f/hog"}
    builds = {"": CURRENT}
    if BASELINE:
        builds["baseline: "] = BASELINE
        for name in list(runs):
            runs["baseline: " + name] = []
            if name in disturbers:
                disturbers["baseline: " + name] = disturbers[name]
    for _ in range(args.rounds):
        for name in runs:
            build = builds["baseline: " if name.startswith("baseline: ") else ""]
            with sluice(workdir, args.workers, lambda p: isolation_toml(p, up.port), build=build) as s:
                wrk(s.port, 2, 64)
                side = {}
                path = disturbers.get(name)
                if path:
                    thread = threading.Thread(target=lambda: side.update(wrk(s.port, args.seconds + 1, 4, path=path, threads=1)))
                    thread.start()
                    time.sleep(0.5)
                result = wrk(s.port, args.seconds, 64)
                if path:
                    thread.join()
                    result["side"] = side["requests"]
                runs[name].append(result)
    lines = ["\n### 6. Isolation: an unrelated route while plugins misbehave\n",
             "| | req/s | vs undisturbed | p99 ms | errors | misbehaving requests answered |", "|---|---|---|---|---|---|"]
    for name, rows in runs.items():
        base = median(runs["baseline: undisturbed" if name.startswith("baseline: ") else "undisturbed"], "rps")
        side = median(rows, "side") if name in disturbers else float("nan")
        lines.append(f"| {name} | {median(rows, 'rps'):,.0f} | {median(rows, 'rps') / base:.2f}× | {median(rows, 'p99'):.2f} | "
                     f"{median(rows, 'errors'):.0f} | {'' if side != side else f'{side:,.0f}'} |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def failover_proxies(workdir, workers, a, b):
    """nginx, HAProxy and Sluice configured alike over two targets: 1 s to
    connect or answer, a failed try retried on the other target, a target
    out after 3 failures in a row. HAProxy and Sluice also check actively
    every second; open-source nginx has only passive checks."""
    def nginx_two():
        port = free_port()
        conf = workdir / "nginx-failover.conf"
        conf.write_text(f"""
daemon off; worker_processes {workers}; worker_rlimit_nofile 19000; error_log stderr crit;
pid {workdir}/nginx-failover.pid;
events {{ worker_connections 18000; }}
http {{
  access_log off; keepalive_requests 1000000; keepalive_timeout 300s;
  upstream u {{
    server 127.0.0.1:{a} max_fails=3 fail_timeout=5s;
    server 127.0.0.1:{b} max_fails=3 fail_timeout=5s;
    keepalive 128;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://u; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_connect_timeout 1s; proxy_read_timeout 1s;
      proxy_next_upstream error timeout http_502 http_503 http_504; proxy_next_upstream_tries 3;
    }}
  }}
}}
""")
        return Server("nginx", [NGINX, "-c", str(conf), "-p", str(workdir)], port, workdir)

    def haproxy_two():
        port = free_port()
        conf = workdir / "haproxy-failover.cfg"
        conf.write_text(f"""
global
  nbthread {workers}
  maxconn {HAPROXY_MAXCONN}
defaults
  mode http
  timeout connect 1s
  timeout client 300s
  timeout server 1s
  timeout http-keep-alive 300s
  option http-keep-alive
  http-reuse always
  retries 2
  option redispatch 1
  retry-on all-retryable-errors
frontend f
  bind 127.0.0.1:{port}
  default_backend b
backend b
  balance roundrobin
  default-server check inter 1s fall 3 rise 2 observe layer7 error-limit 3 on-error mark-down
  server s1 127.0.0.1:{a}
  server s2 127.0.0.1:{b}
""")
        return Server("haproxy", [HAPROXY, "-f", str(conf)], port, workdir)

    def sluice_two(port):
        return sluice_toml(port, a).replace(
            f'targets = ["127.0.0.1:{a}"]',
            f"""targets = ["127.0.0.1:{a}", "127.0.0.1:{b}"]
connect_timeout = "1s"
timeout = "1s"
retries = 2
outlier = {{ consecutive_failures = 3, base_ejection = "5s" }}
health = {{ interval = "1s", timeout = "1s", unhealthy_threshold = 3, healthy_threshold = 2 }}""")

    # No baseline run: builds before the load balancer know none of these settings.
    return [
        ("nginx", nginx_two),
        ("haproxy", haproxy_two),
        ("sluice", lambda: sluice(workdir, workers, sluice_two)),
    ]


def scenario_failover(args, workdir, up):
    """Two targets; 64 connections for 12 s; one target is killed (SIGKILL)
    or hung (SIGSTOP) 3 s in, and restored (restarted, or SIGCONT) 4 s
    later. Every failed request counts: non-2xx answers and wrk's socket
    errors (its timeout is 2 s)."""
    a = upstream(workdir, "target-a")
    b_port = free_port()
    lines = ["\n### 7. Failover: one of two targets killed or hung for 4 s of 12\n",
             "| | how | req/s | vs nginx | p99 ms | failed requests |", "|---|---|---|---|---|---|"]
    try:
        for how in ("killed", "hung"):
            results = {}
            for name, start in failover_proxies(workdir, args.workers, a.port, b_port):
                rows = []
                for _ in range(args.rounds):
                    b = upstream(workdir, "target-b", b_port)
                    with start() as proxy:
                        wrk(proxy.port, 2, 64)

                        def fail():
                            nonlocal b
                            time.sleep(3)
                            if how == "killed":
                                b.proc.kill()
                                b.proc.wait()
                                time.sleep(4)
                                b.log.close()
                                b = upstream(workdir, "target-b", b_port)
                            else:
                                b.proc.send_signal(signal.SIGSTOP)
                                time.sleep(4)
                                b.proc.send_signal(signal.SIGCONT)
                        thread = threading.Thread(target=fail)
                        thread.start()
                        rows.append(wrk(proxy.port, 12, 64))
                        thread.join()
                    b.stop()
                results[name] = rows
            base = median(results["nginx"], "rps")
            for name, rows in results.items():
                lines.append(f"| {name} | {how} | {median(rows, 'rps'):,.0f} | {median(rows, 'rps') / base:.2f}× | "
                             f"{median(rows, 'p99'):.2f} | {median(rows, 'errors'):,.0f} |")
    finally:
        a.stop()
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def jwt_token():
    """An RS256 token from a real JOSE library (PyJWT), as an identity provider issues."""
    import jwt
    claims = {"sub": "bench-user", "plan": "gold", "iss": "https://idp.test", "aud": "orders-api",
              "scope": "orders:read", "exp": int(time.time()) + 86400}
    key = (ROOT / "tests/fixtures/jwt/rsa.key").read_text()
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})


def plugins_cases(up):
    """(name, toml_for_port) for each sample plugin alone, with a realistic
    configuration, and for a realistic chain."""
    pem = json.dumps((ROOT / "tests/fixtures/jwt/rsa.pub").read_text())
    jwt = ('{ plugin = "jwt-auth", config = { keys = [{ alg = "RS256", pem = %s }], issuers = ["https://idp.test"], '
           'audiences = ["orders-api"], claims = ["plan"]%%s } }' % pem)
    grants = {"jwt-auth": ["crypto"]}
    deny = {"jwt-auth": ["http", "metrics"]}
    filters = {
        "headers": '{ plugin = "headers", config = { request = { set = { x-user = "{identity}", x-gateway = "sluice" }, remove = ["x-debug"] }, response = { set = { x-frame-options = "DENY" } } } }',
        "rate-limit": '{ plugin = "rate-limit", config = { key = "%s", capacity = 1000000000, window_secs = 60 } }',
        "transform": '{ plugin = "transform", config = { request_headers = { set = { x-bench = "1" } }, response_headers = { set = { x-served-by = "sluice" } } } }',
        "router": '{ plugin = "router", config = { rules = [{ header = { name = "x-canary", value = "1" }, upstream = "u" }], split = [{ upstream = "u", weight = 1 }] } }',
        "cache-policy": '{ plugin = "cache-policy", config = { paths = ["/static/"], bypass_headers = ["x-no-cache"] } }',
    }

    def toml(chain):
        names = sorted({f.split('"')[1] for f in chain})

        # When the server starts: a baseline build gets its own plugins.
        def plugins():
            return "".join(f'[plugins.{n}]\npath = "{plugin(n)}"\ngrants = {json.dumps(grants.get(n, []))}\n'
                           + (f'deny = {json.dumps(deny[n])}\n' if n in deny else "") for n in names)
        return lambda port: sluice_toml(port, up.port, ", ".join(chain), plugins())

    return [
        ("no filters", toml([])),
        ("headers", toml([filters["headers"]])),
        ("rate-limit (client IP)", toml([filters["rate-limit"] % "client_ip"])),
        ("transform (a header each way)", toml([filters["transform"]])),
        ("router (a rule, a one-way split)", toml([filters["router"]])),
        ("cache-policy (bypassing)", toml([filters["cache-policy"]])),
        ("jwt-auth RS256, token cache warm", toml([jwt % ""])),
        ("jwt-auth RS256, no cache", toml([jwt % ", cache_size = 0"])),
        ("chain: jwt RS256 + rate-limit by identity + headers + router + cache-policy",
         toml([jwt % "", filters["rate-limit"] % "identity", filters["headers"], filters["router"], filters["cache-policy"]])),
    ]


def native_rs256(token):
    """µs to verify the token natively (ring: decode, verify, parse claims), on the proxy's core."""
    calls = ROOT / "target/release/examples/calls"
    out = subprocess.run(pinned() + [str(calls), "20000", f"native-rs256={ROOT / 'tests/fixtures/jwt/rsa.pub'}"],
                         env=dict(os.environ, CALLS_TOKEN=token), capture_output=True, text=True, check=True).stdout
    return float(re.search(r"native-rs256: ([\d.]+)", out).group(1))


def scenario_plugins(args, workdir, up):
    """Each sample plugin's added CPU per request through the whole proxy,
    one worker pinned to its own core, beside a native JWT check."""
    token = jwt_token()
    headers = [f"authorization: Bearer {token}"]

    def measure(s, secs):
        user0, sys0 = cpu_seconds(s.pid)
        r = wrk(s.port, secs, 64, headers)
        user1, sys1 = cpu_seconds(s.pid)
        if not r["requests"]:
            raise SystemExit(f"{s.name} answered nothing: see {s.log.name}:\n" + pathlib.Path(s.log.name).read_text()[:3000])
        r["cpu"] = ((user1 - user0) + (sys1 - sys0)) / r["requests"] * 1e6
        r["user"] = (user1 - user0) / r["requests"] * 1e6
        return r

    cases = [(name, t) for name, t in plugins_cases(up)
             if name == "no filters" or not args.cases or any(c in name for c in args.cases)]
    targets = [(name, lambda t=t: sluice(workdir, 1, t, pin=True)) for name, t in cases]
    if BASELINE:
        targets += [(f"baseline: {name}", lambda t=t: sluice(workdir, 1, t, "baseline", BASELINE, pin=True))
                    for name, t in cases]
    results = rounds(args, targets, measure)
    native = statistics.median(native_rs256(token) for _ in range(3))
    lines = ["\n### 10. Sample plugins, one worker pinned to its own core\n",
             "| route filters | req/s | vs no filters | CPU µs/request (user+sys) | added CPU µs/request | user µs added |",
             "|---|---|---|---|---|---|"]
    for name, rows in results.items():
        base = results["baseline: no filters" if name.startswith("baseline: ") else "no filters"]
        added = median(rows, "cpu") - median(base, "cpu")
        user = median(rows, "user") - median(base, "user")
        lines.append(f"| {name} | {median(rows, 'rps'):,.0f} | {median(rows, 'rps') / median(base, 'rps'):.2f}× | "
                     f"{median(rows, 'cpu'):.1f} | {'' if rows is base else f'{added:.1f}'} | {'' if rows is base else f'{user:.1f}'} |")
    if "jwt-auth RS256, no cache" in results:
        uncached = median(results["jwt-auth RS256, no cache"], "cpu") - median(results["no filters"], "cpu")
        lines.append(f"\nNative RS256 verification of the same token (ring, decode + verify + parse claims, same core): "
                     f"{native:.1f} µs; jwt-auth uncached adds {uncached:.1f} µs, {uncached / native:.2f}× native.")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def redis_server(workdir, name="redis"):
    """Debian's redis-server on a free port, persisting nothing."""
    port = free_port()
    return Server(name, ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                         "--appendonly", "no", "--dir", str(workdir)], port, workdir)


def redis_calls(port):
    """Commands clients sent Redis, from INFO commandstats (which also counts
    the commands scripts run: those are left out)."""
    out = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"],
                         capture_output=True, text=True, check=True).stdout
    sent = r"^cmdstat_(?:evalsha|eval|script\|load|ping|get|set|pttl|info):calls=(\d+)"
    return sum(int(n) for n in re.findall(sent, out, re.M))


def limit_toml(scope, redis_port, timeout="50ms"):
    """A rate-limited route (a bucket per client IP, never empty) with its
    buckets `scope`: local, or cluster in the Redis at `redis_port`."""
    state = (f'[state]\nurl = "redis://127.0.0.1:{redis_port}/0"\ndefault = "{scope}"\ntimeout = "{timeout}"\n'
             if redis_port else "")
    limit = '{ plugin = "rate-limit", config = { key = "client_ip", capacity = 1000000000, window_secs = 1 } }'
    return lambda port, up: sluice_toml(port, up, limit, f'[plugins.rate-limit]\npath = "{plugin("rate-limit")}"\n', state)


def scenario_state(args, workdir, up):
    """A rate-limited route with local buckets, with cluster buckets in
    Redis (one round trip per request), and with Redis down (the breaker
    open, counting locally meanwhile)."""
    with redis_server(workdir) as redis:
        dead = free_port()
        def limited(scope, redis_port):
            return lambda: sluice(workdir, args.workers, lambda p: limit_toml(scope, redis_port)(p, up.port), pin=True)

        targets = [("local buckets", limited("local", None)),
                   ("cluster buckets (Redis)", limited("cluster", redis.port)),
                   ("cluster, Redis down (breaker open)", limited("cluster", dead))]

        def measure(s, secs):
            calls = redis_calls(redis.port)
            r = wrk(s.port, secs, 64)
            # Less the INFO that read the count before.
            r["round_trips"] = (redis_calls(redis.port) - calls - 1) / max(r["requests"], 1)
            return r

        results = rounds(args, targets, measure)
    columns = WRK_COLUMNS[:1] + [("vs local", "ratio", "")] + WRK_COLUMNS[2:] + [("Redis round trips/request", "round_trips", "{:.2f}")]
    return table("11. Rate limits, local against cluster (Redis), one proxy pinned", results, "local buckets", columns)


def etcd_server(workdir):
    """Debian's etcd, one member, on free ports."""
    client, peer = free_port(), free_port()
    argv = ["etcd", "--name", "bench", "--data-dir", str(workdir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{client}", "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"bench=http://127.0.0.1:{peer}"]
    return Server("etcd", argv, client, workdir)


def versioned_routes(up, n):
    """A configuration whose route answers only at /v<n>: the version is visible."""
    return f'[upstreams.u]\ntargets = ["127.0.0.1:{up}"]\n[[routes]]\nupstream = "u"\nmatch.path = "/v{n}"\n'


def until_answered(ports, path):
    """When each of `ports` first answers `path` with 200 (perf_counter times)."""
    probes = {port: http.client.HTTPConnection("127.0.0.1", port) for port in ports}
    seen = {}
    while len(seen) < len(ports):
        for port, probe in probes.items():
            if port in seen:
                continue
            probe.request("GET", path)
            response = probe.getresponse()
            response.read()
            if response.status == 200:
                seen[port] = time.perf_counter()
    return seen


def scenario_fleet(args, workdir, up):
    """From `sluice fleet push` to the new version answering on each of
    three instances, against a file reload of one instance."""
    pushes = 20
    rows = {}
    with etcd_server(workdir) as etcd:
        ports, servers = [], []
        for i in range(3):
            port = free_port()
            own = workdir / f"member{i}.toml"
            own.write_text(f'[[listeners]]\naddress = "127.0.0.1:{port}"\n[reload]\nwatch = false\n'
                           f'[fleet]\nendpoints = ["http://127.0.0.1:{etcd.port}"]\nid = "bench-{i}"\n'
                           f'snapshot_dir = "snapshot-{i}"\n')
            servers.append(Server(f"member{i}", [str(SLUICE), "--workers", str(args.workers), "run", "--config", str(own)],
                                  port, workdir))
            ports.append(port)
        try:
            delays = []
            for n in range(pushes):
                doc = workdir / "fleet.toml"
                doc.write_text(versioned_routes(up.port, n))
                started = time.perf_counter()
                subprocess.run([str(SLUICE), "fleet", "--config", str(workdir / "member0.toml"), "push", str(doc)],
                               check=True, capture_output=True)
                answered = until_answered(ports, f"/v{n}")
                delays.append((max(answered.values()) - started) * 1e3)
            rows["sluice fleet push → all three instances"] = delays
        finally:
            for server in servers:
                server.stop()
    conf = workdir / "reload-one.toml"
    port = free_port()

    def write(n):
        tmp = conf.with_suffix(".new")
        tmp.write_text(f'[[listeners]]\naddress = "127.0.0.1:{port}"\n[reload]\nwatch = true\n' + versioned_routes(up.port, n))
        os.replace(tmp, conf)

    write(0)
    with Server("reload-one", [str(SLUICE), "--workers", str(args.workers), "run", "--config", str(conf)], port, workdir):
        delays = []
        for n in range(1, pushes + 1):
            started = time.perf_counter()
            write(n)
            delays.append((until_answered([port], f"/v{n}")[port] - started) * 1e3)
            time.sleep(0.1)
        rows["file rewritten → that one instance (watch)"] = delays
    lines = ["\n### 12. A fleet's configuration change, push to live (issue 30)\n",
             f"{pushes} changes each; a change is live when every instance answers its new route.\n",
             "| | median ms | worst ms |", "|---|---|---|"]
    for name, delays in rows.items():
        lines.append(f"| {name} | {statistics.median(delays):.1f} | {max(delays):.1f} |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text


SCENARIOS = {"pass": scenario_pass, "chains": scenario_chains, "cpu": scenario_cpu,
             "h2": scenario_h2, "tls": scenario_tls, "memory": scenario_memory, "reload": scenario_reload,
             "isolation": scenario_isolation, "failover": scenario_failover,
             "plugins": scenario_plugins, "state": scenario_state, "fleet": scenario_fleet,
             "translate": scenario_translate, "tcp": scenario_tcp}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1, help="workers for every proxy (default 1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10, help="length of each measurement")
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections for the memory scenario")
    parser.add_argument("--only", nargs="*", choices=list(SCENARIOS), help="run only these scenarios")
    parser.add_argument("--cases", nargs="*", help="plugins scenario: only the cases whose names contain one of these")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 s, 2,000 idle connections")
    parser.add_argument("--out", default=str(ROOT / "target/bench/results.md"))
    parser.add_argument("--baseline", metavar="DIR", help="also run the build saved in DIR (by --save-baseline), side by side")
    parser.add_argument("--save-baseline", metavar="DIR", help="save the current build (binary and plugins) to DIR and exit")
    args = parser.parse_args()
    if args.save_baseline:
        dest = pathlib.Path(args.save_baseline)
        (dest / "plugins").mkdir(parents=True, exist_ok=True)
        shutil.copy2(CURRENT.binary, dest / "sluice")
        for wasm in CURRENT.plugins.glob("*.wasm"):
            shutil.copy2(wasm, dest / "plugins" / wasm.name)
        print(f"saved {CURRENT.binary} and its plugins to {dest}")
        return
    if args.baseline:
        global BASELINE
        BASELINE = Build(pathlib.Path(args.baseline) / "sluice", pathlib.Path(args.baseline) / "plugins")
    if args.quick:
        args.rounds, args.seconds, args.idle = 1, 3, 2000
    for tool in ("wrk", "h2load"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is missing: run bench/run, which installs it")
    if not SLUICE.exists():
        sys.exit("target/release/sluice is missing: run bench/run, which builds it")

    header = (f"Machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
              f"{args.workers} worker(s) per proxy; {args.rounds} rounds of {args.seconds} s; "
              f"{time.strftime('%Y-%m-%d')}")
    print(header, flush=True)
    report = [header]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        with upstream(workdir) as up:
            for name in args.only or SCENARIOS:
                report.append(SCENARIOS[name](args, workdir, up))
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(report) + "\n")
    print(f"\nwritten to {out}")


if __name__ == "__main__":
    main()
