"""The speed benchmark's smallest run, end to end: the script works. (The benchmark itself is
not a test; this proves only that it starts devreg, drives it and reports.)"""

import contextlib
import importlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.support import CHECKOUT, devreg_environment, free_port, query


def test_smallest_speed_run_reports_each_scenario(server_url: URL, tmp_path: Path) -> None:
    command = [
        sys.executable, str(CHECKOUT / "bench" / "speed.py"),
        "--apps", "devreg,devreg-auth,C-schema", "--workers", "1", "--scenarios", "get,heartbeat",
        "--duration", "1", "--warmup", "0", "--port", str(free_port()), "--out", str(tmp_path),
    ]  # fmt: skip
    environment = devreg_environment(
        BENCH_DATABASE_URL=server_url.render_as_string(hide_password=False), WORKERS="1"
    )

    result = _run_bench(command, environment, timeout=180)

    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in result.stdout.splitlines() if line.startswith("| 1 ")]
    assert [(row[1].strip(), row[2].strip()) for row in rows] == [
        ("get", "devreg"),
        ("get", "devreg-auth"),
        ("get", "C-schema"),
        ("heartbeat", "devreg"),
        ("heartbeat", "devreg-auth"),
        ("heartbeat", "C-schema"),
    ]
    assert all(float(row[11]) > 0 for row in rows)  # each one's ratio to C-schema
    (raw,) = tmp_path.glob("speed-*.jsonl")
    records = [json.loads(line) for line in raw.read_text().splitlines()]
    assert [(record["app"], record["scenario"]) for record in records] == [
        ("devreg", "get"),
        ("devreg", "heartbeat"),
        ("devreg-auth", "get"),
        ("devreg-auth", "heartbeat"),
        ("C-schema", "get"),
        ("C-schema", "heartbeat"),
    ]
    for record in records:
        assert record["requests"] > 0
        assert record["non_2xx"] == record["errors"] == 0
        assert record["app_cpu_us"] > 0
        assert record["pg_cpu_us"] > 0  # the suite's server runs on this machine
        assert 0 < record["machine_busy_pct"] <= 100


# Half a second of CPU, then the process ends.
_BURN = "import time\nend = time.process_time() + 0.5\nwhile time.process_time() < end: pass"


def test_cpu_of_a_process_ended_during_a_run_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A run's CPU is a process tree's, counted before and after: a descendant that ended in
    between (a PostgreSQL session closed, an autovacuum worker) was left out, its time lost,
    and one running at the start took its time until then off the run's."""
    monkeypatch.syspath_prepend(str(CHECKOUT / "bench"))
    speed = importlib.import_module("speed")
    before = speed.cpu_seconds(os.getpid())

    subprocess.run([sys.executable, "-c", _BURN], check=True)

    assert speed.cpu_seconds(os.getpid()) - before >= 0.45


def test_smallest_scale_run_reports_every_query(server_url: URL) -> None:
    """The scale benchmark, at a few hundred devices: every query answered, import and export
    run. (Its requests went to a host the open API no longer answers, unnoticed until a run.)"""
    command = [
        sys.executable, str(CHECKOUT / "bench" / "scale.py"),
        "--small", "100", "--large", "300", "--repeats", "1",
    ]  # fmt: skip
    environment = devreg_environment(
        BENCH_DATABASE_URL=server_url.render_as_string(hide_password=False)
    )

    result = _run_bench(command, environment, timeout=200)

    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 27 + 4  # a header and 27 queries; a header, export, import, floor
    assert "import said: 300 rows: 300 inserted" in result.stdout


_EXPORTED = (
    "id,name,serial_number,model,status,owner_id,tags,attributes,last_seen_at,created_at,"
    "updated_at,version\n1,pi,SN-1,,active,,[],{},,,,1\n"
)


async def test_the_import_floor_gathers_statistics_as_the_import_does(
    committed_database_url: URL, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The import's floor (bench/scale.py) is PostgreSQL alone doing what a bulk-loading import
    does: that ends by gathering the table's statistics afresh, after its indexes are built
    (db.bulk_load), which the floor left out, and took less time for it."""
    monkeypatch.syspath_prepend(str(CHECKOUT / "bench"))
    scale = importlib.import_module("scale")
    exported = tmp_path / "devices.csv"
    exported.write_text(_EXPORTED)
    analyses = "SELECT analyze_count AS n FROM pg_stat_user_tables WHERE relname = 'devices'"
    before = (await query(committed_database_url, analyses))[0]["n"]

    await scale.postgresql_import_floor(committed_database_url, exported)

    assert (await query(committed_database_url, analyses))[0]["n"] == before + 1


def _run_bench(
    command: list[str], environment: dict[str, str], *, timeout: float
) -> subprocess.CompletedProcess[str]:
    """`command` run to its end or, past `timeout`, interrupted as Ctrl-C does, so that it
    stops the servers it started: killed, it left a devreg server running, its port and
    database held."""
    with subprocess.Popen(
        command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=30)
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
