"""The `Storage` protocol: where jobs, their logs, environment templates and the
leases of the managers sharing them live.

A store is the single source of truth for a job's status. The manager never keeps a
status only in memory: every change goes through `Storage.update`, a compare-and-set
on the status the caller last saw, so two managers (or two tasks) racing on the same
job cannot both win. Every backend must pass the contract suite in
``tests/test_storage_contract.py``.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

from .._models import EnvironmentTemplate, Job, JobStatus, LogLine


@attrs.frozen
class StoredLine:
    """A log line with its place in the job's output.

    `seq` counts from 0 per job and has no gaps: line ``n`` of a job's output (both
    streams interleaved, in the order written) is stored with ``seq == n``.
    """

    seq: int
    line: LogLine


@runtime_checkable
class Storage(Protocol):
    """A job store. All methods are coroutines safe to call from many tasks at once.

    Errors of the underlying driver are raised as `StorageError`; an unknown job id
    as `JobNotFound`; an unknown template name as `TemplateNotFound`.
    """

    @property
    def persistent(self) -> bool:
        """Whether records outlive the process (decides what the manager does on exit)."""
        ...

    @property
    def store_id(self) -> str:
        """A random id of the store itself (32 hex digits), fixed for its whole life.

        Every object opened on the same store sees the same id, and another store has
        another: managers compare it to learn whether they share one. A store kept in
        a file makes it once, when the file is created, and reads it in `open`; before
        that, reading it raises `StorageError`.
        """
        ...

    async def open(self) -> None:
        """Connect, create or migrate the schema. Called once by the manager."""
        ...

    async def close(self) -> None:
        """Release connections. Idempotent."""
        ...

    # --- jobs -------------------------------------------------------------------

    async def create(self, jobs: Sequence[Job]) -> None:
        """Store new jobs, all or none (one transaction)."""
        ...

    async def get(self, job_id: str) -> Job:
        """The job's current record; `JobNotFound` when there is none."""
        ...

    async def list(
        self,
        *,
        status: JobStatus | Sequence[JobStatus] | None = None,
        host: str | None = None,
        limit: int | None = 100,
    ) -> list[Job]:
        """Jobs, newest first (by `created_at`, then id), filtered by status and host."""
        ...

    async def pending(self, limit: int) -> builtins.list[Job]:
        """Pending jobs in dispatch order: highest `spec.priority` first, then oldest."""
        ...

    async def update(self, job: Job, *, expected: JobStatus) -> bool:
        """Write `job` whole, only if the stored status still is `expected`.

        Returns whether the write happened. This is how every status change is made
        atomic: claiming a pending job is ``update(job.advance(LAUNCHING, ...),
        expected=PENDING)``; exactly one of several racing callers gets ``True``.
        Raises `JobNotFound` when the job is gone.
        """
        ...

    async def take_over(self, job: Job, *, expected: JobStatus, expected_owner: str | None) -> bool:
        """Like `update`, but only if the stored owner also still is `expected_owner`.

        `None` matches a job that has no owner (and only such a job). This is how a
        manager adopts a job of a manager whose lease has run out: it writes the job
        with itself as ``owner``, expecting the status it saw and the dead owner's
        id, and exactly one of several racing adopters gets ``True``. Raises
        `JobNotFound` when the job is gone.
        """
        ...

    async def claim(self, job: Job, *, max_active: int) -> bool:
        """Like `update` from PENDING, and only while fewer than `max_active` jobs are
        launching or running on ``job.host``; both checks and the write are one atomic
        step, so per-host limits hold across processes sharing the store."""
        ...

    async def active_jobs(self, *, owner: str | None = None) -> builtins.list[Job]:
        """Every job launching or running, newest first like `list`, with no limit.

        Of one manager when `owner` is given, else of all (jobs with no owner too).
        What a manager reconciles with the containers it finds on its hosts.
        """
        ...

    async def count_active(self) -> dict[str, int]:
        """How many jobs are launching or running, per host name."""
        ...

    async def count_by_status(self) -> dict[JobStatus, int]:
        """How many jobs there are in each status (every status present, 0 included)."""
        ...

    async def delete(self, job_ids: Sequence[str]) -> int:
        """Delete jobs and their logs; return how many jobs were deleted."""
        ...

    async def finished_before(self, when: datetime, limit: int | None = None) -> builtins.list[str]:
        """Ids of terminal jobs completed before `when`."""
        ...

    # --- logs -------------------------------------------------------------------

    async def append_logs(self, job_id: str, lines: Sequence[StoredLine]) -> None:
        """Append lines; their `seq` continue the job's sequence with no gap. Writing a
        `seq` that is already stored is ignored, so a retried write does not double."""
        ...

    async def read_logs(
        self, job_id: str, *, after: int = -1, until: int | None = None, limit: int | None = None
    ) -> builtins.list[StoredLine]:
        """Stored lines with ``after < seq`` (and ``seq < until`` when given), in order."""
        ...

    async def log_count(self, job_id: str) -> int:
        """How many lines are stored for the job (the next `seq` to write)."""
        ...

    async def last_logs(self, job_id: str, count: int) -> builtins.list[StoredLine]:
        """The last `count` stored lines of the job (fewer if it has fewer), in order.

        For resuming a log stream: the last line's timestamp and how many of these
        lines share it tell where to pick up. An unknown job has none; a negative
        `count` raises `ValueError`.
        """
        ...

    # --- manager leases ---------------------------------------------------------
    #
    # A manager sharing the store with others renews its lease well within the ttl
    # for as long as it runs; one whose lease has run out is taken for dead, and the
    # others may adopt its jobs with `take_over`. Times come from the store's clock.

    async def renew_lease(self, manager_id: str, ttl: float, *, info: str = "") -> None:
        """Create the manager's lease, or set it anew, to expire `ttl` seconds from now.

        `info` is a free-form description for people looking at the store (such as
        ``"build-3 pid 1234"``); each renewal replaces it. A manager whose lease had
        run out is alive again once it renews, but others may have adopted its jobs
        meanwhile: it must not assume it still owns them. A `ttl` that is not a
        finite number greater than 0 raises `ValueError`.
        """
        ...

    async def drop_lease(self, manager_id: str) -> None:
        """Delete the manager's lease (a clean shutdown: its jobs may be adopted at
        once). No error when it has none."""
        ...

    async def live_managers(self) -> set[str]:
        """Ids of the managers whose lease has not run out."""
        ...

    # --- environment templates -------------------------------------------------

    async def save_template(self, template: EnvironmentTemplate) -> None:
        """Create or replace the template of that name."""
        ...

    async def get_template(self, name: str) -> EnvironmentTemplate:
        """The template; `TemplateNotFound` when there is none."""
        ...

    async def list_templates(self) -> builtins.list[EnvironmentTemplate]:
        """All templates, by name."""
        ...

    async def delete_template(self, name: str) -> None:
        """Delete it; `TemplateNotFound` when there is none."""
        ...
