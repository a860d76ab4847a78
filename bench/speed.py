"""Speed benchmark: devreg side by side with the peer apps of ../shared/peers on the same data
and the same load, in interleaved rounds. Not part of the test suite.

    .venv/bin/python bench/speed.py           # quick: 1 round of 2 s runs (~3 minutes)
    .venv/bin/python bench/speed.py --full    # 3 rounds of 7 s runs (~20 minutes)

Peers (their code is not copied here; they run from the peers folder, in their own virtual
environment built from its requirements.txt): A the sync SQLModel tutorial, B the async
SQLAlchemy tutorial, C raw asyncpg + orjson (the practical Python bound; PATCH added by
raw_asyncpg_with_patch.py), D no database (the framework bound). C-schema is C's way on devreg's
own schema and data (raw_asyncpg_on_devreg_schema.py): the same devices, indexes, triggers and
JSON as devreg, none of its Python; beside it, devreg's ratio says what devreg's Python costs.

It starts a throwaway PostgreSQL cluster (PostgreSQL's default settings, max_connections 200)
with two databases holding the same 10,000 devices (ids 1..10000, names device-<id>): one with
the peers' table, one migrated for devreg (BENCH_DATABASE_URL, a superuser URL, names a server
to use instead), and installs wrk from Debian's packages when missing.
Each round starts every app in turn (same uvicorn loop/http, same worker count), warms it up and
drives each scenario with wrk (2 threads, 64 connections, loopback only, bounded by --duration),
counting the app's CPU time and PostgreSQL's (/proc: the server's processes, when it runs on
this machine), how busy the machine's cores were, and the PostgreSQL sessions opened meanwhile
(pg_stat_database). A run whose machine was as busy as every app keeps it with two workers
(about 85% on the 2-core box of docs/benchmarks.md) was
bound by its cores, not the app. Rows written by POST are deleted after each run. The report
gives medians over rounds, and ratios to C and to B (and to C-schema, when it ran) taken within
each round, then their median.
"""

import argparse
import asyncio
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from common import admin, ensure_installed, fresh_database, server

BENCH = Path(__file__).resolve().parent
PROJECT = BENCH.parent
DEFAULT_PEERS = PROJECT.parent / "shared" / "peers"
PEERS_VENV = BENCH / ".venv-peers"
SEEDED = 10_000
PEERS_DATABASE = "bench_peers"
DEVREG_DATABASE = "bench_devreg"
HOST = "127.0.0.1"
BENCH_TOKEN = "dvr_bench-token-for-loopback-runs-only"  # noqa: S105 - a throwaway database's

SCENARIOS = ("get", "post", "patch", "page", "heartbeat")
# The scenario whose C figure a devreg scenario is held against (the heartbeat has no peer).
BASELINE_SCENARIO = {"heartbeat": "get"}
# C's way on devreg's schema: each scenario held against its own.
SCHEMA_BASELINE = "C-schema"


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # "{id}" is a random id in 1..SEEDED
    body: str = ""


@dataclass(frozen=True)
class App:
    name: str
    description: str
    routes: dict[str, Route]
    ready_path: str
    module: str = ""  # uvicorn module of a peer app
    app_dir: str = ""
    env: dict[str, str] = field(default_factory=dict)
    authorization: str = ""  # sent with every request
    database: str = PEERS_DATABASE


def _tutorial_routes(update_method: str) -> dict[str, Route]:
    return {
        "get": Route("GET", "/api/v1/device/{id}"),
        "post": Route("POST", "/api/v1/device/", '{"name":"bench-device"}'),
        "patch": Route(update_method, "/api/v1/device/{id}", '{"name":"bench-renamed"}'),
    }


