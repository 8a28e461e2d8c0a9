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
- Resource use comes from the streamed stats; a one-shot read takes 1-2 s.
- A pull reports failure inside an HTTP 200 stream: every message is checked.
- aiohttp's pool holds 100 connections by default, and every running job holds up to
  three (logs, stats, wait): the pool is sized from ``max_concurrent_jobs``.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from functools import partial
from typing import Any

import aiodocker
import aiohttp
import anyio
from aiodocker.exceptions import DockerError
from aiodocker.utils import compose_auth_header

from .. import _users
from .._errors import (
    ContainerJobsError,
    ExecutorError,
    HostUnavailable,
    ImageNotFound,
    InvalidJobSpec,
    PolicyViolation,
)
from .._hosts import DockerHost, TLSConfig
from .._images import parse_image
from .._log import get_logger
from ._base import (
    LABEL_ATTEMPT,
    LABEL_JOB_ID,
    LABEL_MANAGER,
    LABEL_STORE,
    ContainerInfo,
    ExitStatus,
    LaunchRequest,
    PullResult,
    ResourceSample,
)
from ._docker_logs import DockerLogReader, parse_stamp, stamp_datetime

_log = get_logger("containerjobs.docker")

# Long-lived streams must not time out; control calls get a bound.
_FOREVER = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=10)
_CONTROL = aiohttp.ClientTimeout(total=60, sock_connect=10)
# Per running job: its log stream, its stats stream and its wait, plus control calls.
_CONNECTIONS_PER_JOB = 3
_SPARE_CONNECTIONS = 8
_OOM_RECHECKS = (0.05, 0.1, 0.2, 0.4)


def _parse_time(text: str) -> datetime | None:
    # The stamps of stats and of a container's state, read like those of log frames.
    # The zero time means "never".
    if not text or text.startswith("0001-"):
        return None
    return stamp_datetime(parse_stamp(text.encode("ascii")))


@contextmanager
def _translate(host: str, what: str) -> Iterator[None]:
    """Map aiodocker and aiohttp errors to ours, in one place."""
    try:
        yield
    except ContainerJobsError:
        raise
    except DockerError as exc:
        if exc.status == 900 and ("CERTIFICATE" in exc.message or "SSL" in exc.message):
            raise HostUnavailable(
                f"TLS with host {host!r} failed while {what} (check the host's TLSConfig: "
                f"ca_cert, client_cert, client_key): {exc.message}"
            ) from exc
        if exc.status == 900:  # aiodocker's "cannot connect"
            raise HostUnavailable(
                f"host {host!r} is unreachable while {what}: {exc.message}"
            ) from exc
        raise ExecutorError(f"{what} on host {host!r} failed: {exc.message}") from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise HostUnavailable(
            f"host {host!r} is unreachable while {what}: {exc or type(exc).__name__}"
        ) from exc
    except ValueError as exc:  # a reply that is not the JSON the API promises
        raise ExecutorError(f"{what} on host {host!r}: unreadable reply: {exc}") from exc


def _gone_or_stopped(exc: ExecutorError) -> bool:
    # 404: no such container; 409: not running, or a removal already in progress.
    cause = exc.__cause__
    return isinstance(cause, DockerError) and cause.status in (404, 409)


