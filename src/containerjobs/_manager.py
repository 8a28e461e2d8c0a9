"""The JobManager: the public API, the dispatcher and one supervisor per running job."""

from __future__ import annotations

import asyncio
import math
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import suppress
from datetime import timedelta
from functools import partial
from typing import Any, Literal, Self, TypeVar

import anyio
import attrs
import structlog
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectSendStream

from ._dispatch import HostLoad, HostSelectionStrategy, WeightedLeastLoaded
from ._errors import (
    ContainerJobsError,
    HostUnavailable,
    ImageNotFound,
    InvalidJobSpec,
    JobNotFound,
    StorageError,
)
from ._events import EventStream
from ._harvest import End, Output, Usage, outcome
from ._hosts import DockerHost
from ._logs import LogHub
from ._models import (
    AttemptOutcome,
    EnvironmentTemplate,
    HostHealth,
    Job,
    JobEvent,
    JobSpec,
    JobStatus,
    LogLine,
    utcnow,
)
from ._policy import SecurityPolicy
from .executors._base import (
    LABEL_STORE,
    Executor,
    LineSink,
    LogReader,
    OutputLine,
    PullResult,
)
from .storage import InMemoryStorage, Storage

_log = structlog.get_logger("containerjobs")

ExitMode = Literal["cancel", "wait", "detach"]
ExecutorFactory = Callable[[DockerHost, str, SecurityPolicy], Executor]

_LOG_FLUSH_INTERVAL = 0.25
# After the exit, how long the follow stream may take to end by itself before it is
# cut short (a final read gets whatever it had not delivered).
_LOG_DRAIN_GRACE = 5.0
_KILL_GRACE = 30.0
_RECHECK = 2.0  # seconds between health checks of a host that is down
_MAX_RETRY_DELAY = 60.0
_EARLY_END_GRACE = 2.0  # a log stream ended this long before the exit ended early
_PERSIST_RETRIES = (0.5, 1.0, 2.0, 4.0, 8.0)
T = TypeVar("T")


def _default_executor(host: DockerHost, manager_id: str, policy: SecurityPolicy) -> Executor:
    from .executors._docker import DockerExecutor

    return DockerExecutor(host, manager_id=manager_id, policy=policy)


@attrs.define
class _HostState:
    host: DockerHost
    executor: Executor
    health: HostHealth = attrs.Factory(lambda: HostHealth(False, None, "not checked yet"))

    @property
    def usable(self) -> bool:
        return self.host.active and self.health.healthy


@attrs.define
class _Control:
    """What the outside can tell a job's supervisor."""

    cancel: anyio.Event = attrs.Factory(anyio.Event)
    reason: str = "cancelled"
    done: anyio.Event = attrs.Factory(anyio.Event)

    def request_cancel(self, reason: str) -> None:
        if not self.cancel.is_set():
            self.reason = reason
            self.cancel.set()


@attrs.define
class _OutputRun:
    """Where one run's output lines go: the capped output, and the hub that stores
    them, after the lines an earlier manager stored already (when adopted)."""

    output: Output
    hub: LogHub
    skip: int = 0

    def take(self, item: OutputLine) -> None:
        kept = self.output.add(item)
        if kept is not None:
            self.store(kept)

    def store(self, line: LogLine) -> None:
        if self.skip:
            self.skip -= 1
        else:
            self.hub.add(line)


class _LostRace(Exception):
    """Someone else changed the job's status first (a cancel, another manager)."""

    def __init__(self, current: Job) -> None:
        self.current = current