def apps(peers: Path, server_url: URL) -> dict[str, App]:
    def dsn(driver: str, database: str) -> str:
        return server_url.set(drivername=driver, database=database).render_as_string(
            hide_password=False
        )

    peer_env = {"PYTHONPATH": str(peers)}
    devreg_routes = {
        "get": Route("GET", "/api/v1/devices/{id}"),
        "post": Route("POST", "/api/v1/devices", '{"name":"bench-device"}'),
        "patch": Route("PATCH", "/api/v1/devices/{id}", '{"name":"bench-renamed"}'),
        "page": Route("GET", "/api/v1/devices?limit=100"),
        "heartbeat": Route("POST", "/api/v1/devices/{id}/heartbeat"),
    }
    devreg_database = {"DATABASE_URL": dsn("postgresql+asyncpg", DEVREG_DATABASE)}

    def devreg(name: str, description: str, authorization: str = "", **env: str) -> App:
        return App(
            name,
            description,
            devreg_routes,
            ready_path="/readyz",
            env={**devreg_database, "AUTH": "off", **env},
            authorization=authorization,
            database=DEVREG_DATABASE,
        )

    return {
        "devreg": devreg("devreg", "devreg (this project), authentication off"),
        "devreg-auth": devreg(
            "devreg-auth",
            "devreg with a non-admin write token: token check and ownership on every request",
            f"Bearer {BENCH_TOKEN}",
            AUTH="required",
        ),
        "devreg-unadmitted": devreg(
            "devreg-unadmitted",
            "devreg working on every request at once (no admission queue): what admission buys",
            MAX_REQUESTS_IN_PROGRESS="10000",
        ),
        "devreg-unlogged": devreg(
            "devreg-unlogged",
            "devreg without its request log line, as the peers run (uvicorn --no-access-log)",
            LOG_LEVEL="warning",
        ),
        "A": App(
            "A",
            "sync SQLModel tutorial",
            _tutorial_routes("PUT"),
            "/api/v1/device/1",
            "seed_sync_sqlmodel",
            str(peers),
            {"DATABASE_URL": dsn("postgresql+psycopg", PEERS_DATABASE)},
        ),
        "B": App(
            "B",
            "async SQLAlchemy tutorial",
            _tutorial_routes("PUT"),
            "/api/v1/device/1",
            "seed_async_sqlalchemy",
            str(peers),
            {"DATABASE_URL": dsn("postgresql+asyncpg", PEERS_DATABASE)},
        ),
        "C": App(
            "C",
            "raw asyncpg + orjson",
            {**_tutorial_routes("PATCH"), "page": Route("GET", "/api/v1/device/?limit=100")},
            "/api/v1/device/1",
            "raw_asyncpg_with_patch",
            str(BENCH),
            {**peer_env, "ASYNCPG_DSN": dsn("postgresql", PEERS_DATABASE)},
        ),
        "C-schema": App(
            "C-schema",
            "raw asyncpg + orjson, as C, on devreg's schema, data and JSON",
            devreg_routes,
            "/api/v1/devices/1",
            "raw_asyncpg_on_devreg_schema",
            str(BENCH),
            {**peer_env, "ASYNCPG_DSN": dsn("postgresql", DEVREG_DATABASE)},
            database=DEVREG_DATABASE,
        ),
        "D": App(
            "D",
            "no database",
            {
                "get": Route("GET", "/api/v1/device/{id}"),
                "post": Route("POST", "/api/v1/device/", '{"name":"bench-device"}'),
            },
            "/api/v1/device/1",
            "bound_hello",
            str(peers),
        ),
    }


# -- set-up ---------------------------------------------------------------------------------


def ensure_peers_venv(peers: Path) -> None:
    marker = PEERS_VENV / ".installed"
    if marker.exists():
        return
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEERS_VENV)], check=True)
    pip = [str(PEERS_VENV / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, "-r", str(peers / "requirements.txt")], check=True)
    marker.touch()


async def seed_databases(server_url: URL) -> tuple[URL, URL]:
    """The same devices twice: in the peers' table and in devreg's schema."""
    peers_url = await fresh_database(server_url, PEERS_DATABASE, migrate=False)
    await admin(
        peers_url,
        "CREATE TABLE device (id SERIAL PRIMARY KEY, name VARCHAR(100) NOT NULL)",
        "INSERT INTO device (id, name) "
        f"SELECT g, 'device-' || g FROM generate_series(1, {SEEDED}) g",
        f"SELECT setval('device_id_seq', {SEEDED})",
        "VACUUM ANALYZE device",
    )
    devreg_url = await fresh_database(server_url, DEVREG_DATABASE)
    token_hash = hashlib.sha256(BENCH_TOKEN.encode()).hexdigest()
    await admin(
        devreg_url,
        # The peers have no change log; seeding is not a change anyone made.
        "SELECT set_config('devreg.record_changes', 'off', false)",
        "INSERT INTO users (name) VALUES ('bench')",
        "INSERT INTO devices (name, owner_id) "
        f"SELECT 'device-' || g, 1 FROM generate_series(1, {SEEDED}) g",
        "INSERT INTO api_tokens (user_id, prefix, token_hash, scope) "
        f"VALUES (1, '{BENCH_TOKEN[:12]}', decode('{token_hash}', 'hex'), 'write')",
        "VACUUM ANALYZE devices",
    )
    return peers_url, devreg_url


async def delete_created_rows(peers_url: URL, devreg_url: URL) -> None:
    await admin(peers_url, f"DELETE FROM device WHERE id > {SEEDED}", "VACUUM ANALYZE device")
    await admin(devreg_url, f"DELETE FROM devices WHERE id > {SEEDED}", "VACUUM ANALYZE devices")


