"""Who a job runs as: user specs and an image's user database, read the way Docker does.

Docker hands ``Config.User`` to libcontainer's ``GetExecUser`` (runc's
``libcontainer/user``, now ``github.com/moby/sys/user``), which looks the spec up in the
image's own /etc/passwd and /etc/group, then truncates the ids to 32 bits. Whatever
that code decides is what the job runs as, so this module repeats it rule for rule,
quirks included:

- a number is read by Go's ``strconv.Atoi``: ``"00"``, ``"+0"`` and ``"-0"`` are 0;
  whitespace is not stripped (``" 0"`` is a name), and in the files a field that is
  not a number is read as 0, one out of range as the nearest 64-bit int;
- ids are cast to ``uint32``: an entry of 4294967296 runs as 0;
- a user without a group takes the primary group of its passwd entry, or gid 0 when
  it is a number with no entry; a user found by name also gets, as supplementary
  groups, every group of /etc/group that lists that name;
- the first matching line wins.

Docker versions read /etc/group differently (older ones neither strip a line nor skip
``#`` comments), so a spec is checked against both readings. No I/O here: the caller
brings the files' bytes.
"""

from __future__ import annotations

import re

import attrs

MAX_ID = 2**31 - 1  # runc refuses a bare numeric id above it
_UINT32 = 2**32 - 1
_INT64_MAX = 2**63 - 1
_UINT64_MAX = 2**64 - 1
_NUMBER = re.compile(r"[+-]?[0-9]+")
# Go's unicode.IsSpace, which bytes.TrimSpace strips; Python's isspace() adds \x1c-\x1f.
_GO_SPACE = "\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(
    map(chr, range(0x2000, 0x200B))
)
# bufio.Scanner's default limit: a longer /etc/passwd line makes the lookup fail.
_SCANNER_MAX_LINE = 64 * 1024


class UserSpecError(ValueError):
    """A user spec that Docker would read in a way its writer did not mean."""


class UnknownUser(ValueError):
    """A user or group name that the image's files do not have."""


class RunsAsRoot(ValueError):
    """A user spec that the image's files turn into uid 0 or a group of gid 0."""


@attrs.frozen
class UserSpec:
    """A parsed ``user[:group]``, with the numbers Docker reads in it."""

    user: str
    group: str | None
    uid: int | None  # the number, when the user part is one
    gid: int | None

    @property
    def numeric(self) -> bool:
        """Both parts are numbers: Docker runs it as written, without the image's files."""
        return self.uid is not None and self.gid is not None

    def root_reason(self) -> str | None:
        """Why the spec asks for root on its face, or None."""
        if self.uid == 0:
            return f"{self.user!r} is uid 0 (root)"
        if self.user == "root":
            return "'root' is the root user"
        if self.gid == 0:
            return f"group {self.group!r} is gid 0 (root's group)"
        if self.group == "root":
            return "group 'root' is root's group"
        return None


def parse_user_spec(text: str) -> UserSpec:
    """Parse ``user[:group]``; `UserSpecError` for what Docker would read oddly."""
    user, sep, group = text.partition(":")
    if ":" in group:
        raise UserSpecError("it has more than one ':' (give user or user:group)")
    if not user:
        raise UserSpecError("the user part is empty, which Docker runs as uid 0")
    if sep and not group:
        raise UserSpecError("the group after ':' is empty (leave out the ':' or name a group)")
    for what, part in (("user", user), ("group", group)):
        # isprintable() is False for control, format and unassigned characters and
        # for every space but ' ': Docker strips none of them, so " 0" is a name.
        if not part.isprintable() or " " in part:
            raise UserSpecError(
                f"the {what} part has spaces or unprintable characters, which Docker does not strip"
            )
    return UserSpec(
        user=user,
        group=group if sep else None,
        uid=_number("uid", user),
        gid=_number("gid", group) if sep else None,
    )