class JobManager:
    """Runs jobs as containers on a set of Docker hosts and keeps their records.

    Use it as an async context manager; it owns one task group, and no task it starts
    outlives it::

        async with JobManager() as manager:
            job = await manager.run(JobSpec(image="alpine", command="echo hi"))

    Args:
        hosts: where jobs run. `None` means ``[DockerHost.from_env()]``; an empty list
            makes a client that stores jobs for workers elsewhere and runs none.
        storage: the job store; `InMemoryStorage` when `None`.
        strategy: how a host is chosen; `WeightedLeastLoaded` when `None`.
        policy: defaults, ceilings and hardening; `SecurityPolicy()` when `None`.
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
        executor_factory: builds the executor of a host (a `FakeExecutor` in tests).
    """

    def __init__(
        self,
        hosts: Sequence[DockerHost] | None = None,
        *,
        storage: Storage | None = None,
        strategy: HostSelectionStrategy | None = None,
        policy: SecurityPolicy | None = None,
        on_exit: ExitMode | None = None,
        health_interval: float = 30.0,
        poll_interval: float = 1.0,
        lease_ttl: float = 15.0,
        retry_delay: float = 1.0,
        max_log_bytes: int = 10 * 1024 * 1024,
        manager_id: str | None = None,
        executor_factory: ExecutorFactory | None = None,
    ) -> None:
        if hosts is None:
            hosts = [DockerHost.from_env()]
        names = [host.name for host in hosts]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"host names must be unique; repeated: {', '.join(duplicates)}")
        if on_exit not in (None, "cancel", "wait", "detach"):
            raise ValueError(f"on_exit must be 'cancel', 'wait' or 'detach', not {on_exit!r}")
        self.id = manager_id or f"cjm-{uuid.uuid4().hex[:12]}"
        self.storage: Storage = storage if storage is not None else InMemoryStorage()
        self.strategy: HostSelectionStrategy = strategy or WeightedLeastLoaded()
        self.policy = policy or SecurityPolicy()
        self._on_exit = on_exit
        self._health_interval = health_interval
        self._poll_interval = poll_interval
        self._lease_ttl = lease_ttl
        self._retry_delay = retry_delay
        self._max_log_bytes = max_log_bytes
        factory = executor_factory or _default_executor
        self._hosts = {
            host.name: _HostState(host, factory(host, self.id, self.policy)) for host in hosts
        }
        self._state: Literal["unopened", "open", "closing", "closed"] = "unopened"
        self._runner: asyncio.Task[None] | None = None
        self._tg: TaskGroup | None = None
        self._stop = anyio.Event()
        self._wake = anyio.Event()
        self._controls: dict[str, _Control] = {}
        self._hubs: dict[str, LogHub] = {}
        self._watchers: dict[str, anyio.Event] = {}
        self._subscribers: list[MemoryObjectSendStream[JobEvent]] = []

    @property
    def _log(self) -> structlog.typing.FilteringBoundLogger:
        # Bound at use, not at construction: logging set up (or captured) after the
        # manager was made still applies.
        return _log.bind(manager=self.id)  # type: ignore[no-any-return]

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
            for state in self._hosts.values():
                await state.executor.open()
            await self._check_health()
        except BaseException:
            await self._release()
            self._state = "closed"
            raise
        started = anyio.Event()
        # The task group lives in a task of its own, so that start() and close() may
        # be called from different tasks; every background task is inside it.
        self._runner = asyncio.get_running_loop().create_task(self._run(started))
        await started.wait()
        self._log.info(
            "manager.started", hosts=list(self._hosts), storage=type(self.storage).__name__
        )

    async def _run(self, started: anyio.Event) -> None:
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                if self._hosts:
                    # Adopt what dead managers left before taking new work.
                    await self._lease_round()
                    tg.start_soon(self._dispatch_loop)
                    tg.start_soon(self._health_loop)
                    tg.start_soon(self._lease_loop)
                    if self.storage.persistent:
                        tg.start_soon(self._cancel_request_loop)
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
        # From here on nothing new is claimed or adopted (both check the state).
        self._state = "closing"
        try:
            mode = self.exit_mode
            # Supervisors started while we waited are waited for too.
            while mode != "detach" and self._controls:
                control = next(iter(self._controls.values()))
                if mode == "cancel":
                    control.request_cancel("cancelled: the manager shut down")
                await control.done.wait()
            if self._hosts:
                with anyio.CancelScope(shield=True), suppress(ContainerJobsError):
                    # Gone for good: others may adopt what is left at once.
                    await self.storage.drop_lease(self.id)
        finally:
            # With "detach", stopping the task group stops the supervisors; their
            # containers run on, and the next manager adopts them. Shielded: a close
            # that is itself cancelled must not leave the task group running.
            self._stop.set()
            if self._runner is not None:
                with anyio.CancelScope(shield=True):
                    await asyncio.wait([self._runner])
                    if not self._runner.cancelled() and self._runner.exception():
                        self._log.error("manager.crashed", error=repr(self._runner.exception()))
            for subscriber in self._subscribers:
                subscriber.close()
            await self._release()
            self._state = "closed"
            self._log.info("manager.closed")

    async def _release(self) -> None:
        with anyio.CancelScope(shield=True):
            for state in self._hosts.values():
                with suppress(Exception):
                    await state.executor.close()
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
            self._log.info("job.submitted", job_id=job.id, image=job.spec.image, name=job.name)
            self._publish(job, None)
        self._wake.set()
        return jobs

    async def _prepare(self, spec: JobSpec) -> Job:
        if not isinstance(spec, JobSpec):
            raise TypeError(f"submit() takes a JobSpec, not {type(spec).__name__}")
        if spec.host is not None and self._hosts and spec.host not in self._hosts:
            raise InvalidJobSpec(
                f"JobSpec.host={spec.host!r} is not a host of this manager "
                f"(hosts: {', '.join(self._hosts)})"
            )
        template: Mapping[str, str] | None = None
        if spec.environment_template is not None:
            template = (await self.storage.get_template(spec.environment_template)).variables
        if spec.mounts:
            # Resolving mount sources touches the file system: off the event loop.
            effective = await anyio.to_thread.run_sync(self.policy.apply, spec, template)
        else:
            effective = self.policy.apply(spec, template)
        return Job(id=str(uuid.uuid4()), spec=effective, name=spec.name, created_at=utcnow())

    async def run(self, spec: JobSpec, *, timeout: float | None = None) -> Job:
        """Submit `spec` and wait for the job to end."""
        job = await self.submit(spec)
        return await self.wait(job.id, timeout=timeout)

    # --- reading -------------------------------------------------------------------

    async def get(self, job_id: str) -> Job:
        """The job's current record; `JobNotFound` for an unknown id."""
        self._check_open()
        return await self.storage.get(job_id)

    async def list_jobs(
        self, *, status: JobStatus | str | None = None, limit: int = 100
    ) -> list[Job]:
        """Jobs, newest first, optionally of one status."""
        self._check_open()
        return await self.storage.list(
            status=JobStatus(status) if status is not None else None, limit=limit
        )

    async def wait(self, job_id: str, *, timeout: float | None = None) -> Job:
        """Wait until the job ends and return it. `TimeoutError` when `timeout` runs
        out first; the job goes on."""
        self._check_open()
        with anyio.fail_after(timeout):
            delay = 0.05
            while True:
                changed = self._watch(job_id)
                job = await self.storage.get(job_id)
                if job.status.is_terminal:
                    self._forget_watcher(job_id)
                    return job
                with anyio.move_on_after(self._poll_delay(job, delay)):
                    await changed.wait()
                delay = min(delay * 2, self._poll_interval)

    async def logs(self, job_id: str, *, follow: bool = True) -> AsyncIterator[LogLine]:
        """The job's output lines, both streams in the order written.

        With `follow`, lines come as they are printed and the iterator ends when the
        job ends; without, it gives what is there now and ends.
        """
        self._check_open()
        await self.storage.get(job_id)  # JobNotFound, before anything else
        next_seq = 0
        delay = 0.05
        while True:
            hub = self._hubs.get(job_id)
            if hub is not None and next_seq >= hub.flushed:
                fresh = hub.since(next_seq)
                if fresh:
                    for stored in fresh:
                        yield stored.line
                    next_seq = fresh[-1].seq + 1
                    continue
                if not follow:
                    return
                if not hub.closed:
                    await hub.changed()
                continue
            until = hub.flushed if hub is not None else None
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
            changed = self._watch(job_id)
            job = await self.storage.get(job_id)
            if job.status.is_terminal or not follow:
                if job.status.is_terminal:
                    self._forget_watcher(job_id)
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
        send, receive = anyio.create_memory_object_stream[JobEvent](math.inf)
        self._subscribers.append(send)
        return EventStream(receive, lambda: self._unsubscribe(send))

    def _unsubscribe(self, send: MemoryObjectSendStream[JobEvent]) -> None:
        with suppress(ValueError):
            self._subscribers.remove(send)
        send.close()

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
                done = job.advance(JobStatus.CANCELLED, completed_at=utcnow(), error="cancelled")
                if await self.storage.update(done, expected=JobStatus.PENDING):
                    self._publish(done, job.status)
                    return done
                continue  # claimed meanwhile: cancel it as a running job
            control = self._controls.get(job_id)
            if control is not None:
                control.request_cancel("cancelled")
                return await self.wait(job_id)
            # Another manager runs it: leave word in the store for its supervisor, and
            # again if a write of its own (launching -> running) replaced the word.
            if not job.cancel_requested:
                flagged = attrs.evolve(job, cancel_requested=True)
                # Owner-checked: a stale record must not undo an adoption.
                await self.storage.take_over(flagged, expected=job.status, expected_owner=job.owner)
            with suppress(TimeoutError):
                return await self.wait(job_id, timeout=self._poll_interval * 2)

    async def health(self) -> dict[str, HostHealth]:
        """Check every host now; healthy, response time and error per host name."""
        self._check_open()
        await self._check_health()
        return {name: state.health for name, state in self._hosts.items()}

    async def summary(self) -> dict[str, Any]:
        """Jobs per status, and per host the slots in use and free."""
        self._check_open()
        counts = await self.storage.count_by_status()
        active = await self.storage.count_active()
        hosts = {
            name: {
                "active": state.host.active,
                "healthy": state.health.healthy,
                "running": active.get(name, 0),
                "max_concurrent_jobs": state.host.max_concurrent_jobs,
                "free": max(0, state.host.max_concurrent_jobs - active.get(name, 0))
                if state.usable
                else 0,
            }
            for name, state in self._hosts.items()
        }
        return {
            "jobs": {str(status): n for status, n in counts.items()},
            "hosts": hosts,
            "slots_used": sum(h["running"] for h in hosts.values()),
            "slots_free": sum(h["free"] for h in hosts.values()),
        }

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
        if hosts is None:
            states = [s for s in self._hosts.values() if s.usable]
        else:
            names = list(hosts)
            unknown = [name for name in names if name not in self._hosts]
            if unknown:
                raise InvalidJobSpec(f"unknown hosts: {', '.join(unknown)}")
            states = [self._hosts[name] for name in names]
        results: dict[str, list[PullResult]] = {}

        async def pull_all(state: _HostState) -> None:
            done = results[state.host.name] = []
            for image in wanted:
                try:
                    done.append(await state.executor.pull(image))
                except ContainerJobsError as exc:
                    done.append(PullResult(image, False, str(exc)))
                self._log.info(
                    "image.prewarmed",
                    host=state.host.name,
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

    # --- status changes ------------------------------------------------------------

    def _poll_delay(self, job: Job, delay: float) -> float | None:
        # This manager signals every change it makes. Only a store shared with other
        # processes can change behind its back, and then only for jobs it does not run.
        if not self.storage.persistent:
            return None
        if job.owner == self.id and job.status.is_active:
            return None
        return delay

    def _forget_watcher(self, job_id: str) -> None:
        # Set before dropping: a waiter that read a stale status looks again.
        event = self._watchers.pop(job_id, None)
        if event is not None:
            event.set()

    def _watch(self, job_id: str) -> anyio.Event:
        # Take the event before reading the store, so a change between the read and
        # the wait still wakes the waiter.
        event = self._watchers.get(job_id)
        if event is None:
            event = self._watchers[job_id] = anyio.Event()
        return event

    def _publish(self, job: Job, previous: JobStatus | None) -> None:
        self._forget_watcher(job.id)
        if previous == job.status:
            return
        record = JobEvent(job.id, job.status, previous, utcnow())
        for subscriber in self._subscribers:
            with suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                subscriber.send_nowait(record)

    async def _advance(self, job: Job, status: JobStatus, **changes: Any) -> Job:
        return await self._advance_from(job, job.advance(status, **changes))

    async def _advance_from(self, job: Job, new: Job) -> Job:
        # Status and owner must both be as we last saw them: a manager whose lease
        # lapsed and whose job was adopted meanwhile loses, instead of both writing.
        if not await self.storage.take_over(new, expected=job.status, expected_owner=job.owner):
            raise _LostRace(await self.storage.get(job.id))
        self._publish(new, job.status)
        return new

    async def _finish_or_retry(
        self, job: Job, status: JobStatus, error: str | None, *, retryable: bool, **changes: Any
    ) -> Job:
        """End the job, unless it failed in a way worth another attempt and has
        retries left: then it goes back to pending, with this attempt on record."""
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
            retried = job.advance(
                JobStatus.PENDING,
                previous_attempts=(*job.previous_attempts, outcome),
                host=None,
                owner=None,
                container_id=None,
                exit_code=None,
                started_at=None,
                error=None,
                retry_at=utcnow() + timedelta(seconds=delay),
                output_start=await self.storage.log_count(job.id),
            )
            self._log.info(
                "job.retrying", job_id=job.id, attempt=job.attempts, error=error, delay=delay
            )
            return await self._advance_from(job, retried)
        return await self._advance(job, status, error=error, completed_at=utcnow(), **changes)

    # --- dispatching ---------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            self._wake = anyio.Event()
            try:
                await self._dispatch_once()
            except ContainerJobsError as exc:
                self._log.error("dispatch.failed", error=str(exc))
            # New work, a freed slot or a recovered host wakes us; work submitted by
            # other processes is found by the periodic read.
            with anyio.move_on_after(self._poll_interval):
                await self._wake.wait()

    async def _dispatch_once(self) -> None:
        if self._state != "open":
            return
        active = await self.storage.count_active()
        usable = [s for s in self._hosts.values() if s.usable]
        free = sum(max(0, s.host.max_concurrent_jobs - active.get(s.host.name, 0)) for s in usable)
        if free == 0:
            return
        now = utcnow()
        # Read past the free slots: jobs pinned to a full host must not block others.
        for job in await self.storage.pending(limit=free * 4 + 16):
            if job.retry_at is not None and job.retry_at > now:
                continue  # the periodic round picks it up when its time comes
            candidates = [
                HostLoad(s.host, active.get(s.host.name, 0))
                for s in usable
                if (job.spec.host is None or job.spec.host == s.host.name)
                and active.get(s.host.name, 0) < s.host.max_concurrent_jobs
            ]
            if not candidates:
                continue
            choice = self.strategy.select(job, candidates)
            if choice is None:
                continue
            if self._state != "open":
                return  # closing: take no more work
            claimed = job.advance(
                JobStatus.LAUNCHING,
                host=choice.host.name,
                owner=self.id,
                attempts=job.attempts + 1,
            )
            if not await self.storage.claim(claimed, max_active=choice.host.max_concurrent_jobs):
                continue  # another manager took it, or the host filled up meanwhile
            active[choice.host.name] = active.get(choice.host.name, 0) + 1
            self._publish(claimed, job.status)
            self._start_supervisor(claimed, self._hosts[choice.host.name])

    def _start_supervisor(self, job: Job, state: _HostState, adopt: str | None = None) -> None:
        assert self._tg is not None
        control = self._controls[job.id] = _Control()
        self._tg.start_soon(self._supervise, job, state, control, adopt, name=f"job {job.id}")

    # --- leases and reconciliation -------------------------------------------------

    async def reconcile(self) -> None:
        """Reconcile now rather than at the next periodic round: adopt the jobs of
        managers whose lease has run out, and remove labelled containers of this store
        whose job is gone or finished."""
        self._check_open()
        await self._reconcile()

    async def _renew_lease(self) -> None:
        info = f"{socket.gethostname()} pid {os.getpid()}"
        await self.storage.renew_lease(self.id, self._lease_ttl, info=info)

    async def _lease_loop(self) -> None:
        # Renew well before expiry; reconcile as often, to adopt the jobs of managers
        # whose lease ran out and to remove containers nobody owns.
        while True:
            await anyio.sleep(self._lease_ttl / 3)
            await self._lease_round()

    async def _lease_round(self) -> None:
        try:
            await self._renew_lease()
            await self._reconcile()
        except Exception:
            # A store or host that fails now may answer next round; a bug must not
            # stop the manager either. Both are logged.
            self._log.exception("reconcile.failed")

    async def _reconcile(self) -> None:
        live = await self.storage.live_managers()
        for job in await self.storage.active_jobs():
            # Our own job without a supervisor (its final write failed) is adopted
            # back like a dead manager's.
            if job.id in self._controls or (job.owner in live and job.owner != self.id):
                continue
            state = self._hosts.get(job.host or "")
            if state is None or not state.usable or self._state != "open":
                continue  # not a host we can reach: another manager's to adopt
            try:
                await self._adopt(job, state)
            except _LostRace as race:
                # Another manager or a client moved it first: theirs now.
                self._log.info(
                    "job.adopt_superseded", job_id=job.id, status=str(race.current.status)
                )
            except ContainerJobsError as exc:
                self._log.warning("job.adopt_failed", job_id=job.id, error=str(exc))
        # Safe with any store: containers are matched to this store by its identity.
        for state in self._hosts.values():
            if state.usable:
                try:
                    await self._remove_orphans(state)
                except HostUnavailable as exc:
                    self._mark_down(state, str(exc))

    async def _adopt(self, job: Job, state: _HostState) -> None:
        log = self._log.bind(job_id=job.id, host=state.host.name, previous_owner=job.owner)
        # Look before taking over: a job taken over and then not supervised would be
        # stuck, as its new owner is alive.
        try:
            containers = await state.executor.find(job_id=job.id)
        except HostUnavailable as exc:
            self._mark_down(state, str(exc))
            return
        mine = attrs.evolve(job, owner=self.id)
        if not await self.storage.take_over(mine, expected=job.status, expected_owner=job.owner):
            return  # another manager adopted it first
        # Only the current attempt's container counts; an earlier attempt's goes.
        current = [c for c in containers if c.attempt == job.attempts]
        info = current[0] if current else None
        for other in containers:
            if other is not info or not other.started:
                with suppress(ContainerJobsError):
                    await state.executor.remove(other.container_id)
        if info is None or not info.started:
            # It never ran (or its container vanished while it ran).
            if job.status is JobStatus.LAUNCHING:
                log.info("job.requeued", reason="its launch never completed")
                # Its command never ran: the attempt is given back.
                requeued = mine.advance(
                    JobStatus.PENDING,
                    host=None,
                    owner=None,
                    container_id=None,
                    attempts=job.attempts - 1,
                )
                await self._advance_from(mine, requeued)
                return
            error = (
                f"the container of job {job.id} is gone from host {state.host.name!r} "
                f"(its manager {job.owner} stopped while it ran)"
            )
            log.warning("job.container_gone")
            await self._finish_or_retry(mine, JobStatus.FAILED, error, retryable=True)
            return
        log.info("job.adopted", container_id=info.container_id[:12], state=info.state)
        self._start_supervisor(mine, state, adopt=info.container_id)

    async def _cancel_request_loop(self) -> None:
        # A cancel asked through another manager arrives as a flag in the store: one
        # read per round for all of this manager's jobs, not one per job.
        while True:
            await anyio.sleep(self._poll_interval)
            if not self._controls:
                continue
            try:
                jobs = await self.storage.active_jobs(owner=self.id)
            except ContainerJobsError as exc:
                self._log.warning("cancel_requests.unreadable", error=str(exc))
                continue
            for job in jobs:
                control = self._controls.get(job.id)
                if job.cancel_requested and control is not None:
                    control.request_cancel("cancelled")

    async def _remove_orphans(self, state: _HostState) -> None:
        for info in await state.executor.find():
            # Only containers of this store: another store's are another system's.
            if info.store_id != self.storage.store_id or info.job_id in self._controls:
                continue
            try:
                job: Job | None = await self.storage.get(info.job_id)
            except JobNotFound:
                job = None
            if job is None or job.status.is_terminal or info.attempt < job.attempts:
                self._log.warning(
                    "container.orphan_removed",
                    host=state.host.name,
                    job_id=info.job_id,
                    container_id=info.container_id[:12],
                    reason="no such job"
                    if job is None
                    else f"job is {job.status}"
                    if job.status.is_terminal
                    else "an earlier attempt",
                )
                await state.executor.remove(info.container_id)

    # --- health --------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            healthy = all(s.health.healthy for s in self._hosts.values() if s.host.active)
            # A host that went away is asked again soon, so its queue moves once it is back.
            await anyio.sleep(
                self._health_interval if healthy else min(self._health_interval, _RECHECK)
            )
            await self._check_health()

    async def _check_health(self) -> None:
        async with anyio.create_task_group() as tg:
            for state in self._hosts.values():
                tg.start_soon(self._check_host, state)

    async def _check_host(self, state: _HostState) -> None:
        started = time.perf_counter()
        try:
            with anyio.fail_after(10):
                await state.executor.ping()
        except (ContainerJobsError, TimeoutError) as exc:
            self._mark_down(
                state, str(exc) or f"host {state.host.name!r} did not answer within 10 s"
            )
        else:
            elapsed = time.perf_counter() - started
            self._set_health(state, HostHealth(True, elapsed, None, utcnow()))

    def _mark_down(self, state: _HostState, error: str) -> None:
        self._set_health(state, HostHealth(False, None, error, utcnow()))

    def _set_health(self, state: _HostState, health: HostHealth) -> None:
        before, state.health = state.health, health
        if health.healthy and not before.healthy:
            self._log.info("host.healthy", host=state.host.name, response_time=health.response_time)
            self._wake.set()
        elif not health.healthy and (before.healthy or before.error != health.error):
            self._log.warning("host.unhealthy", host=state.host.name, error=health.error)

    # --- supervising one job -------------------------------------------------------

    async def _supervise(
        self, job: Job, state: _HostState, control: _Control, adopt: str | None
    ) -> None:
        log = self._log.bind(job_id=job.id, host=state.host.name)
        try:
            await self._execute(job, state, control, adopt, log)
        except _LostRace as race:
            log.info("job.superseded", status=str(race.current.status))
        except Exception as exc:
            # A bug must not leave a job stuck in launching or running.
            log.exception("job.supervisor_crashed")
            with anyio.CancelScope(shield=True):
                await self._fail_quietly(job.id, f"internal error: {exc!r}")
        finally:
            self._controls.pop(job.id, None)
            control.done.set()
            self._wake.set()
            # Whatever happened, waiters look again (polling is off for our own jobs).
            self._forget_watcher(job.id)

    async def _fail_quietly(self, job_id: str, error: str) -> None:
        with suppress(ContainerJobsError):
            job = await self.storage.get(job_id)
            if not job.status.is_terminal:
                await self._advance(job, JobStatus.FAILED, error=error, completed_at=utcnow())

    async def _execute(
        self,
        job: Job,
        state: _HostState,
        control: _Control,
        adopt: str | None,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        if adopt is None:
            launched = await self._launch(job, state, log)
            if launched is None:
                return
            container_id = launched
        else:
            container_id = adopt
        log = log.bind(container_id=container_id[:12])
        stored = await self.storage.log_count(job.id)
        hub = self._hubs[job.id] = LogHub(job.id, stored, self.storage.append_logs)
        # An adopted job's output is read again from its start, cut into lines the
        # same way as the first time: the lines already stored are skipped, so none
        # is lost or doubled.
        run = _OutputRun(Output(self._max_log_bytes), hub, skip=stored - job.output_start)
        try:
            if job.status is JobStatus.LAUNCHING:
                # A _LostRace here means an adopter changed it (writes check the
                # owner): the container is the adopter's now, so it is left alone.
                job = await self._advance(
                    job, JobStatus.RUNNING, container_id=container_id, started_at=utcnow()
                )
            log.info("job.running", adopted=adopt is not None)
            await self._watch_container(job, state, container_id, control, run, log)
        finally:
            with anyio.CancelScope(shield=True), suppress(ContainerJobsError):
                # A detached job's next manager goes on from what is stored.
                await hub.flush()
            hub.close()
            self._hubs.pop(job.id, None)

    async def _launch(
        self, job: Job, state: _HostState, log: structlog.typing.FilteringBoundLogger
    ) -> str | None:
        """Launch the job's container, or end the job when that fails; return the
        container id, or None when the job ended.

        A cancel that arrives meanwhile is acted on once the container runs (it is
        killed at once): cutting a create short could leave a container the daemon
        makes after we looked for it.
        """
        log.info("job.launching", image=job.spec.image, attempt=job.attempts)
        try:
            return await state.executor.launch(job, labels={LABEL_STORE: self.storage.store_id})
        except ContainerJobsError as exc:
            failure = exc
        log.warning("job.launch_failed", error=str(failure))
        if isinstance(failure, HostUnavailable):
            # Ask the host itself: a job's own failure (a create that timed out on a
            # huge request) must not take a host that answers out of service.
            await self._check_host(state)
        # A missing image stays missing; anything else may pass on a retry.
        await self._finish_or_retry(
            job, JobStatus.FAILED, str(failure), retryable=not isinstance(failure, ImageNotFound)
        )
        return None

    async def _watch_container(
        self,
        job: Job,
        state: _HostState,
        container_id: str,
        control: _Control,
        run: _OutputRun,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        executor = state.executor
        output, hub = run.output, run.hub
        reader = executor.logs(container_id)
        usage = Usage()
        exited = anyio.Event()
        async with anyio.create_task_group() as tg:
            pump_done = anyio.Event()
            tg.start_soon(self._pump_logs, reader, run.take, exited, pump_done, log)
            tg.start_soon(self._sample_stats, executor, container_id, usage, log)
            tg.start_soon(self._flush_periodically, hub, log)
            end = await self._await_end(job, executor, container_id, control, log)
            if end.exit is not None:
                exited.set()
                # The follow stream ends when the container stops; what it has not
                # delivered by then, the read below gets.
                with anyio.move_on_after(_LOG_DRAIN_GRACE):
                    await pump_done.wait()
            tg.cancel_scope.cancel()
        if end.exit is not None:
            # A follow stream can end cleanly before the container's last lines (the
            # engine closes it as the container stops): with the exit confirmed, read
            # once more from where it got to. Only then is the output known whole.
            try:
                await reader.read(run.take, follow=False)
            except ContainerJobsError as exc:
                output.lost = str(exc)
                log.error("logs.incomplete", error=str(exc))
        for item in reader.finish():
            run.take(item)
        removable = True
        if end.failure is not None:
            await self._check_host(state)  # the host may be gone: stop placing jobs there
            # A host that does not answer would hold the removal (and the job's end)
            # for a minute: the container stays, labelled, and reconciliation removes
            # it once the host answers again.
            removable = state.health.healthy
        for line in output.finish():
            run.store(line)
        with anyio.CancelScope(shield=True):
            try:
                await self._persist(hub.flush, log)
            except ContainerJobsError as exc:
                output.lost = output.lost or f"storing the output failed: {exc}"
            try:
                if not removable:
                    log.warning("container.left_for_reconciliation")
                else:
                    await executor.remove(container_id)
                    log.info("container.removed")
            except ContainerJobsError as exc:
                log.warning("container.remove_failed", error=str(exc))
            status, error = outcome(job, end, output, control.reason)
            oom = bool(end.exit and end.exit.oom_killed)
            done = await self._persist(
                partial(
                    self._finish_or_retry,
                    job,
                    status,
                    error,
                    # Timeouts, cancels and OOM kills would only happen again.
                    retryable=end.reason is None and not oom,
                    exit_code=end.exit.exit_code if end.exit else None,
                    oom_killed=oom,
                    stdout=output.text("stdout"),
                    stderr=output.text("stderr"),
                    logs_truncated=output.truncated,
                    max_memory_bytes=usage.peak_memory,
                    cpu_usage_percent=usage.cpu_percent,
                ),
                log,
            )
            log.info(
                "job.finished",
                status=str(done.status),
                exit_code=done.exit_code,
                duration=done.duration,
                error=done.error,
            )

    async def _await_end(
        self,
        job: Job,
        executor: Executor,
        container_id: str,
        control: _Control,
        log: structlog.typing.FilteringBoundLogger,
    ) -> End:
        """Wait for the container to exit, be cancelled or run out of time; kill it in
        the latter two cases. Engine errors end up in `failure`, never raised."""
        end = End()

        async def exited() -> None:
            try:
                end.exit = await executor.wait(container_id)
            except ContainerJobsError as exc:
                end.failure = str(exc) or "the host stopped answering"

        remaining = job.spec.timeout_seconds
        if remaining is not None and job.started_at is not None:
            # An adopted job has used part of its time already.
            remaining -= (utcnow() - job.started_at).total_seconds()
        with anyio.move_on_after(remaining) as deadline:
            async with anyio.create_task_group() as race:

                async def first(step: Callable[[], Awaitable[Any]]) -> None:
                    await step()
                    race.cancel_scope.cancel()

                race.start_soon(first, exited)
                race.start_soon(first, control.cancel.wait)
        if end.failure is not None:
            log.warning("container.lost", error=end.failure)
            return end
        if end.exit is None:
            end.reason = "timeout" if deadline.cancelled_caught else "cancel"
            log.info("container.killing", reason=end.reason)
            try:
                with anyio.CancelScope(shield=True), anyio.fail_after(_KILL_GRACE):
                    await executor.kill(container_id)
                    end.exit = await executor.wait(container_id)
            except (ContainerJobsError, TimeoutError) as exc:
                end.failure = str(exc) or f"the container did not stop within {_KILL_GRACE} s"
                log.warning("container.kill_failed", error=end.failure)
        return end

    async def _pump_logs(
        self,
        reader: LogReader,
        take: LineSink,
        exited: anyio.Event,
        done: anyio.Event,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        # Lines as they are printed. The stream normally ends because the container
        # stopped; if it has not stopped soon after, the stream ended early: follow
        # again from where it got to.
        try:
            while True:
                try:
                    await reader.read(take, follow=True)
                except ContainerJobsError as exc:
                    log.warning("logs.stream_broken", error=str(exc))
                with anyio.move_on_after(_EARLY_END_GRACE):
                    await exited.wait()
                if exited.is_set():
                    return
                log.info("logs.stream_reopened")
        finally:
            done.set()

    async def _sample_stats(
        self,
        executor: Executor,
        container_id: str,
        usage: Usage,
        log: structlog.typing.FilteringBoundLogger,
    ) -> None:
        try:
            async for sample in executor.stats(container_id):
                usage.add(sample)
        except ContainerJobsError as exc:
            log.info("stats.unavailable", error=str(exc))

    @staticmethod
    async def _flush_periodically(hub: LogHub, log: structlog.typing.FilteringBoundLogger) -> None:
        # Lines reach the store within a fraction of a second, for readers elsewhere.
        while True:
            await hub.due(_LOG_FLUSH_INTERVAL)
            try:
                await hub.flush()
            except ContainerJobsError as exc:
                # The lines stay buffered; the next flush writes them (it is idempotent).
                log.warning("logs.flush_failed", error=str(exc))
                await anyio.sleep(_LOG_FLUSH_INTERVAL)

    @staticmethod
    async def _persist(
        write: Callable[[], Awaitable[T]], log: structlog.typing.FilteringBoundLogger
    ) -> T:
        # A job's end must reach the store: ride out a short outage of it.
        for delay in _PERSIST_RETRIES:
            try:
                return await write()
            except StorageError as exc:
                log.warning("store.write_failed", error=str(exc), retry_in=delay)
                await anyio.sleep(delay)
        return await write()
