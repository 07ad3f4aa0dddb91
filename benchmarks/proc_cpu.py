"""CPU-seconds of the stack's parts, read from /proc: each part is a process session (what
`make up` starts: the Prefect server, the worker with its fork server and every run it forked,
the intake, the sandbox) and PostgreSQL's postmaster with its backends. A process's time
counts its own user and system time plus that of the children it has reaped (a run's process
that has ended is counted in its fork server's), so a delta between two readings is what the
part spent in between, ended children included. PostgreSQL is counted by its processes'
name, server-wide: the benchmark's parts are its only clients while it measures."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _stat(pid: str) -> tuple[str, int, float] | None:
    """(command, session id, CPU-seconds with reaped children) of one process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    command = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    # fields[0] is the state (stat field 3): session is field 6, utime..cstime are fields 14-17
    return command, int(fields[3]), sum(int(value) for value in fields[11:15]) / TICK


def sessions() -> dict[int | str, float]:
    """CPU-seconds per session id over every live process, and under "postgres" those of
    PostgreSQL's processes (each backend is a session of its own; the postmaster's reaped
    children count the backends that have ended)."""
    totals: dict[int | str, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(entry)) is not None:
            key: int | str = "postgres" if stat[0].startswith("postgres") else stat[1]
            totals[key] = totals.get(key, 0.0) + stat[2]
    return totals


def session_of(pid: int) -> int | None:
    stat = _stat(str(pid))
    return stat[1] if stat else None


def machine_busy() -> float:
    """CPU-seconds the whole machine spent busy (all but idle and iowait) since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / TICK


class Parts:
    """The named parts to measure: {name: session ids, or "postgres"}."""

    def __init__(self, parts: dict[str, set[int | str]]):
        self.parts = parts
        self._start: dict[str, float] = {}
        self._machine = 0.0

    def _read(self) -> dict[str, float]:
        totals = sessions()
        return {name: sum(totals.get(sid, 0.0) for sid in sids) for name, sids in self.parts.items()}

    def start(self) -> None:
        self._start, self._machine = self._read(), machine_busy()

    def spent(self) -> dict[str, float]:
        """CPU-seconds per part since start(), and `machine` for the whole machine."""
        now = self._read()
        return {**{name: now[name] - self._start.get(name, 0.0) for name in now},
                "machine": machine_busy() - self._machine}
