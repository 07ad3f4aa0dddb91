"""The `runbooks` terminal workflow against a real Prefect server: start and follow a run,
list and answer approvals, read incidents, break and heal the sandbox; exit codes."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from tasks.cancellation import note_cancellation
from tests.test_drills import inline_worker  # noqa: F401 - fixture
from tests.test_intake import deployments  # noqa: F401 - fixture

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture
def cli(world, inline_worker, monkeypatch):  # noqa: F811
    from prefect.settings import PREFECT_API_URL

    from deployments.cli import main

    monkeypatch.setenv("PREFECT_API_URL", PREFECT_API_URL.value())
    return main


def test_run_pause_approve_and_read_the_incident(cli, world, capsys):
    assert cli(["sandbox", "break", "bad-deploy"]) == 0
    assert "injected bad-deploy" in capsys.readouterr().out
    assert cli(["run", "service-down", "--service", "api", "--timeout", "60"]) == 3  # waiting for approval
    out = capsys.readouterr().out
    assert "started service-down/sandbox run" in out and "[ok] open-incident" in out
    assert "rollback" in out and "revision 3" in out and "waiting for approval: runbooks approve" in out
    name = re.search(r"started \S+ run (\S+)", out)[1]

    assert cli(["approvals"]) == 0
    listed = capsys.readouterr().out
    assert name in listed and "1. rollback deployment/api" in listed and "Confidence: strong" in listed
    assert "revision 3" in listed and "incident " in listed  # from the stored plan, not the run's markdown

    assert cli(["approve", name, "--reason", "bad deploy", "--approver", "olga", "--follow", "--timeout", "90"]) == 0
    out = capsys.readouterr().out
    assert f"approved {name} as olga" in out and "run Completed" in out
    image = world.cluster.get("deployments", "sandbox", "api")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image.endswith(":v1.5.0")

    assert cli(["incidents", "--limit", "5"]) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if "service-down" in row)
    incident_id = line.split()[0].lstrip("#")
    assert cli(["incident", incident_id]) == 0
    shown = capsys.readouterr().out
    assert "approval_approved" in shown and "olga" in shown and "resolved" in shown


def _ended_run_named(name: str) -> None:
    """A newer run of the same name that has already ended."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
    from prefect.states import Completed

    with get_client(sync_client=True) as client:
        [live] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name])))
        client.create_flow_run_from_deployment(live.deployment_id, name=name, state=Completed())


def test_decline_from_the_terminal_changes_nothing(cli, world, capsys):
    cli(["sandbox", "break", "bad-deploy"])
    assert cli(["run", "service-down", "--timeout", "60"]) == 3
    name = re.search(r"started \S+ run (\S+)", capsys.readouterr().out)[1]
    _ended_run_named(name)  # an alert's runs are named after its fingerprint: a name recurs with each outage
    assert cli(["decline", name, "--reason", "handling it by hand", "--approver", "pat"]) == 0
    assert f"declined {name} as pat" in capsys.readouterr().out
    assert cli(["approve", name, "--reason", "too late"]) == 1
    assert "not waiting for approval" in capsys.readouterr().err


def test_dry_run_follows_to_the_end(cli, capsys):
    assert cli(["sandbox", "heal"]) == 0
    assert cli(["run", "service-down", "--dry-run", "--timeout", "60"]) == 0
    assert "run Completed" in capsys.readouterr().out


def test_errors_say_what_to_do_and_exit_codes_are_stable(cli, capsys, monkeypatch):
    assert cli(["approve", "no-such-run", "--reason", "x"]) == 1
    assert "runbooks approvals" in capsys.readouterr().err
    with pytest.raises(SystemExit) as usage:
        cli(["run", "not-a-scenario"])
    assert usage.value.code == 2
    with pytest.raises(SystemExit) as usage:
        cli(["sandbox", "break"])
    assert usage.value.code == 2
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert cli(["approvals"]) == 4
    assert "is `make up` running?" in capsys.readouterr().err
    # the incident store: a wrong id fails (1), a store out of reach is unreachable (4), by the error's type
    assert cli(["incident", "987654321"]) == 1
    assert "no incident 987654321" in capsys.readouterr().err
    from incidents.store import IncidentStore

    monkeypatch.setattr(IncidentStore, "_ready", set())  # the dead store below is never "ready"
    monkeypatch.setenv("RUNBOOKS_DATABASE_URL", "postgresql://postgres@127.0.0.1:9/runbooks_test")
    monkeypatch.setenv("RUNBOOKS_DATABASE_TIMEOUT", "1")
    assert cli(["incident", "1"]) == 4
    assert "incident store at 127.0.0.1:9" in capsys.readouterr().err


def test_a_busy_server_is_asked_again_and_a_run_starts_once(cli, capsys, monkeypatch):
    """Prefect answers 503 for errors a client may retry (a busy database): the command waits
    and asks again instead of failing the on-call engineer's `runbooks run`."""
    import threading

    import httpx
    from prefect.settings import PREFECT_API_URL

    from tests.faultproxy import FaultProxy

    api = httpx.URL(PREFECT_API_URL.value())
    proxy = FaultProxy(api.host, api.port)
    monkeypatch.setenv("PREFECT_API_URL", f"http://127.0.0.1:{proxy.port}/api")
    try:
        assert cli(["sandbox", "heal"]) == 0
        capsys.readouterr()
        proxy.mode = "5xx"
        threading.Timer(1.0, setattr, (proxy, "mode", "pass")).start()
        assert cli(["run", "service-down", "--dry-run", "--timeout", "60"]) == 0
        out, err = capsys.readouterr()
        assert "Prefect API busy or unreachable (HTTP 503" in err and "trying again" in err
        assert out.count("started service-down/sandbox run") == 1 and "run Completed" in out

        proxy.mode = "429"  # busy for good: a clear answer after the last try, not a hang
        assert cli(["approvals"]) == 1
        assert "Prefect API answered 429" in capsys.readouterr().err
    finally:
        proxy.close()


def test_cancel_a_run_waiting_for_approval_from_the_terminal(cli, world, store, capsys):
    """A suspended run has no process to stop: `runbooks cancel` ends it at once, records who
    cancelled in the incident timeline, and nothing changes in the sandbox."""
    cli(["sandbox", "break", "bad-deploy"])
    assert cli(["run", "service-down", "--timeout", "60"]) == 3
    name = re.search(r"started \S+ run (\S+)", capsys.readouterr().out)[1]
    assert cli(["cancel", name, "--by", "pat", "--reason", "taking over by hand"]) == 0
    out = capsys.readouterr().out
    assert f"cancelling {name}" in out and "run Cancelled" in out
    incident = next(i for i in store.list(limit=5) if i.scenario == "service-down")
    cancelled = [e for e in store.timeline(incident.id) if e.kind == "cancelled"]
    assert len(cancelled) == 1 and cancelled[0].actor == "pat" and "taking over by hand" in cancelled[0].message
    # the incident watch, finding the run ended, announces the Cancel without writing it twice
    run_id = cancelled[0].data.flow_run_id
    note_cancellation(SimpleNamespace(id=run_id, name=name, parameters={"environment": "sandbox", "service": "api"}),
                      "Cancelled by pat: taking over by hand")
    assert [e.kind for e in store.timeline(incident.id)].count("cancelled") == 1
    assert store.action_log(incident.id) == []
    assert world.cluster.get("deployments", "sandbox", "api")["spec"]["template"]["spec"]["containers"][0][
        "image"].endswith("v2-broken")
    assert cli(["cancel", name, "--by", "pat"]) == 1  # already ended
    assert "already ended" in capsys.readouterr().err
