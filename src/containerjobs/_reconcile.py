"""Leases and reconciliation: what a worker does so that a crash loses nothing and
leaves nothing behind.

A worker renews its lease in the store for as long as it runs. Each round it adopts
the active jobs of managers whose lease ran out (and its own jobs that lost their
supervisor), and removes the labelled containers of this store whose job is gone,
finished, or of an earlier attempt.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Container
from contextlib import suppress

import anyio
import attrs

from ._errors import ContainerJobsError, HostUnavailable, JobNotFound
from ._health import HostMonitor, HostState
from ._log import Logger
from ._models import Job, JobStatus
from ._ratelimit import RepeatLimiter
from ._transitions import LostRace, StatusBoard
from .storage import Storage

StartRun = Callable[[Job, HostState, str | None], None]


class Reconciler:
    def __init__(
        self,
        *,
        manager_id: str,
        storage: Storage,
        board: StatusBoard,
        monitor: HostMonitor,
        supervised: Container[str],
        start_run: StartRun,
        may_adopt: Callable[[Job], bool],
        lease_ttl: float,
        log: Logger,
        repeats: RepeatLimiter,
    ) -> None:
        self._id = manager_id
        self._storage = storage
        self._board = board
        self._monitor = monitor
        self._supervised = supervised
        self._start_run = start_run
        self._may_adopt = may_adopt
        self._lease_ttl = lease_ttl
        self._log = log
        self._repeats = repeats

    async def run(self) -> None:
        # Renew well before expiry; reconcile as often, to adopt the jobs of managers
        # whose lease ran out and to remove containers nobody owns.
        while True:
            await anyio.sleep(self._lease_ttl / 3)
            await self.round()

    async def round(self) -> None:
        try:
            info = f"{socket.gethostname()} pid {os.getpid()}"
            await self._storage.renew_lease(self._id, self._lease_ttl, info=info)
            await self.reconcile()
        except Exception:
            # A store or host that fails now may answer next round; a bug must not
            # stop the worker either. Both are logged (once a minute while it lasts).
            self._repeats.report(self._log.exception, "reconcile.failed")
        else:
            self._repeats.recover(self._log.info, "reconcile.failed", "reconcile.recovered")

    async def drop_lease(self) -> None:
        with anyio.CancelScope(shield=True), suppress(ContainerJobsError):
            # Gone for good: others may adopt what is left at once.
            await self._storage.drop_lease(self._id)

    async def reconcile(self) -> None:
        live = await self._storage.live_managers()
        for job in await self._storage.active_jobs():
            # Our own job without a supervisor (its final write failed) is adopted
            # back like a dead manager's.
            if job.id in self._supervised or (job.owner in live and job.owner != self._id):
                continue
            state = self._monitor.get(job.host)
            if state is None or not state.usable or not self._may_adopt(job):
                continue  # not a host we can reach, or not a job we take: another's
            try:
                await self._adopt(job, state)
            except LostRace as race:
                # Another manager or a client moved it first: theirs now.
                self._log.info(
                    "job.adopt_superseded", job_id=job.id, status=str(race.current.status)
                )
            except ContainerJobsError as exc:
                self._log.warning("job.adopt_failed", job_id=job.id, error=str(exc))
        # Safe with any store: containers are matched to this store by its identity.
        for state in self._monitor.usable():
            try:
                await self._remove_orphans(state)
            except HostUnavailable as exc:
                self._monitor.mark_down(state, str(exc))

    async def _adopt(self, job: Job, state: HostState) -> None:
        log = self._log.bind(job_id=job.id, host=state.name, previous_owner=job.owner)
        # Look before taking over: a job taken over and then not supervised would be
        # stuck, as its new owner is alive.
        try:
            containers = await state.executor.find(job_id=job.id)
        except HostUnavailable as exc:
            self._monitor.mark_down(state, str(exc))
            return
        # Raises LostRace when another manager adopted it first.
        mine = await self._board.move(job, attrs.evolve(job, owner=self._id))
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
                await self._board.requeue(mine, attempts=job.attempts - 1)
                return
            error = (
                f"the container of job {job.id} is gone from host {state.name!r} "
                f"(its manager {job.owner} stopped while it ran)"
            )
            log.warning("job.container_gone")
            await self._board.finish_or_retry(mine, JobStatus.FAILED, error, retryable=True)
            return
        log.info("job.adopted", container_id=info.container_id[:12], running=info.running)
        self._start_run(mine, state, info.container_id)

    async def _remove_orphans(self, state: HostState) -> None:
        store_id = self._storage.store_id
        for info in await state.executor.find():
            # Only containers of this store: another store's are another system's.
            if info.store_id != store_id or info.job_id in self._supervised:
                continue
            try:
                job: Job | None = await self._storage.get(info.job_id)
            except JobNotFound:
                job = None
            if job is None or job.status.is_terminal or info.attempt < job.attempts:
                self._log.warning(
                    "container.orphan_removed",
                    host=state.name,
                    job_id=info.job_id,
                    container_id=info.container_id[:12],
                    reason="no such job"
                    if job is None
                    else f"job is {job.status}"
                    if job.status.is_terminal
                    else "an earlier attempt",
                )
                await state.executor.remove(info.container_id)
