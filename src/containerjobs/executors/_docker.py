"""The Docker executor, on aiodocker.

Engine dictionaries live here and nowhere else. Lessons from peers' bug trackers that
shape this module:

- No AutoRemove: the container would vanish before its logs and exit status are read.
- Output comes from the logs endpoint with ``timestamps=1``, parsed frame by frame
  (see `_docker_logs`): aiodocker's ``log()`` drops the stream byte, and the
  json-file log keeps everything a fast container printed before we asked, which an
  attach after start would lose. A follow stream can end before the last frames
  (seen with fast containers and long unterminated lines), so the manager reads
  once more after the exit, from where the follow got to.
- ``wait`` is only called after ``start`` (a created container "is not running" yet).
- Resource use comes from one-shot reads of the stats (``one-shot=1``: at once, not
  after the 1-2 s a plain ``stream=0`` read waits), a few at first and then every
  30 s: a stream per job kept dockerd busy gathering figures nobody needed.
- A pull reports failure inside an HTTP 200 stream: every message is checked.
- aiohttp's pool holds 100 connections by default, and every running job holds two
  (logs, wait) and briefly a third (a stats read): the pool is sized from
  ``max_concurrent_jobs``.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import aiohttp
import anyio
from aiodocker.exceptions import DockerError

from .. import _users
from .._errors import (
    ExecutorError,
    ImageNotFound,
    InvalidJobSpec,
    PolicyViolation,
)
from .._hosts import DockerHost
from .._log import get_logger
from ._base import (
    LABEL_ATTEMPT,
    LABEL_JOB_ID,
    LABEL_MANAGER,
    LABEL_STORE,
    ContainerInfo,
    ExitStatus,
    LaunchRequest,
    ResourceSample,
)
from ._docker_logs import DockerLogReader
from ._engine import FOREVER, EngineExecutor, parse_time, translate, user_not_root

_log = get_logger("containerjobs.docker")

# The label Docker puts on the containers of Swarm tasks: those are the Swarm
# executor's, never this one's, even on a daemon that is both.
SWARM_TASK_LABEL = "com.docker.swarm.task.id"


class DockerExecutor(EngineExecutor[DockerHost]):
    """Runs jobs on one Docker daemon."""

    # Per running job: its log stream, its stats stream and its wait.
    connections_per_job = 3
    creates = "container"
    logger = "containerjobs.docker"

    def __init__(self, host: DockerHost) -> None:
        super().__init__(host)
        self._killed: set[str] = set()  # containers we sent SIGKILL to

    # --- connection --------------------------------------------------------------

    async def ping(self) -> None:
        await self._engine.ping()

    # --- launch -------------------------------------------------------------------

    def _container_config(self, request: LaunchRequest) -> dict[str, Any]:
        host_config: dict[str, Any] = {
            "Memory": request.memory_bytes,
            # Equal to Memory: no swap, so an over-limit job is OOM-killed, not slowed.
            "MemorySwap": request.memory_bytes,
            "NanoCpus": round(request.cpus * 1e9),
            "Privileged": False,
            "ReadonlyRootfs": request.read_only_root,
            # json-file keeps every line until we remove the container, whatever the
            # daemon's default driver; the logs endpoint cannot read some drivers.
            "LogConfig": {"Type": "json-file", "Config": {}},
            "Mounts": [
                {"Type": "bind", "Source": m.source, "Target": m.target, "ReadOnly": m.read_only}
                for m in request.mounts
            ],
        }
        if request.tmpfs:
            host_config["Tmpfs"] = {
                path: f"rw,nosuid,nodev,mode=1777,size={size}m"
                for path, size in request.tmpfs.items()
            }
        if request.drop_capabilities:
            host_config["CapDrop"] = ["ALL"]
        if request.no_new_privileges:
            host_config["SecurityOpt"] = ["no-new-privileges"]
        if request.pids_limit is not None:
            host_config["PidsLimit"] = request.pids_limit
        if self.host.runtime is not None:
            # The host's, not the job's: every job on this host runs on it.
            host_config["Runtime"] = self.host.runtime
        config: dict[str, Any] = {
            "Image": request.image,
            "Env": [f"{key}={value}" for key, value in request.environment.items()],
            "Labels": dict(request.labels),
            "User": request.user,
            "Tty": False,
            "OpenStdin": False,
            "AttachStdin": False,
            "HostConfig": host_config,
        }
        if request.command is not None:
            config["Cmd"] = list(request.command)
        if request.working_directory is not None:
            config["WorkingDir"] = request.working_directory
        if request.network_mode is not None:
            # "none": loopback only; "bridge": the default bridge, and the networks
            # (if any) connected between create and start.
            host_config["NetworkMode"] = request.network_mode
        elif request.networks:
            first = request.networks[0]
            host_config["NetworkMode"] = first.name
            # Before API 1.44 a create takes one endpoint; the rest are connected
            # between create and start (see launch).
            config["NetworkingConfig"] = {
                "EndpointsConfig": {first.name: {"Aliases": list(first.aliases)}}
            }
        return config

    async def launch(self, request: LaunchRequest) -> str:
        job_id = request.job_id
        if request.placement:
            # The manager sends such jobs to Swarm hosts only; a request made by hand
            # is refused rather than run without its constraints.
            raise InvalidJobSpec(
                f"JobSpec.placement={request.placement!r} needs a Swarm host; host "
                f"{self.name!r} is a plain Docker daemon, which places nothing"
            )
        config = self._container_config(request)
        name = f"cj-{job_id}-{request.attempt}"
        user = self._user_to_resolve(request)
        if request.pull_policy == "always":
            await self._pull_or_raise(request.image)
        container_id: str | None = None
        try:
            container_id = await self._create(request, config, name)
            if user is not None:
                await self._refuse_root_in_image(request, container_id, user)
            # The first network joined at create, unless a network mode took its place.
            later = request.networks if request.network_mode is not None else request.networks[1:]
            for net in later:
                with translate(self.name, f"connecting job {job_id} to network {net.name!r}"):
                    await self._engine.json(
                        f"networks/{net.name}/connect",
                        method="POST",
                        data=json.dumps(
                            {
                                "Container": container_id,
                                "EndpointConfig": {"Aliases": list(net.aliases)},
                            }
                        ),
                    )
            # A runtime that cannot create containers here fails at start, in words
            # that do not name it ("OCI runtime create failed: ..."): the message does.
            runtime = self.host.runtime
            starting = f"starting the container of job {job_id}" + (
                f" with runtime {runtime!r}" if runtime is not None else ""
            )
            with translate(self.name, starting):
                await self._engine.json(f"containers/{container_id}/start", method="POST")
            return container_id
        except BaseException:
            # A failed or cancelled launch leaves nothing behind. The create may have
            # reached the daemon even if we never saw its answer: look by label.
            with anyio.CancelScope(shield=True):
                await self._remove_quietly(container_id, job_id)
            raise

    async def _create(self, request: LaunchRequest, config: dict[str, Any], name: str) -> str:
        image = request.image
        for attempt in range(2):
            with translate(self.name, f"creating the container of job {request.job_id}"):
                try:
                    data = await self._engine.json(
                        "containers/create",
                        method="POST",
                        params={"name": name},
                        data=json.dumps(config),
                    )
                    return str(data["Id"])
                except DockerError as exc:
                    if exc.status == 400 and "unknown runtime" in exc.message.lower():
                        # Not retried: every attempt on this host would fail the same.
                        raise InvalidJobSpec(
                            f"host {self.name!r} names runtime {self.host.runtime!r}, which "
                            f"its daemon does not know ({exc.message}): register it in the "
                            "daemon's daemon.json \"runtimes\", or fix DockerHost(runtime=...)"
                        ) from exc
                    missing = exc.status == 404 and "image" in exc.message.lower()
                    if not missing:
                        raise
                    if request.pull_policy == "never":
                        raise ImageNotFound(
                            f"image {image!r} not found on host {self.name!r} and "
                            f"pull_policy is 'never'"
                        ) from exc
                    if attempt == 1:
                        raise ImageNotFound(
                            f"image {image!r} is still missing on host {self.name!r} "
                            f"after a successful pull"
                        ) from exc
            await self._pull_or_raise(image)
        raise AssertionError("unreachable")

    # --- images -------------------------------------------------------------------

    async def _pull_or_raise(self, image: str) -> None:
        result = await self.pull(image)
        if not result.ok:
            raise ImageNotFound(result.error or f"pulling image {image!r} failed")

    # --- running ------------------------------------------------------------------

    def logs(self, container_id: str) -> DockerLogReader:
        return DockerLogReader(container_id, partial(self._log_stream, container_id))

    @asynccontextmanager
    async def _log_stream(
        self, container_id: str, params: dict[str, str]
    ) -> AsyncIterator[aiohttp.StreamReader]:
        with translate(self.name, f"reading the logs of container {container_id[:12]}"):
            async with self._engine.response(
                f"containers/{container_id}/logs", params=params, timeout=FOREVER
            ) as response:
                yield response.content

    def stats(self, container_id: str) -> AsyncIterator[ResourceSample]:
        return self._engine.container_stats(container_id)

    async def wait(self, container_id: str) -> ExitStatus:
        with translate(self.name, f"waiting for container {container_id[:12]}"):
            waited = await self._engine.json(
                f"containers/{container_id}/wait", method="POST", timeout=FOREVER
            )
            code = waited.get("StatusCode")
            error = (waited.get("Error") or {}).get("Message") or None
            killed = container_id in self._killed
            self._killed.discard(container_id)
            if code != 137 or killed:
                # The wait's answer says it all: no inspect on a short job's path.
                return ExitStatus(exit_code=code, error=error)
            # A SIGKILL we did not send may be an OOM kill, which only the container's
            # state tells.
            state = await self._engine.state_after_sigkill(container_id)
        return ExitStatus(
            exit_code=state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
            error=state.get("Error") or error,
            finished_at=parse_time(state.get("FinishedAt") or ""),
        )

    async def kill(self, container_id: str) -> None:
        self._killed.add(container_id)
        await self._engine.kill_container(container_id)

    async def remove(self, container_id: str) -> None:
        self._killed.discard(container_id)
        await self._engine.remove_container(container_id)

    async def find(self, *, job_id: str | None = None) -> list[ContainerInfo]:
        label = LABEL_JOB_ID if job_id is None else f"{LABEL_JOB_ID}={job_id}"
        with translate(self.name, "listing containers"):
            found = await self._engine.json(
                "containers/json", params={"all": "1", "filters": json.dumps({"label": [label]})}
            )
        return [
            ContainerInfo(
                container_id=item["Id"],
                job_id=item["Labels"][LABEL_JOB_ID],
                manager_id=item["Labels"].get(LABEL_MANAGER),
                store_id=item["Labels"].get(LABEL_STORE),
                # "created": made, never started; its command never ran.
                started=item.get("State") != "created",
                running=item.get("State") in ("running", "restarting", "paused"),
                attempt=int(item["Labels"].get(LABEL_ATTEMPT) or 0),
            )
            for item in found
            if SWARM_TASK_LABEL not in item["Labels"]
        ]

    # --- the user a job runs as -----------------------------------------------------

    def _user_to_resolve(self, request: LaunchRequest) -> _users.UserSpec | None:
        """The job's user when root is not allowed and only the image can say who it
        is; None when it needs no look-up. Refuses a user that is root on its face."""
        user = user_not_root(request)
        if user is None or user.numeric:
            return None  # root allowed, or "uid:gid", which runs as written
        if request.mounts:
            # Docker resolves the user in the image's own files, beneath the mounts,
            # while the archive endpoint reads through them (a mount on /etc, or on a
            # folder a symlink leads to, would show us other files than Docker reads).
            raise PolicyViolation(
                f"user={request.user!r} refused: a job with mounts must give a numeric "
                "user:group (such as '65534:65534') when the policy does not allow root, "
                "as the user's name cannot be checked beneath the mounts"
            )
        return user

    async def _refuse_root_in_image(
        self, request: LaunchRequest, container_id: str, user: _users.UserSpec
    ) -> None:
        """Resolve `user` in the created container's /etc/passwd and /etc/group as
        Docker will at start, and refuse it if it is root (launch then removes the
        container)."""
        what = f"user={request.user!r} on image {request.image!r}"
        passwd = await self._read_user_file(container_id, "/etc/passwd", what)
        group = await self._read_user_file(container_id, "/etc/group", what)
        try:
            resolved = _users.resolve_not_root(user, passwd, group)
        except _users.RunsAsRoot as exc:
            raise PolicyViolation(
                f"{what} refused, as the policy does not allow root (allow_root=False): {exc}"
            ) from None
        except _users.UnknownUser as exc:
            raise InvalidJobSpec(
                f"{what} cannot run: {exc}; give a numeric user:group, or a user the image has"
            ) from None
        _log.debug(
            "job.user_resolved",
            job_id=request.job_id,
            host=self.name,
            uid=resolved.uid,
            gid=resolved.gid,
            groups=list(resolved.supplementary),
        )

    async def _read_user_file(self, container_id: str, path: str, what: str) -> bytes | None:
        """The bytes of `path` in the container, symlinks followed as Docker follows
        them; None when it is absent or not a regular file (Docker then reads none)."""
        for _ in range(_MAX_SYMLINKS):
            with translate(self.name, f"reading {path} in container {container_id[:12]}"):
                try:
                    async with self._engine.response(
                        f"containers/{container_id}/archive", params={"path": path}
                    ) as response:
                        # The daemon's stat of the path: Go's FileMode, the size, and for a
                        # symlink its target, resolved inside the container.
                        stat = json.loads(
                            base64.b64decode(response.headers.get(_PATH_STAT_HEADER) or "e30=")
                        )
                        mode = int(stat.get("mode") or 0)
                        if mode & _GO_MODE_SYMLINK and stat.get("linkTarget"):
                            path = str(stat["linkTarget"])
                            continue
                        if mode & _GO_MODE_TYPE:
                            return None
                        if int(stat.get("size") or 0) > _MAX_USER_FILE_BYTES:
                            raise PolicyViolation(
                                f"{what} refused: the image's {path} is larger than "
                                f"{_MAX_USER_FILE_BYTES} bytes, too large to check; give a "
                                "numeric user:group"
                            )
                        archive = await response.read()
                except DockerError as exc:
                    # 404 for a missing file; a missing container is an error.
                    if exc.status != 404 or "no such container" in exc.message.lower():
                        raise
                    return None
            return _single_file(archive)
        raise PolicyViolation(
            f"{what} refused: the image's {path} is a chain of symlinks too long to follow; "
            "give a numeric user:group"
        )


# The files Docker reads a user's name and groups from, as runc's GetExecUser does.
_MAX_USER_FILE_BYTES = 1024 * 1024
_MAX_SYMLINKS = 4  # the daemon resolves a link's target whole: one hop is the rule
_PATH_STAT_HEADER = "X-Docker-Container-Path-Stat"
# Go's os.FileMode type bits: dir, symlink, device, named pipe, socket, char device,
# irregular. A regular file has none.
_GO_MODE_SYMLINK = 1 << 27
_GO_MODE_TYPE = (1 << 31) | (1 << 27) | (1 << 26) | (1 << 25) | (1 << 24) | (1 << 21) | (1 << 19)


def _single_file(archive: bytes) -> bytes | None:
    # The archive endpoint answers with a tar of the one file asked for.
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            member = tar.next()
            content = tar.extractfile(member) if member is not None and member.isfile() else None
            return content.read() if content is not None else None
    except tarfile.TarError as exc:
        raise ExecutorError(f"the daemon sent an unreadable archive: {exc}") from exc
