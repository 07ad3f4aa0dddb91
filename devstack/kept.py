"""Secrets the local stack generates on its first `make up` and keeps in .run/ (mode 600): the
alert token, the signing secrets, and the sandbox approvers' credentials."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

# RUNBOOKS_STACK_DIR: where a second stack keeps its state (devstack/stack.py)
RUN_DIR = Path(os.environ.get("RUNBOOKS_STACK_DIR") or Path(__file__).resolve().parent.parent) / ".run"
TOKEN_FILE = RUN_DIR / "alert-token"


def alert_token() -> str:
    """RUNBOOKS_ALERT_TOKEN when set; else the one generated on the first `make up` (kept in .run/)."""
    return os.environ.get("RUNBOOKS_ALERT_TOKEN") or kept_secret(TOKEN_FILE.name)


def kept_secret(name: str) -> str:
    """A secret generated on the first `make up` and kept in .run/<name> (mode 600)."""
    path = RUN_DIR / name
    if path.exists():
        return path.read_text().strip()
    RUN_DIR.mkdir(exist_ok=True)
    value = secrets.token_urlsafe(24)
    path.touch(mode=0o600)
    path.write_text(value)
    return value


SANDBOX_APPROVERS = ("sam", "tess", "rita")  # config/sandbox.yaml's approvers
APPROVERS_FILE = RUN_DIR / "approver-credentials"


def approver_credentials() -> dict[str, str]:
    """The sandbox approvers' credentials for the approval page: generated on the first
    `make up`, kept in .run/approver-credentials (mode 600), passed to the intake by name."""
    if APPROVERS_FILE.exists():
        pairs = [line.split("=", 1) for line in APPROVERS_FILE.read_text().splitlines() if "=" in line]
        return {name: value for name, value in pairs}
    RUN_DIR.mkdir(exist_ok=True)
    credentials = {name: secrets.token_urlsafe(12) for name in SANDBOX_APPROVERS}
    APPROVERS_FILE.touch(mode=0o600)
    APPROVERS_FILE.write_text("".join(f"{name}={value}\n" for name, value in credentials.items()))
    return credentials
