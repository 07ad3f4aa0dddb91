"""How `make test` deals the suite to its lanes (tests/lanes.py), and how it reads a lane's times."""

from __future__ import annotations

import threading
import time

from tests.lanes import LAST, TOGETHER, deal, failures, module_times, modules


def test_every_module_is_dealt_once_the_stack_modules_together_and_the_canaries_apart():
    names = modules()
    assert LAST not in names and "test_fault_matrix" in names
    times = {name: float(len(name)) for name in names}
    lanes = deal(names, times, 3)
    dealt = [name for lane in lanes for name in lane]
    assert sorted(dealt) == sorted(names)
    for group in TOGETHER:
        holding = [lane for lane in lanes if set(group) & set(lane)]
        assert len(holding) == 1 and set(group) <= set(holding[0])


def test_the_lanes_are_balanced_by_measured_time():
    times = {"a": 300.0, "b": 250.0, "c": 200.0, "d": 100.0, "e": 100.0, "f": 50.0}
    lanes = deal(list(times), times, 3)
    loads = sorted(sum(times[name] for name in lane) for lane in lanes)
    assert loads == [300.0, 350.0, 350.0]  # longest first, each to the emptiest lane
    assert deal(["x", "y"], {}, 3) == [["x"], ["y"], []]  # never measured: each counts alike


def test_a_lanes_junit_report_gives_seconds_per_module_without_the_canaries(tmp_path):
    report = tmp_path / "lane.xml"
    report.write_text("""<testsuites><testsuite>
<testcase classname="tests.test_a" name="t1" time="1.5"/>
<testcase classname="tests.test_a.TestGroup" name="t2" time="2.0"/>
<testcase classname="tests.test_b" name="t3" time="0.25"/>
<testcase classname="tests.test_zz_secret_canaries" name="t4" time="9"/>
</testsuite></testsuites>""")
    assert module_times(report) == {"test_a": 3.5, "test_b": 0.25}
    assert module_times(tmp_path / "missing.xml") == {}


def test_a_lanes_failures_are_named_with_the_first_line_of_their_reason(tmp_path):
    report = tmp_path / "lane.xml"
    report.write_text("""<testsuites><testsuite>
<testcase classname="tests.test_a" name="t1"><failure message="assert 2.1 &lt; 2&#10;more">tb</failure></testcase>
<testcase classname="tests.test_b" name="t2" time="2.0"><error message="fixture broke">tests/conftest.py:12: in world
    x()
tests/stack.py:40: ReadTimeout</error></testcase>
<testcase classname="tests.test_b" name="t3" time="0.25"/>
<testcase classname="tests.test_c.TestGroup" name="t4" time="1"><failure message="">tb</failure></testcase>
</testsuite></testsuites>""")
    assert failures(report) == ["FAILURE tests/test_a.py::t1: assert 2.1 < 2",
                                "ERROR tests/test_b.py::t2 (at tests/stack.py:40): fixture broke",
                                "FAILURE tests/test_c.py::TestGroup::t4: ?"]
    assert failures(tmp_path / "missing.xml") == []


def test_the_postgres_watch_sees_connections_held_and_says_when_it_cannot_look(postgres_admin_url):
    import psycopg

    from tests.lanes import PostgresWatch

    watch = PostgresWatch(postgres_admin_url)
    held = [psycopg.connect(postgres_admin_url, connect_timeout=5) for _ in range(5)]
    try:
        time.sleep(2.5)  # two samples with the five held
    finally:
        for conn in held:
            conn.close()
    said = watch.report()
    assert watch.limit >= 5 and watch.peak >= 6 and f"of max_connections {watch.limit}" in said, said
    refused = PostgresWatch("postgresql://postgres@127.0.0.1:9/postgres")
    assert refused.report().startswith("PostgreSQL connections not watched: connection failed") and refused.peak == 0


def test_a_test_that_needs_half_of_postgres_waits_for_another_lanes_to_finish():
    from tests.conftest import postgres_turn_held

    holding, given_back = threading.Event(), threading.Event()

    def other_lane() -> None:
        with postgres_turn_held():
            holding.set()
            time.sleep(1.0)
            given_back.set()

    other = threading.Thread(target=other_lane)
    other.start()
    assert holding.wait(10)
    with postgres_turn_held() as waited:
        assert given_back.is_set() and waited >= 0.8, waited
    other.join()
    with postgres_turn_held() as waited:
        assert waited < 0.5  # free: taken at once
