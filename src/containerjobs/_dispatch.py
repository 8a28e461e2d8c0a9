"""Placement: which host a pending job goes to.

The manager gathers the candidates (active, healthy hosts with a free slot that the
job may use) and asks a `HostSelectionStrategy` to pick one. A strategy only
chooses; it never waits, and it returns `None` to leave the job pending.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import attrs

from ._hosts import Host
from ._models import Job


@attrs.frozen
class HostLoad:
    """A candidate host and how busy it is right now.

    Attributes:
        host: the host.
        running: jobs launching or running on it now, across every manager of the
            store.
    """

    host: Host
    running: int

    @property
    def free(self) -> int:
        """Slots left: its ``max_concurrent_jobs`` less `running`."""
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
    """Each host in turn, in the order given; a host without a free slot loses its turn."""

    def __init__(self) -> None:
        self._last: str | None = None
        self._order: dict[str, int] = {}

    def select(self, job: Job, candidates: Sequence[HostLoad]) -> HostLoad | None:
        for candidate in candidates:
            self._order.setdefault(candidate.host.name, len(self._order))
        last = -1 if self._last is None else self._order.get(self._last, -1)
        # The first candidate after the last host chosen, wrapping around.
        after = [c for c in candidates if self._order[c.host.name] > last]
        choice = (after or list(candidates))[0]
        self._last = choice.host.name
        return choice


class FirstAvailable:
    """The first host (in the order given) with a free slot: packs jobs onto few hosts."""

    def select(self, job: Job, candidates: Sequence[HostLoad]) -> HostLoad | None:
        return candidates[0]
