"""`runbooks sandbox | faults`: the local sandbox and the config, for developers."""

from __future__ import annotations

import argparse
import json
import os
import sys

import httpx

from deployments.cli_common import (
    OK,
    UNREACHABLE,
    USAGE,
    CliError,
)
from integrations import http

# -- sandbox -----------------------------------------------------------------------------------------
FAULTS = {
    "bad-deploy": ("/_sandbox/deploy", {"service": "api", "version": "v2-broken"}),
    "error-spike": ("/_sandbox/load", {"service": "api", "rps": 200}),
    "dependency-down": ("/_sandbox/dependency", {"service": "api", "down": True}),
}


def cmd_sandbox(args: argparse.Namespace, rest: list[str]) -> int:
    url = os.environ.get("RUNBOOKS_SANDBOX_URL", "http://127.0.0.1:8790").rstrip("/")
    if args.action == "serve":
        from sandbox.__main__ import main as sandbox_main

        sys.argv = ["runbooks sandbox serve", *rest]
        sandbox_main()
        return OK
    try:
        if args.action == "heal":
            http.post(f"{url}/_sandbox/reset", timeout=10).raise_for_status()
            print("sandbox reset: api and frontend healthy, messages and faults cleared")
            return OK
        if args.fault not in FAULTS:
            raise CliError(f"unknown fault {args.fault!r}; choose one of: {', '.join(FAULTS)}", USAGE)
        path, body = FAULTS[args.fault]
        http.post(f"{url}{path}", json=body, timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach the sandbox at {url} ({type(exc).__name__}); is `make up` running?",
                       UNREACHABLE) from None
    hint = {"bad-deploy": "service-down", "error-spike": "high-error-rate", "dependency-down": "high-error-rate"}
    print(f"injected {args.fault}; try: runbooks run {hint[args.fault]} --service api")
    return OK


def cmd_faults(args: argparse.Namespace) -> int:
    from incidents.drills import CATALOG

    if getattr(args, "json", False):
        print(json.dumps([spec.as_json() for spec in CATALOG.values()], indent=2))
        return OK
    print(f"{'fault':<38} {'scenario':<18} {'expected':<40} injected")
    for spec in CATALOG.values():
        how = "; ".join(step.describe() for step in spec.steps)
        print(f"{spec.name:<38} {spec.scenario:<18} {spec.expected_text:<40} {how}"
              + (" [sandbox only]" if spec.sandbox_only else ""))
    print("\nPlay one end to end: runbooks run incident-drill --fault <fault>")
    return OK