def _number(what: str, part: str) -> int | None:
    if not _NUMBER.fullmatch(part):
        return None
    digits = part.lstrip("+-").lstrip("0")
    # Ten digits or fewer fit in MAX_ID's range check (and int() never sees a huge string).
    value = int(digits or "0") if len(digits) <= 10 else MAX_ID + 1
    if part.startswith("-"):
        value = -value
    if not 0 <= value <= MAX_ID:
        raise UserSpecError(f"{what} {part} is outside 0 to {MAX_ID}")
    return value


def go_atoi(raw: bytes) -> tuple[int, bool]:
    """Go's ``strconv.Atoi`` on a 64-bit machine: the value and whether it parsed.

    A failed parse still has a value, which libcontainer keeps for a file's fields
    (it ignores the error): 0 for a syntax error, the nearest int64 when out of range.
    """
    if not raw:
        return 0, False
    negative = raw.startswith(b"-")
    digits = raw[1:] if raw[:1] in (b"+", b"-") else raw
    if not digits:
        return 0, False
    if len(raw) < 19:  # Atoi's fast path: only digits, and no overflow is possible
        if not digits.isdigit():  # bytes.isdigit() is ASCII digits only
            return 0, False
        return (-int(digits) if negative else int(digits)), True
    # ParseInt, then ParseUint: byte by byte, stopping at the first bad byte or at
    # the first overflow, whichever comes first.
    value = 0
    for byte in digits:
        if not 0x30 <= byte <= 0x39:
            return 0, False
        value = value * 10 + byte - 0x30
        if value > _UINT64_MAX:
            break
    if value > _INT64_MAX + negative:
        return (-_INT64_MAX - 1 if negative else _INT64_MAX), False
    return (-value if negative else value), True


@attrs.frozen
class PasswdEntry:
    name: bytes
    uid: int
    gid: int


@attrs.frozen
class GroupEntry:
    name: bytes
    gid: int
    members: tuple[bytes, ...]


def _lines(data: bytes) -> list[bytes]:
    # bufio.Scanner's lines: split at \n, one trailing \r dropped (splitlines() would
    # also split at \v, \f, \x1c... which Go does not).
    return [line.removesuffix(b"\r") for line in data.split(b"\n")]


def _trim(line: bytes) -> bytes:
    # bytes.TrimSpace: invalid UTF-8 is never space; surrogateescape keeps it intact.
    return (
        line.decode("utf-8", "surrogateescape").strip(_GO_SPACE).encode("utf-8", "surrogateescape")
    )


def _field(fields: list[bytes], index: int) -> int:
    return go_atoi(fields[index])[0] if len(fields) > index else 0


def parse_passwd(data: bytes) -> list[PasswdEntry]:
    """The entries of an /etc/passwd, as libcontainer reads them (no comments)."""
    entries = []
    for raw in _lines(data):
        if len(raw) >= _SCANNER_MAX_LINE:
            raise UnknownUser(
                "the image's /etc/passwd has a line of 64 KiB or more, which Docker cannot read"
            )
        line = _trim(raw)
        if line:
            fields = line.split(b":")
            entries.append(PasswdEntry(fields[0], _field(fields, 2), _field(fields, 3)))
    return entries


def parse_group(data: bytes, *, trim: bool = True) -> list[GroupEntry]:
    """The entries of an /etc/group. With ``trim`` (current Docker), lines are stripped
    and ``#`` comments skipped; without (older Docker), they are taken as they are."""
    entries = []
    for raw in _lines(data):
        line = _trim(raw) if trim else raw
        if not line or (trim and line.startswith(b"#")):
            continue
        fields = line.split(b":")
        members = tuple(fields[3].split(b",")) if len(fields) > 3 and fields[3] else ()
        entries.append(GroupEntry(fields[0], _field(fields, 2), members))
    return entries


@attrs.frozen
class ExecUser:
    """What the process gets: ids as the kernel sees them (32 bits)."""

    uid: int
    gid: int
    supplementary: tuple[int, ...]
    entry: bytes | None  # the name of the passwd entry the user matched, if any

    @property
    def ids(self) -> tuple[int, ...]:
        return (self.uid, self.gid, *self.supplementary)


