"""What every storage backend shares: records to JSON and back, times as text, and
the argument checks every backend makes the same way.

Public through `containerjobs.storage`, for backends written outside this package.

One cattrs converter knows the few types that need help; everything else (the attrs
records, their tuples and dicts) it walks by itself, so a field added to `Job` or
`JobSpec` is stored without touching this module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .._errors import StorageError
from .._models import Job, JobStatus
from .._secrets import Secret
from ._base import StoredLine

__all__ = [
    "as_utc",
    "check_limit",
    "check_log_sequence",
    "converter",
    "decode_output",
    "dump_job",
    "dump_record",
    "encode_output",
    "format_datetime",
    "job_output",
    "lease_expiry",
    "load_job",
    "load_record",
    "parse_datetime",
    "status_filter",
    "store_now",
]

# The declared type of `JobSpec.command`, spelled the same so the hooks match it.
Command = str | tuple[str, ...] | None


def as_utc(value: datetime) -> datetime:
    """The same instant in UTC; `ValueError` for a naive datetime."""
    if value.tzinfo is None or value.utcoffset() is None:
        # Guessing a zone would silently move the instant; the library only makes
        # aware UTC datetimes, so a naive one is a bug upstream.
        raise ValueError(f"cannot store the naive datetime {value.isoformat()}: give it a tzinfo")
    return value.astimezone(UTC)


def format_datetime(value: datetime) -> str:
    """An aware datetime as fixed-width UTC ISO text, which sorts as the instants do.

    Such as ``"2030-01-01T00:00:00.000000+00:00"``. A naive datetime raises
    `ValueError`.
    """
    # Fixed width (zero-padded year, always microseconds, always +00:00), so the text
    # sorts like the instant it names: SQL can ORDER BY and compare it as a string.
    return as_utc(value).isoformat(timespec="microseconds")


def parse_datetime(text: str) -> datetime:
    """The aware UTC datetime of ISO text (as `format_datetime` writes it); text with
    no offset is read as UTC."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        # Only a hand-edited row can get here: read it as UTC like everything else.
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _unstructure_command(value: Command) -> str | list[str] | None:
    return list(value) if isinstance(value, tuple) else value


def _structure_command(value: Any, _: Any) -> Command:
    # JSON has no tuple: a list came back from one, a str stays the shell form.
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return tuple(value)
    raise ValueError(f"a stored command must be a str, a list or null, not {value!r}")


def _structure_variable(value: Any, _: Any) -> str | Secret:
    # An environment value: text as given, or the name of a secret (never its value).
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("secret"), str):
        return Secret(value["secret"])
    raise ValueError(f"a stored environment value must be a str or a secret, not {value!r}")


def _make_converter() -> cattrs.Converter:
    # Extra keys are ignored on purpose: a record written by a newer version with a
    # field this one does not know still loads (and a missing field takes its default).
    conv = cattrs.Converter(forbid_extra_keys=False)
    conv.register_unstructure_hook(datetime, format_datetime)
    conv.register_structure_hook(datetime, lambda value, _: parse_datetime(value))
    conv.register_unstructure_hook(JobStatus, lambda status: status.value)
    conv.register_structure_hook(JobStatus, lambda value, _: JobStatus(value))
    conv.register_unstructure_hook(Command, _unstructure_command)
    conv.register_structure_hook(Command, _structure_command)
    conv.register_unstructure_hook(Secret, lambda secret: {"secret": secret.name})
    conv.register_structure_hook_func(
        lambda cls: cls == (str | Secret), _structure_variable
    )
    # Job keeps its output in private attributes (None: not loaded), under the keys
    # "stdout" and "stderr" all the same. Made last: the functions take the hooks
    # above for the fields' types as they are made.
    out, err = override(rename="stdout"), override(rename="stderr")
    conv.register_unstructure_hook(
        Job, make_dict_unstructure_fn(Job, conv, _stdout=out, _stderr=err)
    )
    conv.register_structure_hook(Job, make_dict_structure_fn(Job, conv, _stdout=out, _stderr=err))
    return conv


converter = _make_converter()


_OUTPUT_KEYS = ("stdout", "stderr")


def dump_job(job: Job) -> str:
    """The whole job as compact JSON text, its output included.

    Every field is kept; datetimes as `format_datetime` text, statuses as their
    values, a command's list form as a JSON list and its shell form as a string, an
    output that is not loaded as null.
    """
    # ensure_ascii keeps lone surrogates (which UTF-8 cannot encode) storable as \u
    # escapes; compact separators because a store holds many of these.
    return json.dumps(converter.unstructure(job), separators=(",", ":"))


def load_job(text: str) -> Job:
    """The job that `dump_job` wrote, equal to the one it was given.

    Keys it does not know are ignored and missing ones take their defaults, so a
    record written by another version of containerjobs still loads. Text that does
    not load raises `StorageError`.
    """
    return _structure(_parse(text))


def dump_record(job: Job) -> str:
    """The job as `dump_job` writes it, less its output (``stdout`` and ``stderr``):
    the record the built-in stores keep, with the output apart.

    A job is written many times in its life (each status move) and its output, up to
    megabytes, once; and a listing reads many records and no output. Kept apart, a
    move writes and a listing reads a record of a kilobyte or so.
    """
    record = converter.unstructure(job)
    for key in _OUTPUT_KEYS:
        del record[key]
    return json.dumps(record, separators=(",", ":"))


