"""`make test`: the suite in parallel lanes.

Most of the suite waits (for a sandbox pod to become ready, a flow run to pause, an approval to
time out), so on two cores one pytest session leaves the machine half idle. Each lane is a
pytest session of its own, with its own Prefect server, sandbox, databases, Redis databases
and application role (tests/conftest.py: RUNBOOKS_TEST_LANE), so lanes share nothing but the
machine's PostgreSQL and Redis servers. The test modules are dealt to the lanes by their
measured times (tests/lane_times.json, longest first, each to the lane with the least so far).
Modules that share a costly session fixture (the production-shaped stack of tests/stack.py)
are kept in one lane, and the secret canaries (tests/test_zz_secret_canaries.py) run at the
end of every lane: each lane's runbooks wrote to its own sandbox, store and Prefect server.

Why not pytest-xdist: it hands out tests as workers become free, so it cannot run the canaries
last in every worker, and it would start the costly stack in whichever workers drew its tests.

    python -m tests.lanes [--lanes 3] [--reverse] [--record] [-- pytest arguments]

Each lane's output goes to test-artifacts/lane-<n>.log and, a line at a time, to the terminal
with the lane's number in front; the exit status is the worst lane's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
TIMES = TESTS / "lane_times.json"
ARTIFACTS = ROOT / "test-artifacts"
LAST = "test_zz_secret_canaries"
# modules that share one expensive session fixture: dealt as one
TOGETHER = (("test_observability", "test_scale_out", "test_ui", "test_warm_worker"),)
DEFAULT_LANES = 3
# pytest options that run less than the whole suite
SELECTING = {"-k", "-m", "--lf", "--last-failed", "--deselect", "-x", "--exitfirst", "--maxfail"}
MAX_LANES = 3  # tests/conftest.py's LANE_REDIS_DBS
# a frame of the suite's own code in pytest's traceback ("tests/test_ui.py:171: ReadTimeout")
TRACEBACK_LINE = re.compile(r"^(tests/[\w/]+\.py:\d+):", re.MULTILINE)


def modules() -> list[str]:
    return sorted(path.stem for path in TESTS.glob("test_*.py") if path.stem != LAST)


def reference_cpu_seconds(additions: int = 3_000_000) -> float:
    """CPU-seconds this process takes for a fixed pure-Python loop: it tells a slower machine
    from a slower suite. The same code took 590-700 s a pass one week and 950-1070 s the next
    on this kind of machine (2 cores), with nothing else running; the second week's reference
    was 0.21 CPU-s. Compare suite times only between runs whose reference is about the same."""
    started = time.process_time()
    total = 0
    for number in range(additions):
        total += number
    return time.process_time() - started


def deal(names: list[str], times: dict[str, float], lanes: int) -> list[list[str]]:
    """The modules in `lanes` lanes of about equal measured time (a module never measured
    counts as the median module)."""
    known = sorted(times.values()) or [1.0]
    default = known[len(known) // 2]
    groups: list[list[str]] = [[name for name in group if name in names] for group in TOGETHER]
    grouped = {name for group in groups for name in group}
    groups = [group for group in groups if group] + [[name] for name in names if name not in grouped]
    groups.sort(key=lambda group: -sum(times.get(name, default) for name in group))
    dealt: list[list[str]] = [[] for _ in range(lanes)]
    load = [0.0] * lanes
    for group in groups:
        lane = load.index(min(load))
        dealt[lane] += group
        load[lane] += sum(times.get(name, default) for name in group)
    return [sorted(lane) for lane in dealt]


class PostgresWatch:
    """The machine's PostgreSQL connections while the lanes run, sampled each second: every lane
    uses the one server, and past its max_connections it refuses whoever asks next, whichever
    lane that is (tests/conftest.py's `postgres_turn`)."""

    def __init__(self, url: str):
        self.url, self.peak, self.peak_at, self.limit, self.error = url, 0, 0.0, 0, ""
        self.started = time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
                self.limit = int(conn.execute("SHOW max_connections").fetchone()[0])
                while not self.stopped.wait(1.0):
                    [(count,)] = conn.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'").fetchall()
                    if count > self.peak:
                        self.peak, self.peak_at = count, time.monotonic() - self.started
        except psycopg.Error as exc:
            self.error = " ".join(str(exc).split())

    def report(self) -> str:
        self.stopped.set()
        self.thread.join(5)
        if self.error:
            return f"PostgreSQL connections not watched: {self.error}"
        return (f"PostgreSQL connections: peak {self.peak} of max_connections {self.limit} "
                f"({self.peak_at:.0f} s in)")


class Lane:
    def __init__(self, number: int, names: list[str], pytest_args: list[str]):
        self.number, self.names = number, names
        self.log_path = ARTIFACTS / f"lane-{number}.log"
        self.junit = ARTIFACTS / f"lane-{number}.xml"
        self.ledger = ARTIFACTS / f"lane-{number}-rbac.json"  # what the runbooks asked of Kubernetes here
        self.ledger.unlink(missing_ok=True)
        self.last_line = ""
        paths = [f"tests/{name}.py" for name in [*names, LAST]]
        env = {**os.environ, "RUNBOOKS_TEST_LANE": str(number), "RUNBOOKS_TEST_LEDGER": str(self.ledger),
               "PYTHONUNBUFFERED": "1"}
        self.started = time.monotonic()
        self.process = subprocess.Popen([sys.executable, "-m", "pytest", *paths, f"--junitxml={self.junit}",
                                         *pytest_args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.reader = threading.Thread(target=self._relay, daemon=True)
        self.reader.start()

    def _relay(self) -> None:
        assert self.process.stdout is not None
        with self.log_path.open("w") as log:
            for line in self.process.stdout:
                log.write(line)
                log.flush()
                if line.strip():
                    self.last_line = line.strip()
                sys.stdout.write(f"[lane {self.number}] {line}")
                sys.stdout.flush()

    def wait(self) -> int:
        code = self.process.wait()
        self.reader.join()
        self.seconds = time.monotonic() - self.started
        return code


def module_times(junit: Path) -> dict[str, float]:
    """Seconds per test module in one lane's JUnit report (set-up of session fixtures is
    counted in the first test that asked for them)."""
    times: dict[str, float] = {}
    if not junit.exists():
        return times
    for case in ElementTree.parse(junit).iter("testcase"):
        module = (case.get("classname") or "").split(".")
        name = next((part for part in module if part.startswith("test_")), None)
        if name and name != LAST:
            times[name] = times.get(name, 0.0) + float(case.get("time") or 0)
    return times


def failures(junit: Path) -> list[str]:
    """Each failed or erred test in one lane's JUnit report, with the first line of its reason
    and the last line of the test suite's own code in its traceback: printed again after every
    lane has ended, so the end of the output names what failed and where."""
    found: list[str] = []
    if not junit.exists():
        return found
    for case in ElementTree.parse(junit).iter("testcase"):
        for problem in [*case.iter("failure"), *case.iter("error")]:
            parts = (case.get("classname") or "").split(".")
            cut = next((i + 1 for i, part in enumerate(parts) if part.startswith("test_")), len(parts))
            node = "::".join(["/".join(parts[:cut]) + ".py", *parts[cut:], case.get("name") or "?"])
            reason = (problem.get("message") or "").strip().splitlines()
            where = TRACEBACK_LINE.findall(problem.text or "")
            at = f" (at {where[-1]})" if where else ""
            found.append(f"{problem.tag.upper()} {node}{at}: {reason[0][:300] if reason else '?'}")
    return found


def check_role(lanes: list[Lane], selecting: bool) -> int:
    """Least privilege over the whole suite: the Role's every grant used in some lane, and no
    refusal anywhere that a test did not provoke (tests/test_rbac.py: role_usage_problems)."""
    if selecting:
        print("[lanes] the Role's grants are compared with the whole suite's use only without a selection")
        return 0
    missing = [lane.number for lane in lanes if not lane.ledger.exists()]
    if missing:
        print(f"[lanes] the Role's grants were not checked: lanes {missing} wrote no ledger (they failed first)")
        return 1
    from tests.test_rbac import ROLE, role_usage_problems

    ledgers = [json.loads(lane.ledger.read_text()) for lane in lanes]
    allowed = {tuple(grant) for ledger in ledgers for grant in ledger["allowed"]}
    refused = {tuple(grant) for ledger in ledgers for grant in ledger["refused"]}
    problems = role_usage_problems(allowed, refused)
    for problem in problems:
        print(f"[lanes] FAILED least privilege: {problem}")
    if not problems:
        print(f"[lanes] {ROLE}: every grant used by some lane, refusals only where provoked")
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lanes", type=int, default=int(os.environ.get("RUNBOOKS_TEST_LANES", DEFAULT_LANES)),
                        help=f"how many lanes, 1 to {MAX_LANES} (default {DEFAULT_LANES}; RUNBOOKS_TEST_LANES)")
    parser.add_argument("--reverse", action="store_true", help="each lane's modules in reverse order")
    parser.add_argument("--record", action="store_true", help=f"write the measured module times to {TIMES.name}")
    parser.add_argument("pytest_args", nargs="*", help="passed to every lane's pytest (after --)")
    args = parser.parse_args(argv)
    if not 1 <= args.lanes <= MAX_LANES:
        parser.error(f"--lanes must be 1 to {MAX_LANES}: each lane needs Redis databases of its own")
    times = json.loads(TIMES.read_text()) if TIMES.exists() else {}
    dealt = [names for names in deal(modules(), times, args.lanes) if names]
    ARTIFACTS.mkdir(exist_ok=True)
    extra = ["--reverse"] if args.reverse else []
    print(f"[lanes] this machine: 3 million additions in {reference_cpu_seconds():.2f} CPU-s "
          "(compare suite times only where this is about the same)")
    started = time.monotonic()
    watch = PostgresWatch(os.environ.get("RUNBOOKS_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"))
    for number, names in enumerate(dealt):
        planned = sum(times.get(name, 0) for name in names)
        print(f"[lanes] lane {number}: {len(names)} modules (~{planned:.0f} s measured), then {LAST}")
    lanes = [Lane(number, names, extra + args.pytest_args) for number, names in enumerate(dealt)]
    codes = [lane.wait() for lane in lanes]
    print(f"[lanes] {watch.report()}")
    print(f"[lanes] {len(lanes)} lanes in {time.monotonic() - started:.0f} s:")
    for lane, code in zip(lanes, codes):
        print(f"[lanes]   lane {lane.number}: {lane.last_line} (exit {code}, log {lane.log_path.relative_to(ROOT)})")
        for failure in failures(lane.junit):
            print(f"[lanes]     {failure}")
    codes.append(check_role(lanes, selecting=any(arg.split("=")[0] in SELECTING for arg in args.pytest_args)))
    if args.record:
        measured = {**times}
        for lane in lanes:
            measured.update({name: round(seconds, 1) for name, seconds in module_times(lane.junit).items()})
        TIMES.write_text(json.dumps(dict(sorted(measured.items())), indent=1) + "\n")
        print(f"[lanes] module times written to {TIMES.relative_to(ROOT)}")
    return max(codes, default=0)


if __name__ == "__main__":
    sys.exit(main())
