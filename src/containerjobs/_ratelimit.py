"""`RepeatLimiter`: log a failure that keeps happening once a window, not every time.

A store on a full disk fails every flush of every job, four times a second; a loop
that retries logs each failure. The first failure of a key is logged at once, the
repeats within the window are only counted, and the next one logged after it says
how many went unlogged. When the operation succeeds again the key is cleared, so its
next failure is logged at once, and the caller may log the recovery.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from typing import Any

import attrs

__all__ = ["Recovery", "RepeatLimiter", "Report"]


@attrs.frozen
class Report:
    """A failure to log now."""

    #: Failures of the key in a row, this one included.
    failures: int
    #: Of those, how many were not logged (since the last one that was).
    suppressed: int


@attrs.frozen
class Recovery:
    """The end of a run of failures."""

    #: Failures of the key in a row before it succeeded again.
    failures: int
    #: Of those, how many were not logged (since the last one that was).
    suppressed: int
    #: Seconds from the first failure of the run to its recovery.
    duration: float


@attrs.define
class _Run:
    started_at: float
    logged_at: float
    failures: int = 1
    suppressed: int = 0


class RepeatLimiter:
    """Decides, per key, whether a failure is logged now.

    Not thread-safe, and needs no lock in async code: it never awaits. Keys are any
    hashable value, such as ``("logs.flush_failed", job_id)``; a key is forgotten
    when `clear` is called for it, so a caller whose keys name short-lived things
    (jobs) should clear them when those things end.
    """

    def __init__(
        self, window: float = 60.0, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        # 0 logs every failure, which turns the limiting off.
        if not (math.isfinite(window) and window >= 0):
            raise ValueError(f"window must be a finite number of seconds >= 0, not {window!r}")
        self.window = window
        self._clock = clock
        self._runs: dict[Hashable, _Run] = {}

    def failure(self, key: Hashable) -> Report | None:
        """Count a failure of `key`; return what to log now, or `None` to stay silent.

        The first failure of a run is logged, then at most one per `window` seconds.
        """
        now = self._clock()
        run = self._runs.get(key)
        if run is None:
            self._runs[key] = _Run(started_at=now, logged_at=now)
            return Report(failures=1, suppressed=0)
        run.failures += 1
        if now - run.logged_at < self.window:
            run.suppressed += 1
            return None
        report = Report(failures=run.failures, suppressed=run.suppressed)
        run.logged_at = now
        run.suppressed = 0
        return report

    def clear(self, key: Hashable) -> Recovery | None:
        """`key` succeeded: end its run of failures and return it, if it had one.

        Cheap when `key` has none, so it can be called after every success.
        """
        run = self._runs.pop(key, None)
        if run is None:
            return None
        return Recovery(
            failures=run.failures,
            suppressed=run.suppressed,
            duration=self._clock() - run.started_at,
        )

    def report(self, emit: Callable[..., None], event: str, **fields: Any) -> None:
        """Count a failure keyed by `event`, and log it with `emit` when it is due,
        with how many failures in a row there were and how many went unlogged."""
        report = self.failure(event)
        if report is not None:
            emit(event, **fields, failures=report.failures, suppressed=report.suppressed)

    def recover(self, emit: Callable[..., None], event: str, recovered: str) -> None:
        """The operation of `event` succeeded: log `recovered` once, if it had failed."""
        recovery = self.clear(event)
        if recovery is not None:
            emit(recovered, failures=recovery.failures, after=round(recovery.duration, 1))
