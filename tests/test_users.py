"""User specs and an image's user database, resolved as Docker does (no Docker here;
tests/test_security.py checks the same rules against the daemon)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from containerjobs._users import (
    MAX_ID,
    ExecUser,
    RunsAsRoot,
    UnknownUser,
    UserSpec,
    UserSpecError,
    go_atoi,
    parse_group,
    parse_passwd,
    parse_user_spec,
    resolve,
    resolve_not_root,
)
from tests.strategies import id_spellings, user_names, zero_spellings

INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

# --- Go's strconv.Atoi --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"0", (0, True)),
        (b"00", (0, True)),
        (b"+0", (0, True)),
        (b"-0", (0, True)),
        (b"+65534", (65534, True)),
        (b"-5", (-5, True)),
        (b"", (0, False)),
        (b"+", (0, False)),
        (b"-", (0, False)),
        (b"+-1", (0, False)),
        (b" 1", (0, False)),  # no whitespace is stripped
        (b"1 ", (0, False)),
        (b"1_000", (0, False)),  # underscores only with base 0
        (b"0x10", (0, False)),
        ("\u0663".encode(), (0, False)),  # an Arabic-Indic digit is not a digit to Go
        (b"9223372036854775807", (INT64_MAX, True)),
        (b"9223372036854775808", (INT64_MAX, False)),  # out of range: clamped, and failed
        (b"-9223372036854775808", (INT64_MIN, True)),
        (b"-9223372036854775809", (INT64_MIN, False)),
        (b"-99999999999999999999", (INT64_MIN, False)),
        (b"0000000000000000000000000042", (42, True)),  # the slow path, no overflow
        (b"99999999999999999999x", (INT64_MAX, False)),  # the overflow is seen first
        (b"x99999999999999999999", (0, False)),
        (b"1234567890123456789x", (0, False)),
    ],
)
def test_go_atoi(text: bytes, expected: tuple[int, bool]) -> None:
    assert go_atoi(text) == expected


@given(
    value=st.integers(INT64_MIN, INT64_MAX),
    zeros=st.integers(0, 25),
    plus=st.booleans(),
)
def test_go_atoi_reads_every_decimal_in_range(value: int, zeros: int, plus: bool) -> None:
    sign = "-" if value < 0 else "+" if plus else ""
    assert go_atoi(f"{sign}{'0' * zeros}{abs(value)}".encode()) == (value, True)


@given(value=st.integers(INT64_MAX + 1, 10**40), negative=st.booleans())
def test_go_atoi_clamps_out_of_range(value: int, negative: bool) -> None:
    text = f"-{value + 1}" if negative else str(value)  # -2**63 itself is in range
    assert go_atoi(text.encode()) == ((INT64_MIN, False) if negative else (INT64_MAX, False))


# --- user specs -----------------------------------------------------------------------


@given(zero=zero_spellings(), other=id_spellings())
def test_every_spelling_of_zero_is_root(zero: str, other: str) -> None:
    for text in (zero, f"{zero}:{other}", f"{other}:{zero}", f"{zero}:{zero}"):
        spec = parse_user_spec(text)
        assert spec.root_reason() is not None, text
    assert parse_user_spec(zero).uid == 0
    assert parse_user_spec(f"{other}:{zero}").gid == 0


@given(uid=id_spellings(), gid=id_spellings())
def test_non_zero_numbers_are_read_as_docker_reads_them(uid: str, gid: str) -> None:
    spec = parse_user_spec(f"{uid}:{gid}")
    assert spec.root_reason() is None and spec.numeric
    assert (spec.uid, spec.gid) == (int(uid), int(gid))
    alone = parse_user_spec(uid)
    assert alone.group is None and not alone.numeric  # its group comes from the image


@given(user=user_names(), group=st.none() | user_names() | id_spellings())
def test_names_are_left_for_the_image(user: str, group: str | None) -> None:
    spec = parse_user_spec(user if group is None else f"{user}:{group}")
    assert (spec.user, spec.uid, spec.root_reason()) == (user, None, None)
    assert not spec.numeric


@pytest.mark.parametrize("text", ["root", "root:65534", "65534:root", "nobody:root"])
def test_root_by_name(text: str) -> None:
    assert parse_user_spec(text).root_reason() is not None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (":", "user part is empty"),
        (":65534", "user part is empty"),  # Docker runs it as uid 0
        ("65534:", "group after ':' is empty"),
        ("a:b:c", "more than one ':'"),
        (" 0", "spaces"),  # Docker looks up a user named " 0"
        ("0 ", "spaces"),
        ("65534: 0", "spaces"),
        ("\t0", "spaces"),
        ("nobody\u200b", "unprintable"),  # a zero-width space
        ("nobody\x1f", "unprintable"),
        ("-1", "outside 0 to"),
        ("2147483648", "outside 0 to"),
        ("4294967296", "outside 0 to"),  # would be 0 once cast to 32 bits
        ("65534:99999999999999999999999", "outside 0 to"),
    ],
)
def test_specs_docker_would_read_oddly_are_refused(text: str, why: str) -> None:
    with pytest.raises(UserSpecError, match=why):
        parse_user_spec(text)


def test_the_largest_id() -> None:
    assert parse_user_spec(f"{MAX_ID}:{MAX_ID}") == UserSpec(
        str(MAX_ID), str(MAX_ID), MAX_ID, MAX_ID
    )


# --- the files --------------------------------------------------------------------------

PASSWD = b"""root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/sh
app:x:1000:1000::/home/app:/bin/sh
app:x:2000:2000::/home/app2:/bin/sh
"""
GROUP = b"""root:x:0:
nobody:x:65534:
app:x:1000:
docker:x:999:app,other
video:x:44:app
"""


def test_passwd_fields_are_read_with_go_quirks() -> None:
    entries = parse_passwd(
        b"  spaced:x:1:2  \r\n"
        b"\n"
        b"short\n"
        b"word:x:zero:ten\n"
        b"huge:x:-99999999999999999999:4294967296\n"
        b"#comment:x:3:3\n"
    )
    assert [(e.name, e.uid, e.gid) for e in entries] == [
        (b"spaced", 1, 2),
        (b"short", 0, 0),  # missing fields are 0
        (b"word", 0, 0),  # a field that is not a number is 0
        (b"huge", INT64_MIN, 4294967296),
        (b"#comment", 3, 3),  # /etc/passwd has no comments for libcontainer
    ]


def test_group_lines_are_read_both_ways() -> None:
    text = b"  wheel:x:0:app \n#old:x:0:app\nplain:x:5:\n"
    trimmed = parse_group(text)
    raw = parse_group(text, trim=False)
    assert [(g.name, g.gid, g.members) for g in trimmed] == [
        (b"wheel", 0, (b"app",)),
        (b"plain", 5, ()),
    ]
    assert [(g.name, g.members) for g in raw] == [
        (b"  wheel", (b"app ",)),
        (b"#old", (b"app",)),
        (b"plain", ()),
    ]


def test_a_long_passwd_line_is_refused_as_docker_cannot_read_it() -> None:
    with pytest.raises(UnknownUser, match="64 KiB"):
        parse_passwd(b"a:x:1:1:" + b"g" * 70000 + b"\n")


# --- resolution -------------------------------------------------------------------------


def who(text: str, passwd: bytes | None = PASSWD, group: bytes | None = GROUP) -> ExecUser:
    return resolve(parse_user_spec(text), passwd, group)


def test_a_name_takes_the_first_entry_and_its_supplementary_groups() -> None:
    assert who("app") == ExecUser(1000, 1000, (999, 44), b"app")
    assert who("nobody") == ExecUser(65534, 65534, (), b"nobody")


def test_a_number_is_an_id_even_when_a_name_matches() -> None:
    assert who("2000") == ExecUser(2000, 2000, (999, 44), b"app")  # found by uid
    passwd = b"1000:x:5:5\n"
    assert who("1000", passwd, None) == ExecUser(1000, 0, (), None)  # no uid 1000 in it


def test_an_explicit_group_replaces_the_primary_and_drops_supplementary_groups() -> None:
    assert who("app:video") == ExecUser(1000, 44, (), b"app")
    assert who("app:4242") == ExecUser(1000, 4242, (), b"app")  # a number not in the file
    assert who("4242:app") == ExecUser(4242, 1000, (), None)


def test_unknown_names_fail_as_in_docker() -> None:
    with pytest.raises(UnknownUser, match="'bob' is not in the image's /etc/passwd"):
        who("bob")
    with pytest.raises(UnknownUser, match="group 'staff' is not in the image's /etc/group"):
        who("app:staff")
    with pytest.raises(UnknownUser, match="it has no /etc/passwd"):
        who("app", None, None)
    with pytest.raises(UnknownUser, match="it has no /etc/group"):
        who("4242:staff", PASSWD, None)


def test_numbers_without_files() -> None:
    # No /etc/passwd: a uid runs as is, with gid 0 unless a group is given.
    assert who("4242", None, None) == ExecUser(4242, 0, (), None)
    assert who("4242:4242", None, None) == ExecUser(4242, 4242, (), None)


def test_ids_are_cast_to_32_bits() -> None:
    passwd = b"wrap:x:4294967296:4294967297\nclamp:x:-99999999999999999999:1\n"
    assert who("wrap", passwd, None) == ExecUser(0, 1, (), b"wrap")
    assert who("clamp", passwd, None) == ExecUser(0, 1, (), b"clamp")


@pytest.mark.parametrize(
    ("text", "passwd", "group", "why"),
    [
        ("toor", b"toor:x:0:1000\n", b"", "makes 'toor' uid 0"),
        ("wrap", b"wrap:x:4294967296:1000\n", b"", "makes 'wrap' uid 0"),
        ("odd", b"odd:x:zero:1000\n", b"", "makes 'odd' uid 0"),
        ("staff", b"staff:x:1000:0\n", b"", "primary group 0"),
        ("app", PASSWD, b"wheel:x:0:other,app\n", "member of gid 0"),
        ("app:wheel", PASSWD, b"wheel:x:0:\n", "group 'wheel' gid 0"),
        ("4242", PASSWD, GROUP, "give the group too, such as '4242:4242'"),
        ("4242", None, None, "no /etc/passwd"),
        # Older Docker reads a "#" line as a group; newer ones read a padded name.
        ("app", PASSWD, b"#wheel:x:0:app\n", "member of gid 0"),
        ("app", PASSWD, b"wheel:x:0:other,app \n", "member of gid 0"),
    ],
)
def test_root_through_the_image_is_refused(
    text: str, passwd: bytes | None, group: bytes | None, why: str
) -> None:
    with pytest.raises(RunsAsRoot, match=why):
        resolve_not_root(parse_user_spec(text), passwd, group)


def test_not_root_resolves() -> None:
    assert resolve_not_root(parse_user_spec("app"), PASSWD, GROUP) == who("app")
    with pytest.raises(UnknownUser):
        resolve_not_root(parse_user_spec("bob"), PASSWD, GROUP)


_small_names = st.sampled_from(["a", "b", "c", "root"])
_small_ids = st.sampled_from([0, 1, 2, 1000, 4294967296])


@given(
    users=st.lists(st.tuples(_small_names, _small_ids, _small_ids), max_size=5),
    groups=st.lists(
        st.tuples(_small_names, _small_ids, st.lists(_small_names, max_size=3)), max_size=5
    ),
    spec=st.sampled_from(["a", "b", "c", "1", "2", "1000", "a:b", "a:1", "1:c", "2:2"]),
)
def test_resolution_follows_the_files(
    users: list[tuple[str, int, int]],
    groups: list[tuple[str, int, list[str]]],
    spec: str,
) -> None:
    passwd = "".join(f"{n}:x:{u}:{g}::/:/bin/sh\n" for n, u, g in users).encode()
    group = "".join(f"{n}:x:{g}:{','.join(m)}\n" for n, g, m in groups).encode()
    parsed = parse_user_spec(spec)
    try:
        result = resolve_not_root(parsed, passwd, group)
    except (RunsAsRoot, UnknownUser):
        return
    # What runs is never root, and it is what the first matching line says.
    assert 0 not in result.ids
    matches = [(n, u, g) for n, u, g in users if (str(u) if parsed.uid else n) == parsed.user]
    if matches:
        name, uid, gid = matches[0]
        assert result.uid == uid % 2**32
        if parsed.group is None:
            assert result.gid == gid % 2**32
            assert list(result.supplementary) == [
                g % 2**32 for _, g, members in groups if name in members
            ]
