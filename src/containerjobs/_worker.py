"""The worker: what a manager with hosts runs in its task group.

It places pending jobs on hosts (dispatch), runs one `JobRun` per job, keeps its
lease and reconciles (`Reconciler`), watches the hosts' health (`HostMonitor`), and
writes into the record of a pending job it cannot take why (`_explain_waits`).
A client manager (``hosts=[]``) has none of this.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import anyio
import attrs
from anyio.abc import TaskGroup

from ._dispatch import HostLoad, HostSelectionStrategy
from ._errors import ContainerJobsError
from ._health import HostMonitor, HostState
from ._hosts import Host, takes_placement
from ._log import Logger
from ._logs import LogHub
from ._models import Job, JobStatus
from ._policy import SecurityPolicy
from ._ratelimit import RepeatLimiter
from ._reconcile import Reconciler
from ._run import JobRun
from ._secrets import SecretSource
from ._transitions import LostRace, StatusBoard
from .executors import Executor
from .storage import Storage

ExecutorFactory = Callable[[Host], Executor]
_EXPLAIN_EVERY = 5  # poll intervals between looks at the pending jobs no host here can take
_EXPLAINED = 100  # the newest pending jobs looked at, each time
_WAITING = "waiting for a host"  # how the reason a worker writes into a record begins


class Worker:
    def __init__(
        self,
        *,
        manager_id: str,
        hosts: Sequence[Host],
        executor_factory: ExecutorFactory,
        policy: SecurityPolicy,
        secrets: SecretSource,
        storage: Storage,
        board: StatusBoard,
        strategy: HostSelectionStrategy,
        health_interval: float,
        poll_interval: float,
        lease_ttl: float,
        max_log_bytes: int,
        own_jobs_only: bool,
        log: Logger,
    ) -> None:
        self._storage = storage
        self._policy = policy
        self._secrets = secrets
        self._board = board
        self._strategy = strategy
        self._poll_interval = poll_interval
        self._max_log_bytes = max_log_bytes
        self._log = log
        # One for the whole worker: a store that fails, fails every job at once.
        self._repeats = RepeatLimiter()
        self.monitor = HostMonitor(
            [HostState(host, executor_factory(host)) for host in hosts],
            log,
            interval=health_interval,
            on_recovered=self.wake,
        )
        self.runs: dict[str, JobRun] = {}
        self.reconciler = Reconciler(
            manager_id=manager_id,
            storage=storage,
            board=board,
            monitor=self.monitor,
            supervised=self.runs,
            start_run=self.start_run,
            may_adopt=lambda job: self._accepting and self._takes(job),
            lease_ttl=lease_ttl,
            log=log,
            repeats=self._repeats,
        )
        self._manager_id = manager_id
        # With own_jobs_only, the ids of the jobs this manager submitted that may still
        # be pending: the only ones it claims.
        self._own: set[str] | None = set() if own_jobs_only else None
        self._tg: TaskGroup | None = None
        self._accepting = False
        self._wake = anyio.Event()

    async def open(self) -> None:
        await self.monitor.open()
        await self.monitor.check_all()

    async def close(self) -> None:
        await self.monitor.close()

    async def serve(self, tg: TaskGroup) -> None:
        """Start working in `tg`: first adopt what dead managers left, then take work."""
        self._tg = tg
        self._accepting = True
        await self.reconciler.round()
        tg.start_soon(self._dispatch_loop)
        tg.start_soon(self.monitor.run)
        tg.start_soon(self.reconciler.run)
        tg.start_soon(self._explain_loop)
        if self._storage.persistent:
            tg.start_soon(self._cancel_request_loop)

    async def stop(self, mode: str) -> None:
        """Take no more work; cancel the running jobs or wait for them, as `mode`
        says (``"detach"`` leaves them to run on, for the next manager to adopt)."""
        self._accepting = False
        # Runs started while we waited are waited for too.
        while mode != "detach" and self.runs:
            run = next(iter(self.runs.values()))
            if mode == "cancel":
                run.request_cancel("cancelled: the manager shut down")
            await run.done.wait()
        await self.reconciler.drop_lease()

    def wake(self) -> None:
        """New work, a freed slot or a recovered host: dispatch now."""
        self._wake.set()

    def submitted(self, jobs: Sequence[Job]) -> None:
        """Jobs this manager stored: dispatch now (and, with own_jobs_only, take them)."""
        if self._own is not None:
            self._own.update(job.id for job in jobs)
        self.wake()

    def _takes(self, job: Job) -> bool:
        """Whether this worker runs `job` at all (with own_jobs_only, only its own)."""
        return self._own is None or job.id in self._own or job.owner == self._manager_id

    def live_hub(self, job_id: str) -> LogHub | None:
        """The output of a job running here, while it runs."""
        run = self.runs.get(job_id)
        if run is None or run.hub is None or run.hub.closed:
            return None
        return run.hub

    def start_run(self, job: Job, state: HostState, adopt: str | None = None) -> None:
        assert self._tg is not None
        run = self.runs[job.id] = JobRun(
            job,
            state,
            self._board,
            self._storage,
            self.monitor,
            self._max_log_bytes,
            self._log,
            self._repeats,
            self._policy,
            self._secrets,
            adopt=adopt,
        )

        async def supervise() -> None:
            try:
                await run.run()
            finally:
                self.runs.pop(job.id, None)
                self.wake()

        self._tg.start_soon(supervise, name=f"job {job.id}")

    # --- dispatch --------------------------------------------------------------------

    async def _dispatch_loop(self) -> None:
        while True:
            self._wake = anyio.Event()
            try:
                await self._dispatch_once()
            except ContainerJobsError as exc:
                self._repeats.report(self._log.error, "dispatch.failed", error=str(exc))
            else:
                self._repeats.recover(self._log.info, "dispatch.failed", "dispatch.recovered")
            # New work, a freed slot or a recovered host wakes us; work submitted by
            # other processes is found by the periodic read.
            with anyio.move_on_after(self._poll_interval):
                await self._wake.wait()

    async def _dispatch_once(self) -> None:
        if not self._accepting or not self._may_have_own_pending():
            return
        usable = {state.name: state for state in self.monitor.usable()}
        if not usable:
            return

        def choose(job: Job, loads: Mapping[str, int]) -> str | None:
            # Called by the store inside its atomic step, for each pending job that
            # has a host with a free slot; the strategy chooses among those.
            if not self._accepting or not self._takes(job):
                return None  # closing (take no more work), or another's job
            candidates = [
                HostLoad(usable[name].host, running)
                for name, running in loads.items()
                # Constraints are an orchestrator's to honour: only its hosts qualify.
                if not job.spec.placement or takes_placement(usable[name].host)
            ]
            if not candidates:
                return None
            choice = self._strategy.select(job, candidates)
            if choice is None:
                return None
            if choice.host.name not in loads:
                # A strategy's bug must not stop dispatching: the job waits, and says why.
                self._repeats.report(
                    self._log.error,
                    "dispatch.bad_choice",
                    job_id=job.id,
                    host=choice.host.name,
                    error="the strategy chose a host that was not a candidate",
                )
                return None
            return choice.host.name

        # The store counts the slots in use, skips retries not yet due and jobs
        # pinned to a full host (so they block no others), and claims what fits.
        hosts = {name: state.host.max_concurrent_jobs for name, state in usable.items()}
        for job in await self._board.claim_next(self._manager_id, hosts, choose):
            assert job.host is not None  # claimed jobs have one
            self.start_run(job, usable[job.host])

    def _may_have_own_pending(self) -> bool:
        # With own_jobs_only, a claim round walks the queue only while a job of ours
        # may wait in it: not once every one ran here or ended.
        if self._own is None:
            return True
        ended = {job_id for job_id in self._own if _ended(self._board.told(job_id))}
        self._own -= ended
        return any(job_id not in self.runs for job_id in self._own)

    # --- why a job waits -------------------------------------------------------------

    async def _explain_loop(self) -> None:
        while True:
            await anyio.sleep(self._poll_interval * _EXPLAIN_EVERY)
            try:
                await self._explain_waits()
            except ContainerJobsError as exc:
                self._repeats.report(self._log.warning, "explain.failed", error=str(exc))
            else:
                self._repeats.recover(self._log.info, "explain.failed", "explain.recovered")

    async def _explain_waits(self) -> None:
        """Write into the record of each pending job this worker would take but no host
        of its can, why: pinned to a host it does not have or that is down, placement
        and no Swarm host, no healthy host at all. A job claimed later loses the reason
        (the move to running clears `error`); one that another worker explained, or
        that waits for something else (a Swarm node, a free slot), is left alone."""
        if not self._accepting:
            return
        pending = await self._storage.list(status=JobStatus.PENDING, limit=_EXPLAINED)
        mine = f"{_WAITING} (worker {self._manager_id}): "
        live: set[str] | None = None
        for job in pending:
            if not self._takes(job):
                continue
            why = self.monitor.why_none_takes(job.spec.host, job.spec.placement, "this worker")
            want = None if why is None else mine + why
            if job.error == want:
                continue
            ours = job.error is not None and job.error.startswith(mine)
            if want is None and not ours:
                continue  # someone else's word, or nothing to say
            if want is not None and not ours and job.error is not None:
                # Another worker's reason stands while that worker lives.
                if not job.error.startswith(f"{_WAITING} (worker "):
                    continue
                if live is None:
                    live = await self._storage.live_managers()
                writer = job.error[len(f"{_WAITING} (worker ") :].split("): ", 1)[0]
                if writer in live:
                    continue
            # Written over the record as it is now, not as listed: a write checks only
            # status and owner, and the job may have gone round to pending again
            # since (claimed, then requeued), with more attempts on record.
            current = await self._storage.get(job.id)
            if (current.status, current.owner, current.error) != (job.status, None, job.error):
                continue  # it moved meanwhile: the next round looks again
            try:
                await self._board.move(current, attrs.evolve(current, error=want))
            except LostRace:
                continue  # claimed or cancelled meanwhile
            if want is not None:
                self._log.info("job.waiting", job_id=job.id, reason=why)

    async def _cancel_request_loop(self) -> None:
        # A cancel asked through another manager arrives as a flag in the store: one
        # read per round for all of this worker's jobs, not one per job (the ids only,
        # where the store can say them without decoding every record).
        requests = getattr(self._storage, "cancel_requests", None)
        while True:
            await anyio.sleep(self._poll_interval)
            if not self.runs:
                continue
            try:
                if requests is not None:
                    asked = await requests(self._manager_id)
                else:
                    jobs = await self._storage.active_jobs(owner=self._manager_id)
                    asked = [job.id for job in jobs if job.cancel_requested]
            except ContainerJobsError as exc:
                self._repeats.report(
                    self._log.warning, "cancel_requests.unreadable", error=str(exc)
                )
                continue
            self._repeats.recover(
                self._log.info, "cancel_requests.unreadable", "cancel_requests.readable"
            )
            for job_id in asked:
                run = self.runs.get(job_id)
                if run is not None:
                    run.request_cancel("cancelled")



def _ended(status: JobStatus | None) -> bool:
    return status is not None and status.is_terminal
