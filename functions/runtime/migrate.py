"""Apply the versioned SQL migrations in functions/migrations (yoyo-migrations).

Used by `objectflow up` locally and by the chart's pre-install/pre-upgrade Job:
    python -m functions.runtime.migrate
Applying twice is a no-op: yoyo records applied migration ids and holds a lock while applying.
"""

from __future__ import annotations

import sys
from pathlib import Path

from functions.runtime import settings
from functions.runtime.errors import ObjectflowError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def apply(database_url: str | None = None) -> list[str]:
    """Apply pending migrations; return the ids applied (empty when already up to date)."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(database_url or settings.postgres().dsn)
    migrations = read_migrations(str(MIGRATIONS_DIR))
    with backend.lock():
        pending = backend.to_apply(migrations)
        backend.apply_migrations(pending)
    return [m.id for m in pending]


def main() -> int:
    try:
        applied = apply()
    except ObjectflowError as exc:
        print(f"migrate: {exc.detail}", file=sys.stderr)
        return 2
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
