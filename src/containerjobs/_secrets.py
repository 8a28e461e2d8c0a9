"""Secrets: references that jobs store, values that only the launching manager sees.

A `Secret` stands in a job's environment for a value the store must never hold. The
manager that launches the job resolves it through its secret source (`EnvSecrets`,
`FileSecrets`, or any object with ``async def resolve(name) -> str``), hands the value
to the container, and masks it in the job's output. The value reaches no record, no
log event, no repr and no error.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio
import attrs

from ._errors import SecretNotFound

# Names as Docker and Kubernetes name secrets (and safe as a file name: no path).
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}")
# A template value that is a reference: ${secret:NAME}, the whole value.
_REFERENCE = re.compile(r"\$\{secret:([^}]*)\}")
MASK = "***"
# Shorter values are not masked: "***" in place of every "1" or "yes" in the output
# would hide more than it protects, and so short a value is no secret anyway.
MIN_MASKED_CHARS = 4


def _check_name(_: object, __: attrs.Attribute[str], value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"a secret's name must be a str, not {type(value).__name__}")
    if not _NAME.fullmatch(value):
        raise ValueError(
            f"secret name {value!r} is not valid: use letters, digits, '_', '.' and '-' "
            "(not first), at most 255 characters"
        )


@attrs.frozen
class Secret:
    """A secret, by name, as a value of `JobSpec.environment`.

    The job's record keeps the name; the manager that launches the job resolves it
    (``JobManager(secrets=...)``) and the container gets the value, which is masked
    as ``***`` wherever the job prints it. In an environment template, write
    ``KEY=${secret:NAME}``.

    ```python
    spec = JobSpec("alpine:3.18", "deploy", environment={"TOKEN": Secret("api-token")})
    async with JobManager(secrets=FileSecrets("/run/secrets")) as manager:
        await manager.run(spec)  # TOKEN holds the file /run/secrets/api-token
    ```

    Attributes:
        name: the secret's name: letters, digits, ``_``, ``.`` and ``-`` (not
            first), at most 255 characters.
    """

    name: str = attrs.field(validator=_check_name)


def reference(value: str) -> Secret | None:
    """The `Secret` a template value ``${secret:NAME}`` stands for, else None.

    Raises `ValueError` for a value that holds a reference but is not one whole
    (``Bearer ${secret:T}``): only whole values can be kept out of the record.
    """
    if "${secret:" not in value:
        return None
    match = _REFERENCE.fullmatch(value)
    if match is None:
        raise ValueError(
            "a ${secret:NAME} reference must be the whole value (the secret is stored "
            "apart from the text around it)"
        )
    return Secret(match.group(1))


@runtime_checkable
class SecretSource(Protocol):
    """Where a manager finds the values of the secrets its jobs name."""

    async def resolve(self, name: str) -> str:
        """The value of secret `name`; `SecretNotFound` (or `KeyError`) when there
        is none. The message may name the secret, never hold a value."""
        ...


@attrs.frozen
class EnvSecrets:
    """Secrets from the manager process's own environment: secret ``NAME`` is the
    variable ``prefix + NAME``.

    Attributes:
        prefix: put before a secret's name to make the variable's.
    """

    prefix: str = ""

    async def resolve(self, name: str) -> str:
        variable = self.prefix + name
        try:
            return os.environ[variable]
        except KeyError:
            raise SecretNotFound(
                f"secret {name!r} is not set: the manager's environment has no "
                f"variable {variable!r}"
            ) from None


@attrs.frozen
class FileSecrets:
    """Secrets as files, one per secret, named after it, as Docker (``/run/secrets``)
    and Kubernetes mount them. One newline at the end of a file is not part of the
    value (``echo`` adds one).

    Attributes:
        directory: the folder that holds the files.
    """

    directory: Path = attrs.field(converter=Path)

    async def resolve(self, name: str) -> str:
        _check_name(None, None, name)  # type: ignore[arg-type]
        path = self.directory / name
        try:
            data = await anyio.Path(path).read_bytes()
        except FileNotFoundError:
            raise SecretNotFound(f"secret {name!r} is not set: no file {str(path)!r}") from None
        except OSError as exc:
            raise SecretNotFound(
                f"secret {name!r} cannot be read from {str(path)!r}: {exc.strerror}"
            ) from None
        if data.endswith(b"\r\n"):
            data = data[:-2]
        elif data.endswith(b"\n"):
            data = data[:-1]
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretNotFound(
                f"secret {name!r} in {str(path)!r} is not UTF-8 text"
            ) from None


class NoSecrets:
    """The source of a manager given none: every secret is missing, and says how to
    give one."""

    async def resolve(self, name: str) -> str:
        raise SecretNotFound(
            f"secret {name!r} cannot be resolved: this manager has no secret source "
            "(give one: JobManager(secrets=cj.EnvSecrets()) or cj.FileSecrets(directory))"
        )


async def resolve_environment(
    environment: Mapping[str, str | Secret], source: SecretSource
) -> tuple[dict[str, str], list[str]]:
    """The environment with every `Secret` replaced by its value, and the values
    (to mask). Raises `SecretNotFound` naming the first secret that is missing."""
    resolved: dict[str, str] = {}
    values: list[str] = []
    for key, value in environment.items():
        if isinstance(value, Secret):
            try:
                text = await source.resolve(value.name)
            except SecretNotFound:
                raise
            except KeyError:
                raise SecretNotFound(f"secret {value.name!r} is not set") from None
            if not isinstance(text, str):
                raise SecretNotFound(
                    f"secret {value.name!r}: the source returned a {type(text).__name__}, "
                    "not a str"
                )
            if "\x00" in text:
                raise SecretNotFound(f"secret {value.name!r} contains a NUL byte")
            resolved[key] = text
            values.append(text)
        else:
            resolved[key] = value
    return resolved, values


class Masker:
    """Replaces the values of a job's secrets with ``***`` in what it prints.

    Each line of a value is masked on its own (output is kept line by line); lines
    shorter than `MIN_MASKED_CHARS` are not masked.
    """

    def __init__(self, values: Iterable[str] = ()) -> None:
        pieces = {
            line
            for value in values
            for line in value.splitlines()
            if len(line) >= MIN_MASKED_CHARS
        }
        # Longest first: a value that holds another is masked whole.
        ordered = sorted(pieces, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def mask(self, text: str) -> str:
        if self._pattern is None:
            return text
        return self._pattern.sub(MASK, text)
