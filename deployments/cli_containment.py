"""`runbooks containment [list | lift | extend]`: blocks and raised log levels that stand after
an incident (incidents/containment.py). Listing reads the store; lifting and extending are a
person's decision, recorded with their name, and act with this shell's Kubernetes access, as
`runbooks ack` does."""

from __future__ import annotations

import argparse
from datetime import datetime, timezone
from typing import Any

from deployments.cli_common import OK, USAGE, CliError, actor_name, open_store, store_failure


def add_commands(sub: Any) -> None:
    containment = sub.add_parser("containment", help="blocks and log levels that stand after incidents")
    containment.add_argument("action", nargs="?", choices=["list", "lift", "extend"], default="list")
    containment.add_argument("id", nargs="?", type=int, help="for lift and extend: the containment's number")
    containment.add_argument("--env", default="sandbox")
    containment.add_argument("--all", action="store_true", help="list: lifted ones too")
    containment.add_argument("--by", help="your name (default: $RUNBOOKS_APPROVER or your login)")
    containment.add_argument("--reason", help="lift: why (recorded with your name)")
    containment.add_argument("--hours", type=float, help="extend: keep it this many hours from now")
    containment.add_argument("--move-to-ingress", action="store_true",
                             help="lift a NetworkPolicy block by moving its addresses to the service's Ingress")


def cmd_containment(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list(args)
    if args.id is None:
        raise CliError(f"containment {args.action} needs the containment's number (see `runbooks containment`)", USAGE)
    by = actor_name(args.by)
    from tasks.containment import extend, lift

    _, StoreError = open_store()
    try:
        if args.action == "lift":
            if not (args.reason or "").strip():
                raise CliError("say why it is lifted (--reason TEXT)", USAGE)
            print(f"containment #{args.id} lifted by {by}: "
                  f"{lift(args.env, args.id, by, args.reason.strip(), args.move_to_ingress)}")
            return OK
        if not args.hours or args.hours <= 0:
            raise CliError("say for how long it stays (--hours N)", USAGE)
        until = extend(args.env, args.id, by, args.hours)
        print(f"containment #{args.id} kept by {by} until {until:%Y-%m-%d %H:%M} UTC")
        return OK
    except ValueError as exc:
        raise CliError(str(exc)) from None
    except StoreError as exc:
        raise store_failure(exc) from None


def _list(args: argparse.Namespace) -> int:
    store, StoreError = open_store()
    try:
        standing = store.containments(args.env, active_only=not args.all)
    except StoreError as exc:
        raise store_failure(exc) from None
    if not standing:
        print(f"no standing containment in {args.env}")
    now = datetime.now(timezone.utc)
    for c in standing:
        state = (f"lifted {c.lifted_at:%Y-%m-%d %H:%M} by {c.lifted_by}" if not c.active else
                 ("EXPIRED" if c.expired(now) else "until") + f" {c.expires_at:%Y-%m-%d %H:%M}")
        flags = " WIDENS ACCESS" if c.active and c.widening_reported_at else ""
        print(f"#{c.id:<4} incident #{c.incident_id:<5} {c.service:<12} {c.describe()}  [{state}]{flags}")
    return OK
