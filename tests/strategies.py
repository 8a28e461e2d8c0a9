"""Hypothesis strategies shared by the test suite: valid records of containerjobs.

Every strategy here produces values the models accept; tests of validation build
their bad values themselves. Extend freely; keep each strategy valid by construction.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st

from containerjobs._models import (
    PULL_POLICIES,
    AttemptOutcome,
    EnvironmentTemplate,
    Job,
    JobSpec,
    JobStatus,
    LogLine,
    Mount,
    NetworkAttachment,
)

__all__ = [
    "T0",
    "at",
    "attempt_outcomes",
    "commands",
    "environment_templates",
    "images",
    "job_specs",
    "jobs",
    "log_lines",
    "mounts",
    "names",
    "network_attachments",
    "safe_text",
    "utc_datetimes",
]

# Any text without NUL (which every field of a spec refuses). Hypothesis leaves out
# lone surrogates by default, as real decoded output never has them.
safe_text = st.text(st.characters(exclude_characters="\x00"), max_size=40)
# Text that is not blank, for the fields that refuse an empty or all-space value.
names = safe_text.filter(lambda s: s.strip() != "")

_LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
_alnum = st.text(_LOWER, min_size=1, max_size=8)
# A path component of Docker's grammar: alphanumerics, maybe joined by one separator.
_component = st.builds(
    lambda head, sep, tail: head if sep is None else head + sep + tail,
    _alnum,
    st.none() | st.sampled_from([".", "_", "__", "-", "--"]),
    _alnum,
)
_tags = st.builds(
    str.__add__,
    st.sampled_from(_LOWER + "_ABC"),
    st.text(_LOWER + "_.-ABC", max_size=20),
)
_digests = st.binary(min_size=32, max_size=32).map(lambda raw: "sha256:" + raw.hex())


@st.composite
def images(draw: st.DrawFn) -> str:
    """Image references that `parse_image` accepts: ``[registry/]path[:tag][@digest]``."""
    registry = draw(st.sampled_from(["", "localhost:5000/", "registry.example.com/"]))
    path = "/".join(draw(st.lists(_component, min_size=1, max_size=3)))
    tag = draw(st.none() | _tags)
    digest = draw(st.none() | _digests)
    return (
        registry
        + path
        + ("" if tag is None else f":{tag}")
        + ("" if digest is None else f"@{digest}")
    )


def commands() -> st.SearchStrategy[str | tuple[str, ...] | None]:
    """A shell-form str, an exec-form tuple, or None (the image's own command)."""
    return st.one_of(
        st.none(),
        names,
        st.lists(safe_text, min_size=1, max_size=5).map(tuple),
    )


_keys = names.filter(lambda s: "=" not in s)
# "." and ".." are left out: "/.." is the root folder, which a mount target may not be.
_absolute_paths = st.lists(
    st.text(_LOWER + "_.-ABC", min_size=1, max_size=10).filter(lambda p: p not in (".", "..")),
    min_size=1,
    max_size=4,
).map(lambda parts: "/" + "/".join(parts))


def network_attachments() -> st.SearchStrategy[NetworkAttachment]:
    return st.builds(
        NetworkAttachment,
        names,
        st.lists(safe_text.filter(bool), max_size=3).map(tuple),
    )


def mounts() -> st.SearchStrategy[Mount]:
    return st.builds(Mount, _absolute_paths, _absolute_paths, st.booleans())


_positive_floats = st.floats(
    min_value=0, max_value=1e6, exclude_min=True, allow_nan=False, allow_infinity=False
)
# JobSpec.priority fits in 32 bits, which every store keeps alike.
_ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)


@st.composite
def job_specs(draw: st.DrawFn) -> JobSpec:
    """Valid `JobSpec`s, with every field drawn (each optional one sometimes None)."""
    return JobSpec(
        image=draw(images()),
        command=draw(commands()),
        name=draw(st.none() | names),
        memory_limit_mb=draw(st.none() | st.integers(min_value=1, max_value=2**20)),
        cpu_limit=draw(st.none() | _positive_floats),
        timeout_seconds=draw(st.none() | _positive_floats),
        environment=draw(st.dictionaries(_keys, safe_text, max_size=4)),
        environment_template=draw(st.none() | names),
        networks=draw(st.lists(st.one_of(names, network_attachments()), max_size=3)),
        working_directory=draw(st.none() | _absolute_paths),
        user=draw(st.none() | names),
        labels=draw(st.dictionaries(names, safe_text, max_size=4)),
        mounts=draw(st.lists(mounts(), max_size=3)),
        host=draw(st.none() | names),
        pull_policy=draw(st.sampled_from(PULL_POLICIES)),
        max_retries=draw(st.integers(min_value=0, max_value=10)),
        priority=draw(_ints),
    )


def utc_datetimes() -> st.SearchStrategy[datetime]:
    """Aware datetimes in UTC, the only kind the library makes and stores."""
    return st.datetimes(timezones=st.just(UTC))


