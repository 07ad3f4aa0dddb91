"""One redaction step for everything the runbooks copy from the outside world (pod and
workflow logs, alert annotations, error messages) into GitHub, Slack, artifacts or the store:
credentials given by name (env dumps, JSON/YAML fields, CLI flags, SQL), URLs with userinfo,
auth headers of any scheme, JWTs, private keys, well-known token formats, and the values of
every secret the runbooks resolved by name.

Outside text is redacted where it enters and again, in its rendered form, where it leaves:
`redact` reads through the escaping our renderers add (Markdown's backslashes, Slack's and
HTML's entities, zero-width spaces), so a secret with an `_` in it cannot hide as `\\_`."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

MARK = "[REDACTED]"
_NOT_DONE = r"(?!\\?\[REDACTED)"
# A name that says its value is a credential: PGPASSWORD, DB_PASSWORD, access_token, api-key,
# AWS_SECRET_ACCESS_KEY, STRIPE_API_KEY, "privateKey", X-Auth-Token ... (word parts, any case).
_NAME = (r"(?<![\w.\-])(?!(?:[a-z0-9]+-)*authorization\b)"
         r"[\w.\-]*?(?:passw(?:or)?d|passphrase|pwd|secret|token|credentials?|auth(?!or))[\w.\-]*"
         r"|(?<![\w.\-])[\w.\-]*key(?:s)?(?![\w.\-])")
_VALUE = (r"(?:\\\"(?P<secret_eq>[^\"\\\n]*)\\\""            # \"value\" (JSON inside a JSON string)
          r"|\"(?P<secret_dq>(?:[^\"\\\n]|\\.)*)\""          # "value with spaces"
          r"|'(?P<secret_sq>[^'\n]*)'"                       # 'value'
          rf"|{_NOT_DONE}(?P<secret_uq>[^\s\"',;&}}\]<>]+))")  # value
_SCHEMES = (r"bearer|basic|token|digest|negotiate|ntlm|apikey|api-key|key|sso-key|hmac|signature|"
            r"aws4-hmac-sha256|gitlab|splunk|otp")
_RULES: tuple[re.Pattern[str], ...] = (
    # private keys (PEM, OpenSSH), whole
    re.compile(r"(?P<secret>-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z))",
               re.S),
    # Authorization: <scheme> <credentials>, any scheme; the scheme word stays, the rest goes
    # (a quoted value ends at its quote, a header line at the line's end or a shell quote)
    re.compile(r"(?i)(?<![\w-])(?:[a-z0-9]+-)*authorization\\?[\"']?\s*[:=]\s*"
               rf"(?:\\?[\"'](?:(?:{_SCHEMES})\s+)?{_NOT_DONE}(?P<secret_q>[^\r\n\"'\\]+)"
               rf"|(?:(?:{_SCHEMES})\s+)?{_NOT_DONE}(?P<secret>[^\r\n']+))"),
    re.compile(rf"(?i)\b(?:bearer|basic)\s+{_NOT_DONE}(?P<secret>[A-Za-z0-9\-._~+/]{{8,}}=*)"),
    # name=value, name: value, "name": "value", name => value (env dumps, JSON, YAML, logfmt)
    re.compile(rf"(?i)(?:{_NAME})\\?[\"']?\s*(?:=>|[:=])\s*{_VALUE}"),
    # --password value (flags); name=value flags are the rule above
    re.compile(rf"(?i)(?<![\w-])--?[\w-]*(?:passw(?:or)?d|token|secret|api-?key)[\w-]*\s+{_NOT_DONE}"
               r"(?P<secret>[^\s\"'-][^\s\"']*)"),
    # SQL: PASSWORD 'x', IDENTIFIED BY 'x'
    re.compile(r"(?i)\b(?:password|identified\s+by)\s+E?'(?P<secret>(?:[^'\n]|'')*)'"),
    # scheme://user:password@host, scheme://:password@host
    re.compile(rf"(?i)\b[a-z][a-z0-9+.\-]*://[^\s:/@]*:{_NOT_DONE}(?P<secret>[^\s/]+)@"),
    # JWT
    re.compile(r"\b(?P<secret>eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*)"),
    # well-known token formats: GitHub, Slack, AWS, Stripe, Google, GitLab, npm, SendGrid, OpenAI
    re.compile(r"(?P<secret>\b(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}|"
               r"xox[abeprs]-[A-Za-z0-9-]{10,}|xapp-[A-Za-z0-9-]{10,}|(?:AKIA|ASIA)[0-9A-Z]{16}|"
               r"[sr]k_(?:live|test)_[A-Za-z0-9]{10,}|AIza[0-9A-Za-z_\-]{35}|glpat-[A-Za-z0-9_\-]{20,}|"
               r"npm_[A-Za-z0-9]{36}|SG\.[A-Za-z0-9_\-]{16,}\.[A-Za-z0-9_\-]{16,}|"
               r"sk-(?:proj-)?[A-Za-z0-9_\-]{20,})\b)"),
    re.compile(r"(?i)hooks\.slack\.com/(?:services|workflows|triggers)/(?P<secret>[A-Za-z0-9_/\-]+)"),
)
_known: set[str] = set()
_lock = threading.Lock()
MIN_SECRET_LENGTH = 6  # shorter values would redact ordinary words

# What our renderers add to text: Markdown backslash escapes, Slack/HTML entities, and the
# zero-width space that defuses mentions and fences.
_ESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+!|~\-.>'\"<&@:/=])|&(lt|gt|amp|quot|#39|#x27|#x2F);|\u200b")
_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "#39": "'", "#x27": "'", "#x2F": "/"}


def remember_secret(value: str) -> None:
    """A secret value the runbooks hold (resolved by name from the config): never copied out."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        with _lock:
            _known.add(value)


