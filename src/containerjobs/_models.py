"""The records of containerjobs: specs, jobs, statuses, log lines and events.

All are frozen attrs classes. A `JobSpec` validates itself on construction: a wrong
type raises `TypeError`, a wrong value raises `InvalidJobSpec` (a `ValueError`).
"""

from __future__ import annotations

import enum
import math
import posixpath
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal

import attrs

from ._display import job_html, job_repr, shorten
from ._errors import ContainerJobsError, InvalidJobSpec
from ._images import parse_image
from ._output import clean_output, parse_output
from ._secrets import Secret
from ._templates import parse_environment

PullPolicy = Literal["if-not-present", "always", "never"]
PULL_POLICIES: tuple[str, ...] = ("if-not-present", "always", "never")
# None is the engine's default (Docker's bridge); "none" gives the job loopback only.
NETWORK_MODES: tuple[str, ...] = ("none", "bridge")
Stream = Literal["stdout", "stderr"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobStatus(enum.StrEnum):
    """Where a job is in its life. Terminal statuses never change again.

    A `str` enum: ``JobStatus.COMPLETED == "completed"``.

    Attributes:
        PENDING: stored, waiting for a free slot on a healthy host (or for its retry
            delay).
        LAUNCHING: claimed by a manager for a host; the image is pulled if need be and
            the container created and started.
        RUNNING: the container runs; its logs and resource readings flow.
        COMPLETED: the container exited with code 0.
        FAILED: another exit code, an OOM kill, a launch that failed, or a container
            lost on the way (with retries left, a failed attempt goes back to
            ``pending`` instead).
        TIMEOUT: killed when ``timeout_seconds`` ran out.
        CANCELLED: cancelled by `JobManager.cancel`, or by a manager shutting down.
    """

    PENDING = "pending"
    LAUNCHING = "launching"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """Completed, failed, timeout or cancelled: the job is over for good."""
        return self in _TERMINAL

    @property
    def is_active(self) -> bool:
        """Launching or running: it holds a slot on its host and has an owner."""
        return self in _ACTIVE

    def can_become(self, new: JobStatus) -> bool:
        """Whether the move from this status to `new` is allowed."""
        return new in _TRANSITIONS[self]


_TERMINAL = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.TIMEOUT, JobStatus.CANCELLED}
)
_ACTIVE = frozenset({JobStatus.LAUNCHING, JobStatus.RUNNING})
# The one place that says which moves a job may make. A retry goes back to pending.
_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.PENDING: frozenset({JobStatus.LAUNCHING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.LAUNCHING: frozenset(
        {
            JobStatus.RUNNING,
            JobStatus.PENDING,
            JobStatus.FAILED,
            JobStatus.TIMEOUT,
            JobStatus.CANCELLED,
        }
    ),
    JobStatus.RUNNING: frozenset(
        {
            JobStatus.PENDING,
            JobStatus.COMPLETED,
            JobStatus.FAILED,
            JobStatus.TIMEOUT,
            JobStatus.CANCELLED,
        }
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.TIMEOUT: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


class InvalidTransition(ContainerJobsError):
    """A status change that the state machine forbids (a bug, or a lost race)."""


# --- validators -------------------------------------------------------------------


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise InvalidJobSpec(message)


def _type_error(field: str, value: object, expected: str) -> TypeError:
    return TypeError(f"JobSpec.{field} must be {expected}, not {type(value).__name__}")


def _optional_str(field: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise _type_error(field, value, "a str or None")


def _positive_number(field: str, value: object, *, integral: bool = False) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _type_error(field, value, "a number or None")
    if integral and isinstance(value, float) and not value.is_integer():
        _require(False, f"JobSpec.{field} must be a whole number, got {value!r}")
    _require(math.isfinite(value), f"JobSpec.{field} must be finite, got {value!r}")
    _require(value > 0, f"JobSpec.{field} must be greater than 0, got {value!r}")
    return value


def _check_key(kind: str, key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"JobSpec.{kind} keys must be str, not {type(key).__name__}")
    _require(key != "", f"JobSpec.{kind} has an empty key")
    _require("\x00" not in key, f"JobSpec.{kind} key {key!r} contains a NUL byte")
    return key


def _to_environment(value: object) -> dict[str, str | Secret]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _type_error("environment", value, "a mapping of str to str or Secret")
    env: dict[str, str | Secret] = {}
    for key, val in value.items():
        _check_key("environment", key)
        _require("=" not in key, f"JobSpec.environment key {key!r} contains '='")
        if not isinstance(val, str | Secret):
            raise TypeError(
                f"JobSpec.environment[{key!r}] must be a str or a cj.Secret, "
                f"not {type(val).__name__}"
            )
        # The value itself never goes into a message: it may be a secret.
        if isinstance(val, str):
            _require("\x00" not in val, f"JobSpec.environment[{key!r}] contains a NUL byte")
        env[key] = val
    return env


def _to_labels(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _type_error("labels", value, "a mapping of str to str")
    labels: dict[str, str] = {}
    for key, val in value.items():
        _check_key("labels", key)
        if not isinstance(val, str):
            raise TypeError(f"JobSpec.labels[{key!r}] must be a str, not {type(val).__name__}")
        _require("\x00" not in val, f"JobSpec.labels[{key!r}] contains a NUL byte")
        labels[key] = val
    return labels


def _to_command(value: object) -> str | tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        _require(value.strip() != "", "JobSpec.command is an empty string")
        _require("\x00" not in value, "JobSpec.command contains a NUL byte")
        return value
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        args = tuple(value)
        for arg in args:
            if not isinstance(arg, str):
                raise TypeError(f"JobSpec.command items must be str, not {type(arg).__name__}")
            _require("\x00" not in arg, "JobSpec.command contains a NUL byte")
        _require(len(args) > 0, "JobSpec.command is an empty list")
        return args
    raise _type_error("command", value, "a str, a list of str or None")


def _absolute_path(field: str, value: object) -> str:
    if not isinstance(value, str):
        raise _type_error(field, value, "a str")
    _require(value.startswith("/"), f"{field} must be an absolute path, got {value!r}")
    _require("\x00" not in value, f"{field} contains a NUL byte")
    return value


@attrs.frozen
class NetworkAttachment:
    """A Docker network the job's container joins, with its DNS aliases there.

    Attributes:
        name: the network's name; it must exist on the host (``docker network create``).
        aliases: names other containers on the network reach this one by.
    """

    name: str = attrs.field()
    aliases: tuple[str, ...] = attrs.field(default=(), converter=tuple)

    @name.validator
    def _check_name(self, _: attrs.Attribute[str], value: object) -> None:
        if not isinstance(value, str):
            raise TypeError(f"network name must be a str, not {type(value).__name__}")
        _require(value.strip() != "", "network name is empty")

    @aliases.validator
    def _check_aliases(self, _: attrs.Attribute[tuple[str, ...]], value: tuple[Any, ...]) -> None:
        for alias in value:
            if not isinstance(alias, str):
                raise TypeError(f"network alias must be a str, not {type(alias).__name__}")
            _require(alias != "", f"network {self.name!r} has an empty alias")


@attrs.frozen
class Mount:
    """A host folder bind-mounted into the job's container (read-only by default).

    Attributes:
        source: an absolute path on the Docker host; the policy's
            `allowed_mount_sources` must allow it.
        target: an absolute path inside the container, not ``/``.
        read_only: mount it read-only (the default).
    """

    source: str = attrs.field()
    target: str = attrs.field()
    read_only: bool = True

    @source.validator
    def _check_source(self, _: attrs.Attribute[str], value: object) -> None:
        _absolute_path("Mount.source", value)

    @target.validator
    def _check_target(self, _: attrs.Attribute[str], value: object) -> None:
        _absolute_path("Mount.target", value)
        _require(posixpath.normpath(str(value)) != "/", "Mount.target may not be the root folder")


# Swarm's constraint grammar: a node attribute, == or !=, a value.
_CONSTRAINT = re.compile(r"\s*([A-Za-z0-9_.\-]+)\s*(==|!=)\s*(\S.*?)\s*")
_CONSTRAINT_KEYS = ("node.id", "node.hostname", "node.role", "node.platform.os",
                    "node.platform.arch")
_CONSTRAINT_PREFIXES = ("node.labels.", "engine.labels.")


def _to_placement(value: object) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence):
        raise _type_error("placement", value, "a list of constraint strings")
    out = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise _type_error(f"placement[{index}]", item, "a str")
        match = _CONSTRAINT.fullmatch(item)
        _require(
            match is not None and "\x00" not in item,
            f"JobSpec.placement[{index}]={item!r} is not a constraint: write "
            "'attribute==value' or 'attribute!=value', such as 'node.labels.zone==a'",
        )
        assert match is not None
        key = match.group(1)
        _require(
            key in _CONSTRAINT_KEYS
            or (key.startswith(_CONSTRAINT_PREFIXES) and key not in _CONSTRAINT_PREFIXES),
            f"JobSpec.placement[{index}]={item!r}: {key!r} is not a node attribute Swarm "
            f"knows ({', '.join(_CONSTRAINT_KEYS)}, node.labels.NAME, engine.labels.NAME)",
        )
        out.append(f"{key}{match.group(2)}{match.group(3)}")
    return tuple(out)


def _to_networks(value: object) -> tuple[NetworkAttachment, ...]:
    if value is None:
        return ()
    if isinstance(value, str | NetworkAttachment):
        value = [value]
    if not isinstance(value, Sequence):
        raise _type_error("networks", value, "a list of names or NetworkAttachment")
    out = []
    for item in value:
        if isinstance(item, str):
            item = NetworkAttachment(item)
        if not isinstance(item, NetworkAttachment):
            raise _type_error("networks", item, "a network name or NetworkAttachment")
        out.append(item)
    return tuple(out)


def _to_mounts(value: object) -> tuple[Mount, ...]:
    if value is None:
        return ()
    if isinstance(value, Mount):
        return (value,)
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise _type_error("mounts", value, "a list of Mount")
    for item in value:
        if not isinstance(item, Mount):
            raise _type_error("mounts", item, "a Mount")
    return tuple(value)


def _mask_environment(env: Mapping[str, str | Secret]) -> str:
    # repr() of a spec must not leak secrets: show the keys only.
    return "{" + ", ".join(f"{key!r}: '***'" for key in env) + "}"


def _short_command(command: str | tuple[str, ...] | None) -> str:
    # A long inline script would fill a screen (and a log line) on its own.
    return shorten(repr(command), 200)


@attrs.frozen
class JobSpec:
    """What to run: an image, a command, limits and the container's settings.

    Limits left `None` take the policy's defaults; the job stores the effective ones.
    A `str` command runs as ``/bin/sh -c command``; a list runs as is; `None` keeps
    the image's own command. `image` and `command` may be given by position; the
    rest only by name.

    An `environment` value is stored as given, unless it is a `Secret`: then only
    its name is stored, and the manager that launches the job resolves it.

    `network_mode` is for a job without `networks`: ``"none"`` gives it a loopback
    interface only, ``"bridge"`` the engine's default bridge, `None` the policy's
    default (`SecurityPolicy.default_network_mode`). ``"none"`` with `networks` is
    refused; ``"bridge"`` with them joins the default bridge as well.

    A wrong type raises `TypeError` and a wrong value `InvalidJobSpec`, when the spec
    is made.

    ```python
    spec = JobSpec(
        "alpine:3.18",
        "wc -l < /data/input.csv",
        memory_limit_mb=128,
        cpu_limit=0.5,
        timeout_seconds=300,
        mounts=[Mount("/srv/data", "/data")],
    )
    ```

    Attributes:
        image: an image reference (``alpine:3.18``, ``registry:5000/team/tool@sha256:…``).
        command: a `str` runs as ``/bin/sh -c command``; a list runs as is, with no
            shell; `None` keeps the image's own command.
        name: a name for people; not unique.
        memory_limit_mb: memory limit in MB, a whole number; no swap beyond it on a
            Docker host. `None`: the policy's default (512).
        cpu_limit: CPU limit in cores (``0.5`` is half a core). `None`: the policy's
            default (1.0).
        timeout_seconds: the container is killed after running this long, and the
            job ends ``timeout``. `None`: the policy's default (3600).
        environment: variables for the container, `str` to `str` or to a `Secret`
            (stored by name, resolved at launch). `repr` shows the keys only.
        environment_template: the name of a stored `EnvironmentTemplate`;
            `environment` wins over it.
        networks: Docker networks to join, by name or as `NetworkAttachment`.
        working_directory: an absolute path inside the container; `None`: the image's.
        user: ``user[:group]`` to run as; `None`: the policy's default
            (``"65534:65534"``). Root is refused unless the policy allows it.
        labels: extra container labels.
        mounts: `Mount` bind mounts, checked by the policy.
        host: pin the job to the host of this name.
        pull_policy: ``"if-not-present"`` (pull a missing image), ``"always"`` (pull
            before every launch) or ``"never"`` (a missing image fails the job).
        placement: Swarm constraints such as ``"node.labels.zone==a"``; the job
            then runs only on a `SwarmHost`.
        network_mode: ``"none"``, ``"bridge"`` or `None`, as above.
        max_retries: how many more attempts a failed job may have (a non-zero exit,
            a failed launch, a lost host; never a timeout, cancel, OOM kill or
            missing image).
        priority: a 32-bit integer; higher runs first, equal ones oldest first.
    """

    image: str = attrs.field()
    command: str | tuple[str, ...] | None = attrs.field(
        default=None, converter=_to_command, repr=_short_command
    )
    name: str | None = attrs.field(kw_only=True, default=None)
    memory_limit_mb: int | None = attrs.field(kw_only=True, default=None)
    cpu_limit: float | None = attrs.field(kw_only=True, default=None)
    timeout_seconds: float | None = attrs.field(kw_only=True, default=None)
    environment: dict[str, str | Secret] = attrs.field(
        kw_only=True, factory=dict, converter=_to_environment, repr=_mask_environment
    )
    environment_template: str | None = attrs.field(kw_only=True, default=None)
    networks: tuple[NetworkAttachment, ...] = attrs.field(
        kw_only=True, default=(), converter=_to_networks
    )
    working_directory: str | None = attrs.field(kw_only=True, default=None)
    user: str | None = attrs.field(kw_only=True, default=None)
    labels: dict[str, str] = attrs.field(kw_only=True, factory=dict, converter=_to_labels)
    mounts: tuple[Mount, ...] = attrs.field(kw_only=True, default=(), converter=_to_mounts)
    host: str | None = attrs.field(kw_only=True, default=None)
    pull_policy: PullPolicy = attrs.field(kw_only=True, default="if-not-present")
    placement: tuple[str, ...] = attrs.field(kw_only=True, default=(), converter=_to_placement)
    network_mode: str | None = attrs.field(kw_only=True, default=None)
    max_retries: int = attrs.field(kw_only=True, default=0)
    priority: int = attrs.field(kw_only=True, default=0)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.image, str):
            raise _type_error("image", self.image, "a str")
        _require(self.image.strip() != "", "JobSpec.image is empty")
        try:
            parse_image(self.image)
        except ValueError as exc:
            raise InvalidJobSpec(f"JobSpec.image: {exc}") from None
        for field in ("name", "environment_template", "user", "host"):
            value = _optional_str(field, getattr(self, field))
            if value is not None:
                _require(value.strip() != "", f"JobSpec.{field} is empty")
                _require("\x00" not in value, f"JobSpec.{field} contains a NUL byte")
        _positive_number("memory_limit_mb", self.memory_limit_mb, integral=True)
        _positive_number("cpu_limit", self.cpu_limit)
        _positive_number("timeout_seconds", self.timeout_seconds)
        if self.working_directory is not None:
            _absolute_path("JobSpec.working_directory", self.working_directory)
        if self.pull_policy not in PULL_POLICIES:
            if not isinstance(self.pull_policy, str):
                raise _type_error("pull_policy", self.pull_policy, "a str")
            _require(
                False,
                f"JobSpec.pull_policy must be one of {', '.join(PULL_POLICIES)}, "
                f"got {self.pull_policy!r}",
            )
        if self.network_mode is not None:
            if not isinstance(self.network_mode, str):
                raise _type_error("network_mode", self.network_mode, "a str or None")
            _require(
                self.network_mode in NETWORK_MODES,
                f"JobSpec.network_mode must be None or one of {', '.join(NETWORK_MODES)}, "
                f"got {self.network_mode!r}",
            )
            _require(
                not (self.network_mode == "none" and self.networks),
                "JobSpec.network_mode='none' cannot go with networks="
                f"{[net.name for net in self.networks]!r}: a job with no network joins none",
            )
        for field in ("max_retries", "priority"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int):
                raise _type_error(field, value, "an int")
        _require(self.max_retries >= 0, f"JobSpec.max_retries must be >= 0, got {self.max_retries}")
        _require(
            -(2**31) <= self.priority < 2**31,
            f"JobSpec.priority must fit in 32 bits, got {self.priority}",
        )
        if self.memory_limit_mb is not None and not isinstance(self.memory_limit_mb, int):
            # A whole float such as 64.0 is accepted and stored as an int.
            object.__setattr__(self, "memory_limit_mb", int(self.memory_limit_mb))
        if self.cpu_limit is not None:
            object.__setattr__(self, "cpu_limit", float(self.cpu_limit))
        if self.timeout_seconds is not None:
            object.__setattr__(self, "timeout_seconds", float(self.timeout_seconds))


@attrs.frozen
class AttemptOutcome:
    """How an earlier attempt of a retried job ended.

    Attributes:
        attempt: its number, counting from 1.
        host: the host it ran on, if it got one.
        container_id: its container, if one was created.
        exit_code: the container's exit code; `None` when it never started.
        error: why it failed, in words.
        started_at: when its container started.
        completed_at: when it ended.
    """

    attempt: int
    host: str | None
    container_id: str | None
    exit_code: int | None
    error: str | None
    started_at: datetime | None
    completed_at: datetime | None


@attrs.frozen(kw_only=True, repr=False)
class Job:
    """A snapshot of a job's record. Ask the manager again for a fresher one.

    `repr(job)` is one short line (id, name, status, host, exit code); in Jupyter a
    job shows as a small table with the last lines of its output. Neither shows the
    whole output or any environment value.

    Attributes:
        id: the job's id, a UUID string.
        spec: the effective `JobSpec`: the limits, user and environment it runs with.
        status: where it is in its life, a `JobStatus`.
        name: the spec's name.
        host: the host it was placed on, once claimed.
        container_id: its container's id, once created.
        exit_code: the container's exit code; `None` while it runs, or when it never
            started.
        created_at: when it was submitted (aware, UTC).
        started_at: when its container started.
        completed_at: when it reached a terminal status.
        stdout: all of its standard output, once it has ended (`JobManager.logs`
            follows it live). A job from `JobManager.list_jobs` has its output left
            out (`output_loaded` is False): reading it raises `ContainerJobsError`
            rather than pass for a job that printed nothing; `JobManager.get` reads it.
        stderr: all of its standard error, likewise.
        output_loaded: whether `stdout` and `stderr` were read with the record: True
            for a job from `get`, `wait` or `run`, False for one from `list_jobs`.
        max_memory_bytes: the peak memory use read while it ran; `None` when it
            ended before the first reading.
        cpu_usage_percent: its average CPU use between the readings, 100 being one
            full core.
        oom_killed: the memory limit killed it (it ends ``failed``).
        error: why it did not complete, in words (``"exited with code 3"``,
            ``"timed out after 2 s; the container was killed"``, ...); for a pending
            job that a worker cannot place, why it waits (``"waiting for a host
            (worker cjm-…): ..."``).
        attempts: how many times it has been claimed for a launch, this one
            included.
        logs_truncated: its output passed the manager's ``max_log_bytes``, and the
            middle was left out.
        owner: the id of the manager that runs it, or last ran it.
        cancel_requested: a cancel was asked for by a manager that does not run it;
            the one that does kills it.
        previous_attempts: one `AttemptOutcome` per earlier attempt that failed and
            was retried.
        retry_at: a retried job waits in ``pending`` until then.
        output_start: the number of stored log lines before this attempt's output.
    """

    id: str
    spec: JobSpec
    status: JobStatus = JobStatus.PENDING
    name: str | None = None
    host: str | None = None
    container_id: str | None = None
    exit_code: int | None = None
    created_at: datetime = attrs.field(factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    # None: left out by a listing (see the stdout property). Private, so that no one
    # reads None for "printed nothing"; `stdout=` and `stderr=` as keywords all the same.
    _stdout: str | None = attrs.field(default="", alias="stdout")
    _stderr: str | None = attrs.field(default="", alias="stderr")
    max_memory_bytes: int | None = None
    cpu_usage_percent: float | None = None
    oom_killed: bool = False
    error: str | None = None
    attempts: int = 0
    logs_truncated: bool = False
    owner: str | None = None
    cancel_requested: bool = False
    previous_attempts: tuple[AttemptOutcome, ...] = ()
    retry_at: datetime | None = None  # a retried job waits in pending until then
    output_start: int = 0  # the log seq where the current attempt's output begins

    @property
    def duration(self) -> float | None:
        """Seconds from start to completion, once both are known."""
        if self.started_at is None or self.completed_at is None:
            return None
        return (self.completed_at - self.started_at).total_seconds()

    @property
    def stdout(self) -> str:
        """All of its standard output; `ContainerJobsError` when not loaded."""
        return self._output("stdout", self._stdout)

    @property
    def stderr(self) -> str:
        """All of its standard error; `ContainerJobsError` when not loaded."""
        return self._output("stderr", self._stderr)

    @property
    def output_loaded(self) -> bool:
        """Whether `stdout` and `stderr` were read with the record (not by `list_jobs`)."""
        return self._stdout is not None and self._stderr is not None

    def _output(self, stream: str, text: str | None) -> str:
        if text is None:
            raise ContainerJobsError(
                f"job {self.id}'s {stream} is not loaded: a listing (list_jobs, "
                f"Storage.list) leaves output out to stay light; read the job with "
                f"`await manager.get({self.id!r})` for its output"
            )
        return text

    @cached_property
    def clean_output(self) -> str:
        """stdout without ANSI escapes and carriage-return overwrites."""
        return clean_output(self.stdout)

    @cached_property
    def parsed_output(self) -> Any:
        """The JSON value of `clean_output`, or of its last non-empty line, else None."""
        return parse_output(self.clean_output)

    # A record may hold megabytes of output and its spec environment values: its repr
    # is one short line, its table in Jupyter the last lines of output, neither a value.
    def __repr__(self) -> str:
        return job_repr(self)

    def _repr_html_(self) -> str:
        return job_html(self)

    def advance(self, status: JobStatus, **changes: Any) -> Job:
        """A copy in `status` with `changes`; refuses a move the state machine forbids."""
        if status != self.status and not self.status.can_become(status):
            raise InvalidTransition(f"job {self.id}: {self.status} cannot become {status}")
        return attrs.evolve(self, status=status, **changes)


@attrs.frozen
class LogLine:
    """One line of a job's output. `text` has no trailing newline.

    Attributes:
        stream: ``"stdout"`` or ``"stderr"``.
        text: the line, without its newline; bytes that are not UTF-8 are replaced
            with U+FFFD, never dropped.
        timestamp: when Docker read the line (aware, UTC); never before the previous
            line's.
    """

    stream: Stream
    text: str
    timestamp: datetime


@attrs.frozen
class JobEvent:
    """A job's status change, as it was stored.

    Attributes:
        job_id: the job that changed.
        status: its new status.
        previous: its status before, `None` for a job just submitted.
        at: when this manager learnt of the change (aware, UTC).
    """

    job_id: str
    status: JobStatus
    previous: JobStatus | None
    at: datetime


@attrs.frozen(repr=False)
class EnvironmentTemplate:
    """A named set of ``KEY=VALUE`` lines that jobs can take their environment from.

    Its `repr()` shows the variables' names, never their values.

    ```python
    await manager.save_template(EnvironmentTemplate(
        "python-prod", "LOG_LEVEL=INFO", description="what production jobs get"
    ))
    job = await manager.submit(
        JobSpec("python:3.12", "python job.py", environment_template="python-prod")
    )
    ```

    Attributes:
        name: how `JobSpec.environment_template` names it.
        text: ``KEY=VALUE`` lines; ``#`` starts a comment; ``${secret:NAME}`` makes
            the value a `Secret`. Checked when the template is made.
        description: a note for people.
    """

    name: str = attrs.field()
    text: str = attrs.field()
    description: str = ""

    @name.validator
    def _check_name(self, _: attrs.Attribute[str], value: object) -> None:
        if not isinstance(value, str):
            raise TypeError(f"template name must be a str, not {type(value).__name__}")
        _require(value.strip() != "", "template name is empty")

    @text.validator
    def _check_text(self, _: attrs.Attribute[str], value: object) -> None:
        if not isinstance(value, str):
            raise TypeError(f"template text must be a str, not {type(value).__name__}")
        parse_environment(value)  # refuses a bad template when it is made

    @property
    def variables(self) -> dict[str, str | Secret]:
        """The parsed variables (``${secret:NAME}`` values as `Secret`)."""
        return parse_environment(self.text)

    def __repr__(self) -> str:
        # Like a spec's environment: names only. Not the text either, whose comments
        # may hold a value too.
        return (
            f"EnvironmentTemplate(name={self.name!r}, "
            f"variables={_mask_environment(self.variables)}, description={self.description!r})"
        )


@attrs.frozen
class HostHealth:
    """The last health check of a Docker host.

    Attributes:
        healthy: the host answered, and may be given jobs.
        response_time: seconds the check took, when it answered.
        error: why it is not healthy, in words.
        checked_at: when the check was made; `None` before the first one.
    """

    healthy: bool
    response_time: float | None
    error: str | None
    checked_at: datetime | None = None
