"""The live side of a running job's output: lines not yet stored, the newest lines
as they were written, and who waits for them.

A `LogHub` exists while a job runs under this manager. The supervisor adds lines;
a flush moves those to keep to the store in batches. Readers catch up from the store
for everything below `flushed` and from memory above it, so a reader never misses a
line that was flushed between two of its reads, and never sees one twice.

The cap limits what is kept, not what is streamed: once a job's output passes it
(`parted`), the lines go on to live readers from a bounded ring of the newest lines,
while the store keeps only what the cap keeps. A reader that falls further behind
than the ring holds is told how many lines it missed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from itertools import islice

import anyio

from ._models import LogLine
from .storage import StoredLine

_FLUSH_LINES = 500  # a flush at least every this many lines (and every 0.25 s)
# The ring of live lines holds at most this many lines and this many characters:
# enough for a reader in this process to keep up with a job printing as fast as the
# engine delivers; a few megabytes whatever the lines.
_RING_LINES = 20_000
_RING_CHARS = 4 << 20


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
        # Live lines are stored as they come until the output passes the cap:
        # `parted` is then the seq stored next and the index of that live line.
        self.parted: tuple[int, int] | None = None
        self.ring: deque[LogLine] = deque()  # the newest live lines, up to live_count
        self.live_count = 0
        self._ring_chars = 0
        self._changed: anyio.Event | None = None  # made by the first waiter
        self._waiting = anyio.Event()  # set while lines wait for a flush
        self._full = anyio.Event()
        self._lock = anyio.Lock()
        self._store = store

    @property
    def next_seq(self) -> int:
        return self.flushed + len(self.buffer)

    @property
    def full(self) -> bool:
        """Enough lines wait for a flush to make one now."""
        return len(self.buffer) >= _FLUSH_LINES

    def add(self, line: LogLine) -> None:
        """A line to store (and, unless it comes from the end of a capped output,
        one that went to `live` first)."""
        buffer = self.buffer
        buffer.append(StoredLine(self.flushed + len(buffer), line))
        # The events change only at these counts: a flush empties the buffer, or
        # leaves it with what came meanwhile (and the events as they were).
        if len(buffer) == 1:
            self._waiting.set()
        elif len(buffer) == _FLUSH_LINES:
            self._full.set()
        self._notify()

    def live(self, line: LogLine, *, kept: bool) -> None:
        """A line as the job wrote it, for live readers; `kept` when it is stored
        as it is (added right after), else the output has passed the cap."""
        if not kept and self.parted is None:
            self.parted = (self.next_seq, self.live_count)
        ring = self.ring
        ring.append(line)
        self.live_count += 1
        self._ring_chars += len(line.text)
        while len(ring) > _RING_LINES or self._ring_chars > _RING_CHARS:
            self._ring_chars -= len(ring.popleft().text)
        if not kept:
            self._notify()

    def live_since(self, index: int) -> tuple[int, list[LogLine]]:
        """How many lines from live line `index` on the ring no longer holds, and
        the lines it holds after them."""
        first = self.live_count - len(self.ring)
        missed = max(0, first - index)
        fresh = self.live_count - max(index, first)
        # From the right end: the lines a reader has not had yet are the newest.
        lines = list(islice(reversed(self.ring), fresh))
        lines.reverse()
        return missed, lines

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
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def _notify(self) -> None:
        # Waiters hold the event; the next wait makes a fresh one. With nobody
        # waiting a line costs no event: that is most lines of a busy job.
        if self._changed is not None:
            self._changed.set()
            self._changed = None
