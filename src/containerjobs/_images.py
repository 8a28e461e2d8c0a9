"""Image references: parse ``[registry/]path[:tag][@digest]`` the way Docker does."""

from __future__ import annotations

import re

import attrs

# Docker's reference grammar (distribution/reference), without the host-name details.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"(?P<name>(?:(?P<domain>[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?(?::[0-9]+)?)/)?"
    rf"{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}))?"
)

DEFAULT_REGISTRY = "docker.io"
# Docker Hub answers to several names; policy checks and credentials use one.
DOCKER_HUB_ALIASES = frozenset({DEFAULT_REGISTRY, "index.docker.io", "registry-1.docker.io"})


def canonical_registry(name: str) -> str:
    """The registry's name as this library keys it: Docker Hub's aliases become
    ``docker.io``."""
    return DEFAULT_REGISTRY if name in DOCKER_HUB_ALIASES else name


@attrs.frozen
class ImageRef:
    """A parsed image reference."""

    registry: str
    repository: str
    tag: str | None
    digest: str | None


def parse_image(reference: str) -> ImageRef:
    """Split an image reference; raise `ValueError` when it is not one."""
    match = _REFERENCE.fullmatch(reference)
    if match is None or len(reference) > 255 + 128 + 80:
        raise ValueError(f"{reference!r} is not a valid image reference")
    name = match["name"]
    first, sep, rest = name.partition("/")
    # Like Docker: the first component is a registry only if it looks like a host.
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, repository = first, rest
    else:
        registry, repository = DEFAULT_REGISTRY, name
    return ImageRef(canonical_registry(registry), repository, match["tag"], match["digest"])
