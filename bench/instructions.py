#!/usr/bin/env python3
"""Instructions per proxied request, counted by valgrind (callgrind): the
user-space work of one request through a proxy, which a busy or shared
machine does not move the way it moves wall time and CPU seconds.

    python3 bench/instructions.py [SCENARIO ...]   # default: pass noop5 policy5 nginx

Scenarios are those of `ab_builds.py` (`pass`, `noop5`, `policy5`) run on
the current build, and `nginx` (nginx proxying to the same upstream). Each
proxy runs under callgrind with one worker; after a warm-up the counters
are zeroed, N keep-alive requests are sent (h2load, HTTP/1.1), and the
counters are read. What this leaves out: the kernel's share (sockets,
system calls) and what instructions cost in time (a cache miss is one
instruction). Needs `valgrind` (Debian's package).
"""
import pathlib
import re
import subprocess
import sys
import tempfile
import os
import time

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import bench  # noqa: E402

REQUESTS = 2000
WARM_UP = 300
KEY = "x-api-key: bench-key"
# Plugin instances live at once: the default pool reserves more address
# space than valgrind can hold.
ENGINE = "[engine]\nmax_instances = 6\n"
SCENARIOS = {
    "pass": lambda port, up: bench.sluice_toml(port, up, extra=ENGINE),
    "noop5": lambda port, up: bench.chain_toml(5)(port, up).replace("[reload]", ENGINE + "[reload]"),
    "policy5": lambda port, up: bench.policies_toml(port, up).replace("[reload]", ENGINE + "[reload]"),
}


def callgrind(workdir, name):
    # `%p`: nginx's worker is a fork of its master, and writes its own.
    return ["valgrind", "--tool=callgrind", f"--callgrind-out-file={workdir / name}.cg.%p"]


def measure(name, start, port_of):
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        with bench.upstream(workdir) as up:
            server = start(workdir, up.port)
            try:
                port = port_of(server)
                load(port, WARM_UP)
                pid = worker_pid(server)
                subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
                load(port, REQUESTS)
                subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
                time.sleep(0.5)
                dumps = sorted(workdir.glob(f"{name}.cg*"), key=lambda p: p.stat().st_mtime)
                text = dumps[-1].read_text(errors="replace")
                total = int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1))
            finally:
                server.stop()
    return total / REQUESTS


def worker_pid(server):
    """The process serving requests: the proxy, or nginx's one worker."""
    children = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
    return int(children[0]) if children else server.pid


def load(port, n):
    headers = ["-H", KEY]
    out = subprocess.run(["h2load", "--h1", "-n", str(n), "-c", "4", *headers, f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded", out)
    if not done or int(done.group(2)) != n:
        sys.exit(f"h2load: not all {n} requests succeeded:\n{out}")


def sluice(scenario):
    def start(workdir, up):
        port = bench.free_port()
        conf = workdir / "sluice.toml"
        conf.write_text(SCENARIOS[scenario](port, up))
        argv = callgrind(workdir, scenario) + [str(bench.CURRENT.binary), "--workers", "1", "run", "--config", str(conf)]
        server = bench.Server.__new__(bench.Server)
        server.name, server.port = scenario, port
        server.log = open(workdir / "sluice.log", "w")
        server.proc = subprocess.Popen(argv, stdout=server.log, stderr=server.log, cwd=workdir,
                                       env={**os.environ, "RUST_LOG": "warn"})
        bench.wait_port(port, timeout=120)
        return server
    return start


def nginx(workdir, up):
    server = bench.nginx(workdir, 1, up)
    server.stop()
    conf = workdir / "nginx.conf"
    # The same configuration, with its one worker under callgrind.
    server = bench.Server("nginx", callgrind(workdir, "nginx") + [bench.NGINX, "-c", str(conf), "-p", str(workdir)],
                          int(re.search(r"listen 127.0.0.1:(\d+)", conf.read_text()).group(1)), workdir)
    return server


def main():
    names = sys.argv[1:] or ["pass", "noop5", "policy5", "nginx"]
    print("| proxy (one worker) | instructions per request |\n|---|---|")
    for name in names:
        start = nginx if name == "nginx" else sluice(name)
        per = measure(name, start, lambda s: s.port)
        print(f"| {name} | {per:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