# -- one app process ------------------------------------------------------------------------


@dataclass
class Running:
    app: App
    process: subprocess.Popen[bytes]
    base_url: str


@contextmanager
def running(app: App, *, port: int, workers: int, log: Path) -> Iterator[Running]:
    if app.module:
        command = [
            str(PEERS_VENV / "bin" / "uvicorn"), f"{app.module}:app", "--app-dir", app.app_dir,
            "--loop", "uvloop", "--http", "httptools", "--no-access-log",
            "--log-level", "warning",
        ]  # fmt: skip
    else:
        command = [str(Path(sys.executable).parent / "devreg"), "serve"]
    command += ["--host", HOST, "--port", str(port), "--workers", str(workers)]
    env = {**os.environ, **app.env}
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, env=env, stdout=output, stderr=output, start_new_session=True
        )
    base_url = f"http://{HOST}:{port}"
    try:
        _wait_ready(process, base_url + app.ready_path)
        if workers > 1:
            time.sleep(1.5)  # the other workers finish starting
        yield Running(app, process, base_url)
    finally:
        _stop(process)


def _wait_ready(process: subprocess.Popen[bytes], url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the app exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - loopback
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the app did not answer {url} within 60 s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and all its descendants (e.g. uvicorn's workers, PostgreSQL's
    sessions), every thread's, as the scheduler counts it (/proc/PID/task/TID/schedstat, in
    nanoseconds). /proc/PID/stat's clock ticks, sampled 100 times a second, missed most of a
    PostgreSQL session's short turns: 0 µs for a run of GETs. A descendant that has ended counts
    as its parent's reaped children's time (/proc/PID/stat's cutime and cstime, summed by the
    kernel to the nanosecond, shown in clock ticks): PostgreSQL's sessions closed during a run
    (a peer's connection per request, an autovacuum worker) were left out, and one open at its
    start but closed before its end took its whole time off the run's."""
    parents: dict[int, int] = {}
    reaped: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        process = int(stat.parent.name)
        parents[process] = int(fields[1])
        reaped[process] = (int(fields[13]) + int(fields[14])) / tick
    tree = {pid}
    grew = True
    while grew:
        children = {child for child, parent in parents.items() if parent in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(_threads_cpu_seconds(process) + reaped.get(process, 0.0) for process in tree)


def _threads_cpu_seconds(pid: int) -> float:
    nanoseconds = 0
    for schedstat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        try:
            nanoseconds += int(schedstat.read_text().split()[0])
        except OSError:  # the thread has ended
            continue
    return nanoseconds / 1e9


def machine_cpu_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every core of this machine so far: /proc/stat's first line,
    idle and waiting for I/O counted as not busy."""
    ticks = [int(value) for value in Path("/proc/stat").read_text().split()[1:9]]
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)


async def postmaster_pid(server_url: URL) -> int | None:
    """The PostgreSQL server's main process, whose children are its sessions and workers: the
    parent of a session's; None when the server runs on another machine (or in a container)."""
    engine = create_async_engine(server_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            backend = int(await connection.scalar(text("SELECT pg_backend_pid()")) or 0)
            return _parent_of_postgres(backend)  # while the session (and its process) lasts
    finally:
        await engine.dispose()


def _parent_of_postgres(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1]) if "(postgres)" in stat else None


async def connection_counts(server_url: URL, database: str, since: datetime) -> tuple[int, int]:
    """(sessions PostgreSQL has counted for `database` so far, live client backends started
    since `since`): the counter catches connections that closed again, the backends those it has
    not published yet. Autovacuum's workers, which also connect to the database, are not the
    app's."""
    engine = create_async_engine(server_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            counted = await connection.scalar(
                text("SELECT sessions FROM pg_stat_database WHERE datname = :name"),
                {"name": database},
            )
            started = await connection.scalar(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = :name "
                    "AND backend_start >= :since AND backend_type = 'client backend'"
                ),
                {"name": database, "since": since},
            )
    finally:
        await engine.dispose()
    return int(counted or 0), int(started or 0)


# -- measuring ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    connections: int
    duration: float
    warmup: float


def wrk(
    base_url: str, route: Route, load: Load, seconds: float, authorization: str = ""
) -> dict[str, float]:
    env = {
        **os.environ,
        "WRK_METHOD": route.method,
        "WRK_PATH": route.path,
        "WRK_BODY": route.body,
        "MAX_ID": str(SEEDED),
        "WRK_AUTHORIZATION": authorization,
    }
    command = [
        "wrk", "-t2", f"-c{load.connections}", f"-d{max(seconds, 1):.0f}s", "--timeout", "10s",
        "-s", str(BENCH / "wrk" / "scenario.lua"), base_url,
    ]  # fmt: skip
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    line = next(line for line in output.splitlines() if line.startswith("WRKJSON "))
    result: dict[str, float] = json.loads(line.removeprefix("WRKJSON "))
    # Requests still in flight when wrk stops finish before the next run starts (as in the
    # peers' own harness): a new wave on top of them wedges app A's thread pool.
    time.sleep(0.5)
    return result


async def measure(
    target: Running, scenario: str, load: Load, server_url: URL, database: str
) -> dict[str, float]:
    route = target.app.routes[scenario]
    authorization = target.app.authorization
    if load.warmup:
        wrk(target.base_url, route, load, load.warmup, authorization)
    started_at = datetime.now(UTC)
    sessions_before, _ = await connection_counts(server_url, database, started_at)
    postmaster = await postmaster_pid(server_url)
    cpu_before = cpu_seconds(target.process.pid)
    pg_cpu_before = cpu_seconds(postmaster) if postmaster else 0.0
    busy_before, all_before = machine_cpu_ticks()
    result = await asyncio.to_thread(
        wrk, target.base_url, route, load, load.duration, authorization
    )
    busy_after, all_after = machine_cpu_ticks()
    cpu = cpu_seconds(target.process.pid) - cpu_before
    pg_cpu = cpu_seconds(postmaster) - pg_cpu_before if postmaster else None
    await asyncio.sleep(1.1)  # PostgreSQL publishes session counts at most once a second
    sessions_after, started = await connection_counts(server_url, database, started_at)
    result["app_cpu_us"] = cpu / max(result["requests"], 1) * 1e6
    if pg_cpu is not None:
        result["pg_cpu_us"] = pg_cpu / max(result["requests"], 1) * 1e6
    result["machine_busy_pct"] = (busy_after - busy_before) / (all_after - all_before) * 100
    result["new_connections"] = max(sessions_after - sessions_before, started)
    return result


# -- report ---------------------------------------------------------------------------------


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def pg_cpu(runs: dict[int, dict[str, object]]) -> str:
    """The median of the runs' PostgreSQL CPU per request, if it was counted (a local server)."""
    counted = [float(str(r["pg_cpu_us"])) for r in runs.values() if "pg_cpu_us" in r]
    return f"{statistics.median(counted):,.0f}" if counted else "–"


def report(results: list[dict[str, object]], apps_run: list[str]) -> str:
    """Markdown: one row per workers, scenario and app; then each app's scaling with workers."""

    def runs(app: str, workers: int, scenario: str) -> dict[int, dict[str, object]]:
        return {
            int(str(r["round"])): r
            for r in results
            if r["app"] == app and r["workers"] == workers and r["scenario"] == scenario
        }

    def ratio(mine: dict[int, dict[str, object]], app: str, workers: int, scenario: str) -> str:
        theirs = runs(app, workers, scenario)
        ratios = [
            float(str(mine[round_]["rps"])) / float(str(theirs[round_]["rps"]))
            for round_ in mine
            if round_ in theirs and float(str(theirs[round_]["rps"])) > 0
        ]
        value = _median(ratios)
        return "–" if value is None else f"{value:.2f}"

    on_schema = SCHEMA_BASELINE in apps_run
    lines = [
        "| workers | scenario | app | req/s | p50 ms | p99 ms | app CPU µs/req "
        f"| PG CPU µs/req | machine busy | ×C | ×B |{' ×C-schema |' if on_schema else ''} "
        "non-2xx | new PG conns |",
        "|---|---|---|---|---|---|---|---|---|---|---|"
        + ("---|" if on_schema else "")
        + "---|---|",
    ]
    worker_counts = sorted({int(str(r["workers"])) for r in results})
    for workers in worker_counts:
        for scenario in SCENARIOS:
            for app in apps_run:
                mine = runs(app, workers, scenario)
                if not mine:
                    continue

                def median_of(key: str, mine: dict[int, dict[str, object]] = mine) -> float:
                    return statistics.median(float(str(r[key])) for r in mine.values())

                def total(key: str, mine: dict[int, dict[str, object]] = mine) -> int:
                    return sum(int(str(r[key])) for r in mine.values())

                baseline = BASELINE_SCENARIO.get(scenario, scenario)
                lines.append(
                    f"| {workers} | {scenario} | {app} | {median_of('rps'):,.0f} "
                    f"| {median_of('p50_ms'):.1f} | {median_of('p99_ms'):.1f} "
                    f"| {median_of('app_cpu_us'):,.0f} | {pg_cpu(mine)} "
                    f"| {median_of('machine_busy_pct'):.0f}% "
                    f"| {ratio(mine, 'C', workers, baseline)} "
                    f"| {ratio(mine, 'B', workers, scenario)} "
                    + (f"| {ratio(mine, SCHEMA_BASELINE, workers, scenario)} " if on_schema else "")
                    + f"| {total('non_2xx') + total('errors')} | {total('new_connections')} |"
                )
    if len(worker_counts) > 1:
        low, high = worker_counts[0], worker_counts[-1]
        lines += ["", f"Scaling, {high} workers ÷ {low} worker(s), median req/s:", ""]
        for app in apps_run:
            parts = []
            for scenario in SCENARIOS:
                one, many = runs(app, low, scenario), runs(app, high, scenario)
                if one and many:
                    rate = statistics.median(float(str(r["rps"])) for r in many.values())
                    base = statistics.median(float(str(r["rps"])) for r in one.values())
                    parts.append(f"{scenario} {rate / base:.2f}x" if base else f"{scenario} –")
            if parts:
                lines.append(f"- {app}: " + ", ".join(parts))
    return "\n".join(lines)


# -- main -----------------------------------------------------------------------------------


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="3 rounds of 7 s runs")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--duration", type=float, help="seconds measured per run")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up before each run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--workers", default="1,2", help="worker counts, e.g. 1,2")
    parser.add_argument(
        "--apps",
        default="devreg,C,B,A,D",
        help="also devreg-auth (devreg with a token), devreg-unadmitted (no admission queue), "
        "devreg-unlogged (no request log line) and C-schema (C on devreg's schema)",
    )
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--peers", type=Path, default=DEFAULT_PEERS, help="the peers folder")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--pg-port", type=int, default=55434)
    parser.add_argument("--out", type=Path, default=BENCH / "results")
    parser.add_argument("--report", type=Path, help="only print the table of a results .jsonl")
    args = parser.parse_args()
    args.rounds = args.rounds or (3 if args.full else 1)
    args.duration = args.duration or (7.0 if args.full else 2.0)
    if args.warmup is None:
        args.warmup = 2.0 if args.full else 1.0
    return args


