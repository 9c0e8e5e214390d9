"""Apply the versioned SQL migrations every domain keeps in `functions/<domain>/migrations/`.

Used by `objectflow up` locally and by the chart's pre-install/pre-upgrade Job:
    python -m functions.runtime.migrate
Applying twice is a no-op: yoyo records applied migration ids and holds a lock while applying.
A migration's id is its file name, unique across domains: a new domain names its files
`<domain>_0001_<what>.sql`. Within a domain files apply in name order; domains own separate
schemas, so they do not depend on each other.
"""

from __future__ import annotations

import sys
from pathlib import Path

from functions.runtime import settings
from functions.runtime.errors import ObjectflowError

FUNCTIONS = Path(__file__).resolve().parent.parent


def directories() -> list[Path]:
    """Every domain's migrations folder, in name order."""
    return sorted(path for path in FUNCTIONS.glob("*/migrations") if path.is_dir())


def apply(database_url: str | None = None) -> list[str]:
    """Apply pending migrations; return the ids applied (empty when already up to date)."""
    from yoyo import get_backend, read_migrations

    backend = get_backend(database_url or settings.postgres().dsn)
    migrations = read_migrations(*(str(path) for path in directories()))
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