def load_record(text: str, stdout: str | None, stderr: str | None) -> Job:
    """The job of a `dump_record` text, with the output given (`None`: not loaded).

    An output the text still holds (a record written by an older version) is
    ignored: the store's own output is the one given. Text that does not load
    raises `StorageError`.
    """
    record = _parse(text)
    record["stdout"], record["stderr"] = stdout, stderr
    return _structure(record)


def _parse(text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except ValueError as exc:
        raise StorageError(f"a stored job record cannot be read: {exc!r}") from exc
    if not isinstance(record, dict):
        raise StorageError(f"a stored job record cannot be read: not an object: {text[:80]!r}")
    return record


def _structure(record: dict[str, Any]) -> Job:
    try:
        return converter.structure(record, Job)
    except (ValueError, TypeError, cattrs.BaseValidationError) as exc:
        # A record that no longer loads (edited by hand, or refused by a stricter
        # validator than the one that wrote it) is a failure of the store to read.
        raise StorageError(f"a stored job record cannot be read: {exc!r}") from exc


def job_output(job: Job) -> tuple[str | None, str | None]:
    """The job's stdout and stderr, each `None` when it is not loaded (a job from
    `Storage.list`). A store writing a job keeps the stored output of a stream that
    is `None`, rather than blank it."""
    # The one place outside Job that reads its private attributes.
    return job._stdout, job._stderr


def with_output(
    jobs: Sequence[Job], stored: Mapping[str, tuple[bytes | None, bytes | None]]
) -> list[Job]:
    """Listed jobs with the output a store keeps for them: `stored` maps a job's id to
    its stdout and stderr bytes; a job it leaves out printed nothing."""
    loaded = []
    for job in jobs:
        stdout, stderr = stored.get(job.id, (None, None))
        loaded.append(
            attrs.evolve(job, stdout=decode_output(stdout), stderr=decode_output(stderr))
        )
    return loaded


def encode_output(text: str) -> bytes:
    """A job's output as the bytes a store with no JSON around it keeps: UTF-8, with
    lone surrogates passed through (no output is refused, as no record was)."""
    return text.encode("utf-8", "surrogatepass")


def decode_output(data: bytes | None) -> str:
    """The text of `encode_output`'s bytes; `None` (no stored output) is ""."""
    if not data:
        return ""
    try:
        return bytes(data).decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        # Only bytes written by hand (or by SQL's own JSON reading of an odd escape)
        # get here: replaced, as the engine's own bytes are, never dropped.
        return bytes(data).decode("utf-8", "replace")


# --- argument checks every backend makes the same way -------------------------------


def check_limit(limit: int | None, *, name: str = "limit") -> None:
    """`ValueError` for a negative limit; `None` (no limit) and 0 pass."""
    # SQL reads LIMIT -1 as "no limit" and a slice reads it as "all but one": refuse it
    # everywhere so backends cannot disagree.
    if limit is not None and limit < 0:
        raise ValueError(f"{name} must be >= 0 or None, got {limit}")


def store_now() -> datetime:
    """The store's clock: now, aware, in UTC. Leases are timed with it."""
    # The clock of leases, the same in every backend. SQLite's own clock would be no
    # better: it is the clock of whichever process runs the statement. Managers on
    # several hosts sharing one file (over a network file system) therefore need
    # their clocks kept in sync, to well within a lease's ttl.
    return datetime.now(UTC)


def lease_expiry(now: datetime, ttl: float) -> datetime:
    """When a lease renewed at `now` for `ttl` seconds runs out; `ValueError` for a
    ttl that is not a finite number of seconds greater than 0, or is too long."""
    # A ttl of 0 or less would make a lease that is dead on arrival, and NaN one that
    # compares false with everything: both are bugs of the caller, refused alike.
    if not (math.isfinite(ttl) and ttl > 0):
        raise ValueError(f"a lease's ttl must be a finite number of seconds > 0, got {ttl!r}")
    try:
        return now + timedelta(seconds=ttl)
    except OverflowError:
        raise ValueError(f"a lease's ttl of {ttl!r} seconds is too long") from None


def check_log_sequence(job_id: str, lines: Sequence[StoredLine], *, next_seq: int) -> None:
    """`ValueError` unless `lines` have consecutive seq, starting at or before
    `next_seq` (the job's `log_count`), so appending them leaves no gap."""
    # A gap would make log_count (the next seq) lie and a follower wait forever for the
    # missing line, so it is refused before anything is written. Overlap with what is
    # stored is fine: that is a retried write, and the stored lines win.
    if not lines:
        return
    first = lines[0].seq
    for offset, line in enumerate(lines):
        if line.seq != first + offset:
            raise ValueError(
                f"log lines of job {job_id!r} must have consecutive seq, "
                f"got {line.seq} after {first + offset - 1}"
            )
    if first < 0 or first > next_seq:
        raise ValueError(
            f"log lines of job {job_id!r} must continue at seq {next_seq}, got {first}"
        )


def status_filter(status: JobStatus | Sequence[JobStatus] | None) -> frozenset[JobStatus] | None:
    """The `status` argument of `Storage.list` as a set of statuses, `None` for any."""
    if status is None:
        return None
    # A JobStatus is a str and so a Sequence too: test for it first.
    if isinstance(status, JobStatus):
        return frozenset({status})
    return frozenset(status)
