"""The broker's journal: what it records survives a restart, what is done does not come back."""

from __future__ import annotations

import asyncio
from pathlib import Path

from devstack.runtime.journal import Journal, count_pending


def test_pending_events_come_back_in_order_and_finished_ones_do_not(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"

    async def first_run() -> None:
        journal = Journal(path)
        assert journal.resume() == []
        appended = [journal.append(({"ce-id": str(n)}, b"%d" % n), ["a", "b"]) for n in range(5)]
        await asyncio.gather(*(recorded for _seq, recorded in appended))  # one shared commit
        seqs = [seq for seq, _recorded in appended]
        journal.done(seqs[0], "a")
        journal.done(seqs[0], "b")  # event 0 finished
        journal.done(seqs[1], "a")  # event 1 still owed to b
        assert journal.pending == 4
        await journal.close()

    asyncio.run(first_run())
    assert count_pending(path) == 4
    again = Journal(path)
    pending = again.resume()
    assert [p.wire for p in pending] == [({"ce-id": str(n)}, b"%d" % n) for n in range(1, 5)]
    assert [p.triggers for p in pending] == [["b"], ["a", "b"], ["a", "b"], ["a", "b"]]
    assert again.pending == 4


def test_no_journal_file_means_nothing_pending(tmp_path: Path) -> None:
    assert count_pending(tmp_path / "absent.sqlite") is None
