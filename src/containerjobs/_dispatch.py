"""Placement: which host a pending job goes to.

The manager gathers the candidates (active, healthy hosts with a free slot that the
job may use) and asks a `HostSelectionStrategy` to pick one. A strategy only
chooses; it never waits, and it returns `None` to leave the job pending.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs

from ._hosts import DockerHost
from ._models import Job


@attrs.frozen
class HostLoad:
    """A candidate host and how busy it is right now."""

    host: DockerHost
    running: int

    @property
    def free(self) -> int:
        return self.host.max_concurrent_jobs - self.running

    @property
    def load(self) -> float:
        """Running jobs per unit of weight: the lower, the more room."""
        return self.running / self.host.weight


@runtime_checkable
class HostSelectionStrategy(Protocol):
    """Chooses a host for a job among candidates that all have a free slot.

    Called on the event loop for every placement, so it must be quick and must not
    block. `candidates` is never empty and keeps the order the hosts were given in.
    """

    def select(self, job: Job, candidates: Sequence[HostLoad]) -> HostLoad | None:
        """The host to run `job` on, or `None` to leave it pending for now."""
        ...


class WeightedLeastLoaded:
    """The host with the lowest running-to-weight ratio; ties go to the heavier host,
    then to the first given. The default: it spreads work in proportion to weight."""

    def select(self, job: Job, candidates: Sequence[HostLoad]) -> HostLoad | None:
        return min(candidates, key=lambda c: (c.load, -c.host.weight))


class WeightedRandom:
    """A random host, each as likely as its weight."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def select(self, job: Job, candidates: Sequence[HostLoad]) -> HostLoad | None:
        return self._rng.choices(candidates, weights=[c.host.weight for c in candidates])[0]


class RoundRobin:
    """Each host in turn, skipping those without a free slot."""

    def __init__(self) -> None:
        self._turn = itertools.count()

    def select(self, job: Job, candidates: Sequence[HostLoad]) -> HostLoad | None:
        return candidates[next(self._turn) % len(candidates)]


class FirstAvailable:
    """The first host (in the order given) with a free slot: packs jobs onto few hosts."""

    def select(self, job: Job, candidates: Sequence[HostLoad]) -> HostLoad | None:
        return candidates[0]