def _plain(text: str) -> tuple[str, list[int] | None, list[int] | None]:
    """`text` as a reader sees it once rendered, with, for each character, where it starts and
    ends in `text` (None, None when nothing was escaped: the positions are the same)."""
    if "\\" not in text and "&" not in text and "\u200b" not in text:
        return text, None, None
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    at = 0
    for m in _ESCAPE.finditer(text):
        for i in range(at, m.start()):
            out.append(text[i])
            starts.append(i)
            ends.append(i + 1)
        if m[1] is not None or m[2] is not None:
            out.append(m[1] if m[1] is not None else _ENTITIES[m[2]])
            starts.append(m.start())
            ends.append(m.end())
        at = m.end()
    for i in range(at, len(text)):
        out.append(text[i])
        starts.append(i)
        ends.append(i + 1)
    return "".join(out), starts, ends


def _spans(plain: str) -> Iterator[tuple[int, int]]:
    with _lock:
        known = list(_known)
    for value in known:
        for variant in {value, quote(value, safe="")}:
            start = plain.find(variant)
            while start != -1:
                yield start, start + len(variant)
                start = plain.find(variant, start + len(variant))
    for rule in _RULES:
        for m in rule.finditer(plain):
            for name, value in m.groupdict().items():
                if name.startswith("secret") and value:
                    yield m.start(name), m.end(name)


def _merged(spans: Iterator[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def redact(text: str | None) -> str:
    """`text` with every credential replaced by [REDACTED], read through rendering escapes."""
    if not text:
        return text or ""
    plain, starts, ends = _plain(text)
    pieces: list[str] = []
    at = 0
    for start, end in _merged(_spans(plain)):
        if plain[start:end] == MARK:
            continue
        first, last = (starts[start], ends[end - 1]) if starts is not None and ends is not None else (start, end)
        pieces += [text[at:first], MARK]
        at = last
    pieces.append(text[at:])
    return "".join(pieces)


def redact_data(value: Any) -> Any:
    """JSON-shaped `value` with every string in it redacted (keys are the writer's own)."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: redact_data(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [redact_data(item) for item in value]
    return value


class RedactingFilter(logging.Filter):
    """Redacts a log record's message (formatted with its arguments) before any handler sees
    it: what a run logs goes to the Prefect API, where anyone who can read the run reads it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a broken format: kept as it is, still redacted
            message = str(record.msg)
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
