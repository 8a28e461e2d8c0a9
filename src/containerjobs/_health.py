"""Host health: which hosts answer, checked on a schedule and whenever a job suggests
a host may be gone."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence

import anyio
import attrs

from ._errors import ContainerJobsError
from ._hosts import Host, takes_placement
from ._log import Logger
from ._models import HostHealth, utcnow
from .executors import Executor

_RECHECK = 2.0  # seconds between health checks of a host that is down
_PING_TIMEOUT = 10.0


@attrs.define
class HostState:
    """A host, the executor that speaks to it, and its last health check."""

    host: Host
    executor: Executor
    health: HostHealth = attrs.Factory(lambda: HostHealth(False, None, "not checked yet"))

    @property
    def name(self) -> str:
        return self.host.name

    @property
    def usable(self) -> bool:
        return self.host.active and self.health.healthy


class HostMonitor:
    """The hosts of a manager and their health.

    `on_recovered` is called when a host becomes healthy, so that waiting work can
    move at once.
    """

    def __init__(
        self,
        states: list[HostState],
        log: Logger,
        *,
        interval: float,
        on_recovered: Callable[[], None],
    ) -> None:
        self._states = {state.name: state for state in states}
        self._log = log
        self._interval = interval
        self._on_recovered = on_recovered
        self._went_down: anyio.Event | None = None  # set when a host goes down

    def __iter__(self) -> Iterator[HostState]:
        return iter(self._states.values())

    def __len__(self) -> int:
        return len(self._states)

    def __contains__(self, name: object) -> bool:
        return name in self._states

    def __getitem__(self, name: str) -> HostState:
        return self._states[name]

    def get(self, name: str | None) -> HostState | None:
        return self._states.get(name or "")

    @property
    def names(self) -> list[str]:
        return list(self._states)

    def usable(self) -> list[HostState]:
        return [state for state in self._states.values() if state.usable]

    def why_none_takes(self, host: str | None, placement: Sequence[str], who: str) -> str | None:
        """Why no host here can take a job that needs `host` (or, with none, has
        `placement`) now, in words that name this manager as `who`; `None` when one
        can, once it has a free slot."""
        if not self._states:
            return f"{who} has no hosts (hosts=[]: a client)"
        names = ", ".join(self._states)
        if host is not None:
            state = self._states.get(host)
            if state is None:
                return f"it needs host {host!r}, which {who} does not have (its hosts: {names})"
            states = [state]
        elif placement:
            states = [state for state in self if takes_placement(state.host)]
            if not states:
                return (
                    f"its placement {list(placement)} needs a Swarm host, and {who} has "
                    f"none (its hosts: {names})"
                )
        else:
            states = list(self)
        if any(state.usable for state in states):
            return None
        return "; ".join(_why_down(state) for state in states)

    async def open(self) -> None:
        for state in self._states.values():
            await state.executor.open()

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            for state in self._states.values():
                try:
                    await state.executor.close()
                except Exception as exc:  # closing must go on to the next host
                    self._log.warning("host.close_failed", host=state.name, error=repr(exc))

    async def run(self) -> None:
        """Check every host on a schedule: often while one is down, so that its queue
        moves soon after it is back."""
        while True:
            if all(s.health.healthy for s in self._states.values() if s.host.active):
                # A host found down meanwhile (by a job, or health()) is rechecked
                # soon, not at the end of a long healthy interval.
                went_down = self._went_down = anyio.Event()
                with anyio.move_on_after(self._interval):
                    await went_down.wait()
                if went_down.is_set():
                    continue
            else:
                await anyio.sleep(min(self._interval, _RECHECK))
            await self.check_all()

    async def check_all(self) -> None:
        async with anyio.create_task_group() as tg:
            for state in self._states.values():
                tg.start_soon(self.check, state)

    async def check(self, state: HostState) -> None:
        started = time.perf_counter()
        try:
            with anyio.fail_after(_PING_TIMEOUT):
                await state.executor.ping()
        except (ContainerJobsError, TimeoutError) as exc:
            error = str(exc) or f"host {state.name!r} did not answer within {_PING_TIMEOUT:g} s"
            self.mark_down(state, error)
        else:
            elapsed = time.perf_counter() - started
            self._set(state, HostHealth(True, elapsed, None, utcnow()))

    def mark_down(self, state: HostState, error: str) -> None:
        self._set(state, HostHealth(False, None, error, utcnow()))

    def _set(self, state: HostState, health: HostHealth) -> None:
        before, state.health = state.health, health
        if health.healthy and not before.healthy:
            self._log.info("host.healthy", host=state.name, response_time=health.response_time)
            self._on_recovered()
        elif not health.healthy and (before.healthy or before.error != health.error):
            self._log.warning("host.unhealthy", host=state.name, error=health.error)
            if self._went_down is not None:
                self._went_down.set()


def _why_down(state: HostState) -> str:
    if not state.host.active:
        return f"host {state.name!r} is inactive"
    error = state.health.error or "no answer"
    # A host's error most often names the host already.
    return error if repr(state.name) in error else f"host {state.name!r} is unhealthy: {error}"
