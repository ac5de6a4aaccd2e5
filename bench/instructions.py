#!/usr/bin/env python3
"""Instructions per proxied request, counted by valgrind (callgrind): the
user-space work of one request through a proxy, which a busy or shared
machine does not move the way it moves wall time and CPU seconds.

    python3 bench/instructions.py [SCENARIO ...] [DIR|plugins:DIR ...]

SCENARIOs are those of `ab_builds.py` (`pass`, `noop5`, `policy5`; all
three by default), `nginx` (nginx proxying to the same upstream), and
`limit_local` and `limit_cluster` (a rate-limited route with its buckets
here or in a redis-server the script starts), `headers_component` and
`headers_proxy_wasm` (one request and one response header set by the
`headers` component, and by `pw-headers` built with the proxy-wasm SDK),
`routes_10` and `routes_10000` (that many prefix routes, the request to the
last one listed), `grpc_direct` and `grpc_json` (GetBook, a unary call to a
gRPC upstream, made in gRPC and as JSON through the transcoder; HTTP/2 from
the client, nginx as the gRPC server), and `alone_<plugin>` (one sample plugin on the route,
configured as in `policy5`; `noop`, `headers`, `api-key-auth`, `rate-limit`,
`transform`, `router`, `cache-policy`). Each
runs on the current build and on each saved build DIR (from `bench.py
--save-baseline`; `plugins:DIR` is the current binary with DIR's plugins).
Each proxy runs under callgrind with one worker; after a warm-up its
counters are zeroed, N requests are sent one at a time on a keep-alive
connection (h2load, HTTP/1.1), and the counters are read. With
CALLGRIND_KEEP=DIR each profile is kept there, for callgrind_annotate.

What this leaves out: the kernel's share (sockets, system calls) and what
an instruction costs in time (a cache miss counts as one). Native code that
picks its path by CPU feature (ring's SHA and RSA) may take another path
under valgrind than on the CPU. Needs valgrind (Debian's package); the
first run compiles the plugins under valgrind (minutes, then cached).
"""
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import bench  # noqa: E402
from ab_builds import KEY, SCENARIOS, build_of  # noqa: E402

REQUESTS = 2000
WARM_UP = 300
# Plugin instances live at once: the default pool reserves more address
# space than valgrind can hold. Builds before `[engine] max_instances`
# need a patch that reads SLUICE_BENCH_INSTANCES (bench/README.md).
POOL = "[engine]\nmax_instances = 6\n"
os.environ["SLUICE_BENCH_INSTANCES"] = "6"


def callgrind(workdir, name):
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir / name}.cg.%p"]


def for_valgrind(toml, build):
    """The pool, and call deadlines for code running ~50 times slower."""
    toml = re.sub(r'(\[plugins\.[^\]]+\]\npath = "[^"]+"\n)', r'\1call_timeout = "60s"\n', toml)
    if not build.knows(POOL):
        return toml
    return toml.replace("[reload]", POOL + "[reload]", 1)


def limit_cluster(port, up):
    return bench.limit_toml("cluster", REDIS.port, timeout="10s")(port, up)


REDIS = None
PROXY_WASM = bench.ROOT / "target/wasm/wasm32-wasip1/release"


def headers_component(port, up):
    config = '{ request = { set = { x-added = "1" } }, response = { set = { x-pw-response = "seen" } } }'
    return bench.sluice_toml(port, up, f'{{ plugin = "headers", config = {config} }}',
                             f'[plugins.headers]\npath = "{bench.plugin("headers")}"\n')


def headers_proxy_wasm(port, up):
    return bench.sluice_toml(port, up, '{ plugin = "pw", config = { header = "x-added", value = "1" } }',
                             f'[plugins.pw]\npath = "{PROXY_WASM / "pw_headers.wasm"}"\n')


def routes(n):
    """`n` prefix routes besides the catch-all; the request takes the last one listed."""
    def make(port, up):
        many = "".join(f'[[routes]]\nmatch = {{ path_prefix = "/r{i}" }}\nupstream = "u"\n\n' for i in range(n))
        return bench.sluice_toml(port, up) + "\n" + many
    return make


def alone(name, config):
    """One sample plugin on the route, configured as in `policy5` (`noop` and `headers` as named)."""
    def make(port, up):
        return bench.sluice_toml(port, up, f'{{ plugin = "{name}", config = {config} }}',
                                 f'[plugins.{name}]\npath = "{bench.plugin(name)}"\n')
    return make