async def main() -> None:
    args = arguments()
    if args.report:
        records = [json.loads(line) for line in args.report.read_text().splitlines()]
        print(report(records, list(dict.fromkeys(str(r["app"]) for r in records))))
        return
    app_names = args.apps.split(",")
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    load = Load(args.connections, args.duration, args.warmup)
    ensure_installed("wrk")
    if set(app_names) - {"devreg"}:
        ensure_peers_venv(args.peers)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results_file = args.out / f"speed-{stamp}.jsonl"
    log = args.out / f"speed-{stamp}.log"
    results: list[dict[str, object]] = []
    async with server(args.pg_port, {"max_connections": "200"}) as server_url:
        peers_url, devreg_url = await seed_databases(server_url)
        known = apps(args.peers.resolve(), server_url)
        unknown = set(app_names) - known.keys()
        if unknown:
            raise SystemExit(f"unknown apps: {', '.join(sorted(unknown))}")
        for round_ in range(1, args.rounds + 1):
            for workers in [int(w) for w in args.workers.split(",")]:
                for name in app_names:
                    app = known[name]
                    wanted = [s for s in scenarios if s in app.routes]
                    if not wanted:
                        continue
                    with running(app, port=args.port, workers=workers, log=log) as target:
                        for scenario in wanted:
                            result = await measure(target, scenario, load, server_url, app.database)
                            record = {
                                "round": round_,
                                "workers": workers,
                                "app": name,
                                "scenario": scenario,
                                **result,
                            }
                            results.append(record)
                            with results_file.open("a") as output:
                                output.write(json.dumps(record) + "\n")
                            print(
                                f"round {round_} workers {workers} {name:6} {scenario:9} "
                                f"{result['rps']:8,.0f} req/s  p99 {result['p99_ms']:7.1f} ms  "
                                f"{result['app_cpu_us']:6,.0f} µs/req",
                                file=sys.stderr,
                                flush=True,
                            )
                            if scenario == "post":
                                await delete_created_rows(peers_url, devreg_url)
    print(
        f"\nRun {stamp} on {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; {args.rounds} round(s) of {args.duration:g} s runs "
        f"(warm-up {args.warmup:g} s), {args.connections} connections, wrk 2 threads; "
        f"raw results: {results_file}\n"
    )
    print(report(results, app_names))


if __name__ == "__main__":
    asyncio.run(main())
