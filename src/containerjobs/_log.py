"""The library's logging: stdlib `logging` under the ``containerjobs`` names, quiet
unless the application says otherwise.

Every event is a name (``"job.finished"``) with keyword fields (``job_id=...``). The
record's message reads ``job.finished job_id='…' status='completed'`` for a plain
`logging` set-up; the event and each field are also attributes of the record
(``record.event``, ``record.job_id``, …) and all fields together are
``record.containerjobs``, so a structured formatter (structlog's `ProcessorFormatter`
with `ExtraAdder`, a JSON formatter) renders them as fields. A field whose name a
`LogRecord` already uses (``name``, ``args``, …) is an attribute as ``field_NAME``.

The package logger has a `NullHandler`, as a library's should: an application that
configures no logging sees nothing from containerjobs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

logging.getLogger("containerjobs").addHandler(logging.NullHandler())

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message",
    "asctime",
}


class _Message:
    """The text of a record, made only if a handler formats it."""

    __slots__ = ("event", "fields")

    def __init__(self, event: str, fields: Mapping[str, Any]) -> None:
        self.event = event
        self.fields = fields

    def __str__(self) -> str:
        if not self.fields:
            return self.event
        pairs = " ".join(f"{key}={value!r}" for key, value in self.fields.items())
        return f"{self.event} {pairs}"


class Logger:
    """A logger that takes an event name and fields, and can `bind` fields for later
    events (the shape of a structlog bound logger, on stdlib logging)."""

    __slots__ = ("_context", "_logger")

    def __init__(self, logger: logging.Logger, context: Mapping[str, Any] | None = None) -> None:
        self._logger = logger
        self._context: Mapping[str, Any] = context or {}

    def bind(self, **fields: Any) -> Logger:
        return Logger(self._logger, {**self._context, **fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error with the traceback of the exception being handled."""
        self._emit(logging.ERROR, event, fields, exc_info=True)

    def _emit(
        self, level: int, event: str, fields: Mapping[str, Any], *, exc_info: bool = False
    ) -> None:
        if not self._logger.isEnabledFor(level):
            return  # the common case in an application that set nothing up: free
        merged = {**self._context, **fields}
        extra: dict[str, Any] = {
            (f"field_{key}" if key in _RESERVED else key): value for key, value in merged.items()
        }
        extra["event"] = event
        extra["containerjobs"] = merged
        # stacklevel 3: the record names the library's caller of info(), not this file.
        self._logger.log(
            level, _Message(event, merged), exc_info=exc_info, extra=extra, stacklevel=3
        )


def get_logger(name: str) -> Logger:
    """The logger for one part of the library (``containerjobs.manager``, ...)."""
    return Logger(logging.getLogger(name))
