"""Standing containment in the store (`incidents.containment`): recorded when applied, read by
the watch, lifted or extended by a person."""

from __future__ import annotations

import builtins
from datetime import datetime

from psycopg.types.json import Jsonb

from incidents.action_params import ActionParams
from incidents.containment import StandingContainment
from incidents.store_base import StoreBase, required_row
from incidents.vocabulary import ActionKind


class ContainmentRecords(StoreBase):
    def record_containment(self, incident_id: int, environment: str, service: str, kind: ActionKind, target: str,
                           params: ActionParams, expires_at: datetime) -> StandingContainment:
        with self._connect() as conn:
            row = conn.execute("""INSERT INTO containments (incident_id, environment, service, kind, target, params,
                                                            expires_at)
                                  VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *""",
                               (incident_id, environment, service, kind, target, Jsonb(params.as_dict()),
                                expires_at)).fetchone()
        return StandingContainment.from_row(required_row(row))

    def containments(self, environment: str | None = None, active_only: bool = True) -> builtins.list[
            StandingContainment]:
        where = (["status = 'active'"] if active_only else []) + (["environment = %s"] if environment else [])
        query = "SELECT * FROM containments" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        with self._connect() as conn:
            rows = conn.execute(query, (environment,) if environment else ()).fetchall()
        return [StandingContainment.from_row(row) for row in rows]

    def containment(self, containment_id: int) -> StandingContainment | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM containments WHERE id = %s", (containment_id,)).fetchone()
        return StandingContainment.from_row(row) if row else None

    def lift_containment(self, containment_id: int, by: str, note: str) -> bool:
        """Mark it lifted (once: False when it was not active)."""
        with self._connect() as conn:
            row = conn.execute("""UPDATE containments SET status = 'lifted', lifted_at = now(), lifted_by = %s,
                                         note = %s WHERE id = %s AND status = 'active' RETURNING id""",
                               (by, note, containment_id)).fetchone()
        return row is not None

    def extend_containment(self, containment_id: int, expires_at: datetime) -> bool:
        with self._connect() as conn:
            row = conn.execute("""UPDATE containments SET expires_at = %s, expiry_asked_at = NULL
                                  WHERE id = %s AND status = 'active' RETURNING id""",
                               (expires_at, containment_id)).fetchone()
        return row is not None

    def mark_containment(self, containment_id: int, column: str) -> bool:
        """Note, once, that the watch asked about its expiry or reported it as a widening."""
        if column not in ("expiry_asked_at", "widening_reported_at"):
            raise ValueError(f"not a containment mark: {column}")
        with self._connect() as conn:
            row = conn.execute(f"UPDATE containments SET {column} = now() "  # the column is checked above
                               f"WHERE id = %s AND {column} IS NULL RETURNING id", (containment_id,)).fetchone()
        return row is not None
