"""Versioned migrations: applied by `make up`, and applying again is a no-op."""

from __future__ import annotations

import psycopg2

from functions.runtime import migrate


def test_migrations_are_applied_and_idempotent(stack_env: dict[str, str]) -> None:
    url = stack_env["DATABASE_URL"]
    assert migrate.apply(url) == []  # `make up` already applied everything
    assert migrate.apply(url) == []
    with psycopg2.connect(url) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'thermo'"
        )
        assert {row[0] for row in cur.fetchall()} >= {"devices", "image_objects"}
        cur.execute("SELECT migration_id FROM _yoyo_migration")
        applied = {row[0] for row in cur.fetchall()}
        ours = {path.stem for folder in migrate.directories() for path in folder.glob("*.sql")}
        assert applied >= ours
