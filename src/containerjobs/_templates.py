"""Environment templates: ``KEY=VALUE`` lines, as in a ``.env`` file."""

from __future__ import annotations

from ._errors import InvalidJobSpec
from ._secrets import Secret, reference


def parse_environment(text: str) -> dict[str, str | Secret]:
    """Parse ``KEY=VALUE`` lines into a dict.

    Blank lines and ``#`` comments are skipped, an ``export `` prefix is allowed, the
    line is split on its first ``=``, key and value are stripped, one pair of matching
    quotes around the value is removed, and the last of a repeated key wins. A value
    ``${secret:NAME}`` is a `Secret`. A line without ``=``, with a bad key, or with a
    reference that is not the whole value raises `InvalidJobSpec` naming its number.
    """
    variables: dict[str, str | Secret] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].lstrip()
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        # Never quote the line itself in the message: its value may be a secret.
        if not sep:
            raise InvalidJobSpec(f"environment template line {number} has no '='")
        if not key or any(c.isspace() for c in key) or "\x00" in key:
            raise InvalidJobSpec(f"environment template line {number} has an invalid key")
        if "\x00" in value:
            raise InvalidJobSpec(f"environment template line {number} contains a NUL byte")
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        try:
            secret = reference(value)
        except ValueError as exc:
            raise InvalidJobSpec(f"environment template line {number}: {exc}") from None
        variables[key] = value if secret is None else secret
    return variables
