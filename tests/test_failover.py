"""The scale-out stack survives its parts dying: a stack of its own (`python -m devstack.stack up
--ha` with its own state directory, databases, Redis databases and every port moved by 20000, so
it runs beside a developer's `make up`), the failover benchmark's fault phase through it (20
incidents, HA replicas' duplicate deliveries, kill -9 of one API server, one intake and one
worker), and the benchmark's goals asserted: 0 alerts lost, 0 duplicate runs or incidents, no run
stuck Running or Pending, every approval pressed landed, no action run twice, no gap of 5 s."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import redis

from tests.conftest import ADMIN_URL, LANE_REDIS_DBS, in_lane

ROOT = Path(__file__).resolve().parent.parent
OFFSET = 20000  # below Linux's ephemeral ports (32768-60999): a listener there can find its port taken
DATABASES = tuple(in_lane(name) for name in ("runbooks_failover_prefect", "runbooks_failover", "runbooks_failover_app"))
REDIS_DBS = (LANE_REDIS_DBS[3], LANE_REDIS_DBS[2])
# the rest of the test session's environment is its own (the lane's application role is kept: tests/lanes.py)
KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "RUNBOOKS_SANDBOX_APP_ROLE")


def _databases(create: bool) -> None:
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        for name in DATABASES:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            if create:
                conn.execute(f"CREATE DATABASE {name}")


def _env(state: Path) -> dict[str, str]:
    base = ADMIN_URL.rsplit("/", 1)[0]
    return {**{k: os.environ[k] for k in KEPT if k in os.environ},
            "RUNBOOKS_STACK_DIR": str(state), "RUNBOOKS_STACK_PORT_OFFSET": str(OFFSET),
            "RUNBOOKS_PREFECT_DATABASE_URL": f"{base}/{DATABASES[0]}",
            "RUNBOOKS_DATABASE_URL": f"{base}/{DATABASES[1]}",
            "RUNBOOKS_SANDBOX_APP_DATABASE_URL": f"{base}/{DATABASES[2]}",
            "RUNBOOKS_REDIS_URL": f"redis://127.0.0.1:6379/{REDIS_DBS[0]}",
            "RUNBOOKS_SECRET_API_CACHE_URL": f"redis://127.0.0.1:6379/{REDIS_DBS[1]}"}


def _stack(env: dict[str, str], command: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "devstack.stack", command, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def ha_stack(postgres_turn, tmp_path, database_url):
    _databases(create=True)
    for db in REDIS_DBS:
        redis.Redis(db=db).flushdb()
    env = _env(tmp_path)
    try:
        up = _stack(env, "up", "--ha")
        logs = tmp_path / ".run"
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:] + "".join(
            f"\n--- {p.name}\n{p.read_text(errors='replace')[-1500:]}" for p in sorted(logs.glob("*.log")))
        yield env
    finally:
        down = _stack(env, "down", timeout=120)
        print(down.stdout[-3000:], down.stderr[-2000:])  # which part needed a kill, if any
        _databases(create=False)
        for db in REDIS_DBS:
            redis.Redis(db=db).flushdb()


def test_the_scale_out_stack_loses_nothing_while_its_parts_die(ha_stack, tmp_path):
    bench = subprocess.run([sys.executable, "benchmarks/failover.py", "--phases", "faults", "--json"], cwd=ROOT,
                           env=ha_stack, capture_output=True, text=True, timeout=900)
    print(bench.stdout[-5000:], bench.stderr[-3000:])
    assert bench.stdout.strip(), bench.stderr[-3000:]
    [report] = json.loads(bench.stdout.strip().splitlines()[-1])
    assert report["cells"] == 20 and report["deliveries"] == 60
    assert report["alerts_lost"] == 0, report["problems"]
    assert (report["duplicate_runs"], report["duplicate_incidents"]) == (0, 0)
    assert report["stuck"] == 0, report["problems"]
    assert report["pressed"] >= 1 and report["landed"] >= report["pressed"] and report["still_waiting"] == 0, report
    assert report["actions_twice"] == 0 and report["api_rollbacks_run"] >= 1, report
    assert report["longest_gap_seconds"] < 5.0
    assert bench.returncode == 0, bench.stdout[-3000:]
    # the killed parts were started again: the stack is whole
    again = _stack(ha_stack, "up", "--ha")
    assert again.returncode == 0 and again.stdout.count("already running") >= 9, again.stdout
