"""The incident roles' duties, kept in the store: each is claimed once (a conditional insert),
so two sweeps, or a sweep and a run, never post the same draft or question twice."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from incidents.store_base import StoreBase

COMMANDER_ASKED = "commander_asked"
STAKEHOLDER_UPDATE = "stakeholder_update"
SUMMARY_24H = "summary_24h"


@dataclass(frozen=True)
class Duty:
    incident_id: int
    duty: str
    slot: str
    created_at: datetime
    due_at: datetime | None
    done_at: datetime | None
    done_by: str | None
    last_reminded_at: datetime | None


class DutyRecords(StoreBase):
    def claim_duty(self, incident_id: int, duty: str, slot: str = "", due_at: datetime | None = None) -> bool:
        """True for the one caller that takes this duty (slot) of the incident; False if taken."""
        with self._connect() as conn:
            row = conn.execute("""INSERT INTO incident_duties (incident_id, duty, slot, due_at)
                                  VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING incident_id""",
                               (incident_id, duty, slot, due_at)).fetchone()
        return row is not None

    def duty(self, incident_id: int, duty: str, slot: str = "") -> Duty | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM incident_duties WHERE incident_id = %s AND duty = %s AND slot = %s",
                               (incident_id, duty, slot)).fetchone()
        return Duty(**row) if row else None

    def complete_duty(self, incident_id: int, duty: str, by: str, slot: str = "") -> bool:
        """Mark a claimed duty done; False when there is none, or it was done already."""
        with self._connect() as conn:
            row = conn.execute("""UPDATE incident_duties SET done_at = now(), done_by = %s
                                  WHERE incident_id = %s AND duty = %s AND slot = %s AND done_at IS NULL
                                  RETURNING incident_id""", (by, incident_id, duty, slot)).fetchone()
        return row is not None

    def overdue_duties(self, environment: str, duty: str, now: datetime, remind_every: timedelta) -> list[Duty]:
        """Duties past their due time, not done, and not reminded within `remind_every`."""
        with self._connect() as conn:
            rows = conn.execute("""SELECT d.* FROM incident_duties d JOIN incidents i ON i.id = d.incident_id
                                   WHERE i.environment = %s AND d.duty = %s AND d.done_at IS NULL
                                     AND d.due_at <= %s
                                     AND (d.last_reminded_at IS NULL OR d.last_reminded_at <= %s)
                                   ORDER BY d.incident_id""",
                                (environment, duty, now, now - remind_every)).fetchall()
        return [Duty(**row) for row in rows]

    def duty_reminded(self, duty: Duty, now: datetime) -> bool:
        """Take this reminder's turn (False: another sweep just reminded)."""
        with self._connect() as conn:
            row = conn.execute("""UPDATE incident_duties SET last_reminded_at = %s
                                  WHERE incident_id = %s AND duty = %s AND slot = %s
                                    AND last_reminded_at IS NOT DISTINCT FROM %s RETURNING incident_id""",
                               (now, duty.incident_id, duty.duty, duty.slot, duty.last_reminded_at)).fetchone()
        return row is not None
