"""`ClaimRound`: the rules of `Storage.claim_next`, written once for every backend.

A backend supplies what only it can: the atomic step, the count of active jobs per
host, and the pending jobs in dispatch order. The round decides which of them are
claimed, on which host, and what record to write; so the built-in backends, and any
other, agree on every detail of the queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from types import MappingProxyType

from .._models import Job, JobStatus
from ._base import ChooseHost
from ._codec import as_utc, check_limit

__all__ = ["ClaimRound", "dispatch_order"]


def dispatch_order(job: Job) -> tuple[int, datetime, str]:
    """The sort key of the pending queue: highest ``spec.priority`` first, then the
    oldest ``created_at``, then the id (so that ties have one order in every store)."""
    return (-job.spec.priority, job.created_at, job.id)


class ClaimRound:
    """One call of `Storage.claim_next`, inside the backend's atomic step.

    Make it once the step has begun, with the active counts read in that step; offer
    it the pending jobs in dispatch order until `done`; write every record that
    `offer` returns (each is the job as claimed, launching on its host); return
    `claimed`. It raises what `claim_next` raises, so a backend lets that undo the
    step.

    Args:
        manager_id: the manager that claims; written as each job's owner.
        hosts: the hosts offered, each with its ``max_concurrent_jobs``, in order.
        choose: the manager's choice among a job's candidates.
        active: jobs launching or running per host name, as the store counts them now
            (hosts left out have none).
        now: the time `retry_at` is compared with; must be aware.
        limit: claim at most this many jobs; `None` for as many as fit.

    Raises:
        ValueError: a negative `limit` or a naive `now`.
    """

    def __init__(
        self,
        manager_id: str,
        hosts: Mapping[str, int],
        choose: ChooseHost,
        *,
        active: Mapping[str, int],
        now: datetime,
        limit: int | None,
    ) -> None:
        check_limit(limit)
        self._manager_id = manager_id
        self._most = dict(hosts)
        self._active = {name: active.get(name, 0) for name in self._most}
        self._choose = choose
        self._now = as_utc(now)
        self._limit = limit
        self.claimed: list[Job] = []
        """The jobs claimed so far, as written, in the order claimed."""

    def open_hosts(self) -> list[str]:
        """The offered hosts that have a free slot now, in the order offered.

        A store that filters in its query may read only the pending jobs pinned to
        one of these (or to none).
        """
        return [name for name, most in self._most.items() if self._active[name] < most]

    @property
    def done(self) -> bool:
        """Whether the round is over: `limit` reached, or no free slot left."""
        if self._limit is not None and len(self.claimed) >= self._limit:
            return True
        return not self.open_hosts()

    def offer(self, job: Job) -> Job | None:
        """The record to write if `job` is claimed, else `None` (it stays pending).

        Raises:
            ValueError: `job` is not pending (the store offered a job it should not
                have), or `choose` named a host that is not one of the candidates.
        """
        if job.status is not JobStatus.PENDING:
            raise ValueError(f"cannot claim job {job.id!r}: it is {job.status}, not pending")
        if self.done:
            return None
        if job.retry_at is not None and job.retry_at > self._now:
            return None  # a retry waits for its time
        pinned = job.spec.host
        candidates = {
            name: self._active[name]
            for name in self.open_hosts()
            if pinned is None or name == pinned
        }
        if not candidates:
            return None  # pinned to a host that is full or not offered: the next job
        # Read-only: the counts are the round's, not the chooser's to change.
        choice = self._choose(job, MappingProxyType(candidates))
        if choice is None:
            return None
        if choice not in candidates:
            raise ValueError(
                f"the host chosen for job {job.id!r}, {choice!r}, is not one of its "
                f"candidates ({', '.join(map(repr, candidates))}): choose must return "
                "one of them, or None"
            )
        self._active[choice] += 1
        claimed = job.advance(
            JobStatus.LAUNCHING,
            host=choice,
            owner=self._manager_id,
            attempts=job.attempts + 1,
        )
        self.claimed.append(claimed)
        return claimed
