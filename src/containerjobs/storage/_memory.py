"""`InMemoryStorage`: dictionaries in the process, gone when it exits."""

from __future__ import annotations

import bisect
import builtins
import heapq
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import NamedTuple

import attrs
from anyio.lowlevel import checkpoint

from .._errors import JobNotFound, StorageError, TemplateNotFound
from .._models import EnvironmentTemplate, Job, JobStatus
from ._base import ChooseHost, StoredLine
from ._chunks import LineWindow, encode_chunk, pack_chunk
from ._claim import ClaimRound, dispatch_order
from ._codec import (
    as_utc,
    check_limit,
    check_log_sequence,
    job_output,
    lease_expiry,
    status_filter,
    store_now,
)

__all__ = ["InMemoryStorage"]

_ACTIVE = frozenset(s for s in JobStatus if s.is_active)


def _newest_first(job: Job) -> tuple[datetime, str]:
    return (job.created_at, job.id)


def _listed(job: Job) -> Job:
    # As every store lists a job: its output not loaded. Here output costs nothing to
    # read, but a program must not come to count on a listing that holds it.
    return attrs.evolve(job, stdout=None, stderr=None)


def _kept(job: Job, stored: Job | None) -> Job:
    # The job to keep: a stream `job` does not hold (not loaded) is the stored one's,
    # and a stream with nothing stored is "" (a listed job created as it is).
    stdout, stderr = job_output(job)
    if stdout is not None and stderr is not None:
        return job
    before = (None, None) if stored is None else job_output(stored)
    return attrs.evolve(
        job,
        stdout=stdout if stdout is not None else before[0] or "",
        stderr=stderr if stderr is not None else before[1] or "",
    )


class _Lease(NamedTuple):
    expires_at: datetime
    renewed_at: datetime
    info: str


class _Log:
    # A job's lines as the chunks SQLite keeps (one per append, packed): seq's
    # output takes a third of a byte per byte of text, where a StoredLine object per
    # line took some 200 bytes. firsts[i] is the seq of chunk i's first line; chunk i
    # ends where chunk i + 1 starts, the last at `end`.
    __slots__ = ("chunks", "end", "firsts")

    def __init__(self) -> None:
        self.firsts: builtins.list[int] = []
        self.chunks: builtins.list[str | bytes] = []
        self.end = 0


