"""One redaction step for everything the runbooks copy from the outside world (pod and
workflow logs, alert annotations, error messages) into GitHub, Slack, artifacts or the store:
bearer tokens, API keys and passwords given by name, passwords in URLs, JWTs, private keys,
well-known token formats, and the values of every secret the runbooks resolved by name."""

from __future__ import annotations

import re
import threading
from typing import Any

MARK = "[REDACTED]"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S),
     f"-----{MARK} PRIVATE KEY-----"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*"), MARK),             # JWT
    (re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9\-._~+/]{8,}=*"), rf"\1\2{MARK}"),             # auth schemes
    (re.compile(r"(?i)([a-z][a-z0-9+.-]*://[^\s:/@]+:)[^\s@/]+(@)"), rf"\1{MARK}\2"),               # user:pass@host
    (re.compile(r"(?i)\b((?:api[_-]?key|access[_-]?key|secret(?:[_-]?key)?|client[_-]?secret|password|passwd|"
                r"pwd|token|auth(?:orization)?)[\"']?\s*[:=]\s*[\"']?)(?!\[REDACTED)[^\s\"',;&}]{4,}"), rf"\1{MARK}"),
    (re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|"
                r"AKIA[0-9A-Z]{16}|sk_live_[A-Za-z0-9]{10,})\b"), MARK),
)
_known: set[str] = set()
_lock = threading.Lock()
MIN_SECRET_LENGTH = 6  # shorter values would redact ordinary words


def remember_secret(value: str) -> None:
    """A secret value the runbooks hold (resolved by name from the config): never copied out."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _lock:
            _known.add(value)


def redact(text: str | None) -> str:
    if not text:
        return text or ""
    with _lock:
        known = sorted(_known, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, MARK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_alert(alert: dict[str, Any] | None) -> dict[str, Any] | None:
    """An alert as it may be kept and shown: its annotations (free text from the monitoring
    system, where a templated value can carry a credential) redacted; labels are identity."""
    if not isinstance(alert, dict) or not isinstance(alert.get("annotations"), dict):
        return alert
    return {**alert, "annotations": {k: redact(v) if isinstance(v, str) else v
                                     for k, v in alert["annotations"].items()}}
