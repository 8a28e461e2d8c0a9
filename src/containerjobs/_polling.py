"""One read of the store for every waiter: the changes only a read can show.

A job this manager runs tells its waiters of every change (`StatusBoard`). A job in a
store shared with other processes can also change behind the manager's back (another
worker claims it, a client cancels it); a store with a change feed says so, and any
other must be read. `StatusPoll` reads the statuses of all the jobs waited on at once,
and wakes the waiters of each job whose status moved: many waiters cost one query
per round, not a record read each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager

import anyio

from ._errors import ContainerJobsError, JobNotFound
from ._log import Logger
from ._models import JobStatus
from ._ratelimit import RepeatLimiter
from ._transitions import StatusBoard
from .storage import Storage

ReadStatuses = Callable[[Sequence[str]], Awaitable[dict[str, JobStatus]]]

_FIRST_PAUSE = 0.05  # a read soon after the first waiter comes, then less often


class StatusPoll:
    """The jobs waited on, read together each round.

    Args:
        storage: the store; its optional ``statuses(job_ids)`` reads all of them in one
            query (a store without it is read job by job, still once per round).
        board: where a change is told, as if the store had reported it.
        interval: the longest pause between rounds, asked anew each round (it grows
            while a change feed stands in for most of the reading).
    """

    def __init__(
        self,
        storage: Storage,
        board: StatusBoard,
        interval: Callable[[], float],
        log: Logger,
    ) -> None:
        read: ReadStatuses | None = getattr(storage, "statuses", None)
        self._storage = storage
        self._read = read if read is not None else self._one_by_one
        self._board = board
        self._interval = interval
        self._log = log
        self._repeats = RepeatLimiter()
        self._waiters: Counter[str] = Counter()
        self._seen: dict[str, JobStatus] = {}
        self._came = anyio.Event()

    @contextmanager
    def watching(self, job_id: str, status: JobStatus) -> Iterator[None]:
        """Read the job in the rounds while the block runs; `status` is the last its
        waiter knows."""
        self._waiters[job_id] += 1
        self._seen[job_id] = status
        self._came.set()
        try:
            yield
        finally:
            self._waiters[job_id] -= 1
            if not self._waiters[job_id]:
                del self._waiters[job_id]
                self._seen.pop(job_id, None)

    async def run(self) -> None:
        while True:
            pause = _FIRST_PAUSE
            while not self._waiters:
                self._came = anyio.Event()
                await self._came.wait()
            while self._waiters:
                await anyio.sleep(pause)
                await self.round()
                pause = min(pause * 2, self._interval())

    async def round(self) -> None:
        ids = list(self._waiters)
        if not ids:
            return
        try:
            found = await self._read(ids)
        except ContainerJobsError as exc:
            # The waiters wait on; the next round tries again.
            self._repeats.report(self._log.warning, "wait.poll_failed", error=str(exc))
            return
        self._repeats.recover(self._log.info, "wait.poll_failed", "wait.poll_recovered")
        for job_id in ids:
            status, last = found.get(job_id), self._seen.get(job_id)
            if status is None:
                self._board.wake(job_id)  # gone (pruned): its waiter reads and says so
            elif last is not None and status != last:
                self._seen[job_id] = status
                self._board.changed_elsewhere(job_id, status, last)

    async def _one_by_one(self, job_ids: Sequence[str]) -> dict[str, JobStatus]:
        found: dict[str, JobStatus] = {}
        for job_id in job_ids:
            try:
                found[job_id] = (await self._storage.get(job_id)).status
            except JobNotFound:
                continue
        return found
