"""The incident roles of the playbook, per incident: who holds each (the config's rota until a
hand-over), kept in the store so every run, the intake and the CLI see the same holders."""

from __future__ import annotations

from incidents.store_base import StoreBase


class RoleRecords(StoreBase):
    def assign_role(self, incident_id: int, role: str, handle: str, by: str) -> str | None:
        """`handle` holds `role` for the incident from now; the holder it replaces (None: the rota's)."""
        with self._connect() as conn:
            before = conn.execute("SELECT handle FROM incident_roles WHERE incident_id = %s AND role = %s FOR UPDATE",
                                  (incident_id, role)).fetchone()
            conn.execute("""INSERT INTO incident_roles (incident_id, role, handle, assigned_by)
                            VALUES (%s, %s, %s, %s)
                            ON CONFLICT (incident_id, role) DO UPDATE
                            SET handle = excluded.handle, assigned_by = excluded.assigned_by, assigned_at = now()""",
                         (incident_id, role, handle, by))
        return str(before["handle"]) if before else None

    def assigned_roles(self, incident_id: int) -> dict[str, str]:
        """The roles handed over for the incident (role -> handle); the rest are the rota's."""
        with self._connect() as conn:
            rows = conn.execute("SELECT role, handle FROM incident_roles WHERE incident_id = %s",
                                (incident_id,)).fetchall()
        return {str(row["role"]): str(row["handle"]) for row in rows}
