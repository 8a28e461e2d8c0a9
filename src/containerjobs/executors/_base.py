"""The `Executor` protocol: how the manager speaks to one container engine on one host.

The manager knows this protocol and nothing of the engine behind it. An executor
turns a `LaunchRequest` into a running container and reports what happens to it; it translates
every engine error into the library's own (`HostUnavailable` when the host cannot be
reached, `ImageNotFound`, `ExecutorError` for the rest) with ``raise ... from exc``.

Every container an executor creates carries the labels `LABEL_JOB_ID` and
`LABEL_MANAGER`, so that whatever was started can be found again after a crash.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from datetime import datetime
from typing import Protocol, runtime_checkable

import attrs

from .._models import Job, LogLine, Mount, NetworkAttachment, PullPolicy

LABEL_JOB_ID = "containerjobs.job_id"
"""The label holding the id of the job a container runs."""
LABEL_MANAGER = "containerjobs.manager"
"""The label holding the id of the manager that launched the container."""
LABEL_ATTEMPT = "containerjobs.attempt"
"""The label holding which attempt of its job the container runs (1, 2, ...)."""
LABEL_STORE = "containerjobs.store"
"""The label holding the id of the store its job is kept in (`Storage.store_id`):
reconciliation removes only the containers of its own store."""

# The hardening settings an engine may be unable to express, by the names
# `SecurityPolicy.allow_unenforced` takes.
UNENFORCEABLE = frozenset({"no-new-privileges"})
"""The hardening settings an engine may be unable to express, by the names
`SecurityPolicy.allow_unenforced` takes. An executor that cannot apply one the request
asks for, and that `LaunchRequest.allow_unenforced` does not name, refuses the job with
`PolicyViolation`."""


@attrs.frozen
class OutputLine:
    """A line of output as the engine delivered it.

    `newline` is False for a line that did not end in a newline: the last one, or a
    piece of a line too long to hold whole (the next piece of the same stream goes
    on with it). So the job's stdout and stderr can be rebuilt exactly (after
    decoding) by joining texts, each followed by a newline when it had one.

    Args:
        line: the line, its stream and its timestamp.
        newline: whether it ended in a newline.
    """

    line: LogLine
    newline: bool = True

    @property
    def written(self) -> str:
        """The text as the job wrote it: with its newline, when it had one."""
        return self.line.text + "\n" if self.newline else self.line.text


def _mask(environment: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{key!r}: '***'" for key in environment) + "}"


@attrs.frozen(kw_only=True)
class LaunchRequest:
    """Everything an executor needs to start a job's container, decided already.

    The manager's security policy has filled in the limits and the user and chosen
    the hardening; an executor applies what it is told and decides nothing. `job` is
    the record it is for (its id, attempt and spec), for executors that want more
    context than the resolved fields.

    Args:
        command: the argv, or `None` for the image's own (a shell-form command is
            ``("/bin/sh", "-c", text)`` already).
        labels: every label the container carries: the job's own, and the library's
            (`LABEL_JOB_ID`, `LABEL_MANAGER`, `LABEL_ATTEMPT`, `LABEL_STORE`).
        user: ``uid:gid`` or a name, as the container runs.
        allow_root: when False, a `user` that the image resolves to uid or gid 0 (a
            name, or a uid with no group) must be refused with `PolicyViolation`
            before the command runs.
        memory_bytes: the memory limit; swap is not allowed beyond it.
        cpus: the CPU limit, in cores.
        pids_limit: most processes at once, or `None` for the engine's default.
        read_only_root: a read-only root file system.
        tmpfs: in-memory folders (path to size in MB), writable by any user.
        drop_capabilities: drop every Linux capability.
        no_new_privileges: forbid gaining privileges (setuid binaries).
        mounts: host folders to bind, their sources resolved and allowed.
        networks: the networks the container joins, the first at create.
        network_mode: ``"none"`` for no network but loopback (never with
            `networks`), ``"bridge"`` for the engine's default bridge (as well as
            `networks`, if any), `None` for the engine's default: the default
            bridge, or `networks` alone when there are any. An engine that cannot
            give a container no network must refuse ``"none"`` with `InvalidJobSpec`.
        placement: constraints on the node the job runs on, for an engine that
            places jobs itself (Swarm); an engine that does not must refuse them.
        allow_unenforced: hardening settings (named as in `UNENFORCEABLE`) the
            policy lets run unenforced where the engine cannot express them. An
            engine that cannot apply a setting asked for, and not listed here, must
            refuse the job with `PolicyViolation` saying which setting and why.
    """

    job: Job
    image: str
    command: tuple[str, ...] | None
    environment: Mapping[str, str] = attrs.field(repr=_mask)
    labels: Mapping[str, str]
    user: str
    allow_root: bool
    working_directory: str | None
    memory_bytes: int
    cpus: float
    pids_limit: int | None
    read_only_root: bool
    tmpfs: Mapping[str, int]
    drop_capabilities: bool
    no_new_privileges: bool
    mounts: tuple[Mount, ...]
    networks: tuple[NetworkAttachment, ...]
    pull_policy: PullPolicy
    network_mode: str | None = None
    placement: tuple[str, ...] = ()
    allow_unenforced: frozenset[str] = frozenset()

    @property
    def job_id(self) -> str:
        return self.job.id

    @property
    def attempt(self) -> int:
        return self.job.attempts


LineSink = Callable[[OutputLine], None]
"""What `LogReader.read` hands each line to, in the order written."""


@runtime_checkable
class LogReader(Protocol):
    """One container's output, read in as many passes as it takes.

    A reader remembers how far it got: each `read` delivers only what earlier reads
    did not, so a stream that broke or ended early is simply read again. A line not
    ended yet is held back (its next part may still come) until a later read ends
    it or `finish` gives it.
    """

    async def read(self, sink: LineSink, *, follow: bool) -> None:
        """Hand every line not delivered yet to `sink`, both streams in the order
        written.

        Without `follow`, return at the end of what the container has written so far.
        With `follow`, go on as it writes, and return when the engine ends the stream:
        normally because the container stopped, but an engine may end a stream early,
        so the caller confirms the exit with `Executor.wait` and then reads once more
        without `follow`. Raises when the stream breaks; reading again goes on from
        the last line delivered, with nothing lost or doubled. `sink` is called
        synchronously, never twice for one line.
        """
        ...

    def finish(self) -> list[OutputLine]:
        """The line held back, when the output ended without a newline (after the
        last read, once the container has stopped)."""
        ...


@attrs.frozen
class ExitStatus:
    """How a container ended.

    Args:
        exit_code: the container's exit code; `None` when the engine has none.
        oom_killed: the engine reports that the memory limit killed it.
        error: the engine's own error, if it gave one.
        finished_at: when it exited, by the engine's clock.
    """

    exit_code: int | None
    oom_killed: bool = False
    error: str | None = None
    finished_at: datetime | None = None


@attrs.frozen
class ResourceSample:
    """One reading of a running container's resource use.

    Args:
        memory_bytes: memory in use now.
        memory_peak_bytes: the engine's own high-water mark, when it keeps one.
        cpu_total_ns: CPU time used since the container started, all cores together.
        read_at: when the engine took the reading (the engine's clock).
    """

    memory_bytes: int
    memory_peak_bytes: int | None
    cpu_total_ns: int
    read_at: datetime | None


@attrs.frozen
class ContainerInfo:
    """A labelled container found on a host.

    Args:
        container_id: the container's id (for Swarm, the service's).
        job_id: its `LABEL_JOB_ID`.
        manager_id: its `LABEL_MANAGER`, if it has one.
        store_id: its `LABEL_STORE`, if it has one.
        started: whether its command ever ran (a container only created never did).
        running: whether it runs now.
        attempt: the attempt of the job it was made for.
    """

    container_id: str
    job_id: str
    manager_id: str | None
    store_id: str | None
    started: bool
    running: bool
    attempt: int = 0


@attrs.frozen
class PullResult:
    """What happened when an image was pulled on a host.

    Attributes:
        image: the image reference pulled.
        ok: whether the pull succeeded.
        error: why it failed, in words.
    """

    image: str
    ok: bool
    error: str | None = None


@runtime_checkable
class Executor(Protocol):
    """One container engine on one host.

    The manager calls `open` once, then any other method from many tasks at once,
    then `close` once. Methods that talk to the engine raise `HostUnavailable` when
    it cannot be reached.
    """

    @property
    def name(self) -> str:
        """The host's name, as jobs record it."""
        ...

    async def open(self) -> None:
        """Prepare connections. Must not fail when the engine is down: `ping` tells."""
        ...

    async def close(self) -> None:
        """Release connections. Idempotent."""
        ...

    async def ping(self) -> None:
        """Return when the engine answers; raise `HostUnavailable` saying why it doesn't."""
        ...

    async def launch(self, request: LaunchRequest) -> str:
        """Create and start the container `request` describes; return its id.

        Pulls the image as ``request.pull_policy`` says (`ImageNotFound` when it is
        absent and may not be pulled). When launching fails or is cancelled after the
        container was created, the container is removed before this returns or
        raises: a failed launch leaves nothing behind.
        """
        ...

    def logs(self, container_id: str) -> LogReader:
        """A reader of the container's output from its very start.

        Reading from the start is what makes resuming exact: a manager that adopts a
        running job reads its output again and skips the lines already stored, so
        lines are cut (long ones into pieces) the same way both times.
        """
        ...

    def stats(self, container_id: str) -> AsyncIterator[ResourceSample]:
        """Resource readings while the container runs, at the engine's pace: the
        Docker executors read a few times in the first seconds, then every 30 s, and the
        manager keeps the peak memory and the average CPU of them."""
        ...

    async def wait(self, container_id: str) -> ExitStatus:
        """Block until the container has exited; return how it ended."""
        ...

    async def kill(self, container_id: str) -> None:
        """Kill the container. Not an error when it already stopped or is gone."""
        ...

    async def remove(self, container_id: str) -> None:
        """Remove the container (killing it first if need be). Not an error when gone."""
        ...

    async def find(self, *, job_id: str | None = None) -> list[ContainerInfo]:
        """Containers carrying the job label (of one job, when `job_id` is given)."""
        ...

    async def pull(self, image: str) -> PullResult:
        """Pull `image` with the host's registry credentials."""
        ...