# Each plugin alone: `alone_<name>` (instructions per request over `pass`
# is what it costs through the proxy).
ALONE = {
    "noop": "{}",
    "headers": '{ request = { set = { x-added = "1" } }, response = { set = { x-pw-response = "seen" } } }',
    "api-key-auth": '{ keys = [{ key = "bench-key", owner = "bench", claims = { plan = "gold" } }] }',
    "rate-limit": '{ key = "identity", capacity = 1000000000, window_secs = 1 }',
    "transform": '{ request_headers = { set = { x-bench = "1" } } }',
    "router": '{ split = [{ upstream = "u", weight = 1 }] }',
    "cache-policy": '{ paths = ["/cached-only"] }',
}

STATE = {"limit_local": bench.limit_toml("local", None), "limit_cluster": limit_cluster,
         "grpc_direct": bench.transcode_toml, "grpc_json": bench.transcode_toml,
         "headers_component": headers_component, "headers_proxy_wasm": headers_proxy_wasm,
         "routes_10": routes(10), "routes_10000": routes(10_000),
         **{f"alone_{name}": alone(name, config) for name, config in ALONE.items()}}
# Where a scenario's requests go (`/` unless named here).
PATHS = {"routes_10": "/r9/x", "routes_10000": "/r9999/x"}
# Scenarios whose upstream speaks gRPC, and their calls (HTTP/2 from the client).
GRPC = {"grpc_direct": "gRPC through Sluice", "grpc_json": "JSON through the transcoder"}


def start_sluice(scenario, build):
    def start(workdir, up):
        global REDIS
        if scenario == "limit_cluster" and REDIS is None:
            REDIS = bench.redis_server(pathlib.Path(tempfile.mkdtemp()))
        make = {**SCENARIOS, **STATE}[scenario]
        toml = lambda port: for_valgrind(make(port, up), build)  # noqa: E731
        return bench.sluice(workdir, 1, toml, scenario, build=build, wrap=callgrind(workdir, scenario))
    return start


def start_nginx(workdir, up):
    # Its one worker without a master, so the process under valgrind serves.
    conf, port = bench.nginx_conf(workdir, 1, up, master=False)
    return bench.Server("nginx", callgrind(workdir, "nginx") + [bench.NGINX, "-c", str(conf), "-p", str(workdir)],
                        port, workdir, timeout=120)


def measure(name, start):
    path, extra = PATHS.get(name, "/"), ["--h1", "-H", KEY[0]]
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        if name in GRPC:
            path, extra = bench.grpc_calls(workdir)[GRPC[name]]
        upstream = bench.grpc_upstream if name in GRPC else bench.upstream
        with upstream(workdir) as up:
            server = start(workdir, up.port)
            try:
                load(server.port, WARM_UP, path, extra)
                pid = server.pid
                subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
                load(server.port, REQUESTS, path, extra)
                subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
                time.sleep(0.5)
                dump = max(workdir.glob(f"{name}.cg.{pid}*"), key=lambda p: p.stat().st_mtime)
                total = int(re.search(r"^(?:summary|totals): (\d+)", dump.read_text(errors="replace"), re.M).group(1))
                if keep := os.environ.get("CALLGRIND_KEEP"):
                    # For callgrind_annotate: where the instructions went.
                    shutil.copy(dump, pathlib.Path(keep) / f"{name}.{pid}.cg")
            finally:
                server.stop()
    return total / REQUESTS


def load(port, n, path, extra):
    out = subprocess.run(["h2load", *extra, "-n", str(n), "-c", "1", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, check=True).stdout
    done = re.search(r"(\d+) succeeded", out)
    # Under valgrind a rare request may time out; it does not move the count.
    if not done or int(done.group(1)) < n * 0.99:
        sys.exit(f"h2load: not {n} requests succeeded:\n{out}")


def main():
    args = sys.argv[1:]
    scenarios = [a for a in args if a in SCENARIOS or a in STATE or a == "nginx"] or list(SCENARIOS)
    builds = [("current", bench.CURRENT)] + [(a, build_of(a)) for a in args if a not in scenarios]
    print("| scenario | build | instructions per request |\n|---|---|---|", flush=True)
    for scenario in scenarios:
        if scenario == "nginx":
            print(f"| nginx | | {measure('nginx', start_nginx):,.0f} |", flush=True)
            continue
        for name, build in builds:
            print(f"| {scenario} | {name} | {measure(scenario, start_sluice(scenario, build)):,.0f} |", flush=True)
    if REDIS:
        REDIS.stop()


if __name__ == "__main__":
    main()
