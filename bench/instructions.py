"""Instructions per request: what an app's Python process executes to serve one request, counted
by valgrind instead of timed. Not part of the test suite.

    .venv/bin/python bench/instructions.py                       # devreg, C, D: every scenario
    .venv/bin/python bench/instructions.py --apps devreg --scenarios get --tree ../other-checkout

On this machine two timings of the same code differ by 10-20%; two instruction counts agree
within 0.1%. That makes them the measure of one change at a time; speed.py's requests per second
under load stay the measure of the whole. Each app is served in-process (serve_in_process.py):
its requests are ASGI calls one after another, with no HTTP server, load generator or
concurrency, so what every app pays alike (HTTP parsing, the kernel's socket work, waiting) is
left out. A run of N requests minus a run of none is the cost of N requests: start-up cancels.

Uses speed.py's data (a throwaway PostgreSQL, or BENCH_DATABASE_URL's server, with the same
10,000 devices for every app) and its peers environment for C and D. Needs valgrind, installed
from Debian's packages when missing.
"""

import argparse
import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

from speed import (
    BASELINE_SCENARIO,
    BENCH,
    DEFAULT_PEERS,
    PEERS_VENV,
    PROJECT,
    SCENARIOS,
    App,
    apps,
    ensure_peers_venv,
    seed_databases,
)

from common import ensure_installed, server

_INSTRUCTIONS = re.compile(r"I\s+refs:\s+([\d,]+)")


def instructions(app: App, scenario: str, count: int, *, tree: Path) -> int:
    """What the app's process executes in all, serving `count` requests of `scenario`."""
    route = app.routes[scenario]
    peer = bool(app.module)
    python = PEERS_VENV / "bin" / "python" if peer else Path(sys.executable)
    path = os.pathsep.join(filter(None, [app.env.get("PYTHONPATH"), app.app_dir]))
    env = {
        **os.environ,
        **app.env,
        "PYTHONHASHSEED": "0",
        "PYTHONPATH": path if peer else str(tree / "src"),
    }
    module = app.module if peer else "devreg"
    command = [
        "valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
        str(python), str(BENCH / "serve_in_process.py"),
        module, route.method, route.path, route.body, str(count),
        *([app.authorization] if app.authorization else []),
    ]  # fmt: skip
    run = subprocess.run(command, env=env, cwd=tree, capture_output=True, text=True, check=False)
    found = _INSTRUCTIONS.search(run.stderr)
    if run.returncode != 0 or found is None:
        raise SystemExit(f"{app.name} {scenario}: {run.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def per_request(app: App, scenario: str, requests: int, *, tree: Path) -> int:
    served = instructions(app, scenario, requests, tree=tree)
    return (served - instructions(app, scenario, 0, tree=tree)) // requests


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--apps", default="devreg,C,D", help="of speed.py's apps")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--requests", type=int, default=600, help="per run (page: a sixth)")
    parser.add_argument("--tree", type=Path, default=PROJECT, help="the devreg checkout to count")
    parser.add_argument("--peers", type=Path, default=DEFAULT_PEERS, help="the peers folder")
    parser.add_argument("--pg-port", type=int, default=55435)
    return parser.parse_args()


async def main() -> None:
    args = arguments()
    ensure_installed("valgrind")
    names = args.apps.split(",")
    if any(not name.startswith("devreg") for name in names):
        ensure_peers_venv(args.peers)
    counts: dict[tuple[str, str], int] = {}
    async with server(args.pg_port, {"max_connections": "200"}) as server_url:
        await seed_databases(server_url)
        known = apps(args.peers.resolve(), server_url)
        for scenario in args.scenarios.split(","):
            for name in names:
                if scenario in known[name].routes:
                    requests = max(args.requests // 6, 20) if scenario == "page" else args.requests
                    counts[name, scenario] = per_request(
                        known[name], scenario, requests, tree=args.tree.resolve()
                    )
                    print(f"{scenario} {name}: {counts[name, scenario]:,}", flush=True)
    print(report(counts))


def report(counts: dict[tuple[str, str], int]) -> str:
    """A markdown table; the ratio is C's count over the app's (above 1: fewer than C)."""
    lines = ["| scenario | app | instructions per request | ×C |", "|---|---|---|---|"]
    for (name, scenario), count in counts.items():
        baseline = counts.get(("C", BASELINE_SCENARIO.get(scenario, scenario)))
        ratio = f"{baseline / count:.2f}" if baseline else "–"
        lines.append(f"| {scenario} | {name} | {count:,} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    asyncio.run(main())
