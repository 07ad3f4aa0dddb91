"""The one error type integrations raise: it names what was called and why it failed."""

from __future__ import annotations

from typing import Self


class IntegrationError(Exception):
    """`what` names the call (e.g. "GitHub POST /repos/acme/api/issues"); `reason` says why it failed."""

    def __init__(self, what: str, reason: str, *, status: int | None = None, transient: bool = False):
        super().__init__(f"{what} failed: {reason}")
        self.what = what
        self.reason = reason
        self.status = status
        self.transient = transient


class Closing:
    """`with Client(...) as client:` closes the client's connections on the way out."""

    def close(self) -> None:  # pragma: no cover - every client defines its own
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