class InMemoryStorage:
    """A job store in this process's memory: what `JobManager` uses when given none.

    It needs nothing and costs little, but it serves one manager and lives as long as
    the process (it is not `persistent`). Its records stay after the manager closes,
    for a script to read. A manager on it cancels its running jobs when it closes
    (``on_exit`` is ``"cancel"`` by default); a process that ends without closing it
    (a crash, ``kill -9``, a restarted Jupyter kernel) leaves their containers behind,
    and no later manager adopts or removes them, as their records went with the
    process. Use `SQLiteStorage` (or `PostgresStorage`) for jobs that should survive
    the process, and for workers in other processes.

    ```python
    async with JobManager(storage=InMemoryStorage()) as manager:  # the default
        ...
    ```
    """

    # Every method does its reading and writing with no await in between: on one
    # event loop that makes each call atomic with no lock. Each method starts with a
    # checkpoint so it still yields (and can be cancelled) like a real store does,
    # which keeps the races that a real store has visible in tests that use this one.
    #
    # Records are kept as the frozen objects they are, not copies.

    def __init__(self) -> None:
        self._jobs: dict[str, Job] = {}
        self._logs: dict[str, _Log] = {}
        self._templates: dict[str, EnvironmentTemplate] = {}
        self._leases: dict[str, _Lease] = {}
        self._store_id = uuid.uuid4().hex

    @property
    def persistent(self) -> bool:
        return False

    @property
    def store_id(self) -> str:
        return self._store_id

    def __repr__(self) -> str:
        return f"InMemoryStorage(jobs={len(self._jobs)})"

    async def open(self) -> None:
        await checkpoint()

    async def close(self) -> None:
        # Records stay: a script may still read them after the manager has closed.
        await checkpoint()

    # --- jobs -----------------------------------------------------------------------

    async def create(self, jobs: Sequence[Job]) -> None:
        await checkpoint()
        seen: set[str] = set()
        for job in jobs:
            if job.id in self._jobs or job.id in seen:
                raise StorageError(f"cannot create job {job.id!r}: that id already exists")
            seen.add(job.id)
        for job in jobs:
            self._jobs[job.id] = _kept(job, None)

    async def get(self, job_id: str) -> Job:
        await checkpoint()
        try:
            return self._jobs[job_id]
        except KeyError:
            raise JobNotFound(f"no job with id {job_id!r}") from None

    async def list(
        self,
        *,
        status: JobStatus | Sequence[JobStatus] | None = None,
        host: str | None = None,
        limit: int | None = 100,
    ) -> builtins.list[Job]:
        await checkpoint()
        check_limit(limit)
        wanted = status_filter(status)
        found = (
            job
            for job in self._jobs.values()
            if (wanted is None or job.status in wanted) and (host is None or job.host == host)
        )
        if limit is None:
            return [_listed(job) for job in sorted(found, key=_newest_first, reverse=True)]
        # The newest `limit` without sorting them all: a page of 100 from 100,000 jobs
        # took over 100 ms of the event loop that way.
        return [_listed(job) for job in heapq.nlargest(limit, found, key=_newest_first)]

    async def compare_and_set(
        self, job: Job, *, expected: JobStatus, expected_owner: str | None
    ) -> bool:
        await checkpoint()
        current = self._jobs.get(job.id)
        if current is None:
            raise JobNotFound(f"no job with id {job.id!r}")
        if current.status is not expected or current.owner != expected_owner:
            return False
        self._jobs[job.id] = _kept(job, current)
        return True

    async def claim_next(
        self,
        manager_id: str,
        hosts: Mapping[str, int],
        choose: ChooseHost,
        *,
        now: datetime,
        limit: int | None = None,
    ) -> builtins.list[Job]:
        await checkpoint()
        # From here to the end no await: the count, the choices and the writes are
        # one atomic step. The writes wait until the round is over, so an error
        # raised by `choose` claims nothing.
        active = Counter(
            job.host
            for job in self._jobs.values()
            if job.status in _ACTIVE and job.host is not None
        )
        round_ = ClaimRound(manager_id, hosts, choose, active=active, now=now, limit=limit)
        if round_.done:
            return []
        queue = [job for job in self._jobs.values() if job.status is JobStatus.PENDING]
        queue.sort(key=dispatch_order)
        for job in queue:
            if round_.done:
                break
            round_.offer(job)
        for claimed in round_.claimed:
            self._jobs[claimed.id] = claimed
        return round_.claimed

    async def active_jobs(self, *, owner: str | None = None) -> builtins.list[Job]:
        await checkpoint()
        found = [
            job
            for job in self._jobs.values()
            if job.status in _ACTIVE and (owner is None or job.owner == owner)
        ]
        found.sort(key=_newest_first, reverse=True)
        return found

    async def count_active(self) -> dict[str, int]:
        await checkpoint()
        return dict(
            Counter(
                job.host
                for job in self._jobs.values()
                if job.status in _ACTIVE and job.host is not None
            )
        )

    async def count_by_status(self) -> dict[JobStatus, int]:
        await checkpoint()
        counts = dict.fromkeys(JobStatus, 0)
        for job in self._jobs.values():
            counts[job.status] += 1
        return counts

    async def delete(self, job_ids: Sequence[str]) -> int:
        await checkpoint()
        deleted = 0
        for job_id in job_ids:
            if self._jobs.pop(job_id, None) is not None:
                deleted += 1
            self._logs.pop(job_id, None)
        return deleted

    async def finished_before(self, when: datetime, limit: int | None = None) -> builtins.list[str]:
        await checkpoint()
        check_limit(limit)
        # A naive `when` is refused the way a store that formats it refuses it, rather
        # than failing on comparison with the aware completion times.
        when = as_utc(when)
        found = [
            job
            for job in self._jobs.values()
            if job.status.is_terminal and job.completed_at is not None and job.completed_at < when
        ]
        found.sort(key=lambda job: (job.completed_at, job.id))
        ids = [job.id for job in found]
        return ids if limit is None else ids[:limit]

    # --- logs -----------------------------------------------------------------------

    async def append_logs(self, job_id: str, lines: Sequence[StoredLine]) -> None:
        await checkpoint()
        if job_id not in self._jobs:
            raise JobNotFound(f"cannot store logs of job {job_id!r}: no such job")
        log = self._logs.setdefault(job_id, _Log())
        check_log_sequence(job_id, lines, next_seq=log.end)
        # Lines already stored are skipped (a retried write), the rest are one chunk.
        new = lines[log.end - lines[0].seq :] if lines else lines
        if new:
            log.chunks.append(pack_chunk(encode_chunk(new)))
            log.firsts.append(log.end)
            log.end += len(new)

    async def read_logs(
        self, job_id: str, *, after: int = -1, until: int | None = None, limit: int | None = None
    ) -> builtins.list[StoredLine]:
        await checkpoint()
        check_limit(limit)
        window = LineWindow(after, until, limit)
        log = self._logs.get(job_id)
        if log is None or window.full:
            return []
        # The chunk holding the first line wanted, then those after it.
        index = max(bisect.bisect_right(log.firsts, window.start) - 1, 0)
        while index < len(log.chunks) and not window.full:
            window.add(log.firsts[index], log.chunks[index])
            index += 1
        return window.lines

    async def log_count(self, job_id: str) -> int:
        await checkpoint()
        log = self._logs.get(job_id)
        return 0 if log is None else log.end

    # --- manager leases ---------------------------------------------------------

    async def renew_lease(self, manager_id: str, ttl: float, *, info: str = "") -> None:
        await checkpoint()
        now = store_now()
        self._leases[manager_id] = _Lease(lease_expiry(now, ttl), now, info)

    async def drop_lease(self, manager_id: str) -> None:
        await checkpoint()
        self._leases.pop(manager_id, None)

    async def live_managers(self) -> set[str]:
        await checkpoint()
        now = store_now()
        return {manager_id for manager_id, lease in self._leases.items() if lease.expires_at > now}

    # --- environment templates --------------------------------------------------

    async def save_template(self, template: EnvironmentTemplate) -> None:
        await checkpoint()
        self._templates[template.name] = template

    async def get_template(self, name: str) -> EnvironmentTemplate:
        await checkpoint()
        try:
            return self._templates[name]
        except KeyError:
            raise TemplateNotFound(f"no environment template named {name!r}") from None

    async def list_templates(self) -> builtins.list[EnvironmentTemplate]:
        await checkpoint()
        return [self._templates[name] for name in sorted(self._templates)]

    async def delete_template(self, name: str) -> None:
        await checkpoint()
        if self._templates.pop(name, None) is None:
            raise TemplateNotFound(f"no environment template named {name!r}")
