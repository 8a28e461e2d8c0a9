"""One run of one job: launch, log pump, stats, deadline, harvest, removal, and the
decision to end the job or try it again.

A `JobRun` is made by the worker for each job it claims (or adopts) and lives in the
worker's task group until the job's attempt has ended and its container is gone.
Everything the run knows (its job, host, container, output, usage) is its own state;
status changes go through the `StatusBoard`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import suppress
from datetime import timedelta
from functools import partial
from typing import Any, TypeVar

import anyio
import attrs

from ._errors import (
    ContainerJobsError,
    HostUnavailable,
    ImageNotFound,
    InvalidJobSpec,
    PolicyViolation,
    SecretNotFound,
    StorageError,
    Unschedulable,
)
from ._harvest import End, Output, Usage, outcome
from ._health import HostMonitor, HostState
from ._log import Logger
from ._logs import LogHub
from ._models import Job, JobSpec, JobStatus, LogLine, utcnow
from ._policy import SecurityPolicy
from ._ratelimit import RepeatLimiter
from ._secrets import Masker, SecretSource, resolve_environment
from ._transitions import LostRace, StatusBoard
from .executors import LABEL_MANAGER, LABEL_STORE, LogReader, OutputLine
from .storage import Storage

T = TypeVar("T")

_LOG_FLUSH_INTERVAL = 0.25
# After the exit, how long the follow stream may take to end by itself before it is
# cut short (a final read gets whatever it had not delivered).
_LOG_DRAIN_GRACE = 5.0
_KILL_GRACE = 30.0
_EARLY_END_GRACE = 2.0  # a log stream ended this long before the exit ended early
_PERSIST_RETRIES = (0.5, 1.0, 2.0, 4.0, 8.0)
# How soon a job no node could take is offered to the hosts again.
_PLACEMENT_RETRY = 5.0


@attrs.define
class _Lines:
    """Where one run's output lines go: the capped output, and the hub that stores
    them, after the lines an earlier manager stored already (when adopted)."""

    output: Output
    hub: LogHub
    masker: Masker
    skip: int = 0

    def take(self, item: OutputLine) -> None:
        line = item.line
        if self.masker:
            line = attrs.evolve(line, text=self.masker.mask(line.text))
            item = OutputLine(line, item.newline)
        kept = self.output.add(item)
        if not self.skip:  # else read again after an adoption, and live before
            self.hub.live(line, kept=kept is not None)
        if kept is not None:
            self.store(kept)

    def store(self, line: LogLine) -> None:
        """A line to keep: as it comes, or held back until the end (the tail of a
        capped output). Those an earlier manager stored already are skipped."""
        if self.skip:
            self.skip -= 1
        else:
            self.hub.add(line)


@attrs.define(eq=False)
class JobRun:
    """The supervisor of one job's attempt on one host.

    Args:
        job: the job as claimed (launching) or adopted (launching or running).
        state: its host.
        adopt: the container to follow instead of launching one (an adopted job).
    """

    job: Job
    state: HostState
    board: StatusBoard
    storage: Storage
    monitor: HostMonitor
    max_log_bytes: int
    log: Logger
    repeats: RepeatLimiter  # the worker's: a store outage is logged once, not per job
    policy: SecurityPolicy  # this worker's: it decides what runs, and how hardened
    secrets: SecretSource  # this worker's: the values of the secrets its jobs name
    adopt: str | None = None
    hub: LogHub | None = None  # the live output, while it runs
    done: anyio.Event = attrs.Factory(anyio.Event)
    _cancel: anyio.Event = attrs.Factory(anyio.Event)
    _cancel_reason: str = "cancelled"
    _masker: Masker = attrs.Factory(Masker)

    def request_cancel(self, reason: str = "cancelled") -> None:
        """Kill the container and end the job `cancelled` (once it runs, if it is
        still launching)."""
        if not self._cancel.is_set():
            self._cancel_reason = reason
            self._cancel.set()

    async def run(self) -> None:
        log = self.log = self.log.bind(job_id=self.job.id, host=self.state.name)
        try:
            await self._run()
        except LostRace as race:
            log.info("job.superseded", status=str(race.current.status))
        except Exception as exc:
            # A bug must not leave a job stuck in launching or running.
            log.exception("job.supervisor_crashed")
            with anyio.CancelScope(shield=True):
                await self.board.fail_quietly(self.job.id, f"internal error: {exc!r}")
        finally:
            self.done.set()
            # Whatever happened, waiters look again (polling is off for our own jobs).
            self.board.wake(self.job.id)

    async def _run(self) -> None:
        job = self.job
        if self.adopt is None:
            container_id = await self._launch()
            if container_id is None:
                return
        else:
            container_id = self.adopt
            await self._learn_secrets_to_mask()
        self.log = self.log.bind(container_id=container_id[:12])
        # A launch of ours follows the lines of the job's earlier attempts; an
        # adopted job's may have more, stored by the manager that launched it.
        stored = job.output_start if self.adopt is None else await self.storage.log_count(job.id)
        hub = self.hub = LogHub(job.id, stored, self.storage.append_logs)
        # An adopted job's output is read again from its start, cut into lines the
        # same way as the first time: the lines already stored are skipped, so none
        # is lost or doubled.
        lines = _Lines(
            Output(self.max_log_bytes), hub, self._masker, skip=stored - job.output_start
        )
        try:
            if job.status is JobStatus.LAUNCHING:
                # A LostRace here means an adopter changed it (writes check the
                # owner): the container is the adopter's now, so it is left alone.
                self.job = await self.board.advance(
                    job,
                    JobStatus.RUNNING,
                    container_id=container_id,
                    started_at=utcnow(),
                    error=None,  # a wait for placement is over
                    spec=self.job.spec,  # as this manager's policy made it
                )
            self.log.info("job.running", adopted=self.adopt is not None)
            await self._watch(container_id, lines)
        finally:
            with anyio.CancelScope(shield=True), suppress(ContainerJobsError):
                # A detached job's next manager goes on from what is stored.
                await hub.flush()
            hub.close()

    async def _launch(self) -> str | None:
        """Launch the job's container, or end the job when that fails; return the
        container id, or None when the job ended.

        A cancel that arrives meanwhile is acted on once the container runs (it is
        killed at once): cutting a create short could leave a container the engine
        makes after we looked for it.
        """
        job = self.job
        self.log.info("job.launching", image=job.spec.image, attempt=job.attempts)
        # The store's identity goes on the container, so that reconciliation leaves
        # the containers of another store alone.
        labels = {LABEL_MANAGER: job.owner or "", LABEL_STORE: self.storage.store_id}
        try:
            # This manager's policy decides, whoever wrote the spec into the store.
            spec = await self._enforce_policy(job.spec)
            environment, values = await resolve_environment(spec.environment, self.secrets)
            self.policy.check_environment(environment)  # with the secrets' sizes now
            self._masker = Masker(values)
            self.job = attrs.evolve(job, spec=spec)
            request = self.policy.launch_request(self.job, labels=labels, environment=environment)
            return await self.state.executor.launch(request)
        except Unschedulable as exc:
            if await self._cancelled_meanwhile(job):
                return None
            # The orchestrator has no node for it now: back to the queue, saying why,
            # to be tried again later (the attempt did not happen).
            self.log.info("job.unschedulable", error=str(exc), retry_in=_PLACEMENT_RETRY)
            await self.board.requeue(
                job,
                attempts=job.attempts - 1,
                error=f"waiting to be placed: {exc}",
                retry_at=utcnow() + timedelta(seconds=_PLACEMENT_RETRY),
            )
            return None
        except ContainerJobsError as exc:
            failure = exc
        error = self._masker.mask(str(failure))
        self.log.warning("job.launch_failed", error=error)
        if await self._cancelled_meanwhile(job):
            return None
        if isinstance(failure, HostUnavailable):
            # Ask the host itself: a job's own failure (a create that timed out on a
            # huge request) must not take a host that answers out of service.
            await self.monitor.check(self.state)
        # A missing image stays missing, and a refused spec refused; anything else
        # may pass on a retry.
        retryable = not isinstance(
            failure, ImageNotFound | PolicyViolation | InvalidJobSpec | SecretNotFound
        )
        await self.board.finish_or_retry(job, JobStatus.FAILED, error, retryable=retryable)
        return None

    async def _cancelled_meanwhile(self, job: Job) -> bool:
        # A job cancelled while its launch failed ends cancelled: it must not go back
        # to the queue (to wait for a node, or for a retry) and run after all.
        if not self._cancel.is_set():
            return False
        await self.board.advance(
            job, JobStatus.CANCELLED, error=self._cancel_reason, completed_at=utcnow()
        )
        return True

    async def _enforce_policy(self, spec: JobSpec) -> JobSpec:
        """The stored spec as this manager's policy makes it (defaults filled in,
        mounts resolved); `PolicyViolation` for what it refuses."""
        try:
            if spec.mounts:
                # Resolving mount sources touches the file system: off the event loop.
                return await anyio.to_thread.run_sync(self.policy.apply, spec)
            return self.policy.apply(spec)
        except PolicyViolation as exc:
            raise PolicyViolation(
                f"refused at launch by the policy of manager {self.job.owner}: {exc}"
            ) from None

    async def _learn_secrets_to_mask(self) -> None:
        # An adopted job's secrets are resolved again, only to mask them: a manager
        # without them still harvests the job, and says its output is not masked.
        try:
            _, values = await resolve_environment(self.job.spec.environment, self.secrets)
        except SecretNotFound as exc:
            self.log.error("job.output_unmasked", error=str(exc))
            return
        self._masker = Masker(values)

    async def _watch(self, container_id: str, lines: _Lines) -> None:
        executor, log = self.state.executor, self.log
        output, hub = lines.output, lines.hub
        reader = executor.logs(container_id)
        usage = Usage()
        exited = anyio.Event()
        async with anyio.create_task_group() as tg:
            pump_done = anyio.Event()
            tg.start_soon(self._pump_logs, reader, lines.take, exited, pump_done)
            tg.start_soon(self._sample_stats, container_id, usage)
            tg.start_soon(self._flush_periodically, hub)
            end = await self._await_end(container_id)
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
                await reader.read(lines.take, follow=False)
            except ContainerJobsError as exc:
                output.lost = str(exc)
                log.error("logs.incomplete", error=str(exc))
        for item in reader.finish():
            lines.take(item)
        removable = True
        if end.failure is not None:
            await self.monitor.check(self.state)  # gone? then stop placing jobs there
            # A host that does not answer would hold the removal (and the job's end)
            # for a minute: the container stays, labelled, and reconciliation removes
            # it once the host answers again.
            removable = self.state.health.healthy
        with anyio.CancelScope(shield=True):
            try:
                # The tail is made into lines and stored a batch at a time: a tail of
                # a million short lines never stands in memory as line objects.
                for line in output.finish():
                    lines.store(line)
                    if hub.full:
                        await self._persist(hub.flush)
                await self._persist(hub.flush)
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
            status, error = outcome(self.job, end, output, self._cancel_reason)
            error = self._masker.mask(error) if error else error
            oom = bool(end.exit and end.exit.oom_killed)
            done = await self._persist(
                partial(
                    self.board.finish_or_retry,
                    self.job,
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
                )
            )
            log.info(
                "job.finished",
                status=str(done.status),
                exit_code=done.exit_code,
                duration=done.duration,
                error=done.error,
            )

    async def _await_end(self, container_id: str) -> End:
        """Wait for the container to exit, be cancelled or run out of time; kill it in
        the latter two cases. Engine errors end up in `failure`, never raised."""
        job, executor, log = self.job, self.state.executor, self.log
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
                race.start_soon(first, self._cancel.wait)
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
        take: Callable[[OutputLine], None],
        exited: anyio.Event,
        done: anyio.Event,
    ) -> None:
        # Lines as they are printed. The stream normally ends because the container
        # stopped; if it has not stopped soon after, the stream ended early: follow
        # again from where it got to.
        try:
            while True:
                try:
                    await reader.read(take, follow=True)
                except ContainerJobsError as exc:
                    self.log.warning("logs.stream_broken", error=str(exc))
                with anyio.move_on_after(_EARLY_END_GRACE):
                    await exited.wait()
                if exited.is_set():
                    return
                self.log.info("logs.stream_reopened")
        finally:
            done.set()

    async def _sample_stats(self, container_id: str, usage: Usage) -> None:
        try:
            async for sample in self.state.executor.stats(container_id):
                usage.add(sample)
        except ContainerJobsError as exc:
            self.log.info("stats.unavailable", error=str(exc))

    async def _flush_periodically(self, hub: LogHub) -> None:
        # Lines reach the store within a fraction of a second, for readers elsewhere.
        while True:
            await hub.due(_LOG_FLUSH_INTERVAL)
            try:
                await hub.flush()
            except ContainerJobsError as exc:
                # The lines stay buffered; the next flush writes them (it is idempotent).
                self.repeats.report(self.log.warning, "logs.flush_failed", error=str(exc))
                await anyio.sleep(_LOG_FLUSH_INTERVAL)
            else:
                self.repeats.recover(self.log.info, "logs.flush_failed", "logs.flush_recovered")

    async def _persist(self, write: Callable[[], Awaitable[T]]) -> T:
        # A job's end must reach the store: ride out a short outage of it.
        for delay in _PERSIST_RETRIES:
            try:
                result = await write()
            except StorageError as exc:
                self.repeats.report(
                    self.log.warning, "store.write_failed", error=str(exc), retry_in=delay
                )
                await anyio.sleep(delay)
            else:
                self.repeats.recover(self.log.info, "store.write_failed", "store.write_recovered")
                return result
        return await write()
