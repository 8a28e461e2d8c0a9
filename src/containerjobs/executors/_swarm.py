"""The Swarm executor: each job is a one-shot service on a Docker Swarm cluster, and
Swarm's scheduler chooses the node.

The handle the manager keeps for a job (its "container id") is the service's id.
What shapes this module, checked against Docker 20.10 (API 1.41):

- A job is a ``replicated-job`` service with one task and no restart: the task runs
  once, and the service and its task's container stay (with their output) until we
  remove the service.
- Output comes from the service's logs endpoint, in the same frames as a container's
  (see `_docker_logs`). A follow stream opened before the task runs delivers
  nothing, and a follow stream never ends, even after the task has: so `launch`
  returns once the task runs, and a follow read ends itself when the task has
  ended (the manager reads once more after the exit, as on any engine).
- There is no wait endpoint for a task: the task's container is waited for when it
  runs on the node we speak to, and the task's state is read until it says the
  task ended (growing intervals, for tasks on other nodes).
- Stats, OOM kills and kills go to the task's container, which only the node it
  runs on can reach: on other nodes, stats are not read, an exit of 137 cannot be
  told from an OOM kill, and a kill asks Swarm to stop the task. Removing the
  service would not do: Docker before 23 leaves a job's tasks running (and in its
  store) when its service goes (moby/moby#44312). A new iteration of the job with
  no task to run does: Swarm removes the old iteration's running task, at once
  (no stop grace period).
- Docker puts its own labels on a task's container (``com.docker.swarm.task.id``):
  the Docker executor leaves those containers alone, and this one lists services,
  never containers.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import aiohttp
import anyio

from .._errors import (
    ExecutorError,
    HostUnavailable,
    ImageNotFound,
    InvalidJobSpec,
    PolicyViolation,
    Unschedulable,
)
from .._hosts import SwarmHost
from .._log import get_logger
from ._base import (
    LABEL_ATTEMPT,
    LABEL_JOB_ID,
    LABEL_MANAGER,
    LABEL_STORE,
    ContainerInfo,
    ExitStatus,
    LaunchRequest,
    LineSink,
    OutputLine,
    ResourceSample,
)
from ._docker_logs import DockerLogReader
from ._engine import (
    FOREVER,
    EngineExecutor,
    gone_or_stopped,
    parse_time,
    status_of,
    translate,
    user_not_root,
)

_log = get_logger("containerjobs.swarm")

# Replicated-job services came with API 1.41 (Docker 20.10); a setting of
# no-new-privileges for a service's containers with 1.46 (Docker 27).
MIN_API = (1, 41)
NO_NEW_PRIVILEGES_API = (1, 46)
# How often a task's state is read: often in its first seconds, when it changes and
# a job's start or end waits on it, then less and less often.
_POLL_FIRST = 0.02
_POLL_SOON = 0.05
_SOON = 5.0
_POLL_MOST = 1.0
# How long a task may wait for the scheduler without a word before the job is
# handed back to the queue as not placeable.
_PLACEMENT_WAIT = 10.0
_GONE_WAIT = 10.0  # for a removed service's container to go

# Task states (swarmkit's), in the order a task goes through them.
_NOT_STARTED = frozenset(
    {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"}
)
_UNPLACED = frozenset({"new", "allocated", "pending"})
_ENDED = frozenset({"complete", "failed", "shutdown", "rejected", "orphaned", "remove"})
_EXIT_ERROR = "task: non-zero exit"


def _state(task: dict[str, Any]) -> str:
    return str(task.get("Status", {}).get("State") or "new")


def _container_of(task: dict[str, Any]) -> dict[str, Any]:
    return dict(task.get("Status", {}).get("ContainerStatus") or {})


def _ran(task: dict[str, Any]) -> bool:
    """Whether the task's command ran (it may have ended since)."""
    state = _state(task)
    if state == "running":
        return True
    if state not in ("complete", "failed", "shutdown"):
        return False
    # A task that failed to start has an error of its own; one that ran and
    # failed, "task: non-zero exit (N)".
    error = str(task.get("Status", {}).get("Err") or "")
    return state == "complete" or error.startswith(_EXIT_ERROR) or (
        state == "shutdown" and bool(_container_of(task).get("ContainerID"))
    )


