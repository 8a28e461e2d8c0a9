"""The cattrs codec that backends store jobs with: JSON text and back, unchanged."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from containerjobs._models import Job, JobSpec
from containerjobs.storage._codec import (
    converter,
    dump_job,
    format_datetime,
    load_job,
    parse_datetime,
)

from .strategies import T0, job_specs, jobs


@given(jobs())
def test_any_job_round_trips_unchanged(job: Job) -> None:
    text = dump_job(job)
    assert load_job(text) == job
    # Plain JSON, readable by anything, not a pickle in disguise.
    assert json.loads(text)["id"] == job.id


@given(job_specs())
def test_any_spec_round_trips_unchanged(spec: JobSpec) -> None:
    assert converter.structure(converter.unstructure(spec), JobSpec) == spec


@pytest.mark.parametrize("command", ["echo hi", ("echo", "hi"), None])
def test_command_keeps_its_form(command: str | tuple[str, ...] | None) -> None:
    # A str runs through the shell and a list does not: the form is the meaning.
    job = Job(id="j", spec=JobSpec(image="alpine", command=command))
    assert load_job(dump_job(job)).spec.command == command
    assert type(load_job(dump_job(job)).spec.command) is type(command)


@given(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)),
    st.integers(min_value=-23 * 60, max_value=23 * 60),
)
def test_datetimes_are_stored_as_utc_and_sort_as_text(naive: datetime, minutes: int) -> None:
    aware = naive.replace(tzinfo=timezone(timedelta(minutes=minutes)))
    text = format_datetime(aware)
    back = parse_datetime(text)
    assert back == aware
    assert back.utcoffset() == timedelta(0)
    # Fixed width, so text order is time order.
    assert len(text) == len("2024-01-01T00:00:00.000000+00:00")
    later = format_datetime(aware + timedelta(microseconds=1))
    assert text < later


def test_naive_datetime_is_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        format_datetime(datetime(2024, 1, 1))
    job = Job(id="j", spec=JobSpec(image="alpine"), created_at=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="naive"):
        dump_job(job)


def test_unknown_keys_are_ignored_and_missing_ones_take_defaults() -> None:
    # Records written by a newer or older version of the library still load.
    job = Job(id="j", spec=JobSpec(image="alpine"), created_at=T0)
    raw = json.loads(dump_job(job))
    raw["a_field_from_the_future"] = 1
    del raw["stdout"]
    del raw["spec"]["labels"]
    assert load_job(json.dumps(raw)) == job
