"""The fake container engine: `FakeCluster`, `FakeExecutor`, `FakeRun`."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import anyio
import attrs

from .._errors import ExecutorError, HostUnavailable
from .._hosts import Host
from .._models import Job, LogLine, Stream
from ..executors._base import (
    LABEL_MANAGER,
    LABEL_STORE,
    ContainerInfo,
    ExitStatus,
    LaunchRequest,
    LineSink,
    OutputLine,
    PullResult,
    ResourceSample,
)


@attrs.frozen
class FakeRun:
    """What a fake container does: print, run for a while, exit.

    Args:
        stdout: text printed on stdout at once.
        stderr: text printed on stderr at once.
        exit_code: how it exits.
        duration: seconds it runs before exiting.
        oom_killed: exit as if the memory limit killed it (exit code 137).
        memory_bytes: the memory use its stats report.
        launch_error: raised by launch instead of starting (an `ExecutorError` say).
        print_environment: variables of the container's environment to print after
            `stdout`, as ``KEY=VALUE`` lines (to see what a job was given, secrets
            resolved, and how its output is masked).
    """

    stdout: str = ""
    stderr: str = ""
    exit_code: int = 0
    duration: float = 0.0
    oom_killed: bool = False
    memory_bytes: int = 8 * 1024 * 1024
    launch_error: Exception | None = None
    print_environment: tuple[str, ...] = ()


Behaviour = Callable[[Job], FakeRun]


@attrs.define
class _Container:
    job: Job
    run: FakeRun
    lines: list[OutputLine]
    labels: dict[str, str] = attrs.Factory(dict)
    exited: anyio.Event = attrs.Factory(anyio.Event)
    status: ExitStatus | None = None


def _lines(stream: Stream, text: str, now: datetime) -> list[OutputLine]:
    parts = text.split("\n")
    out = [OutputLine(LogLine(stream, part, now)) for part in parts[:-1]]
    if parts[-1]:
        out.append(OutputLine(LogLine(stream, parts[-1], now), newline=False))
    return out


class _FakeLogReader:
    def __init__(self, executor: FakeExecutor, container_id: str) -> None:
        self._executor = executor
        self._container_id = container_id
        self._next = 0

    async def read(self, sink: LineSink, *, follow: bool) -> None:
        container = self._executor._get(self._container_id)
        self._deliver(container, sink)
        if follow:
            await container.exited.wait()
            self._deliver(container, sink)

    def _deliver(self, container: _Container, sink: LineSink) -> None:
        while self._next < len(container.lines):
            self._next += 1
            sink(container.lines[self._next - 1])

    def finish(self) -> list[OutputLine]:
        return []


class FakeExecutor:
    """An in-memory engine for one host. Made by `FakeCluster`."""

    _ids = itertools.count(1)

    def __init__(
        self,
        host: Host,
        behaviour: Behaviour,
        containers: dict[str, _Container] | None = None,
    ) -> None:
        self._host = host
        self._behaviour = behaviour
        self.healthy = True
        # Shared by every executor of the same host made by one cluster, as a daemon's
        # containers are shared by every client: a second manager can adopt them.
        self.containers: dict[str, _Container] = {} if containers is None else containers
        self.launched: list[Job] = []
        self.requests: list[LaunchRequest] = []  # what each launch was asked, in order
        self.running = 0
        self.max_running = 0

    @property
    def name(self) -> str:
        return self._host.name

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        if not self.healthy:
            raise HostUnavailable(f"host {self.name!r} is down (fake)")

    async def launch(self, request: LaunchRequest) -> str:
        job = request.job
        await self.ping()
        run = self._behaviour(job)
        if run.launch_error is not None:
            raise run.launch_error
        container_id = f"fake{next(self._ids):012d}"
        now = datetime.now(UTC)
        stdout = run.stdout + "".join(
            f"{key}={request.environment.get(key, '')}\n" for key in run.print_environment
        )
        lines = _lines("stdout", stdout, now) + _lines("stderr", run.stderr, now)
        container = self.containers[container_id] = _Container(
            job, run, lines, dict(request.labels)
        )
        self.launched.append(job)
        self.requests.append(request)
        self.running += 1
        self.max_running = max(self.max_running, self.running)

        async def finish() -> None:
            await anyio.sleep(run.duration)
            self._exit(container, 137 if run.oom_killed else run.exit_code, run.oom_killed)

        # The container runs on its own, like a real one: not in any caller's scope.
        import asyncio

        asyncio.get_running_loop().create_task(finish())
        return container_id

    def _exit(self, container: _Container, code: int, oom: bool = False) -> None:
        if container.status is None:
            container.status = ExitStatus(code, oom, None, datetime.now(UTC))
            self.running -= 1
            container.exited.set()

    def _get(self, container_id: str) -> _Container:
        try:
            return self.containers[container_id]
        except KeyError:
            raise ExecutorError(f"no container {container_id} on host {self.name!r}") from None

    def logs(self, container_id: str) -> _FakeLogReader:
        return _FakeLogReader(self, container_id)

    async def stats(self, container_id: str) -> AsyncIterator[ResourceSample]:
        container = self._get(container_id)
        while container.status is None:
            yield ResourceSample(container.run.memory_bytes, None, 0, datetime.now(UTC))
            with anyio.move_on_after(1.0):
                await container.exited.wait()

    async def wait(self, container_id: str) -> ExitStatus:
        container = self._get(container_id)
        await self.ping()
        await container.exited.wait()
        assert container.status is not None
        return container.status

    async def kill(self, container_id: str) -> None:
        container = self.containers.get(container_id)
        if container is not None:
            self._exit(container, 137)

    async def remove(self, container_id: str) -> None:
        container = self.containers.pop(container_id, None)
        if container is not None:
            self._exit(container, 137)

    async def find(self, *, job_id: str | None = None) -> list[ContainerInfo]:
        return [
            ContainerInfo(
                container_id=cid,
                job_id=c.job.id,
                manager_id=c.labels.get(LABEL_MANAGER),
                store_id=c.labels.get(LABEL_STORE),
                started=True,
                running=c.status is None,
                attempt=c.job.attempts,
            )
            for cid, c in self.containers.items()
            if job_id is None or c.job.id == job_id
        ]

    async def pull(self, image: str) -> PullResult:
        await self.ping()
        return PullResult(image, True)


class FakeCluster:
    """An executor factory for `JobManager(executor_factory=...)` that makes a
    `FakeExecutor` per host, all following `behaviour` (exit 0, no output, when None).
    The executors are kept in `executors` by host name, to inspect or to take a host
    down (``cluster.executors["a"].healthy = False``)."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour: Behaviour = behaviour or (lambda job: FakeRun())
        self.executors: dict[str, FakeExecutor] = {}
        self._containers: dict[str, dict[str, _Container]] = {}

    def __call__(self, host: Host) -> FakeExecutor:
        containers = self._containers.setdefault(host.name, {})
        executor = FakeExecutor(
            host, lambda job: self.behaviour(job), containers
        )
        self.executors[host.name] = executor
        return executor