def resolve(
    spec: UserSpec, passwd: bytes | None, group: bytes | None, *, trim_group: bool = True
) -> ExecUser:
    """Resolve `spec` against an image's /etc/passwd and /etc/group (None: absent) as
    libcontainer's GetExecUser does. `UnknownUser` where Docker would fail to start."""
    # A numeric part is always an id, never a name, even when a line has that name.
    users = parse_passwd(passwd) if passwd is not None else []
    match = next((u for u in users if _same(spec.user, spec.uid, u.name, u.uid)), None)
    uid, gid, entry = 0, 0, None  # GetExecUser's defaults, when nothing overrides them
    if match is not None:
        uid, gid, entry = match.uid, match.gid, match.name
    elif spec.uid is not None:
        uid = spec.uid
    else:
        raise UnknownUser(f"user {spec.user!r} is not in {_where('/etc/passwd', passwd)}")
    supplementary: list[int] = []
    # An entry with an empty name matches no group member, as in GetExecUser.
    if spec.group is not None or entry:
        groups = parse_group(group, trim=trim_group) if group is not None else []
        if spec.group is None:
            supplementary = [g.gid for g in groups if entry in g.members]
        elif found := next((g for g in groups if _same(spec.group, spec.gid, g.name, g.gid)), None):
            gid = found.gid
        elif spec.gid is not None:
            gid = spec.gid
        else:
            raise UnknownUser(f"group {spec.group!r} is not in {_where('/etc/group', group)}")
    # Docker casts every id to uint32.
    return ExecUser(uid & _UINT32, gid & _UINT32, tuple(g & _UINT32 for g in supplementary), entry)


def _same(wanted: str, number: int | None, name: bytes, id_: int) -> bool:
    return id_ == number if number is not None else name == wanted.encode()


def _where(path: str, data: bytes | None) -> str:
    return f"the image's {path}" if data is not None else f"the image (it has no {path})"


def resolve_not_root(spec: UserSpec, passwd: bytes | None, group: bytes | None) -> ExecUser:
    """Resolve `spec` as `resolve` does, under every reading of /etc/group that Docker
    versions have used; `RunsAsRoot` when any of them gives uid 0 or a group of gid 0,
    `UnknownUser` when current Docker would fail to find the user or group."""
    outcomes: list[ExecUser | UnknownUser] = []
    for trim in (True, False):
        try:
            outcomes.append(resolve(spec, passwd, group, trim_group=trim))
        except UnknownUser as exc:
            outcomes.append(exc)
    for outcome in outcomes:
        if isinstance(outcome, ExecUser) and 0 in outcome.ids:
            raise RunsAsRoot(_root_reason(spec, outcome, passwd is not None))
    current = outcomes[0]
    if isinstance(current, UnknownUser):
        raise current
    return current


def _root_reason(spec: UserSpec, who: ExecUser, has_passwd: bool) -> str:
    numeric = "a numeric user:group that is not 0, such as '65534:65534'"
    if who.uid == 0:
        return f"the image's /etc/passwd makes {spec.user!r} uid 0 (root); give {numeric}"
    if who.gid == 0 and spec.group is not None:
        return (
            f"the image's /etc/group makes group {spec.group!r} gid 0 (root's group); "
            f"give {numeric}"
        )
    if who.gid == 0 and who.entry is None:
        where = "no entry in the image's /etc/passwd" if has_passwd else "no /etc/passwd"
        return (
            f"with {where} and no group given, uid {spec.uid} would run with gid 0 "
            f"(root's group); give the group too, such as '{spec.uid}:{spec.uid}'"
        )
    if who.gid == 0:
        return (
            f"the image's /etc/passwd gives {spec.user!r} the primary group 0 (root's group); "
            f"give {numeric}"
        )
    return (
        f"the image's /etc/group makes {spec.user!r} a member of gid 0 (root's group); "
        f"give {numeric}"
    )
