"""The Docker Engine API, as both Docker executors speak it: the connection, error
translation, image pulls and container stats.

A plain Docker host and a Swarm manager are the same daemon API; the executors
differ in what they create (a container, or a one-shot service). What they share
lives here, so that a fix to a pull or a stream reaches both.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from datetime import datetime
from typing import Any, ClassVar, Generic, TypeVar

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
    InvalidJobSpec,
    PolicyViolation,
)
from .._hosts import DockerHost, RegistryAuth, SwarmHost, TLSConfig
from .._images import parse_image
from .._log import get_logger
from ._base import ContainerInfo, LaunchRequest, PullResult, ResourceSample
from ._docker_logs import parse_stamp, stamp_datetime

_log = get_logger("containerjobs.docker")

# The pauses before the readings of a container's stats: one at once (so that even a
# job of a few milliseconds has figures), a few in its first seconds, then every
# _STATS_MOST s (each read costs dockerd, containerd and the shim some milliseconds).
_STATS_PAUSES = (0.0, 1.0, 3.0, 6.0)
_STATS_MOST = 30.0
# Stats reads at once, at most: jobs started together read together, and each read
# in flight holds a connection that then idles in the pool.
_STATS_READS = 2
_OOM_RECHECKS = (0.05, 0.1, 0.2, 0.4)
# Connections beyond the streams of running jobs, for control calls.
_SPARE_CONNECTIONS = 8
# Long-lived streams must not time out; control calls get a bound.
FOREVER = aiohttp.ClientTimeout(total=None, sock_read=None, sock_connect=10)
CONTROL = aiohttp.ClientTimeout(total=60, sock_connect=10)


def parse_time(text: str) -> datetime | None:
    """The stamps of stats, container states and tasks, read like those of log
    frames. The zero time means "never"."""
    if not text or text.startswith("0001-"):
        return None
    return stamp_datetime(parse_stamp(text.encode("ascii")))


@contextmanager
def translate(host: str, what: str) -> Iterator[None]:
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


def status_of(exc: ExecutorError) -> int | None:
    """The HTTP status the daemon answered with, when that is what failed."""
    cause = exc.__cause__
    return cause.status if isinstance(cause, DockerError) else None


def gone_or_stopped(exc: ExecutorError) -> bool:
    # 404: no such object; 409: not running, or a removal already in progress.
    return status_of(exc) in (404, 409)


def user_not_root(request: LaunchRequest) -> _users.UserSpec | None:
    """The job's user, parsed, when the policy does not allow root (else None);
    refuses a user that is root on its face, in any spelling Docker reads.

    The manager that submitted the job checked this too, under its own policy; the
    executor applies the launching manager's, whoever wrote the store.
    """
    if request.allow_root:
        return None
    try:
        user = _users.parse_user_spec(request.user)
    except _users.UserSpecError as exc:
        raise InvalidJobSpec(f"user={request.user!r} cannot be used: {exc}") from None
    if reason := user.root_reason():
        raise PolicyViolation(
            f"user={request.user!r} refused: {reason}, and the policy does not allow root "
            "(allow_root=False)"
        )
    return user


class EngineAPI:
    """One daemon's API over one connection pool.

    Args:
        name: the host's name, for messages.
        url: ``unix://``, ``tcp://``, ``http://`` or ``https://``.
        tls: certificates; with them (or an https URL) the connection is HTTPS.
        registry_auth: credentials per registry, for pulls.
        connections: the pool's size (streams hold a connection each).
    """

    def __init__(
        self,
        name: str,
        url: str,
        *,
        tls: TLSConfig | None,
        registry_auth: Mapping[str, RegistryAuth],
        connections: int,
    ) -> None:
        self.name = name
        self._url = url
        self._tls = tls
        self._registry_auth = registry_auth
        self._connections = connections
        self._docker: aiodocker.Docker | None = None
        self._connector: aiohttp.BaseConnector | None = None
        self._stats_reads = anyio.Semaphore(_STATS_READS)

    async def open(self) -> None:
        if self._docker is not None:
            return
        url, limit = self._url, self._connections
        connector: aiohttp.BaseConnector
        if url.startswith("unix://"):
            connector = aiohttp.UnixConnector(url[len("unix://") :], limit=limit)
            url = "unix://localhost"  # aiodocker composes request URLs from it
        elif self._tls is not None or url.startswith("https://"):
            # An https:// URL without TLSConfig verifies against the system's CAs.
            tls = self._tls or TLSConfig()
            connector = aiohttp.TCPConnector(ssl=tls.ssl_context(), limit=limit)
            url = "https://" + url.split("://", 1)[1]
        else:
            connector = aiohttp.TCPConnector(limit=limit)
            url = "http://" + url.split("://", 1)[1]
        # The connector is ours to close; aiodocker does not own a caller's connector.
        self._connector = connector
        self._docker = aiodocker.Docker(url=url, connector=connector, timeout=CONTROL)

    async def close(self) -> None:
        docker, self._docker = self._docker, None
        connector, self._connector = self._connector, None
        if docker is not None:
            await docker.close()
        if connector is not None:
            await connector.close()

    @property
    def client(self) -> aiodocker.Docker:
        if self._docker is None:
            raise ExecutorError(f"executor for host {self.name!r} is not open")
        return self._docker

    async def api_version(self) -> tuple[int, int]:
        """The API version agreed with the daemon (asked once)."""
        with translate(self.name, "reading its API version"):
            await self.client._check_version()
        major, _, minor = self.client.api_version.lstrip("v").partition(".")
        return int(major), int(minor)

    async def json(self, path: str, **kwargs: Any) -> Any:
        """A control call's JSON reply."""
        return await self.client._query_json(path, **kwargs)

    @asynccontextmanager
    async def response(self, path: str, **kwargs: Any) -> AsyncIterator[aiohttp.ClientResponse]:
        # aiodocker's _query hands the response over and never releases it: a stream
        # we stop reading (cancelled logs or stats, a broken pull) would hold its
        # connection until the garbage collector complains. Release it on the way out:
        # a connection whose reply was read whole goes back to the pool, any other is
        # closed.
        async with self.client._query(path, **kwargs) as response:
            try:
                yield response
            finally:
                response.release()

    async def ping(self) -> None:
        with translate(self.name, "checking its health"):
            async with self.response("_ping", versioned_api=False) as response:
                await response.read()
            # Resolve the API version now rather than on the first job's hot path.
            await self.client._check_version()

    def auth_header(self, image: str) -> dict[str, str]:
        """``X-Registry-Auth`` for `image`'s registry, when the host has credentials."""
        ref = parse_image(image)
        auth = self._registry_auth.get(ref.registry)
        if auth is None:
            return {}
        return {
            "X-Registry-Auth": compose_auth_header(
                {"username": auth.username, "password": auth.password}, ref.registry
            )
        }

    async def pull(self, image: str) -> PullResult:
        ref = parse_image(image)
        where = f"image {image!r} from registry {ref.registry!r}"
        params = {"fromImage": image}
        if ref.tag is None and ref.digest is None:
            params["tag"] = "latest"  # without it the daemon pulls every tag
        headers = self.auth_header(image)
        _log.info("image.pull", image=image, host=self.name, authenticated=bool(headers))
        try:
            with translate(self.name, f"pulling {where}"):
                async with self.response(
                    "images/create", method="POST", params=params, headers=headers, timeout=FOREVER
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

    async def container_stats(self, container_id: str) -> AsyncIterator[ResourceSample]:
        """Readings of a running container's resource use, a few in its first seconds
        and then every `_STATS_MOST` seconds, until it stops.

        Each is a one-shot read on a pooled connection: no stream held per job, and the
        daemon gathers figures only when asked (a streamed reading every second cost
        dockerd 13 % of a core for 50 idle jobs). cgroup v1's memory high-water mark
        and the cumulative CPU time make a few readings enough for the peak and the
        average.
        """
        what = f"reading the stats of container {container_id[:12]}"
        for pause in itertools.chain(_STATS_PAUSES, itertools.repeat(_STATS_MOST)):
            await anyio.sleep(pause)
            with translate(self.name, what):
                async with self._stats_reads:
                    data = await self.json(
                        f"containers/{container_id}/stats",
                        params={"stream": "0", "one-shot": "1"},
                    )
            memory = data.get("memory_stats") or {}
            cpu = (data.get("cpu_stats") or {}).get("cpu_usage") or {}
            if not memory.get("usage") and not cpu.get("total_usage"):
                return  # the empty reading of a container that has stopped
            yield ResourceSample(
                memory_bytes=int(memory.get("usage") or 0),
                memory_peak_bytes=memory.get("max_usage"),  # cgroup v1 only
                cpu_total_ns=int(cpu.get("total_usage") or 0),
                read_at=parse_time(data.get("read") or ""),
            )

    async def container_state(self, container_id: str) -> dict[str, Any]:
        info = await self.json(f"containers/{container_id}/json")
        return dict(info.get("State") or {})

    async def state_after_sigkill(self, container_id: str) -> dict[str, Any]:
        """The state of a container that exited by a SIGKILL we did not send, which
        may be an OOM kill: the daemon learns of one from an event that can land just
        after the exit, so a state without it gets a second look."""
        with translate(self.name, f"inspecting container {container_id[:12]}"):
            state = await self.container_state(container_id)
            for delay in _OOM_RECHECKS:
                if state.get("OOMKilled"):
                    break
                await anyio.sleep(delay)
                state = await self.container_state(container_id)
        return state

    async def kill_container(self, container_id: str) -> None:
        """SIGKILL; not an error when it already stopped or is gone."""
        try:
            with translate(self.name, f"killing container {container_id[:12]}"):
                await self.json(f"containers/{container_id}/kill", method="POST")
        except ExecutorError as exc:
            if not gone_or_stopped(exc):
                raise

    async def remove_container(self, container_id: str) -> None:
        """Force-remove with its volumes; not an error when it is gone."""
        try:
            with translate(self.name, f"removing container {container_id[:12]}"):
                async with self.response(
                    f"containers/{container_id}", method="DELETE", params={"force": "1", "v": "1"}
                ):
                    pass
        except ExecutorError as exc:
            if not gone_or_stopped(exc):
                raise


H = TypeVar("H", DockerHost, SwarmHost)


class EngineExecutor(Generic[H]):
    """What both Docker executors are made of: their host, and one `EngineAPI` with a
    pool sized for `connections_per_job` streams per running job."""

    connections_per_job: ClassVar[int]
    # What a launch creates, for the log event when its removal fails, and where.
    creates: ClassVar[str]
    logger: ClassVar[str]

    def __init__(self, host: H) -> None:
        self._host: H = host
        self._engine = EngineAPI(
            host.name,
            host.url,
            tls=host.tls,
            registry_auth=host.registry_auth,
            connections=host.max_concurrent_jobs * self.connections_per_job + _SPARE_CONNECTIONS,
        )

    @property
    def name(self) -> str:
        return self._host.name

    @property
    def host(self) -> H:
        return self._host

    async def open(self) -> None:
        await self._engine.open()

    async def close(self) -> None:
        await self._engine.close()

    async def pull(self, image: str) -> PullResult:
        return await self._engine.pull(image)

    async def find(self, *, job_id: str | None = None) -> list[ContainerInfo]:
        raise NotImplementedError

    async def remove(self, container_id: str) -> None:
        raise NotImplementedError

    async def _remove_quietly(self, container_id: str | None, job_id: str) -> None:
        """After a failed or cancelled launch: remove what it made, found by label when
        its id never came back. Logs what it cannot remove (reconciliation will)."""
        try:
            ids = (
                [container_id]
                if container_id
                else [info.container_id for info in await self.find(job_id=job_id)]
            )
            for made in ids:
                await self.remove(made)
        except ContainerJobsError as exc:
            get_logger(self.logger).warning(
                f"{self.creates}.cleanup_failed", job_id=job_id, host=self.name, error=str(exc)
            )
