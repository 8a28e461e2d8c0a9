"""The JobManager: the front door. It keeps the public API and the one task group;
the rooms behind it do the work (see docs/architecture.md):

- `StatusBoard` (`_transitions`): every status change, its event and its waiters;
- `Worker` (`_worker`): dispatch, one `JobRun` (`_run`) per job, reconciliation
  (`_reconcile`) and host health (`_health`), for a manager that has hosts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from datetime import timedelta
from typing import Literal, Self

import anyio
import attrs

from ._dispatch import HostSelectionStrategy, WeightedLeastLoaded
from ._display import JobList, Summary
from ._errors import ContainerJobsError, InvalidJobSpec, NoWorkerAvailable
from ._events import EventStream
from ._health import HostMonitor, HostState
from ._hosts import DockerHost, Host, takes_placement
from ._log import Logger, get_logger
from ._logs import LogHub
from ._models import (
    EnvironmentTemplate,
    HostHealth,
    Job,
    JobSpec,
    JobStatus,
    LogLine,
    utcnow,
)
from ._policy import SecurityPolicy
from ._polling import StatusPoll
from ._secrets import NoSecrets, Secret, SecretSource
from ._transitions import LostRace, StatusBoard
from ._worker import ExecutorFactory, Worker
from .executors import Executor, PullResult
from .storage import InMemoryStorage, Storage

ExitMode = Literal["cancel", "wait", "detach"]
ChangeFeed = Callable[[], AsyncIterator[tuple[str, JobStatus, JobStatus | None]]]
_CHANGES_FALLBACK = 5.0  # seconds between reads of a job a change feed tells of
_NOBODY_CHECK = 1.0  # seconds between a waiter's looks at whether anything can run its job


def _default_executor(host: Host) -> Executor:
    return host.executor()


class JobManager:
    """Runs jobs as containers on a set of hosts and keeps their records.

    Use it as an async context manager; it owns one task group, and no task it starts
    outlives it:

    ```python
    async with JobManager() as manager:
        job = await manager.run(JobSpec(image="alpine", command="echo hi"))
    ```

    Where one block cannot hold it (Jupyter cells, start-up and shutdown hooks that
    run in different tasks), await `start` and `close` instead.

    Args:
        hosts: where jobs run. `None` means ``[DockerHost.from_env()]``; an empty list
            makes a client that stores jobs for workers elsewhere and runs none.
        storage: the job store; `InMemoryStorage` when `None`.
        strategy: how a host is chosen; `WeightedLeastLoaded` when `None`.
        policy: defaults, ceilings and hardening; `SecurityPolicy()` when `None`.
            Submitting checks a spec against it; launching checks the stored spec
            again, whoever stored it: this manager's policy decides what it runs.
        secrets: where the `Secret` values of the jobs this manager launches come
            from: `EnvSecrets`, `FileSecrets`, or any object with ``async def
            resolve(name) -> str``. `None`: no source, and a job naming a secret
            fails without starting.
        on_exit: what leaving ``async with`` does to jobs still running here:
            ``"cancel"`` kills them, ``"wait"`` lets them finish, ``"detach"`` leaves
            their containers running for the next manager on the store to adopt.
            `None` (the default) means ``"detach"`` with a persistent store and
            ``"cancel"`` with one that dies with the process.
        health_interval: seconds between health checks of healthy hosts (an unhealthy
            host is checked every 2 s, so that it comes back soon).
        poll_interval: how often the store is read for work submitted elsewhere, and
            the longest pause between reads when waiting on progress made elsewhere.
        lease_ttl: how long this manager's lease in the store lasts unrenewed; a
            manager silent for longer is presumed dead and its jobs are adopted.
        retry_delay: seconds before the first retry of a failed attempt; it doubles
            with each further attempt, up to a minute.
        max_log_bytes: output kept per stream and job: past it, the first and last
            halves are kept, with a line saying what was left out between them.
        manager_id: this manager's identity in container labels and job records.
        executor_factory: called with each host, makes the executor that speaks to
            it; `None` means ``host.executor()``. A `FakeCluster` in tests.
        own_jobs_only: run only the jobs this manager submitted itself: it takes no
            other pending job from the store and adopts no other manager's job, so
            it can run its own work beside a shared queue without serving it (what
            ``containerjobs run --db`` does). Its jobs may still be taken by other
            workers on the store; pin them (`JobSpec.host`) to a host only this
            manager has to keep them here.
        no_worker_timeout: how long `wait` and `run` go on while nothing can run the
            job: no host of this manager can take it (none is healthy, or none is
            the one it is pinned to) and no other manager holds a lease on the store.
            Past it they raise `NoWorkerAvailable`, which says what was tried; the
            job stays as it is, for a worker that comes later (or a cancel). Waiting
            on a job that a live manager elsewhere holds, or that could run here,
            never raises it. `None` waits for ever. 15 s by default: long enough
            for a Docker daemon to restart, short enough to tell a script that no
            daemon or worker is there.
    """

    def __init__(
        self,
        hosts: Sequence[Host] | None = None,
        *,
        storage: Storage | None = None,
        strategy: HostSelectionStrategy | None = None,
        policy: SecurityPolicy | None = None,
        secrets: SecretSource | None = None,
        on_exit: ExitMode | None = None,
        health_interval: float = 30.0,
        poll_interval: float = 1.0,
        lease_ttl: float = 15.0,
        retry_delay: float = 1.0,
        max_log_bytes: int = 10 * 1024 * 1024,
        manager_id: str | None = None,
        executor_factory: ExecutorFactory | None = None,
        own_jobs_only: bool = False,
        no_worker_timeout: float | None = 15.0,
    ) -> None:
        if hosts is None:
            hosts = [DockerHost.from_env()]
        names = [host.name for host in hosts]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"host names must be unique; repeated: {', '.join(duplicates)}")
        if on_exit not in (None, "cancel", "wait", "detach"):
            raise ValueError(f"on_exit must be 'cancel', 'wait' or 'detach', not {on_exit!r}")
        if no_worker_timeout is not None and not no_worker_timeout >= 0:
            raise ValueError(
                f"no_worker_timeout must be a number of seconds >= 0 or None, "
                f"not {no_worker_timeout!r}"
            )
        self.id = manager_id or f"cjm-{uuid.uuid4().hex[:12]}"
        self.storage: Storage = storage if storage is not None else InMemoryStorage()
        self.strategy: HostSelectionStrategy = strategy or WeightedLeastLoaded()
        self.policy = policy or SecurityPolicy()
        self._on_exit = on_exit
        self._poll_interval = poll_interval
        self._no_worker_timeout = no_worker_timeout
        self._others: tuple[float, set[str] | None] | None = None  # (read at, live leases)
        # A store that reports every change (PostgreSQL's LISTEN/NOTIFY) spares the
        # waits their polling; an optional capability, not part of the protocol.
        self._changes: ChangeFeed | None = getattr(self.storage, "changes", None)
        self._log: Logger = get_logger("containerjobs.manager").bind(manager=self.id)
        self._board = StatusBoard(self.storage, self._log, retry_delay=retry_delay)
        self._polls = StatusPoll(
            self.storage,
            self._board,
            lambda: self._poll_interval if self._changes is None else _CHANGES_FALLBACK,
            self._log,
        )
        # A client (no hosts) stores and reads jobs; only a worker runs them.
        self._worker = (
            Worker(
                manager_id=self.id,
                hosts=hosts,
                executor_factory=executor_factory or _default_executor,
                policy=self.policy,
                secrets=secrets if secrets is not None else NoSecrets(),
                storage=self.storage,
                board=self._board,
                strategy=self.strategy,
                health_interval=health_interval,
                poll_interval=poll_interval,
                lease_ttl=lease_ttl,
                max_log_bytes=max_log_bytes,
                own_jobs_only=own_jobs_only,
                log=self._log,
            )
            if hosts
            else None
        )
        self._state: Literal["unopened", "open", "closing", "closed"] = "unopened"
        self._runner: asyncio.Task[None] | None = None
        self._stop = anyio.Event()

    # --- life cycle ----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the store and the hosts, and start dispatching (what ``async with`` does).

        For frameworks whose start-up and shutdown run in different tasks (Jupyter
        cells, some lifespans), `start` and `close` may be awaited separately.
        """
        if self._state != "unopened":
            raise RuntimeError(f"JobManager is {self._state}; a manager cannot be reopened")
        self._state = "open"
        try:
            await self.storage.open()
            if self._worker is not None:
                await self._worker.open()
        except BaseException:
            await self._release()
            self._state = "closed"
            raise
        started = anyio.Event()
        # The task group lives in a task of its own, so that start() and close() may
        # be called from different tasks; every background task is inside it.
        self._runner = asyncio.get_running_loop().create_task(self._run(started))
        await started.wait()
        hosts = self._worker.monitor.names if self._worker is not None else []
        self._log.info("manager.started", hosts=hosts, storage=type(self.storage).__name__)

    async def _run(self, started: anyio.Event) -> None:
        try:
            async with anyio.create_task_group() as tg:
                if self._worker is not None:
                    await self._worker.serve(tg)
                if self._changes is not None:
                    tg.start_soon(self._follow_changes, self._changes)
                tg.start_soon(self._polls.run)
                started.set()
                await self._stop.wait()
                tg.cancel_scope.cancel()
        finally:
            started.set()

    async def close(self) -> None:
        """Stop dispatching, deal with running jobs as `on_exit` says, release all."""
        if self._state in ("unopened", "closed"):
            self._state = "closed"
            return
        if self._state == "closing":
            return
        self._state = "closing"
        try:
            if self._worker is not None:
                # From here on nothing new is claimed or adopted.
                await self._worker.stop(self.exit_mode)
        finally:
            # With "detach", stopping the task group stops the runs; their containers
            # run on, and the next manager adopts them. Shielded: a close that is
            # itself cancelled must not leave the task group running.
            self._stop.set()
            if self._runner is not None:
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([self._runner])
                    if not self._runner.cancelled() and self._runner.exception():
                        self._log.error("manager.crashed", error=repr(self._runner.exception()))
            self._board.close()
            await self._release()
            self._state = "closed"
            self._log.info("manager.closed")

    async def _release(self) -> None:
        with anyio.CancelScope(shield=True):
            if self._worker is not None:
                await self._worker.close()
            await self.storage.close()

    @property
    def exit_mode(self) -> ExitMode:
        """What leaving ``async with`` does to running jobs (see `on_exit`)."""
        if self._on_exit is not None:
            return self._on_exit
        return "detach" if self.storage.persistent else "cancel"

    def _check_open(self) -> None:
        if self._state != "open":
            raise RuntimeError(
                f"JobManager is {self._state}: use it inside 'async with JobManager(...)'"
            )

    @property
    def _monitor(self) -> HostMonitor:
        # A client has no hosts: an empty monitor answers for it.
        if self._worker is not None:
            return self._worker.monitor
        return _NO_HOSTS

    # --- submitting ----------------------------------------------------------------

    async def submit(self, spec: JobSpec) -> Job:
        """Validate `spec` against the policy and store it as a pending job.

        A spec that is refused raises (`InvalidJobSpec`, `PolicyViolation`,
        `TemplateNotFound`) and leaves nothing stored.
        """
        [job] = await self.submit_many([spec])
        return job

    async def submit_many(self, specs: Iterable[JobSpec]) -> list[Job]:
        """Submit several specs: all are stored, or (when one is refused) none."""
        self._check_open()
        jobs = [await self._prepare(spec) for spec in list(specs)]
        if not jobs:
            return []
        await self.storage.create(jobs)
        for job in jobs:
            self._log.info("job.submitted", job_id=job.id, image=job.spec.image, job_name=job.name)
        self._board.created(jobs)
        if self._worker is not None:
            self._worker.submitted(jobs)
        return jobs

    async def _prepare(self, spec: JobSpec) -> Job:
        if not isinstance(spec, JobSpec):
            raise TypeError(f"submit() takes a JobSpec, not {type(spec).__name__}")
        monitor = self._worker.monitor if self._worker is not None else None
        if spec.host is not None and monitor is not None and spec.host not in monitor:
            raise InvalidJobSpec(
                f"JobSpec.host={spec.host!r} is not a host of this manager "
                f"(hosts: {', '.join(monitor.names)})"
            )
        if spec.placement and monitor is not None:
            self._check_placement(spec, monitor)
        template: Mapping[str, str | Secret] | None = None
        if spec.environment_template is not None:
            template = (await self.storage.get_template(spec.environment_template)).variables
        if spec.mounts:
            # Resolving mount sources touches the file system: off the event loop.
            effective = await anyio.to_thread.run_sync(self.policy.apply, spec, template)
        else:
            effective = self.policy.apply(spec, template)
        return Job(id=str(uuid.uuid4()), spec=effective, name=spec.name, created_at=utcnow())

    @staticmethod
    def _check_placement(spec: JobSpec, monitor: HostMonitor) -> None:
        # Only an orchestrator (a SwarmHost) honours constraints; a plain host would
        # run the job anywhere. A client (no hosts) leaves this to the workers.
        placing = [state.name for state in monitor if takes_placement(state.host)]
        if not placing:
            raise InvalidJobSpec(
                f"JobSpec.placement={spec.placement!r} needs a Swarm host, and this "
                f"manager has none (hosts: {', '.join(monitor.names) or 'none'})"
            )
        if spec.host is not None and spec.host not in placing:
            raise InvalidJobSpec(
                f"JobSpec.placement={spec.placement!r} needs a Swarm host, and "
                f"JobSpec.host={spec.host!r} is not one (Swarm hosts: {', '.join(placing)})"
            )

    async def run(self, spec: JobSpec, *, timeout: float | None = None) -> Job:
        """Submit `spec` and wait for the job to end."""
        job = await self.submit(spec)
        # No await since the job was stored: any move of it since is still to come
        # (here) or shows in the store (elsewhere), so the wait starts from it.
        return await self._wait(job, timeout)

    # --- reading -------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        """The job's current record; `JobNotFound` for an unknown id."""
        self._check_open()
        return await self.storage.get(job_id)

    async def list_jobs(
        self, *, status: JobStatus | str | None = None, limit: int = 100
    ) -> JobList:
        """Jobs, newest first, optionally of one status (a list, shown as one table in
        Jupyter).

        Light: the store reads no job's output for it, however much the jobs printed.
        Each job has every field but `stdout` and `stderr`, and ``output_loaded`` is
        False; reading its output raises `ContainerJobsError`, never passes for empty.
        `get` reads a job whole:

        ```python
        for job in await manager.list_jobs(status="failed", limit=10):
            print(job.id, job.exit_code, (await manager.get(job.id)).stderr[-200:])
        ```
        """
        self._check_open()
        return JobList(
            await self.storage.list(
                status=JobStatus(status) if status is not None else None, limit=limit
            )
        )

    async def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Wait until the job ends and return it. `TimeoutError` when `timeout` runs
        out first; the job goes on."""
        self._check_open()
        with anyio.fail_after(timeout):
            changed = self._board.watch(job_id)
            job = await self.storage.get(job_id)
        return await self._wait(job, timeout, changed)

    async def _wait(
        self, job: Job, timeout: float | None, changed: anyio.Event | None = None
    ) -> Job:
        job_id, status = job.id, job.status
        stranded = _Stranded(self, job_id) if self._no_worker_timeout is not None else None
        with anyio.fail_after(timeout):
            if changed is None:
                changed = self._board.watch(job_id)
            while True:
                if status.is_terminal:
                    if job.status is not status:
                        # The final record: as this manager wrote it, else as stored.
                        job = self._board.final(job_id) or await self.storage.get(job_id)
                    if job.status.is_terminal:
                        self._board.wake(job_id)
                        return job
                if not self._changes_elsewhere(job):
                    await self._until(changed, job, stranded)
                else:
                    # Changes made elsewhere: one read of the store for every waiter.
                    with self._polls.watching(job_id, status):
                        await self._until(changed, job, stranded)
                changed = self._board.watch(job_id)
                # A move the board told is known without reading the record; any other
                # wake-up ("look again") reads it.
                told = self._board.told(job_id)
                if told is None or told is status:
                    job = await self.storage.get(job_id)
                    status = job.status
                else:
                    status = told

    async def logs(
        self, job_id: str, *, follow: bool = True
    ) -> AsyncGenerator[LogLine, None]:
        """The job's output lines, both streams in the order written.

        With `follow`, lines come as they are printed and the iterator ends when the
        job ends; without, it gives what is there now and ends.
        """
        self._check_open()
        await self.storage.get(job_id)  # JobNotFound, before anything else
        next_seq = 0
        delay = 0.05
        while True:
            hub = self._worker.live_hub(job_id) if self._worker is not None else None
            until = hub.flushed if hub is not None else None
            parted_seq = None  # where a follower leaves the kept lines for the live ones
            if hub is not None and follow and hub.parted is not None:
                parted_seq, parted_index = hub.parted
                if next_seq >= parted_seq:
                    # Past the cap: every line from here on comes live, kept or not.
                    async for line in _follow_live(hub, parted_index):
                        yield line
                    return
                until = min(hub.flushed, parted_seq)
            if hub is not None and next_seq >= hub.flushed:
                fresh = hub.since(next_seq)
                if parted_seq is not None:
                    fresh = fresh[: parted_seq - next_seq]
                if fresh:
                    for stored in fresh:
                        yield stored.line
                    next_seq = fresh[-1].seq + 1
                    continue
                if not follow:
                    return
                await hub.changed()
                continue
            batch = await self.storage.read_logs(
                job_id, after=next_seq - 1, until=until, limit=1000
            )
            if batch:
                for stored in batch:
                    yield stored.line
                next_seq = batch[-1].seq + 1
                continue
            if hub is not None:
                continue
            changed = self._board.watch(job_id)
            job = await self.storage.get(job_id)
            if job.status.is_terminal or not follow:
                if job.status.is_terminal:
                    self._board.wake(job_id)
                # Lines stored just before the final status was written.
                for stored in await self.storage.read_logs(job_id, after=next_seq - 1):
                    yield stored.line
                return
            with anyio.move_on_after(self._poll_delay(job, delay)):
                await changed.wait()
            delay = min(delay * 2, self._poll_interval)

    def events(self) -> EventStream:
        """Every status change from this call on, as it is stored, until the manager
        closes. Iterate it with ``async for``; `aclose` it to stop early."""
        self._check_open()
        return self._board.subscribe()

    # --- control -------------------------------------------------------------------

    async def cancel(self, job_id: str) -> Job:
        """Cancel a job: a pending one never starts, a running one's container is
        killed and removed. A finished job is returned unchanged."""
        self._check_open()
        while True:
            job = await self.storage.get(job_id)
            if job.status.is_terminal:
                return job
            self._log.info("job.cancel_requested", job_id=job_id, status=str(job.status))
            if job.status is JobStatus.PENDING:
                try:
                    return await self._board.advance(
                        job, JobStatus.CANCELLED, completed_at=utcnow(), error="cancelled"
                    )
                except LostRace:
                    continue  # claimed meanwhile: cancel it as a running job
            run = self._worker.runs.get(job_id) if self._worker is not None else None
            if run is not None:
                run.request_cancel("cancelled")
                return await self.wait(job_id)
            # Another manager runs it: leave word in the store for its supervisor, and
            # again if a write of its own (launching -> running) replaced the word.
            if not job.cancel_requested:
                # Owner-checked: a stale record must not undo an adoption.
                with suppress(LostRace):
                    await self._board.move(job, attrs.evolve(job, cancel_requested=True))
            with suppress(TimeoutError):
                return await self.wait(job_id, timeout=self._poll_interval * 2)

    async def health(self) -> dict[str, HostHealth]:
        """Check every host now; healthy, response time and error per host name."""
        self._check_open()
        if self._worker is None:
            return {}
        await self._worker.monitor.check_all()
        return {state.name: state.health for state in self._worker.monitor}

    async def summary(self) -> Summary:
        """Jobs per status, and per host the slots in use and free (a dict, shown as
        tables in Jupyter)."""
        self._check_open()
        counts = await self.storage.count_by_status()
        active = await self.storage.count_active()
        hosts = {
            state.name: {
                "active": state.host.active,
                "healthy": state.health.healthy,
                "running": active.get(state.name, 0),
                "max_concurrent_jobs": state.host.max_concurrent_jobs,
                "free": max(0, state.host.max_concurrent_jobs - active.get(state.name, 0))
                if state.usable
                else 0,
            }
            for state in self._monitor
        }
        return Summary(
            jobs={str(status): n for status, n in counts.items()},
            hosts=hosts,
            slots_used=sum(h["running"] for h in hosts.values()),
            slots_free=sum(h["free"] for h in hosts.values()),
        )

    async def prewarm(
        self, images: Iterable[str], hosts: Iterable[str] | None = None
    ) -> dict[str, list[PullResult]]:
        """Pull `images` on every active, healthy host (or on the named ones) with each
        host's registry credentials, so the first job need not wait for a pull.

        Returns what happened per host name; an unreachable host reports every image
        as not pulled, with the reason.
        """
        self._check_open()
        wanted = list(images)
        for image in wanted:
            JobSpec(image=image)  # InvalidJobSpec for a bad reference, before any pull
        monitor = self._monitor
        if hosts is None:
            states = monitor.usable()
        else:
            names = list(hosts)
            unknown = [name for name in names if name not in monitor]
            if unknown:
                raise InvalidJobSpec(f"unknown hosts: {', '.join(unknown)}")
            states = [monitor[name] for name in names]
        results: dict[str, list[PullResult]] = {}

        async def pull_all(state: HostState) -> None:
            done = results[state.name] = []
            for image in wanted:
                try:
                    done.append(await state.executor.pull(image))
                except ContainerJobsError as exc:
                    done.append(PullResult(image, False, str(exc)))
                self._log.info(
                    "image.prewarmed",
                    host=state.name,
                    image=image,
                    ok=done[-1].ok,
                    error=done[-1].error,
                )

        async with anyio.create_task_group() as tg:
            for state in states:
                tg.start_soon(pull_all, state)
        return results

    async def save_template(self, template: EnvironmentTemplate) -> None:
        """Store (or replace) an environment template that specs can name."""
        self._check_open()
        await self.storage.save_template(template)

    async def get_template(self, name: str) -> EnvironmentTemplate:
        """The named template; `TemplateNotFound` when there is none."""
        self._check_open()
        return await self.storage.get_template(name)

    async def list_templates(self) -> list[EnvironmentTemplate]:
        """All stored templates, by name."""
        self._check_open()
        return await self.storage.list_templates()

    async def delete_template(self, name: str) -> None:
        """Delete the named template; `TemplateNotFound` when there is none."""
        self._check_open()
        await self.storage.delete_template(name)

    async def prune(self, *, older_than: timedelta | float) -> int:
        """Delete finished jobs (and their logs) completed longer ago than `older_than`."""
        self._check_open()
        age = older_than if isinstance(older_than, timedelta) else timedelta(seconds=older_than)
        ids = await self.storage.finished_before(utcnow() - age)
        return await self.storage.delete(ids) if ids else 0

    # --- waiting -------------------------------------------------------------------

    async def _until(self, changed: anyio.Event, job: Job, stranded: _Stranded | None) -> None:
        """Until `changed` is set; `NoWorkerAvailable` when nothing can run `job` for
        the whole ``no_worker_timeout`` meanwhile."""
        if stranded is None:
            await changed.wait()
            return
        while not changed.is_set():
            with anyio.move_on_after(_NOBODY_CHECK):
                await changed.wait()
            if not changed.is_set():
                await stranded.look(job)

    async def _why_nothing_runs(self, job: Job) -> str | None:
        """Why nothing can move `job` on now, or `None` when something may: a host of
        this manager that can take it, a run of it here, or another manager's live
        lease on the store (or a store that cannot tell)."""
        if job.status.is_terminal or (job.owner == self.id and job.status.is_active):
            return None  # ended, or runs here: its run ends it, whatever its host does
        # A running job can only go on where it runs (adopted from a dead manager).
        why = self._monitor.why_none_takes(
            job.host if job.status.is_active else job.spec.host,
            job.spec.placement,
            "this manager",
        )
        if why is None:
            return None
        now = anyio.current_time()
        if self._others is None or now - self._others[0] >= _NOBODY_CHECK:
            # One read for all of this manager's waiters.
            try:
                live: set[str] | None = await self.storage.live_managers() - {self.id}
            except ContainerJobsError:
                live = None  # a store that cannot tell: no conclusion
            self._others = (now, live)
        others = self._others[1]
        return why if others is not None and not others else None

    def _describe_store(self) -> str:
        if not self.storage.persistent:
            return "this manager's in-memory store"
        return repr(self.storage)

    def _changes_elsewhere(self, job: Job) -> bool:
        # This manager signals every change it makes. Only a store shared with other
        # processes can change behind its back, and then only for jobs it does not run.
        return self.storage.persistent and not (job.owner == self.id and job.status.is_active)

    def _poll_delay(self, job: Job, delay: float) -> float | None:
        if not self._changes_elsewhere(job):
            return None
        if self._changes is not None:
            # The store tells of every change: reading it again is only a fallback.
            return _CHANGES_FALLBACK
        return delay

    async def _follow_changes(self, changes: ChangeFeed) -> None:
        # The changes other processes make, as the store reports them: waits return
        # and events() shows them at once. Should the feed fail, waits poll again.
        try:
            async for job_id, status, previous in changes():
                self._board.changed_elsewhere(job_id, status, previous)
        except ContainerJobsError as exc:
            self._log.error("store.changes_lost", error=str(exc))
        self._changes = None

    # --- reconciliation ------------------------------------------------------------

    async def reconcile(self) -> None:
        """Reconcile now rather than at the next periodic round: adopt the jobs of
        managers whose lease has run out, and remove labelled containers of this store
        whose job is gone or finished."""
        self._check_open()
        if self._worker is not None:
            await self._worker.reconciler.reconcile()


class _Stranded:
    """A waiter's watch on whether anything can run its job: `look` raises
    `NoWorkerAvailable` once nothing could for the manager's ``no_worker_timeout``."""

    def __init__(self, manager: JobManager, job_id: str) -> None:
        assert manager._no_worker_timeout is not None
        self._manager = manager
        self._job_id = job_id
        self._timeout = manager._no_worker_timeout
        self._since: float | None = None

    async def look(self, job: Job) -> None:
        # `job` may be older than the status the waiter knows; its spec is not. The
        # store is read only to confirm, before raising.
        manager = self._manager
        if await manager._why_nothing_runs(job) is None:
            self._since = None
            return
        now = anyio.current_time()
        if self._since is None:
            self._since = now
        if now - self._since < self._timeout:
            return
        current = await manager.storage.get(self._job_id)
        why = await manager._why_nothing_runs(current)
        if why is None:
            self._since = None
            manager._board.wake(self._job_id)  # it moved: the waiter looks again
            return
        raise NoWorkerAvailable(
            f"nothing could run job {current.id} for {now - self._since:.0f} s: {why}; "
            f"and no other manager holds a lease on {manager._describe_store()}. The job "
            f"stays {current.status}: a worker on that store runs it when one starts (or "
            f"a host comes back), unless it is cancelled (manager.cancel({current.id!r})).",
            current.id,
        )


_NO_HOSTS = HostMonitor(
    [], get_logger("containerjobs.manager"), interval=30.0, on_recovered=lambda: None
)


async def _follow_live(hub: LogHub, index: int) -> AsyncIterator[LogLine]:
    """The live lines of a running job from its `index`th on, until it ends. A reader
    that fell behind further than the hub's ring holds is told how much it missed."""
    while True:
        missed, lines = hub.live_since(index)
        index += missed + len(lines)
        if missed:
            anchor = lines[0] if lines else None
            yield LogLine(
                anchor.stream if anchor else "stdout",
                f"[containerjobs: {missed} lines not shown here: this reader fell "
                "behind the job's output]",
                anchor.timestamp if anchor else utcnow(),
            )
        for line in lines:
            yield line
        if not lines and not missed:
            if hub.closed:
                return
            await hub.changed()
