"""The `Storage` protocol: where jobs, their logs, environment templates and the
leases of the managers sharing them live.

A store is the single source of truth for a job's status. The manager never keeps a
status only in memory, and every write of a job is one of two atomic operations:

- `Storage.claim_next` moves pending jobs to launching, placing each on a host with a
  free slot, so that managers sharing the store never exceed a host's limit nor run a
  job twice;
- `Storage.compare_and_set` writes a job whole if its status and owner still are the
  ones the caller saw, so two managers (or two tasks) racing on a job cannot both win.

A job's output (`Job.stdout` and `Job.stderr`, up to megabytes) is kept apart from
the rest of its record: `get` reads it, `list` does not (its jobs have
``output_loaded`` False), and a write of a job whose output is not loaded leaves the
stored output as it is. A listing of many finished jobs then costs their records
(a kilobyte or so each), not their output.

Anyone may write a backend: `containerjobs.storage` exports the helpers the built-in
backends use (record encoding, argument checks, `ClaimRound`), and
`containerjobs.testing.StorageContract` is the behaviour suite every backend must
pass, ours included.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol, TypeAlias, runtime_checkable

import attrs

from .._models import EnvironmentTemplate, Job, JobStatus, LogLine

ChooseHost: TypeAlias = Callable[[Job, Mapping[str, int]], str | None]
"""How `Storage.claim_next` asks the manager where a job goes.

