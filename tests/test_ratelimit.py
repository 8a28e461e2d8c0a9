"""RepeatLimiter: a failure that repeats is logged once a window, with what it hid."""

from __future__ import annotations

import math

import pytest

from containerjobs._ratelimit import Recovery, RepeatLimiter, Report


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_the_first_failure_is_logged_at_once(clock: Clock) -> None:
    limiter = RepeatLimiter(60, clock=clock)
    assert limiter.failure("k") == Report(failures=1, suppressed=0)


def test_repeats_within_the_window_are_counted_not_logged(clock: Clock) -> None:
    limiter = RepeatLimiter(60, clock=clock)
    limiter.failure("k")
    for _ in range(5):
        clock.now += 1
        assert limiter.failure("k") is None


def test_the_first_repeat_after_the_window_carries_the_suppressed_count(clock: Clock) -> None:
    limiter = RepeatLimiter(60, clock=clock)
    limiter.failure("k")
    for _ in range(59):
        clock.now += 1
        assert limiter.failure("k") is None
    clock.now += 1  # 60 s after the logged one
    assert limiter.failure("k") == Report(failures=61, suppressed=59)
    # And the window starts again from there.
    clock.now += 30
    assert limiter.failure("k") is None
    clock.now += 30
    assert limiter.failure("k") == Report(failures=63, suppressed=1)


def test_a_repeat_after_a_quiet_window_is_logged_with_nothing_suppressed(clock: Clock) -> None:
    limiter = RepeatLimiter(60, clock=clock)
    limiter.failure("k")
    clock.now += 3600
    assert limiter.failure("k") == Report(failures=2, suppressed=0)


def test_keys_are_limited_apart(clock: Clock) -> None:
    limiter = RepeatLimiter(60, clock=clock)
    assert limiter.failure(("logs.flush_failed", "job-a")) is not None
    assert limiter.failure(("logs.flush_failed", "job-b")) is not None
    assert limiter.failure(("logs.flush_failed", "job-a")) is None
    assert limiter.failure("reconcile.failed") is not None


def test_clear_ends_a_run_and_reports_it(clock: Clock) -> None:
    limiter = RepeatLimiter(60, clock=clock)
    limiter.failure("k")
    clock.now += 1
    limiter.failure("k")
    clock.now += 1.5
    limiter.failure("k")
    clock.now += 2
    assert limiter.clear("k") == Recovery(failures=3, suppressed=2, duration=4.5)
    # Nothing left to report, and the next failure is logged at once.
    assert limiter.clear("k") is None
    clock.now += 1
    assert limiter.failure("k") == Report(failures=1, suppressed=0)


def test_clear_of_a_key_that_never_failed_is_none(clock: Clock) -> None:
    limiter = RepeatLimiter(60, clock=clock)
    assert limiter.clear("k") is None
    limiter.failure("other")
    assert limiter.clear("k") is None
    assert limiter.failure("other") is None  # untouched by another key's clear


def test_a_recovery_counts_only_what_went_unlogged_since_the_last_log(clock: Clock) -> None:
    limiter = RepeatLimiter(10, clock=clock)
    limiter.failure("k")
    clock.now += 5
    limiter.failure("k")  # suppressed
    clock.now += 5
    assert limiter.failure("k") == Report(failures=3, suppressed=1)
    clock.now += 1
    assert limiter.clear("k") == Recovery(failures=3, suppressed=0, duration=11)


def test_a_window_of_zero_logs_every_failure(clock: Clock) -> None:
    limiter = RepeatLimiter(0, clock=clock)
    assert [limiter.failure("k") for _ in range(3)] == [
        Report(failures=1, suppressed=0),
        Report(failures=2, suppressed=0),
        Report(failures=3, suppressed=0),
    ]


def test_the_default_window_is_a_minute_on_the_monotonic_clock() -> None:
    limiter = RepeatLimiter()
    assert limiter.window == 60.0
    assert limiter.failure("k") is not None
    assert limiter.failure("k") is None


@pytest.mark.parametrize("window", [-1.0, math.nan, math.inf])
def test_a_window_must_be_a_finite_time(window: float) -> None:
    with pytest.raises(ValueError, match="window"):
        RepeatLimiter(window)
