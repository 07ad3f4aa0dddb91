"""The api service's own database on the real PostgreSQL, which the sandbox's database faults
act on."""

from __future__ import annotations

import os

# The application's role. RUNBOOKS_SANDBOX_APP_ROLE names another, for two sandboxes on one
# PostgreSQL that must not share a connection limit (the test lanes, tests/lanes.py).
APP_ROLE = os.environ.get("RUNBOOKS_SANDBOX_APP_ROLE", "sandbox_app")


def prepare_app_database(url: str) -> None:
    """The api service's own database on the real PostgreSQL: table `orders`, and a
    non-superuser role APP_ROLE (`sandbox_app`) that the service (and fault injection) connects as."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    dbname = conninfo_to_dict(url)["dbname"]
    with psycopg.connect(make_conninfo(url, dbname="postgres"), autocommit=True, connect_timeout=5) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,)).fetchone():
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
            except psycopg.errors.DuplicateDatabase:
                pass
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone():
            try:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(APP_ROLE)))
            except psycopg.errors.DuplicateObject:
                pass
    with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
        conn.execute("SELECT pg_advisory_lock(7310224002)")
        conn.execute("CREATE TABLE IF NOT EXISTS orders (id serial PRIMARY KEY, item text NOT NULL)")
        conn.execute(sql.SQL("GRANT ALL ON orders, orders_id_seq TO {}").format(sql.Identifier(APP_ROLE)))
        conn.execute("SELECT pg_advisory_unlock(7310224002)")
