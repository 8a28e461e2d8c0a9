"""Hosts: where jobs run, how many jobs each takes, and how to reach its engine.

`Host` is what the manager and the placement strategies know of a host: its name,
weight, slots and whether it takes new work, and the executor that speaks to it.
`DockerHost` adds how to reach a Docker daemon; `SwarmHost`, a Swarm manager, whose
cluster places the jobs itself.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import attrs

from ._errors import HostUnavailable
from ._images import canonical_registry

if TYPE_CHECKING:
    from .executors import DockerExecutor, Executor, SwarmExecutor

_SCHEMES = ("unix://", "tcp://", "http://", "https://")
DEFAULT_SOCKET = "unix:///var/run/docker.sock"


def _path(value: str | os.PathLike[str]) -> Path:
    return Path(value)


@attrs.frozen
class TLSConfig:
    """Certificates for a ``tcp://`` host, as the docker CLI's ``--tls*`` flags take them.

    Args:
        ca_cert: the CA that signed the daemon's certificate.
        client_cert: this client's certificate (for a daemon started with ``--tlsverify``).
        client_key: the key of `client_cert`.
        verify: check the daemon's certificate against `ca_cert`. Turning it off makes
            the connection open to anyone between you and the daemon.
    """

    ca_cert: Path | None = attrs.field(default=None, converter=attrs.converters.optional(_path))
    client_cert: Path | None = attrs.field(default=None, converter=attrs.converters.optional(_path))
    client_key: Path | None = attrs.field(default=None, converter=attrs.converters.optional(_path))
    verify: bool = True

    @classmethod
    def from_cert_path(cls, cert_path: str | os.PathLike[str], *, verify: bool = True) -> TLSConfig:
        """The layout of ``DOCKER_CERT_PATH``: ``ca.pem``, ``cert.pem``, ``key.pem``."""
        base = Path(cert_path)
        return cls(base / "ca.pem", base / "cert.pem", base / "key.pem", verify=verify)

    def ssl_context(self) -> ssl.SSLContext:
        """An SSL context for these files; `HostUnavailable` names a missing file."""
        for path in (self.ca_cert, self.client_cert, self.client_key):
            if path is not None and not path.is_file():
                raise HostUnavailable(f"TLS file {str(path)!r} does not exist")
        try:
            context = ssl.create_default_context(cafile=str(self.ca_cert) if self.ca_cert else None)
            if not self.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if self.client_cert is not None:
                context.load_cert_chain(
                    str(self.client_cert), str(self.client_key) if self.client_key else None
                )
        except (ssl.SSLError, OSError) as exc:
            raise HostUnavailable(f"cannot load TLS files: {exc}") from exc
        return context


@runtime_checkable
class Host(Protocol):
    """A place jobs run, as the manager sees it, whatever the engine.

    An engine's host class (`DockerHost`) adds how to reach it, and makes the
    `Executor` that speaks to it.
    """

    @property
    def name(self) -> str:
        """How jobs and `JobSpec.host` refer to it; unique within a manager."""
        ...

    @property
    def weight(self) -> int:
        """Relative capacity, for placement."""
        ...

    @property
    def max_concurrent_jobs(self) -> int:
        """Jobs running at once on it, at most (across every manager of a store)."""
        ...

    @property
    def active(self) -> bool:
        """Whether it takes new jobs."""
        ...

    def executor(self) -> Executor:
        """A new executor for this host (opened by the manager)."""
        ...


def takes_placement(host: Host) -> bool:
    """Whether jobs with `JobSpec.placement` may go to `host`: an orchestrator that
    places them itself says so with a true ``takes_placement`` attribute."""
    return bool(getattr(host, "takes_placement", False))


@attrs.frozen(repr=False)
class RegistryAuth:
    """Credentials for one image registry. The password never appears in a repr.

    `DockerHost` and `SwarmHost` take them per registry host:
    ``registry_auth={"registry.example:5000": RegistryAuth("ci", token)}``.

    Attributes:
        username: the registry user.
        password: their password or token.
    """

    username: str
    password: str

    def __repr__(self) -> str:
        return f"RegistryAuth(username={self.username!r}, password='***')"


def _check_url(instance: DockerHost | SwarmHost, _: attrs.Attribute[str], url: str) -> None:
    if not isinstance(url, str) or not url.startswith(_SCHEMES):
        raise ValueError(
            f"host {instance.name!r}: url {url!r} must start with one of {', '.join(_SCHEMES)}"
        )


def _positive_int(
    instance: DockerHost | SwarmHost, attribute: attrs.Attribute[int], value: int
) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"host {instance.name!r}: {attribute.name} must be a whole number >= 1, got {value!r}"
        )


def _to_auth(value: Mapping[str, Any] | None) -> dict[str, RegistryAuth]:
    auths: dict[str, RegistryAuth] = {}
    for registry, auth in (value or {}).items():
        if isinstance(auth, Mapping):
            auth = RegistryAuth(**auth)
        if not isinstance(auth, RegistryAuth):
            raise TypeError(f"registry_auth[{registry!r}] must be a RegistryAuth")
        auths[canonical_registry(registry)] = auth
    return auths


@attrs.frozen
class DockerHost:
    """A Docker daemon jobs may run on.

    Args:
        name: how jobs and `JobSpec.host` refer to it; unique within a manager.
        url: ``unix:///path/to/docker.sock`` or ``tcp://host:port``.
        tls: certificates for a ``tcp://`` daemon; with them the connection is HTTPS.
        max_concurrent_jobs: jobs running at once on this host, at most.
        weight: relative capacity; placement prefers the lowest running-to-weight ratio.
        active: an inactive host gets no new jobs.
        registry_auth: credentials per registry host (``"127.0.0.1:5000"``) for pulls.
        runtime: the OCI runtime of this host's job containers, by the name the
            daemon knows it by (``"runsc"`` for gVisor, ``"crun"``, as registered in
            its ``daemon.json``); `None` for the daemon's default (``runc``). A name
            the daemon does not know fails each job with `InvalidJobSpec`, not retried.
    """

    name: str = attrs.field()
    url: str = attrs.field(validator=_check_url)
    tls: TLSConfig | None = None
    max_concurrent_jobs: int = attrs.field(default=10, validator=_positive_int)
    weight: int = attrs.field(default=100, validator=_positive_int)
    active: bool = True
    registry_auth: dict[str, RegistryAuth] = attrs.field(factory=dict, converter=_to_auth)
    runtime: str | None = attrs.field(default=None, kw_only=True)

    @name.validator
    def _check_name(self, _: attrs.Attribute[str], value: str) -> None:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"host name must be a non-empty str, got {value!r}")

    @runtime.validator
    def _check_runtime(self, _: attrs.Attribute[str | None], value: str | None) -> None:
        if value is not None and (
            not isinstance(value, str) or not value.strip() or "\x00" in value
        ):
            raise ValueError(
                f"host {self.name!r}: runtime must be None or a runtime's name, got {value!r}"
            )

    def executor(self) -> DockerExecutor:
        from .executors import DockerExecutor

        return DockerExecutor(self)

    @classmethod
    def from_env(
        cls, name: str = "local", *, environ: Mapping[str, str] | None = None, **kwargs: Any
    ) -> DockerHost:
        """The host the docker CLI would use: ``DOCKER_HOST``, ``DOCKER_TLS_VERIFY`` and
        ``DOCKER_CERT_PATH``, else the local socket."""
        env = os.environ if environ is None else environ
        url = env.get("DOCKER_HOST") or DEFAULT_SOCKET
        tls = None
        # As the docker CLI: DOCKER_TLS_VERIFY turns on TLS with verification,
        # DOCKER_TLS turns on TLS alone; any non-empty value counts.
        verify = bool(env.get("DOCKER_TLS_VERIFY"))
        cert_path = env.get("DOCKER_CERT_PATH") or str(Path.home() / ".docker")
        if url.startswith("tcp://") and (verify or env.get("DOCKER_TLS")):
            tls = TLSConfig.from_cert_path(cert_path, verify=verify)
        return cls(name, url, tls=tls, **kwargs)


def _check_host_name(_: object, __: attrs.Attribute[str], value: str) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"host name must be a non-empty str, got {value!r}")


@attrs.frozen
class SwarmHost:
    """A Docker Swarm cluster, reached through one of its managers: the whole
    cluster is one host with `max_concurrent_jobs` slots, and Swarm's scheduler
    chooses the node of each job (honouring `JobSpec.placement`).

    Args:
        name: how jobs and `JobSpec.host` refer to it; unique within a manager.
        url: a manager's API: ``unix:///var/run/docker.sock`` or ``tcp://host:port``.
        tls: certificates for a ``tcp://`` manager; with them the connection is HTTPS.
        registry_auth: credentials per registry host, sent with each service so that
            every node can pull the job's image.
        max_concurrent_jobs: jobs running at once on the whole cluster, at most.
        weight: relative capacity, among this manager's hosts.
        active: an inactive host gets no new jobs.
    """

    name: str = attrs.field(validator=_check_host_name)
    url: str = attrs.field(validator=_check_url)
    tls: TLSConfig | None = attrs.field(default=None, kw_only=True)
    registry_auth: dict[str, RegistryAuth] = attrs.field(
        factory=dict, converter=_to_auth, kw_only=True
    )
    max_concurrent_jobs: int = attrs.field(default=10, validator=_positive_int, kw_only=True)
    weight: int = attrs.field(default=100, validator=_positive_int, kw_only=True)
    active: bool = attrs.field(default=True, kw_only=True)

    takes_placement: ClassVar[bool] = True

    def executor(self) -> SwarmExecutor:
        from .executors import SwarmExecutor

        return SwarmExecutor(self)
