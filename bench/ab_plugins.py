#!/usr/bin/env python3
"""Which side a chain's cost is on: the current build, a saved baseline
(`bench.py --save-baseline DIR`), and the current host running the
baseline's plugins, each with N noop filters, alternating, 2 rounds of 5 s.

    python3 bench/ab_plugins.py DIR [N]
"""
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import bench  # noqa: E402

saved = pathlib.Path(sys.argv[1])
n = int(sys.argv[2]) if len(sys.argv) > 2 else 5
builds = [
    ("current", bench.CURRENT),
    ("baseline", bench.Build(saved / "sluice", saved / "plugins")),
    ("current host, baseline plugins", bench.Build(bench.CURRENT.binary, saved / "plugins")),
]
with tempfile.TemporaryDirectory() as tmp:
    workdir = pathlib.Path(tmp)
    with bench.upstream(workdir) as up:
        for _ in range(2):
            for name, build in builds:
                with bench.sluice(workdir, 1, lambda p: bench.chain_toml(n)(p, up.port), build=build) as s:
                    bench.wrk(s.port, 2, 64)
                    print(f"{name}, {n} noop filters: {bench.wrk(s.port, 5, 64)['rps']:,.0f} req/s", flush=True)
