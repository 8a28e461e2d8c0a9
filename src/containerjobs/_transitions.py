"""The one door for status changes.

Every move of a job's status goes through `StatusBoard.move`: a compare-and-set in
the store on the status and owner last seen, then an event to the subscribers of
`JobManager.events`, then a wake-up for whoever waits on the job. No call site can
write a status and forget to tell. The rules that put a job back in the queue (a
retry, a launch that never ran) stand here once.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import suppress
from datetime import timedelta
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectSendStream

from ._errors import ContainerJobsError
from ._events import EventStream
from ._log import Logger
from ._models import AttemptOutcome, Job, JobEvent, JobStatus, utcnow
from .storage import ChooseHost, Storage

_MAX_RETRY_DELAY = 60.0
_TOLD_KEPT = 10_000  # jobs whose last told status is remembered
_FINAL_KEPT = 64  # final records kept for their waiters


class LostRace(Exception):
    """Someone else changed the job first (a cancel, another manager): the move did
    not happen. `current` is the job as it is now. Not a `ContainerJobsError`, so that
    no handler of engine or store errors swallows it by accident."""

    def __init__(self, current: Job) -> None:
        super().__init__(f"job {current.id} changed meanwhile; it is {current.status} now")
        self.current = current


class StatusBoard:
    def __init__(self, storage: Storage, log: Logger, *, retry_delay: float) -> None:
        self._storage = storage
        self._log = log
        self._retry_delay = retry_delay
        self._watchers: dict[str, anyio.Event] = {}
        self._subscribers: list[MemoryObjectSendStream[JobEvent]] = []
        self._told: OrderedDict[str, JobStatus] = OrderedDict()
        # The final records this board wrote of jobs someone waits for: the first
        # waiter takes it instead of reading the store again (a few are kept, for
        # waiters that gave up before they could take theirs).
        self._final: OrderedDict[str, Job] = OrderedDict()

    # --- moves ---------------------------------------------------------------------

    async def move(self, job: Job, new: Job) -> Job:
        """Write `new` if the stored job still has `job`'s status and owner, and tell
        everyone; `LostRace` when it changed meanwhile.

        Checking the owner too means a manager whose lease lapsed, and whose job was
        adopted meanwhile, loses, instead of both writing.
        """
        if not await self._storage.compare_and_set(
            new, expected=job.status, expected_owner=job.owner
        ):
            raise LostRace(await self._storage.get(job.id))
        self._announce(new, job.status)
        return new

    async def advance(self, job: Job, status: JobStatus, **changes: Any) -> Job:
        return await self.move(job, job.advance(status, **changes))

    async def claim_next(
        self, manager_id: str, hosts: Mapping[str, int], choose: ChooseHost
    ) -> list[Job]:
        """Move the next pending jobs this manager may run (retries whose time has
        come) to launching, each on the host `choose` picks among those with a free
        slot, and tell everyone; the jobs claimed, which may be none. The store keeps
        per-host limits between managers (`Storage.claim_next`)."""
        claimed = await self._storage.claim_next(manager_id, hosts, choose, now=utcnow())
        for job in claimed:
            self._announce(job, JobStatus.PENDING)
        return claimed

    async def requeue(self, job: Job, **changes: Any) -> Job:
        """Back to pending, with no host, owner or container, and nothing of the
        attempt that did not happen or failed."""
        reset: dict[str, Any] = {
            "host": None,
            "owner": None,
            "container_id": None,
            "exit_code": None,
            "started_at": None,
            "error": None,
        }
        return await self.advance(job, JobStatus.PENDING, **{**reset, **changes})

    async def finish_or_retry(
        self, job: Job, status: JobStatus, error: str | None, *, retryable: bool, **changes: Any
    ) -> Job:
        """End the job, unless it failed in a way worth another attempt and has
        retries left: then it goes back to pending, with this attempt on record, to
        start again after a delay that doubles with each attempt (up to a minute)."""
        if status is JobStatus.FAILED and retryable and job.attempts <= job.spec.max_retries:
            delay = min(self._retry_delay * 2 ** (job.attempts - 1), _MAX_RETRY_DELAY)
            outcome = AttemptOutcome(
                attempt=job.attempts,
                host=job.host,
                container_id=job.container_id,
                exit_code=changes.get("exit_code"),
                error=error,
                started_at=job.started_at,
                completed_at=utcnow(),
            )
            self._log.info(
                "job.retrying", job_id=job.id, attempt=job.attempts, error=error, delay=delay
            )
            return await self.requeue(
                job,
                previous_attempts=(*job.previous_attempts, outcome),
                retry_at=utcnow() + timedelta(seconds=delay),
                output_start=await self._storage.log_count(job.id),
            )
        return await self.advance(job, status, error=error, completed_at=utcnow(), **changes)

    async def fail_quietly(self, job_id: str, error: str) -> None:
        """Fail the job if it has not ended; for the last resort of a crashed task."""
        with suppress(ContainerJobsError):
            job = await self._storage.get(job_id)
            if not job.status.is_terminal:
                await self.advance(job, JobStatus.FAILED, error=error, completed_at=utcnow())

    # --- telling -------------------------------------------------------------------

    def created(self, jobs: list[Job]) -> None:
        for job in jobs:
            self._announce(job, None)

    def _announce(self, job: Job, previous: JobStatus | None) -> None:
        if job.status.is_terminal and job.id in self._watchers:
            self._final[job.id] = job
            if len(self._final) > _FINAL_KEPT:
                self._final.popitem(last=False)
        self._publish(job.id, job.status, previous)

    def final(self, job_id: str) -> Job | None:
        """The final record of the job, once, when this board wrote it for a waiter."""
        return self._final.pop(job_id, None)

    def changed_elsewhere(
        self, job_id: str, status: JobStatus, previous: JobStatus | None
    ) -> None:
        """A change another process made, as the store reported it: wake the job's
        waiters and tell the subscribers, unless it is one this board announced (a
        store reports every write, ours too)."""
        self._publish(job_id, status, previous)

    def _publish(self, job_id: str, status: JobStatus, previous: JobStatus | None) -> None:
        self.wake(job_id)
        if previous == status or self._told.get(job_id) == status:
            return  # no move, or this one told already
        # Remembered, so that the store's report of our own write is not told twice; a
        # job's statuses move on (a retry goes through others), so a repeat is ours.
        self._told[job_id] = status
        self._told.move_to_end(job_id)
        if len(self._told) > _TOLD_KEPT:
            self._told.popitem(last=False)
        record = JobEvent(job_id, status, previous, utcnow())
        for subscriber in self._subscribers:
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                subscriber.send_nowait(record)

    def told(self, job_id: str) -> JobStatus | None:
        """The last status this board told of the job, if it still remembers."""
        return self._told.get(job_id)

    def subscribe(self) -> EventStream:
        send, receive = anyio.create_memory_object_stream[JobEvent](math.inf)
        self._subscribers.append(send)
        return EventStream(receive, lambda: self._unsubscribe(send))

    def _unsubscribe(self, send: MemoryObjectSendStream[JobEvent]) -> None:
        with suppress(ValueError):
            self._subscribers.remove(send)
        send.close()

    def close(self) -> None:
        for subscriber in self._subscribers:
            subscriber.close()

    # --- waiting -------------------------------------------------------------------

    def watch(self, job_id: str) -> anyio.Event:
        """An event set at the job's next change. Take it before reading the store,
        so a change between the read and the wait still wakes the waiter."""
        event = self._watchers.get(job_id)
        if event is None:
            event = self._watchers[job_id] = anyio.Event()
        return event

    def wake(self, job_id: str) -> None:
        # Set before dropping: a waiter that read a stale status looks again.
        event = self._watchers.pop(job_id, None)
        if event is not None:
            event.set()
