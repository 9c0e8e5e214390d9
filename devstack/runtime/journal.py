"""The broker's journal: every accepted event on local disk until each matching trigger is done.

SQLite in WAL mode with `synchronous=FULL`, so a committed event survives a crash of the process
or the machine. Appends are group-committed: whatever arrives while one commit (one fsync) runs
goes into the next, so concurrent events share an fsync. A removal rides along with the next
commit and nobody waits for it: losing one in a crash only means a redelivery (at-least-once).

    events      (seq, headers, body)  an accepted event, serialised once in binary mode
    deliveries  (seq, trigger)        a matching trigger that has not acked or dead-lettered it
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

Wire = tuple[dict[str, str], bytes]
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (seq INTEGER PRIMARY KEY, headers TEXT NOT NULL, body BLOB);
CREATE TABLE IF NOT EXISTS deliveries (
    seq INTEGER NOT NULL, trigger TEXT NOT NULL, PRIMARY KEY (seq, trigger)
) WITHOUT ROWID;
"""


@dataclass(frozen=True)
class Pending:
    seq: int
    wire: Wire
    triggers: list[str]


@dataclass
class _Append:
    seq: int
    wire: Wire
    triggers: list[str]
    recorded: asyncio.Future[None]


class Journal:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # One writer task uses it at a time, from the default executor's threads.
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        (last,) = self._db.execute("SELECT coalesce(max(seq), 0) FROM events").fetchone()
        self._next = int(last) + 1
        self._remaining: dict[int, int] = {}  # seq -> triggers still to finish
        self._appends: list[_Append] = []
        self._done: list[tuple[int, str]] = []
        self._finished: list[int] = []
        self._wake: asyncio.Event | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pending(self) -> int:
        """Events accepted and not yet finished by every matching trigger."""
        return len(self._remaining)

    def resume(self) -> list[Pending]:
        """What an earlier run left pending, oldest first; call once, before appending."""
        rows = self._db.execute(
            "SELECT e.seq, e.headers, e.body, group_concat(d.trigger, char(31))"
            " FROM events e JOIN deliveries d USING (seq) GROUP BY e.seq ORDER BY e.seq"
        ).fetchall()
        found = [Pending(seq, (json.loads(h), body), t.split("\x1f")) for seq, h, body, t in rows]
        self._remaining = {p.seq: len(p.triggers) for p in found}
        # Events none of whose deliveries survived: finished before the crash.
        self._db.execute("DELETE FROM events WHERE seq NOT IN (SELECT seq FROM deliveries)")
        return found

    def append(self, wire: Wire, triggers: list[str]) -> tuple[int, asyncio.Future[None]]:
        """Record an event for `triggers`: its seq now, and a future done once the record is
        on disk (the caller may start delivering meanwhile: a crash before the record lands
        means the sender got no 202 and sends it again, a duplicate at worst)."""
        seq = self._next
        self._next += 1
        self._remaining[seq] = len(triggers)
        recorded = asyncio.get_running_loop().create_future()
        self._appends.append(_Append(seq, wire, triggers, recorded))
        self._kick()
        return seq, recorded

    def done(self, seq: int, trigger: str) -> None:
        """`trigger` acked or dead-lettered event `seq`: forget it (at the next commit)."""
        self._done.append((seq, trigger))
        left = self._remaining.get(seq, 1) - 1
        if left <= 0:
            self._remaining.pop(seq, None)
            self._finished.append(seq)
        else:
            self._remaining[seq] = left
        self._kick()

    def _kick(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())
        self._wake.set()

    async def _write_loop(self) -> None:
        assert self._wake is not None
        while not (self._closing and not (self._appends or self._done)):
            await self._wake.wait()
            self._wake.clear()
            appends, self._appends = self._appends, []
            done, self._done = self._done, []
            finished, self._finished = self._finished, []
            try:
                await asyncio.to_thread(self._commit, appends, done, finished)
            except sqlite3.Error as exc:
                for append in appends:
                    if not append.recorded.done():
                        append.recorded.set_exception(exc)
                continue
            for append in appends:
                if not append.recorded.done():
                    append.recorded.set_result(None)

    def _commit(
        self, appends: list[_Append], done: list[tuple[int, str]], finished: list[int]
    ) -> None:
        with self._db:  # one transaction: one fsync of the WAL
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT INTO events (seq, headers, body) VALUES (?, ?, ?)",
                [(a.seq, json.dumps(a.wire[0]), a.wire[1]) for a in appends],
            )
            self._db.executemany(
                "INSERT INTO deliveries (seq, trigger) VALUES (?, ?)",
                [(a.seq, trigger) for a in appends for trigger in a.triggers],
            )
            self._db.executemany("DELETE FROM deliveries WHERE seq = ? AND trigger = ?", done)
            self._db.executemany("DELETE FROM events WHERE seq = ?", [(s,) for s in finished])

    async def close(self) -> None:
        """Commit what is queued, then close the file."""
        self._closing = True
        if self._writer is not None:
            self._kick()
            await self._writer
        self._db.close()


def count_pending(path: Path) -> int | None:
    """Pending events in the journal at `path`, read beside a running broker; None if none."""
    if not path.exists():
        return None
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2)) as db:
        (count,) = db.execute("SELECT count(DISTINCT seq) FROM deliveries").fetchone()
        return int(count)