Called with a pending job and its candidates: the offered hosts that have a free slot
and that the job may use, each with how many jobs are launching or running there now,
in the order the hosts were offered. Returns one of the candidates' names, or `None`
to leave the job pending for now. It runs inside the store's atomic step, so it must
be quick, must not block and must not call the store.
"""


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

    Errors of the underlying driver are raised as `StorageError` (with the driver's
    error as the cause); an unknown job id as `JobNotFound`; an unknown template name
    as `TemplateNotFound`; a bad argument (a negative limit, a naive datetime) as
    `ValueError`. No method blocks the event loop.

    The methods fall in four groups: jobs, their log lines, the leases of the managers
    sharing the store, and environment templates. What each promises is checked by
    `containerjobs.testing.StorageContract`.
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
        """Store new jobs, all or none (one transaction); an id already stored, or
        repeated in `jobs`, raises `StorageError` and stores none of them."""
        ...

    async def get(self, job_id: str) -> Job:
        """The job's current record, its output included; `JobNotFound` when there is
        none."""
        ...

    async def list(
        self,
        *,
        status: JobStatus | Sequence[JobStatus] | None = None,
        host: str | None = None,
        limit: int | None = 100,
    ) -> list[Job]:
        """Jobs, newest first (by `created_at`, then id), filtered by status and host.

        Their output is left out, never read: each has ``output_loaded`` False, and
        reading its `stdout` or `stderr` raises (`get` reads them). A listed job may be
        written back with `compare_and_set`: its stored output stays.
        """
        ...

    async def compare_and_set(
        self, job: Job, *, expected: JobStatus, expected_owner: str | None
    ) -> bool:
        """Write `job` whole, only if the stored job's status is `expected` and its
        owner is `expected_owner`; return whether the write happened.

        Both checks and the write are one atomic step: of several callers racing to
        change the same job from what they saw, exactly one gets `True`. `None` as
        `expected_owner` matches a job with no owner, and only such a job (it is no
        wildcard). Every status change after the claim is made this way, with the
        status and owner of the record the caller read: a progress write that keeps
        the status, an end, a cancel, a manager adopting the job of a manager whose
        lease ran out (writing itself as owner, expecting the dead one), and a
        manager whose own lease lapsed losing to the one that adopted its job.
        Raises `JobNotFound` when the job is gone.

        The output is written with the record, in the same atomic step, but only when
        it changes: a stream `job` does not hold (a listed job's) keeps what is
        stored, and one equal to what is stored is not written again, so the moves of
        a job are the same small write however much it printed. `containerjobs.storage.
        job_output` tells a backend which streams a job holds.
        """
        ...

    async def claim_next(
        self,
        manager_id: str,
        hosts: Mapping[str, int],
        choose: ChooseHost,
        *,
        now: datetime,
        limit: int | None = None,
    ) -> builtins.list[Job]:
        """Hand the manager `manager_id` the next pending jobs it may run, each
        already moved to launching on a host; return them in the order claimed.

        `hosts` are the hosts the manager may place jobs on now (its healthy, active
        ones), each with its ``max_concurrent_jobs``, in the manager's order. The store
        counts the jobs launching or running on each host itself, whoever owns them;
        a host's free slots are its maximum less that count.

        In one atomic step, the store walks the pending jobs in dispatch order
        (highest ``spec.priority`` first, then oldest ``created_at``, then id) and,
        for each job:

        1. skips it while its ``retry_at`` is after `now`;
        2. makes its candidates: the offered hosts with a free slot, only the one
           named by ``spec.host`` when the job is pinned; it skips the job when there
           are none (a job pinned to a full, unhealthy or unknown host waits, and
           does not hold back the jobs behind it);
        3. calls ``choose(job, candidates)`` (see `ChooseHost`), where candidates maps
           each candidate's name to its active count at that moment, in the order of
           `hosts`; `None` skips the job, and a name that is not a candidate raises
           `ValueError`;
        4. writes the job as ``job.advance(LAUNCHING, host=choice, owner=manager_id,
           attempts=job.attempts + 1)``, nothing else changed, and counts it on its host
           for the jobs after it.

        It stops when `limit` jobs are claimed (no limit when `None`), when no offered
        host has a free slot left, or at the end of the queue. The host choice stays
        the manager's (its `HostSelectionStrategy` behind `choose`); the store owns the
        counting, the order and the atomicity, so per-host limits hold between all the
        managers sharing the store, and several managers calling at once each get
        other jobs rather than racing for the head of the queue. An error (of
        `choose`, a refused choice, a failed write) claims nothing: the step is undone.

        `now` must be aware. `ClaimRound` runs steps 1 to 4 for a backend: SQLite runs
        it in one ``BEGIN IMMEDIATE`` transaction, the in-memory store with no await
        in it, and a server database can feed it the rows of ``SELECT ... FOR UPDATE
        SKIP LOCKED``.
        """
        ...

    async def active_jobs(self, *, owner: str | None = None) -> builtins.list[Job]:
        """Every job launching or running, newest first like `list`, with no limit,
        each with its output as `get` returns it (the jobs `claim_next` returns have
        theirs too).

        Of one manager when `owner` is given, else of all (jobs with no owner too).
        What a manager reconciles with the containers it finds on its hosts.
        """
        ...

    async def count_active(self) -> dict[str, int]:
        """How many jobs are launching or running, per host name (hosts with none left out)."""
        ...

    async def count_by_status(self) -> dict[JobStatus, int]:
        """How many jobs there are in each status (every status present, 0 included)."""
        ...

    async def delete(self, job_ids: Sequence[str]) -> int:
        """Delete jobs and their logs; return how many jobs were deleted."""
        ...

    async def finished_before(self, when: datetime, limit: int | None = None) -> builtins.list[str]:
        """Ids of terminal jobs completed before `when`, oldest completion first."""
        ...

    # --- logs -------------------------------------------------------------------

    async def append_logs(self, job_id: str, lines: Sequence[StoredLine]) -> None:
        """Append lines; their `seq` continue the job's sequence with no gap. Writing a
        `seq` that is already stored is ignored, so a retried write does not double.
        A gap raises `ValueError` and writes nothing; an unknown job, `JobNotFound`."""
        ...

    async def read_logs(
        self, job_id: str, *, after: int = -1, until: int | None = None, limit: int | None = None
    ) -> builtins.list[StoredLine]:
        """Stored lines with ``after < seq`` (and ``seq < until`` when given), in order."""
        ...

    async def log_count(self, job_id: str) -> int:
        """How many lines are stored for the job (the next `seq` to write)."""
        ...

    # --- manager leases ---------------------------------------------------------
    #
    # A manager sharing the store with others renews its lease well within the ttl
    # for as long as it runs; one whose lease has run out is taken for dead, and the
    # others may adopt its jobs with `compare_and_set`. Times come from the store's
    # clock (`store_now`).

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