class DockerExecutor:
    """Runs jobs on one Docker daemon."""

    def __init__(self, host: DockerHost) -> None:
        self._host = host
        self._docker: aiodocker.Docker | None = None
        self._killed: set[str] = set()  # containers we sent SIGKILL to

    @property
    def name(self) -> str:
        return self._host.name

    @property
    def host(self) -> DockerHost:
        return self._host

    # --- connection --------------------------------------------------------------

    async def open(self) -> None:
        if self._docker is not None:
            return
        limit = self._host.max_concurrent_jobs * _CONNECTIONS_PER_JOB + _SPARE_CONNECTIONS
        url = self._host.url
        connector: aiohttp.BaseConnector
        if url.startswith("unix://"):
            connector = aiohttp.UnixConnector(url[len("unix://") :], limit=limit)
            url = "unix://localhost"  # aiodocker composes request URLs from it
        elif self._host.tls is not None or url.startswith("https://"):
            # An https:// URL without TLSConfig verifies against the system's CAs.
            tls = self._host.tls or TLSConfig()
            ssl_context = tls.ssl_context()
            connector = aiohttp.TCPConnector(ssl=ssl_context, limit=limit)
            url = "https://" + url.split("://", 1)[1]
        else:
            connector = aiohttp.TCPConnector(limit=limit)
            url = "http://" + url.split("://", 1)[1]
        # The connector is ours to close; aiodocker does not own a caller's connector.
        self._connector = connector
        self._docker = aiodocker.Docker(url=url, connector=connector, timeout=_CONTROL)

    async def close(self) -> None:
        docker, self._docker = self._docker, None
        if docker is not None:
            await docker.close()
            await self._connector.close()

    @property
    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            raise ExecutorError(f"executor for host {self.name!r} is not open")
        return self._docker

    @asynccontextmanager
    async def _response(self, path: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        # aiodocker's _query hands the response over and never releases it: a stream
        # we stop reading (cancelled logs or stats, a broken pull) would hold its
        # connection until the garbage collector complains. Release it on the way out:
        # a connection whose reply was read whole goes back to the pool, any other is
        # closed.
        async with self._client._query(path, **kwargs) as response:
            try:
                yield response
            finally:
                response.release()

    async def ping(self) -> None:
        with _translate(self.name, "checking its health"):
            async with self._response("_ping", versioned_api=False) as response:
                await response.read()
            # Resolve the API version now rather than on the first job's hot path.
            await self._client._check_version()

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
        if request.networks:
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
            for net in request.networks[1:]:
                with _translate(self.name, f"connecting job {job_id} to network {net.name!r}"):
                    await self._client._query_json(
                        f"networks/{net.name}/connect",
                        method="POST",
                        data=json.dumps(
                            {
                                "Container": container_id,
                                "EndpointConfig": {"Aliases": list(net.aliases)},
                            }
                        ),
                    )
            with _translate(self.name, f"starting the container of job {job_id}"):
                await self._client._query_json(f"containers/{container_id}/start", method="POST")
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
            with _translate(self.name, f"creating the container of job {request.job_id}"):
                try:
                    data = await self._client._query_json(
                        "containers/create",
                        method="POST",
                        params={"name": name},
                        data=json.dumps(config),
                    )
                    return str(data["Id"])
                except DockerError as exc:
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

    async def pull(self, image: str) -> PullResult:
        ref = parse_image(image)
        auth = self._host.registry_auth.get(ref.registry)
        where = f"image {image!r} from registry {ref.registry!r}"
        params = {"fromImage": image}
        if ref.tag is None and ref.digest is None:
            params["tag"] = "latest"  # without it the daemon pulls every tag
        headers = {}
        if auth is not None:
            headers["X-Registry-Auth"] = compose_auth_header(
                {"username": auth.username, "password": auth.password}, ref.registry
            )
        _log.info("image.pull", image=image, host=self.name, authenticated=auth is not None)
        try:
            with _translate(self.name, f"pulling {where}"):
                async with self._response(
                    "images/create",
                    method="POST",
                    params=params,
                    headers=headers,
                    timeout=_FOREVER,
                ) as response:
                    # Every message is checked: a refused pull still answers 200.
                    async for raw in response.content:
                        if not raw.strip():
                            continue
                        message = json.loads(raw)
                        if "error" in message or "errorDetail" in message:
                            detail = message.get("errorDetail", {}).get("message") or message.get(
                                "error"
                            )
                            return PullResult(
                                image,
                                False,
                                f"pulling {where} on host {self.name!r} failed: {detail}",
                            )
        except ExecutorError as exc:
            return PullResult(image, False, str(exc))
        return PullResult(image, True)

    # --- running ------------------------------------------------------------------

    def logs(self, container_id: str) -> DockerLogReader:
        return DockerLogReader(container_id, partial(self._log_stream, container_id))

    @asynccontextmanager
    async def _log_stream(
        self, container_id: str, params: dict[str, str]
    ) -> AsyncIterator[aiohttp.StreamReader]:
        with _translate(self.name, f"reading the logs of container {container_id[:12]}"):
            async with self._response(
                f"containers/{container_id}/logs", params=params, timeout=_FOREVER
            ) as response:
                yield response.content

    async def stats(self, container_id: str) -> AsyncIterator[ResourceSample]:
        with _translate(self.name, f"reading the stats of container {container_id[:12]}"):
            async with self._response(
                f"containers/{container_id}/stats", params={"stream": "1"}, timeout=_FOREVER
            ) as response:
                async for raw in response.content:
                    if not raw.strip():
                        continue
                    data = json.loads(raw)
                    memory = data.get("memory_stats") or {}
                    cpu = (data.get("cpu_stats") or {}).get("cpu_usage") or {}
                    if not memory.get("usage") and not cpu.get("total_usage"):
                        continue  # the empty reading of a container that has stopped
                    yield ResourceSample(
                        memory_bytes=int(memory.get("usage") or 0),
                        memory_peak_bytes=memory.get("max_usage"),  # cgroup v1 only
                        cpu_total_ns=int(cpu.get("total_usage") or 0),
                        read_at=_parse_time(data.get("read") or ""),
                    )

    async def wait(self, container_id: str) -> ExitStatus:
        with _translate(self.name, f"waiting for container {container_id[:12]}"):
            await self._client._query_json(
                f"containers/{container_id}/wait", method="POST", timeout=_FOREVER
            )
            state = await self._state(container_id)
            # The daemon learns of an OOM kill from an event that can land just after
            # the wait returns: a SIGKILL we did not send gets a second look.
            for delay in _OOM_RECHECKS:
                if (
                    state.get("ExitCode") != 137
                    or state.get("OOMKilled")
                    or container_id in self._killed
                ):
                    break
                await anyio.sleep(delay)
                state = await self._state(container_id)
        self._killed.discard(container_id)
        return ExitStatus(
            exit_code=state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
            error=state.get("Error") or None,
            finished_at=_parse_time(state.get("FinishedAt") or ""),
        )

    async def _state(self, container_id: str) -> dict[str, Any]:
        info = await self._client._query_json(f"containers/{container_id}/json")
        return dict(info.get("State") or {})

    async def kill(self, container_id: str) -> None:
        self._killed.add(container_id)
        try:
            with _translate(self.name, f"killing container {container_id[:12]}"):
                await self._client._query_json(f"containers/{container_id}/kill", method="POST")
        except ExecutorError as exc:
            if not _gone_or_stopped(exc):
                raise

    async def remove(self, container_id: str) -> None:
        self._killed.discard(container_id)
        try:
            with _translate(self.name, f"removing container {container_id[:12]}"):
                async with self._response(
                    f"containers/{container_id}",
                    method="DELETE",
                    params={"force": "1", "v": "1"},
                ):
                    pass
        except ExecutorError as exc:
            if not _gone_or_stopped(exc):
                raise

    async def _remove_quietly(self, container_id: str | None, job_id: str) -> None:
        try:
            ids = (
                [container_id]
                if container_id
                else [c.container_id for c in await self.find(job_id=job_id)]
            )
            for cid in ids:
                await self.remove(cid)
        except ContainerJobsError as exc:
            _log.warning("container.cleanup_failed", job_id=job_id, host=self.name, error=str(exc))

    async def find(self, *, job_id: str | None = None) -> list[ContainerInfo]:
        label = LABEL_JOB_ID if job_id is None else f"{LABEL_JOB_ID}={job_id}"
        with _translate(self.name, "listing containers"):
            found = await self._client._query_json(
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
        ]

    # --- the user a job runs as -----------------------------------------------------

    def _user_to_resolve(self, request: LaunchRequest) -> _users.UserSpec | None:
        """The job's user when root is not allowed and only the image can say who it
        is; None when it needs no look-up. Refuses a user that is root on its face."""
        if request.allow_root:
            return None
        # The submitting manager checked this too, under its own policy; the one that
        # launches applies its own, whoever wrote the store.
        try:
            user = _users.parse_user_spec(request.user)
        except _users.UserSpecError as exc:
            raise InvalidJobSpec(f"user={request.user!r} cannot be used: {exc}") from None
        if reason := user.root_reason():
            raise PolicyViolation(
                f"user={request.user!r} refused: {reason}, and the policy does not allow root "
                "(allow_root=False)"
            )
        if user.numeric:
            return None  # "uid:gid" runs as written: no call to the daemon
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
            with _translate(self.name, f"reading {path} in container {container_id[:12]}"):
                try:
                    async with self._response(
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
