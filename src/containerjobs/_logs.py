"""The live side of a running job's output: lines not yet stored, and who waits for them.

A `LogHub` exists while a job runs under this manager. The supervisor adds lines;
a flush moves them to the store in batches. Readers catch up from the store for
everything below `flushed` and from memory above it, so a reader never misses a
line that was flushed between two of its reads, and never sees one twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

import anyio

from ._models import LogLine
from .storage import StoredLine

_FLUSH_LINES = 500  # a flush at least every this many lines (and every 0.25 s)


class LogHub:
    def __init__(
        self,
        job_id: str,
        start_seq: int,
        store: Callable[[str, Sequence[StoredLine]], Awaitable[None]],
    ) -> None:
        self.job_id = job_id
        self.flushed = start_seq  # every seq below this is in the store
        self.buffer: list[StoredLine] = []  # seq flushed, flushed + 1, ...
        self.closed = False
        self._changed = anyio.Event()
        self._waiting = anyio.Event()  # set while lines wait for a flush
        self._full = anyio.Event()
        self._lock = anyio.Lock()
        self._store = store

    @property
    def next_seq(self) -> int:
        return self.flushed + len(self.buffer)

    def add(self, line: LogLine) -> None:
        self.buffer.append(StoredLine(self.next_seq, line))
        self._waiting.set()
        if len(self.buffer) >= _FLUSH_LINES:
            self._full.set()
        self._notify()

    async def due(self, interval: float) -> None:
        """Return `interval` seconds after a line came to wait for a flush, or sooner
        when enough lines wait. A job that prints nothing costs no wake-up."""
        await self._waiting.wait()
        with anyio.move_on_after(interval):
            await self._full.wait()

    async def flush(self) -> None:
        # One flush at a time: two would write the same batch and mark it twice.
        async with self._lock:
            batch = list(self.buffer)
            if not batch:
                return
            await self._store(self.job_id, batch)
            del self.buffer[: len(batch)]
            self.flushed += len(batch)
            if not self.buffer:
                self._waiting = anyio.Event()
            if len(self.buffer) < _FLUSH_LINES and self._full.is_set():
                self._full = anyio.Event()

    def close(self) -> None:
        self.closed = True
        self._notify()

    def since(self, seq: int) -> list[StoredLine]:
        """Lines from `seq` on that are still in memory (seq must be >= flushed)."""
        return self.buffer[seq - self.flushed :]

    async def changed(self) -> None:
        await self._changed.wait()

    def _notify(self) -> None:
        # Waiters hold the old event; a fresh one serves the next wait.
        event, self._changed = self._changed, anyio.Event()
        event.set()