def attempt_outcomes() -> st.SearchStrategy[AttemptOutcome]:
    optional_text = st.none() | safe_text
    return st.builds(
        AttemptOutcome,
        attempt=st.integers(min_value=1, max_value=100),
        host=optional_text,
        container_id=optional_text,
        exit_code=st.none() | st.integers(min_value=-(2**31), max_value=2**31),
        error=optional_text,
        started_at=st.none() | utc_datetimes(),
        completed_at=st.none() | utc_datetimes(),
    )


@st.composite
def jobs(draw: st.DrawFn, specs: st.SearchStrategy[JobSpec] | None = None) -> Job:
    """Jobs in any status with any fields set; not necessarily a consistent history."""
    optional_text = st.none() | safe_text
    created_at = draw(utc_datetimes())
    return Job(
        id=draw(names),
        spec=draw(job_specs() if specs is None else specs),
        status=draw(st.sampled_from(JobStatus)),
        name=draw(optional_text),
        host=draw(optional_text),
        container_id=draw(optional_text),
        exit_code=draw(st.none() | st.integers(min_value=-(2**31), max_value=2**31)),
        created_at=created_at,
        started_at=draw(st.none() | utc_datetimes()),
        completed_at=draw(st.none() | utc_datetimes()),
        stdout=draw(st.text()),
        stderr=draw(st.text()),
        max_memory_bytes=draw(st.none() | st.integers(min_value=0, max_value=2**62)),
        cpu_usage_percent=draw(st.none() | st.floats(min_value=0, max_value=1e4)),
        oom_killed=draw(st.booleans()),
        error=draw(optional_text),
        attempts=draw(st.integers(min_value=0, max_value=100)),
        logs_truncated=draw(st.booleans()),
        owner=draw(optional_text),
        cancel_requested=draw(st.booleans()),
        previous_attempts=tuple(draw(st.lists(attempt_outcomes(), max_size=3))),
    )


def log_lines() -> st.SearchStrategy[LogLine]:
    return st.builds(
        LogLine,
        st.sampled_from(["stdout", "stderr"]),
        safe_text.filter(lambda s: "\n" not in s),
        utc_datetimes(),
    )


def environment_templates() -> st.SearchStrategy[EnvironmentTemplate]:
    line = st.builds(
        "{}={}".format,
        st.text(_LOWER + "_ABC", min_size=1, max_size=10),
        st.text(_LOWER + "_./:-ABC", max_size=20),
    )
    return st.builds(
        EnvironmentTemplate,
        names,
        st.lists(line, max_size=5).map("\n".join),
        safe_text,
    )


# A fixed instant for tests that want readable, ordered times.
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    """`T0` plus some seconds."""
    return T0 + timedelta(seconds=seconds)


# --- anything at all, for the property that submit never misbehaves -------------

_anything = st.none() | st.booleans() | st.integers() | st.floats() | safe_text | st.text()
wild_spec_kwargs = st.fixed_dictionaries(
    {"image": st.one_of(images(), st.text(max_size=30), st.integers())},
    optional={
        "command": st.one_of(st.text(max_size=30), st.lists(st.text(max_size=10), max_size=3),
                             st.integers()),
        "memory_limit_mb": _anything,
        "cpu_limit": _anything,
        "timeout_seconds": _anything,
        "environment": st.one_of(
            st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=3),
            st.dictionaries(st.text(max_size=5), _anything, max_size=2),
            _anything,
        ),
        "labels": st.one_of(st.dictionaries(st.text(max_size=10), st.text(max_size=10),
                                            max_size=3), _anything),
        "user": st.one_of(st.sampled_from(["0", "root", "0:0", "1000", "nobody"]), _anything),
        "networks": st.one_of(st.lists(st.sampled_from(["host", "bridge", "", "x"]),
                                       max_size=2), _anything),
        "working_directory": _anything,
        "pull_policy": st.one_of(st.sampled_from(PULL_POLICIES), _anything),
        "max_retries": _anything,
        "priority": _anything,
        "name": _anything,
        "host": _anything,
    },
)


# --- user specs, spelled every way Docker reads them -------------------------------

__all__ += ["id_spellings", "user_names", "zero_spellings"]


def _docker_number(text: str) -> bool:
    # Go's Atoi: one optional sign, then ASCII digits only.
    body = text[1:] if text[:1] in ("+", "-") else text
    return body != "" and all("0" <= c <= "9" for c in body)


def zero_spellings() -> st.SearchStrategy[str]:
    """Every spelling of 0 that Docker (Go's strconv.Atoi) accepts: "0", "00", "+0", "-000"..."""
    return st.builds(
        "{}{}".format, st.sampled_from(["", "+", "-"]), st.integers(1, 30).map("0".__mul__)
    )


def id_spellings() -> st.SearchStrategy[str]:
    """A non-zero uid or gid, maybe with a '+' and leading zeros, as Docker accepts it."""
    return st.builds(
        "{}{}{}".format,
        st.sampled_from(["", "+"]),
        st.integers(0, 5).map("0".__mul__),
        st.integers(1, 2**31 - 1),
    )


def user_names() -> st.SearchStrategy[str]:
    """User or group names: printable, no space or ':', not a number, not "root"."""
    return st.text(
        st.characters(categories=["L", "N", "P", "S"], exclude_characters=":"),
        min_size=1,
        max_size=12,
    ).filter(lambda s: s != "root" and not _docker_number(s))
