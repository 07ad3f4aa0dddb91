"""Where code lives: what a production install imports (the flows, the worker, the intake with
its approval page and Slack and PagerDuty endpoints, the CLI) touches neither the simulated
world (`sandbox`) nor the developer tooling (`devstack`)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION = ["flows.service_down", "flows.high_error_rate", "flows.database_issues", "flows.security_incident",
              "flows.incident_watch", "flows.post_incident", "flows.incident_drill", "deployments.intake",
              "deployments.approval_page", "deployments.slack_interactions", "deployments.pagerduty_webhooks",
              "deployments.warm_worker", "deployments.cli"]


def test_production_modules_import_nothing_from_the_sandbox_or_the_dev_stack():
    probe = ("import importlib, sys\n"
             f"for name in {PRODUCTION!r}:\n"
             "    importlib.import_module(name)\n"
             "print(sorted({m.split('.')[0] for m in sys.modules} & {'sandbox', 'devstack'}))\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def _timeline_calls() -> list[tuple[str, ast.Call, int]]:
    """Every call that appends to the incident timeline outside the tests, with the position of
    its kind: `record(ctx, id, actor, kind, ...)` (tasks/timeline.py) and `store.add_event(id,
    actor, kind, ...)`."""
    found = []
    for path in sorted(ROOT.glob("*/*.py")):
        if path.parts[-2] in ("tests", "sandbox", ".venv"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            at = {"record": 3, "add_event": 2}.get(name or "")
            if at is not None and len(node.args) > at:
                found.append((str(path.relative_to(ROOT)), node, at))
    return found


def _timeline_writes() -> list[tuple[str, int, ast.expr]]:
    """(path, line, kind expression) of every timeline write."""
    return [(path, node.lineno, node.args[at]) for path, node, at in _timeline_calls()]


def _results(expr: ast.expr) -> list[ast.expr]:
    """What an expression can evaluate to: both arms of `a if c else b`, else itself."""
    if isinstance(expr, ast.IfExp):
        return _results(expr.body) + _results(expr.orelse)
    return [expr]


def _as_text(expr: ast.expr) -> bool:
    """A kind spelled as text: a string, an f-string, or EventKind(...) of one."""
    if isinstance(expr, ast.Call):
        return any(_as_text(arg) for arg in expr.args)
    return isinstance(expr, ast.JoinedStr) or (isinstance(expr, ast.Constant) and isinstance(expr.value, str))


def test_timeline_kinds_are_written_as_members_of_the_enum():
    writes = _timeline_writes()
    assert len(writes) > 40, "the scan no longer finds the timeline's writers"
    bare = [f"{path}:{line}: {ast.unparse(kind)}" for path, line, kind in writes
            if any(_as_text(leaf) for leaf in _results(kind))]
    assert not bare, "timeline kinds written as text instead of EventKind members:\n" + "\n".join(bare)


def _production_calls(name: str, at: int) -> list[tuple[str, int, ast.expr]]:
    """The argument at position `at` of every call of `name` outside the tests and the sandbox."""
    found = []
    for path in sorted(ROOT.glob("*/*.py")):
        if path.parts[-2] in ("tests", "sandbox", ".venv"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == name and len(node.args) > at:
                found.append((str(path.relative_to(ROOT)), node.lineno, node.args[at]))
    return found


def test_action_kinds_and_confidence_are_written_as_members_of_their_enums():
    """A planner spells an action's kind and a plan's confidence with incidents/vocabulary.py's
    members, so a misspelt kind is a NameError at import, not a plan refused at 3 a.m."""
    actions, settled = _production_calls("PlannedAction", 0), _production_calls("settle", 2)
    assert len(actions) > 10 and len(settled) > 10, "the scan no longer finds the planners"
    bare = [f"{path}:{line}: {ast.unparse(kind)}" for path, line, kind in actions + settled
            if any(_as_text(leaf) for leaf in _results(kind))]
    assert not bare, "kinds written as text instead of enum members:\n" + "\n".join(bare)


def test_a_kind_an_older_release_wrote_reads_back_as_text():
    from incidents.models import EventKind

    assert EventKind.read("approval_approved") is EventKind.APPROVAL_APPROVED
    assert EventKind.read("memo") == "memo" and not isinstance(EventKind.read("memo"), EventKind)


def _data_argument(node: ast.Call, at: int) -> ast.expr | None:
    """The payload handed to `record(ctx, id, actor, kind, message, data)` or
    `add_event(id, actor, kind, message, data)`: positional or `data=`."""
    if len(node.args) > at + 2:
        return node.args[at + 2]
    return next((k.value for k in node.keywords if k.arg == "data"), None)


def _payload_writes() -> list[tuple[str, int, str, str]]:
    """(path, line, kind member, payload constructor or "-") of every timeline write whose kind is
    written as an EventKind member."""
    found = []
    for path, node, at in _timeline_calls():
        data = _data_argument(node, at)
        made = {"-"} if data is None else {ast.unparse(d.func).split(".")[-1] if isinstance(d, ast.Call)
                                           else ast.unparse(d) for d in _results(data)}
        for kind in _results(node.args[at]):
            if isinstance(kind, ast.Attribute) and ast.unparse(kind.value) == "EventKind":
                found += [(path, node.lineno, kind.attr, m) for m in sorted(made)]
    return found


def test_every_timeline_write_hands_its_kind_s_payload_model():
    """The store refuses another kind's payload at run time (incidents/timeline_payloads.py);
    this finds the write that would be refused before a run does: each write whose kind is a
    member hands that kind's model, or nothing where the kind records nothing."""
    from incidents.models import EventKind
    from incidents.timeline_payloads import PAYLOADS, NoData

    writes = _payload_writes()
    assert len(writes) > 50, "the scan no longer finds the timeline's writers"
    wrong = []
    for path, line, member, made in writes:
        model = PAYLOADS[EventKind[member]]
        expected = "-" if model is NoData else model.__name__
        if made != expected and (made == "-" or made[0].isupper()):  # a variable is checked at run time
            wrong.append(f"{path}:{line}: {member} takes {expected}, given {made}")
    assert not wrong, "timeline writes with another kind's payload:\n" + "\n".join(wrong)