def _pauses() -> Iterator[float]:
    """The pauses between reads of a task's state."""
    began, pause = time.monotonic(), _POLL_FIRST
    while True:
        yield pause
        most = _POLL_SOON if time.monotonic() - began < _SOON else _POLL_MOST
        pause = min(pause * 1.25, most)


def _newest(tasks: list[dict[str, Any]]) -> dict[str, Any] | None:
    return max(tasks, key=lambda task: str(task.get("CreatedAt") or ""), default=None)


class SwarmExecutor(EngineExecutor[SwarmHost]):
    """Runs jobs as one-shot services on a Swarm cluster, through one manager."""

    # Per running job: its log stream, its stats stream and the wait for its
    # container, plus the polls of its task.
    connections_per_job = 4
    creates = "service"
    logger = "containerjobs.swarm"

    def __init__(self, host: SwarmHost) -> None:
        super().__init__(host)
        self._node_id: str | None = None  # the node of the daemon we speak to
        self._version: tuple[int, int] | None = None  # its API version
        self._killed: set[str] = set()  # services we killed

    # --- connection --------------------------------------------------------------

    async def ping(self) -> None:
        await self._engine.ping()
        await self._read_swarm()

    async def _read_swarm(self) -> None:
        """Check that the daemon is a Swarm manager speaking API 1.41 or newer, and
        learn its node and API version."""
        with translate(self.name, "reading its swarm state"):
            info = await self._engine.json("info")
        swarm = info.get("Swarm") or {}
        state = swarm.get("LocalNodeState") or "inactive"
        if state != "active" or not swarm.get("ControlAvailable"):
            raise HostUnavailable(
                f"host {self.name!r} is not a Swarm manager (its node is {state!r}"
                f"{', a worker' if state == 'active' else ''}): give the URL of a manager, "
                "or run `docker swarm init` there"
            )
        version = await self._engine.api_version()
        if version < MIN_API:
            raise HostUnavailable(
                f"host {self.name!r} speaks Docker API {version[0]}.{version[1]}; Swarm jobs "
                f"need {MIN_API[0]}.{MIN_API[1]} (Docker 20.10) or newer"
            )
        self._version = version
        self._node_id = swarm.get("NodeID") or None

    # --- launch -------------------------------------------------------------------

    def _check(self, request: LaunchRequest, version: tuple[int, int]) -> None:
        """Refuse what a service cannot be made to enforce."""
        if request.network_mode == "none":
            # Swarm 20.10 answers "could not find the corresponding predefined swarm
            # network: network none not found" to a task on the "none" network, and a
            # task with no network at all gets the node's bridge.
            raise InvalidJobSpec(
                f"job {request.job_id}: network_mode='none' cannot run on Swarm host "
                f"{self.name!r}, as a Swarm service cannot be given no network; run it "
                "on a DockerHost"
            )
        if request.network_mode == "bridge" and request.networks:
            # Alone, "bridge" is what a task without networks gets anyway; beside a
            # swarm's own networks it is not a mix we have seen Swarm make.
            raise InvalidJobSpec(
                f"job {request.job_id}: network_mode='bridge' with networks cannot run on "
                f"Swarm host {self.name!r}: name the networks alone, or run it on a DockerHost"
            )
        if request.no_new_privileges and version < NO_NEW_PRIVILEGES_API:
            if "no-new-privileges" not in request.allow_unenforced:
                have = ".".join(map(str, version))
                raise PolicyViolation(
                    f"job {request.job_id} refused on Swarm host {self.name!r}: the policy "
                    "asks for no-new-privileges (no_new_privileges=True), which a Swarm "
                    "service can set only from Docker API 1.46 (Docker 27) on, and this "
                    f"host speaks API {have}. Upgrade the cluster, or let jobs run without "
                    "it: SecurityPolicy(allow_unenforced=('no-new-privileges',))"
                )
        user = user_not_root(request)
        if user is not None and not user.numeric:
            # A name (or a uid without a group) is resolved on whichever node runs
            # the task, in the image there: nothing we can read first.
            raise PolicyViolation(
                f"user={request.user!r} refused on Swarm host {self.name!r}: a Swarm job "
                "must give a numeric user:group (such as '65534:65534') when the policy "
                "does not allow root, as a name is resolved on the node that runs it, "
                "where it cannot be checked first"
            )

    def _service_spec(self, request: LaunchRequest, version: tuple[int, int]) -> dict[str, Any]:
        mounts: list[dict[str, Any]] = [
            {"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.read_only}
            for m in request.mounts
        ]
        mounts += [
            {
                "Type": "tmpfs",
                "Target": path,
                # Writable by any user, as a container's --tmpfs with mode=1777.
                "TmpfsOptions": {"SizeBytes": size * 1024 * 1024, "Mode": 0o1777},
            }
            for path, size in request.tmpfs.items()
        ]
        container: dict[str, Any] = {
            "Image": request.image,
            "Labels": dict(request.labels),
            "Env": [f"{key}={value}" for key, value in request.environment.items()],
            "User": request.user,
            "ReadOnly": request.read_only_root,
            "Mounts": mounts,
            "TTY": False,
            "OpenStdin": False,
        }
        if request.command is not None:
            # Args, not Command: Command would replace the image's entrypoint, where a
            # container's Cmd keeps it.
            container["Args"] = list(request.command)
        if request.working_directory is not None:
            container["Dir"] = request.working_directory
        if request.drop_capabilities:
            container["CapabilityDrop"] = ["ALL"]
        if request.no_new_privileges and version >= NO_NEW_PRIVILEGES_API:
            container["Privileges"] = {"NoNewPrivileges": True}
        # When Swarm stops the task (our kill on another node, a drained node), it
        # kills it, as a kill of ours does where we can reach the container.
        container["StopGracePeriod"] = 0
        limits: dict[str, Any] = {
            "MemoryBytes": request.memory_bytes,
            "NanoCPUs": round(request.cpus * 1e9),
        }
        if request.pids_limit is not None:
            limits["Pids"] = request.pids_limit
        template: dict[str, Any] = {
            "ContainerSpec": container,
            "Resources": {"Limits": limits},
            "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
            # json-file keeps every line on the node until the service is removed.
            "LogDriver": {"Name": "json-file", "Options": {}},
        }
        if request.placement:
            template["Placement"] = {"Constraints": list(request.placement)}
        if request.networks:
            template["Networks"] = [
                {"Target": net.name, "Aliases": list(net.aliases)} for net in request.networks
            ]
        return {
            "Name": f"cj-{request.job_id}-{request.attempt}",
            "Labels": dict(request.labels),
            "TaskTemplate": template,
            "Mode": {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 1}},
        }

    async def launch(self, request: LaunchRequest) -> str:
        if self._version is None:
            await self._read_swarm()
        assert self._version is not None
        self._check(request, self._version)
        spec = self._service_spec(request, self._version)
        service_id: str | None = None
        try:
            with translate(self.name, f"creating the service of job {request.job_id}"):
                # The credentials go with the service: every node pulls with them.
                created = await self._engine.json(
                    "services/create",
                    method="POST",
                    data=json.dumps(spec),
                    headers=self._engine.auth_header(request.image),
                )
            service_id = str(created["ID"])
            await self._until_running(request, service_id)
            return service_id
        except BaseException:
            # A failed or cancelled launch leaves nothing behind. The create may have
            # reached the cluster even if we never saw its answer: look by label.
            with anyio.CancelScope(shield=True):
                await self._remove_quietly(service_id, request.job_id)
            raise

    async def _until_running(self, request: LaunchRequest, service_id: str) -> None:
        """Return once the service's task runs (or ran); raise when it cannot."""
        pauses = _pauses()
        task: dict[str, Any] | None = None
        with anyio.move_on_after(_PLACEMENT_WAIT):
            while (task := await self._task(service_id)) is None or _state(task) in _UNPLACED:
                if task is not None and (reason := task.get("Status", {}).get("Err")):
                    raise Unschedulable(
                        f"Swarm host {self.name!r} has no node for job {request.job_id} "
                        f"now: {reason} (placement: {', '.join(request.placement) or 'none'})"
                    )
                await anyio.sleep(next(pauses))
        if task is None or _state(task) in _UNPLACED:
            raise Unschedulable(
                f"Swarm host {self.name!r} did not place job {request.job_id} within "
                f"{_PLACEMENT_WAIT:g} s"
            )
        # Assigned to a node: pulling and starting may take as long as the image does.
        while _state(task) in _NOT_STARTED:
            await anyio.sleep(next(pauses))
            task = await self._task(service_id) or task
        if _ran(task):
            return
        error = str(task.get("Status", {}).get("Err") or f"the task ended {_state(task)}")
        if "no such image" in error.lower() or "pull access denied" in error.lower():
            raise ImageNotFound(
                f"image {request.image!r} not found on Swarm host {self.name!r}: {error}"
            )
        raise ExecutorError(
            f"Swarm host {self.name!r} could not start job {request.job_id}: {error}"
        )

    # --- tasks ---------------------------------------------------------------------

    async def _task(self, service_id: str) -> dict[str, Any] | None:
        """The service's task, or None before Swarm made one (or once it, or the
        service, is gone)."""
        try:
            with translate(self.name, f"reading the task of service {service_id[:12]}"):
                tasks = await self._engine.json(
                    "tasks", params={"filters": json.dumps({"service": [service_id]})}
                )
        except ExecutorError as exc:
            if status_of(exc) == 404:  # "service ... not found"
                return None
            raise
        return _newest(list(tasks))

    def _local(self, task: dict[str, Any]) -> str | None:
        """The task's container id, when it runs on the node we speak to."""
        if self._node_id is None or task.get("NodeID") != self._node_id:
            return None
        return _container_of(task).get("ContainerID") or None

    async def _ended(self, service_id: str) -> dict[str, Any] | None:
        """Wait until the service's task has ended; return it (None if the service
        is gone)."""
        pauses = _pauses()
        while True:
            task = await self._task(service_id)
            if task is None or _state(task) in _ENDED:
                return task
            container = self._local(task)
            if container is not None and _state(task) == "running":
                # An event rather than a poll, where the daemon runs it.
                try:
                    with translate(self.name, f"waiting for container {container[:12]}"):
                        await self._engine.json(
                            f"containers/{container}/wait", method="POST", timeout=FOREVER
                        )
                except ExecutorError as exc:
                    if status_of(exc) != 404:
                        raise
                pauses = _pauses()  # the task's state follows within moments
            await anyio.sleep(next(pauses))

    # --- running ------------------------------------------------------------------

    def logs(self, container_id: str) -> _ServiceLogReader:
        return _ServiceLogReader(
            DockerLogReader(container_id, partial(self._log_stream, container_id)),
            partial(self._ended, container_id),
        )

    @asynccontextmanager
    async def _log_stream(
        self, service_id: str, params: dict[str, str]
    ) -> AsyncIterator[aiohttp.StreamReader]:
        with translate(self.name, f"reading the logs of service {service_id[:12]}"):
            async with self._engine.response(
                f"services/{service_id}/logs", params=params, timeout=FOREVER
            ) as response:
                yield response.content

    async def stats(self, container_id: str) -> AsyncIterator[ResourceSample]:
        # Only the node that runs the task has its container's figures.
        task = await self._task(container_id)
        local = self._local(task) if task is not None else None
        if local is None:
            return
        async for sample in self._engine.container_stats(local):
            yield sample

    async def wait(self, container_id: str) -> ExitStatus:
        task = await self._ended(container_id)
        killed = container_id in self._killed
        self._killed.discard(container_id)
        if task is None:
            if killed:  # Swarm removed the task we had it stop (on another node)
                return ExitStatus(exit_code=None, error="its task was stopped to kill it")
            raise ExecutorError(f"service {container_id[:12]} is gone from host {self.name!r}")
        status = task.get("Status") or {}
        finished_at = parse_time(str(status.get("Timestamp") or ""))
        if not _ran(task):
            error = status.get("Err") or f"its task ended {_state(task)} before it ran"
            return ExitStatus(exit_code=None, error=str(error), finished_at=finished_at)
        code = _container_of(task).get("ExitCode")
        code = int(code) if code is not None else None
        error = str(status.get("Err") or "")
        oom = False
        local = self._local(task)
        if code == 137 and local is not None and not killed:
            oom = await self._oom_killed(local)
        return ExitStatus(
            exit_code=code,
            oom_killed=oom,
            error=None if not error or error.startswith(_EXIT_ERROR) else error,
            finished_at=finished_at,
        )

    async def _oom_killed(self, container_id: str) -> bool:
        try:
            state = await self._engine.state_after_sigkill(container_id)
        except ExecutorError as exc:
            if gone_or_stopped(exc):
                return False  # removed meanwhile: nothing more to tell
            raise
        return bool(state.get("OOMKilled"))

    async def kill(self, container_id: str) -> None:
        self._killed.add(container_id)
        task = await self._task(container_id)
        if task is None or _state(task) in _ENDED:
            return
        local = self._local(task)
        if local is not None:
            await self._engine.kill_container(local)
        else:
            # The node that runs it is out of our reach: Swarm stops it (the output
            # read so far is kept).
            await self._stop_job(container_id)

    async def remove(self, container_id: str) -> None:
        self._killed.discard(container_id)
        await self._remove_service(container_id)
        # Swarm removes the task's container in its own time; where we can, we do it
        # now, so that nothing is left when the job is recorded as ended.
        with anyio.move_on_after(_GONE_WAIT):
            while leftovers := await self._task_containers(container_id):
                for leftover in leftovers:
                    await self._engine.remove_container(leftover)
                await anyio.sleep(_POLL_FIRST)

    async def _stop_job(self, service_id: str) -> None:
        """Have Swarm stop the service's running task, wherever it runs: a new
        iteration of the job with no task to run replaces it."""
        try:
            with translate(self.name, f"stopping the task of service {service_id[:12]}"):
                service = await self._engine.json(f"services/{service_id}")
                spec = dict(service["Spec"])
                spec["Mode"] = {"ReplicatedJob": {"MaxConcurrent": 1, "TotalCompletions": 0}}
                await self._engine.json(
                    f"services/{service_id}/update",
                    method="POST",
                    params={"version": str(service["Version"]["Index"])},
                    data=json.dumps(spec),
                )
        except ExecutorError as exc:
            if not gone_or_stopped(exc):
                raise

    async def _remove_service(self, service_id: str) -> None:
        try:
            with translate(self.name, f"removing service {service_id[:12]}"):
                async with self._engine.response(f"services/{service_id}", method="DELETE"):
                    pass
        except ExecutorError as exc:
            if not gone_or_stopped(exc):
                raise

    async def _task_containers(self, service_id: str) -> list[str]:
        """The containers of the service's tasks on the node we speak to."""
        with translate(self.name, f"listing the containers of service {service_id[:12]}"):
            found = await self._engine.json(
                "containers/json",
                params={
                    "all": "1",
                    "filters": json.dumps(
                        {"label": [f"com.docker.swarm.service.id={service_id}"]}
                    ),
                },
            )
        return [str(item["Id"]) for item in found]

    async def find(self, *, job_id: str | None = None) -> list[ContainerInfo]:
        label = LABEL_JOB_ID if job_id is None else f"{LABEL_JOB_ID}={job_id}"
        with translate(self.name, "listing services"):
            services = await self._engine.json(
                "services", params={"filters": json.dumps({"label": [label]})}
            )
            ids = [str(service["ID"]) for service in services]
            tasks = (
                await self._engine.json(
                    "tasks", params={"filters": json.dumps({"service": ids})}
                )
                if ids
                else []
            )
        by_service: dict[str, list[dict[str, Any]]] = {}
        for task in tasks:
            by_service.setdefault(str(task.get("ServiceID")), []).append(task)
        found = []
        for service in services:
            labels = service.get("Spec", {}).get("Labels") or {}
            task = _newest(by_service.get(str(service["ID"]), []))
            found.append(
                ContainerInfo(
                    container_id=str(service["ID"]),
                    job_id=labels[LABEL_JOB_ID],
                    manager_id=labels.get(LABEL_MANAGER),
                    store_id=labels.get(LABEL_STORE),
                    started=task is not None and _ran(task),
                    running=task is not None and _state(task) == "running",
                    attempt=int(labels.get(LABEL_ATTEMPT) or 0),
                )
            )
        return found



class _ServiceLogReader:
    """A service's output. A follow read ends once the task has, since Swarm's own
    follow stream never does; the caller's last read gets whatever it had not
    delivered by then."""

    def __init__(self, reader: DockerLogReader, ended: Callable[[], Awaitable[object]]) -> None:
        self._reader = reader
        self._ended = ended

    async def read(self, sink: LineSink, *, follow: bool) -> None:
        if not follow:
            await self._reader.read(sink, follow=False)
            return
        async with anyio.create_task_group() as group:

            async def stop_when_ended() -> None:
                await self._ended()
                group.cancel_scope.cancel()

            group.start_soon(stop_when_ended)
            # Cancelling a read loses and doubles nothing: it resumes where it was.
            await self._reader.read(sink, follow=True)
            group.cancel_scope.cancel()

    def finish(self) -> list[OutputLine]:
        return self._reader.finish()
