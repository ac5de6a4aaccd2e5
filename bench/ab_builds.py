#!/usr/bin/env python3
"""Saved builds side by side with the current one, one worker pinned to its
own core, alternating for a few rounds: req/s and user/system CPU per request
(medians). SCENARIO is `pass` (no filters), `noop5` (5 noop filters) or
`policy5` (the five policy plugins of the chains scenario).

    python3 bench/ab_builds.py SCENARIO DIR [DIR ...]   # DIRs from bench.py --save-baseline

`plugins:DIR` runs the current binary with DIR's plugins (an older
contract's, loaded through the host's adapter).
"""
import pathlib
import statistics
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import bench  # noqa: E402

KEY = ["x-api-key: bench-key"]
SCENARIOS = {
    "pass": lambda port, up: bench.sluice_toml(port, up),
    # Built when the server starts, so each build gets its own plugins.
    "noop5": lambda port, up: bench.chain_toml(5)(port, up),
    "policy5": bench.policies_toml,
}


def build_of(arg):
    """A saved build, `DIR` (from `bench.py --save-baseline`), or
    `plugins:DIR`: the current binary with DIR's plugins."""
    if arg.startswith("plugins:"):
        return bench.Build(bench.CURRENT.binary, pathlib.Path(arg[len("plugins:"):]) / "plugins")
    return bench.Build(pathlib.Path(arg) / "sluice", pathlib.Path(arg) / "plugins")


def main():
    scenario = SCENARIOS[sys.argv[1]]
    builds = [("current", bench.CURRENT)] + [(arg, build_of(arg)) for arg in sys.argv[2:]]
    rows = {name: [] for name, _ in builds}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = pathlib.Path(tmp)
        with bench.upstream(workdir) as up:
            for _ in range(3):
                for name, build in builds:
                    with bench.sluice(workdir, 1, lambda p: scenario(p, up.port), build=build, pin=True) as s:
                        bench.wrk(s.port, 1, 64, KEY)
                        user0, sys0 = bench.cpu_seconds(s.pid)
                        r = bench.wrk(s.port, 5, 64, KEY)
                        user1, sys1 = bench.cpu_seconds(s.pid)
                        if r["errors"]:
                            sys.exit(f"{name}: {r['errors']} errors")
                        per = 1e6 / r["requests"]
                        rows[name].append((r["rps"], (user1 - user0) * per, (sys1 - sys0) * per))
    print(f"\n| build ({sys.argv[1]}) | req/s | user µs/request | system µs/request |\n|---|---|---|---|")
    for name, rs in rows.items():
        med = [statistics.median(r[i] for r in rs) for i in range(3)]
        print(f"| {name} | {med[0]:,.0f} | {med[1]:.1f} | {med[2]:.1f} |")


if __name__ == "__main__":
    main()
