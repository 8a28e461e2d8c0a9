"""The security policy: defaults and ceilings for every job, and what is refused."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping, Sequence
from typing import NoReturn

import attrs

from ._errors import InvalidJobSpec, PolicyViolation
from ._images import canonical_registry, parse_image
from ._log import get_logger
from ._models import NETWORK_MODES, Job, JobSpec, Mount
from ._secrets import Secret
from ._users import UserSpecError, parse_user_spec
from .executors._base import LABEL_ATTEMPT, LABEL_JOB_ID, UNENFORCEABLE, LaunchRequest

_log = get_logger("containerjobs.policy")

# Never mounted, whatever the policy allows: the host's identity, its kernel
# interfaces, and the runtime sockets that would hand a job the whole machine.
FORBIDDEN_MOUNT_SOURCES: tuple[str, ...] = (
    "/",
    "/etc",
    "/root",
    "/proc",
    "/sys",
    "/dev",
    "/boot",
    "/var/run",
    "/run",
)
# Docker refuses a smaller memory limit ("Minimum memory limit allowed is 6MB").
ENGINE_MIN_MEMORY_MB = 6
# Linux's limit on one argument or environment string, its NUL included: exec fails
# with E2BIG above it.
MAX_ARG_STRLEN = 131072


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _names(value: str | Sequence[str]) -> tuple[str, ...]:
    # One name given alone is one name, not its characters.
    return (value,) if isinstance(value, str) else tuple(value)


def _tuple_or_none(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


@attrs.frozen(kw_only=True)
class SecurityPolicy:
    """What every job gets unless it asks otherwise, and what no job may ask for.

    Limits a spec leaves `None` take the defaults; a spec asking more than a maximum
    is refused with `PolicyViolation`. The hardening settings apply to every
    container the manager starts.

    Without `allow_root`, a user or group of 0 or root is refused in every spelling
    Docker reads ("00", "+0", "0:0", "65534:root"); a user name, or a uid without a
    group, is resolved against the image's own /etc/passwd and /etc/group when the
    job launches, and refused there if it is root.

    An engine that cannot express a hardening setting refuses the job, unless that
    setting is named in `allow_unenforced`: on a Swarm host older than API 1.46,
    ``allow_unenforced=("no-new-privileges",)`` lets jobs run without it.

    `default_network_mode` is the `JobSpec.network_mode` of a job that names neither
    a mode nor `networks`: ``"none"`` keeps every such job off the network unless its
    spec asks for ``"bridge"``.

    ```python
    policy = SecurityPolicy(max_memory_mb=8192, allowed_mount_sources=["/srv/data"])
    async with JobManager(policy=policy) as manager:
        ...
    ```

    Attributes:
        max_memory_mb: the most memory a spec may ask for, in MB.
        default_memory_mb: the memory limit of a spec that sets none, in MB.
        max_cpu: the most CPU a spec may ask for, in cores.
        default_cpu: the CPU limit of a spec that sets none, in cores.
        max_timeout_seconds: the longest timeout a spec may ask for.
        default_timeout_seconds: the timeout of a spec that sets none.
        max_retries: the most `JobSpec.max_retries` may ask for.
        max_environment_bytes: the job's environment at most, its template included.
        default_user: the user a job runs as when its spec names none.
        allow_root: let a job run as uid 0, gid 0 or ``root``; refused in every
            spelling unless set.
        read_only_root: make the container's root file system read-only.
        tmpfs_size_mb: the size of the writable tmpfs at ``/tmp`` (with
            `read_only_root`).
        drop_capabilities: drop every Linux capability.
        no_new_privileges: forbid gaining privileges (setuid binaries included).
        pids_limit: processes and threads in the container at most; `None` for no
            limit.
        default_network_mode: as above; `None` is the engine's default bridge.
        allowed_registries: the registries images may come from (``"docker.io"``
            for Docker Hub); `None` allows any, an empty list none.
        allowed_mount_sources: the host folders `Mount` sources must lie in; none
            by default, so no bind mounts at all.
        allow_unenforced: hardening settings (named as in
            `containerjobs.executors.UNENFORCEABLE`) an engine may leave unenforced.
    """

    max_memory_mb: int = 2048
    default_memory_mb: int = 512
    max_cpu: float = 2.0
    default_cpu: float = 1.0
    max_timeout_seconds: float = 3600.0
    default_timeout_seconds: float = 3600.0
    max_retries: int = 10
    max_environment_bytes: int = 1024 * 1024
    default_user: str = "65534:65534"
    allow_root: bool = False
    read_only_root: bool = True
    tmpfs_size_mb: int = 64
    drop_capabilities: bool = True
    no_new_privileges: bool = True
    pids_limit: int | None = 256
    default_network_mode: str | None = None
    allowed_registries: tuple[str, ...] | None = attrs.field(default=None, converter=_tuple_or_none)
    allowed_mount_sources: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    allow_unenforced: tuple[str, ...] = attrs.field(default=(), converter=_names)

    def __attrs_post_init__(self) -> None:
        for low, high, what in (
            (self.default_memory_mb, self.max_memory_mb, "memory"),
            (self.default_cpu, self.max_cpu, "cpu"),
            (self.default_timeout_seconds, self.max_timeout_seconds, "timeout"),
        ):
            if not 0 < low <= high:
                raise ValueError(f"SecurityPolicy: default {what} must be in (0, maximum]")
        if self.default_memory_mb < ENGINE_MIN_MEMORY_MB:
            raise ValueError(
                f"SecurityPolicy: default memory must be at least Docker's minimum of "
                f"{ENGINE_MIN_MEMORY_MB} MB"
            )
        if self.max_retries < 0 or self.max_environment_bytes <= 0:
            raise ValueError(
                "SecurityPolicy: max_retries must be >= 0 and max_environment_bytes > 0"
            )
        unknown = sorted(set(self.allow_unenforced) - UNENFORCEABLE)
        if unknown:
            raise ValueError(
                f"SecurityPolicy: allow_unenforced names {', '.join(map(repr, unknown))}, "
                f"not a setting an engine may leave unenforced "
                f"({', '.join(sorted(UNENFORCEABLE))})"
            )
        if self.default_network_mode is not None and (
            self.default_network_mode not in NETWORK_MODES
        ):
            raise ValueError(
                f"SecurityPolicy: default_network_mode must be None or one of "
                f"{', '.join(NETWORK_MODES)}, got {self.default_network_mode!r}"
            )
        try:
            default_user = parse_user_spec(self.default_user)
        except UserSpecError as exc:
            raise ValueError(f"SecurityPolicy: default_user={self.default_user!r}: {exc}") from None
        if not self.allow_root and (reason := default_user.root_reason()):
            raise ValueError(
                f"SecurityPolicy: default_user={self.default_user!r}: {reason}, and "
                "allow_root is False"
            )

    def launch_request(
        self,
        job: Job,
        *,
        labels: Mapping[str, str],
        environment: Mapping[str, str] | None = None,
    ) -> LaunchRequest:
        """What to ask an executor for `job`'s current attempt: its effective spec,
        with this policy's hardening. `labels` are the library's own (the manager's
        and the store's identities); the job's id and attempt are added here.
        `environment` is the spec's with its secrets resolved; without it, the spec
        must name no `Secret`."""
        spec = job.spec
        if environment is None:
            if any(isinstance(value, Secret) for value in spec.environment.values()):
                raise ValueError(
                    f"job {job.id} names secrets: resolve them and pass the environment"
                )
            environment = {key: str(value) for key, value in spec.environment.items()}
        command = spec.command
        if isinstance(command, str):
            command = ("/bin/sh", "-c", command)  # a Dockerfile's shell form
        memory = self.default_memory_mb if spec.memory_limit_mb is None else spec.memory_limit_mb
        return LaunchRequest(
            job=job,
            image=spec.image,
            command=command,
            environment=environment,
            labels={
                **spec.labels,
                **labels,
                LABEL_JOB_ID: job.id,
                LABEL_ATTEMPT: str(job.attempts),
            },
            user=spec.user if spec.user is not None else self.default_user,
            allow_root=self.allow_root,
            working_directory=spec.working_directory,
            memory_bytes=memory * 1024 * 1024,
            cpus=spec.cpu_limit if spec.cpu_limit is not None else self.default_cpu,
            pids_limit=self.pids_limit,
            read_only_root=self.read_only_root,
            tmpfs={"/tmp": self.tmpfs_size_mb} if self.read_only_root else {},
            drop_capabilities=self.drop_capabilities,
            no_new_privileges=self.no_new_privileges,
            mounts=spec.mounts,
            networks=spec.networks,
            network_mode=spec.network_mode,
            pull_policy=spec.pull_policy,
            placement=spec.placement,
            allow_unenforced=frozenset(self.allow_unenforced),
        )

    def apply(
        self, spec: JobSpec, template: Mapping[str, str | Secret] | None = None
    ) -> JobSpec:
        """The effective spec: defaults filled in, the template's environment under the
        spec's own, mount sources resolved. Raises `PolicyViolation` for what the
        policy refuses. Resolving mounts touches the file system: call it off the
        event loop when the spec has mounts."""
        memory = self._limit(
            "memory_limit_mb",
            spec.memory_limit_mb,
            self.default_memory_mb,
            self.max_memory_mb,
            "MB",
        )
        cpu = self._limit("cpu_limit", spec.cpu_limit, self.default_cpu, self.max_cpu, "cores")
        timeout = self._limit(
            "timeout_seconds",
            spec.timeout_seconds,
            self.default_timeout_seconds,
            self.max_timeout_seconds,
            "s",
        )
        if memory < ENGINE_MIN_MEMORY_MB:
            raise InvalidJobSpec(
                f"memory_limit_mb={spec.memory_limit_mb!r} is below Docker's minimum of "
                f"{ENGINE_MIN_MEMORY_MB} MB"
            )
        if spec.max_retries > self.max_retries:
            self._refuse(
                "max_retries", spec.max_retries, f"the policy's maximum is {self.max_retries}"
            )
        user = spec.user if spec.user is not None else self.default_user
        self._check_user(user)
        for network in spec.networks:
            if network.name == "host" or network.name.startswith("container:"):
                self._refuse(
                    "networks", network.name, "host and shared network modes are never allowed"
                )
        self._check_registry(spec.image)
        environment = {**(template or {}), **spec.environment}
        self.check_environment(environment)
        mounts = tuple(self._check_mount(mount) for mount in spec.mounts)
        network_mode = spec.network_mode
        if network_mode is None and not spec.networks:
            # A job that names its networks takes its network from them.
            network_mode = self.default_network_mode
        return attrs.evolve(
            spec,
            memory_limit_mb=int(memory),
            cpu_limit=float(cpu),
            timeout_seconds=float(timeout),
            user=user,
            environment=environment,
            mounts=mounts,
            network_mode=network_mode,
        )

    def _limit(
        self, field: str, value: float | None, default: float, maximum: float, unit: str
    ) -> float:
        if value is None:
            return default
        if value > maximum:
            self._refuse(field, value, f"the policy's maximum is {maximum:g} {unit}")
        return value

    def _check_user(self, user: str) -> None:
        # Numbers are compared as Docker reads them ("00", "+0" and "-0" are all 0).
        # Names other than root can only be resolved in the image: the executor
        # does that before it starts the container.
        try:
            parsed = parse_user_spec(user)
        except UserSpecError as exc:
            raise InvalidJobSpec(f"user={user!r} cannot be used: {exc}") from None
        if not self.allow_root and (reason := parsed.root_reason()):
            self._refuse(
                "user", user, f"{reason}, and the policy does not allow root (allow_root=False)"
            )

    def check_environment(self, environment: Mapping[str, str | Secret]) -> None:
        """Refuse an environment too large for one variable or for the policy.

        What the job's exec receives counts: "KEY=VALUE" and a NUL per variable. A
        `Secret` counts as an empty value until it is resolved (the launching manager
        checks again with its value). Messages name keys and sizes, never a value.
        """
        sizes = {
            key: len(f"{key}={'' if isinstance(value, Secret) else value}".encode(
                "utf-8", "surrogatepass"
            )) + 1
            for key, value in environment.items()
        }
        for key, size in sizes.items():
            if size > MAX_ARG_STRLEN:
                self._refuse(
                    f"environment[{key!r}]",
                    size,
                    f"it takes {size} bytes as KEY=VALUE with its NUL, above Linux's limit "
                    f"of {MAX_ARG_STRLEN} for one variable (MAX_ARG_STRLEN); pass large data "
                    "in a mounted file",
                    shown=False,
                )
        total = sum(sizes.values())
        if total > self.max_environment_bytes:
            largest = sorted(sizes, key=sizes.__getitem__, reverse=True)[:3]
            self._refuse(
                "environment",
                total,
                f"its {len(sizes)} variables take {total} bytes as KEY=VALUE with a NUL "
                f"each, above the policy's max_environment_bytes={self.max_environment_bytes}; "
                "the largest: " + ", ".join(f"{key!r} ({sizes[key]} bytes)" for key in largest),
                shown=False,
            )

    def _check_registry(self, image: str) -> None:
        if self.allowed_registries is None:
            return
        registry = parse_image(image).registry
        allowed = {canonical_registry(name) for name in self.allowed_registries}
        if registry not in allowed:
            self._refuse(
                "image",
                image,
                f"registry {registry!r} is not in allowed_registries "
                f"({', '.join(self.allowed_registries) or 'none'})",
            )

    def _check_mount(self, mount: Mount) -> Mount:
        # Resolve symlinks and '..' first: the check must see where the mount really
        # points, not what its path says.
        source = os.path.realpath(mount.source)
        if not os.path.exists(source):
            raise InvalidJobSpec(f"mount source {mount.source!r} does not exist")
        if stat.S_ISSOCK(os.stat(source).st_mode) or "docker.sock" in source:
            self._refuse("mounts", mount.source, "sockets are never mounted")
        for forbidden in FORBIDDEN_MOUNT_SOURCES:
            # Refuse a forbidden folder, anything inside it, and any folder that holds
            # one (mounting /var would expose /var/run).
            if _within(source, forbidden) if forbidden != "/" else source == "/":
                self._refuse(
                    "mounts",
                    mount.source,
                    f"it resolves to {source!r}, inside {forbidden!r}, which is never mounted",
                )
            if forbidden != "/" and _within(forbidden, source):
                self._refuse(
                    "mounts", mount.source, f"it resolves to {source!r}, which holds {forbidden!r}"
                )
        allowed = [os.path.realpath(folder) for folder in self.allowed_mount_sources]
        if not any(_within(source, folder) for folder in allowed):
            self._refuse(
                "mounts",
                mount.source,
                f"it resolves to {source!r}, outside allowed_mount_sources "
                f"({', '.join(self.allowed_mount_sources) or 'none set'})",
            )
        return attrs.evolve(mount, source=source)

    @staticmethod
    def _refuse(field: str, value: object, why: str, *, shown: bool = True) -> NoReturn:
        # shown=False keeps the value out of the message (`why` says what matters).
        _log.warning("security.refused", field=field, value=value, reason=why)
        raise PolicyViolation(
            f"{field}={value!r} refused: {why}" if shown else f"{field} refused: {why}"
        )
