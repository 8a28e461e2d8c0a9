"""How jobs show themselves: one short line in a terminal, a small HTML table in Jupyter.

A job's record can hold megabytes of output and its spec the values of its
environment. No repr and no table here shows either: output only as its last few
lines, each cut short, and the environment only by its keys.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ._output import clean_output

if TYPE_CHECKING:
    from ._models import Job

MAX_ROWS = 100  # rows of a job table; past it, a line says how many more
OUTPUT_LINES = 5  # the last lines of each stream that a job's table shows
CELL_CHARS = 120  # the longest text in one cell (a command, a line, an error)

# The colour of each status in the tables (inline: a notebook keeps no stylesheet).
_STATUS_COLOURS = {
    "completed": "#1a7f37",
    "failed": "#cf222e",
    "timeout": "#cf222e",
    "cancelled": "#6e7781",
    "running": "#0969da",
    "launching": "#0969da",
    "pending": "#9a6700",
}


def shorten(text: str, limit: int = CELL_CHARS) -> str:
    """`text` cut to `limit` characters, with "…" where it was cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def last_lines(text: str, lines: int = OUTPUT_LINES, width: int = CELL_CHARS) -> str:
    """The last `lines` lines of `text` as a terminal shows them (no ANSI escapes,
    carriage returns resolved), each cut to `width`, after a line saying how many
    came before. Cheap on long output: only the tail is split and cleaned."""
    text = text.rstrip("\n")
    if not text:
        return ""
    start = len(text)
    for _ in range(lines):
        start = text.rfind("\n", 0, start)
        if start < 0:
            break
    tail = [shorten(line, width) for line in clean_output(text[start + 1 :]).split("\n")]
    if start < 0:
        return "\n".join(tail)
    earlier = text.count("\n", 0, start) + 1
    return "\n".join([f"… {earlier} earlier line{'s' if earlier != 1 else ''}", *tail])


def command_text(command: str | tuple[str, ...] | None) -> str:
    """A spec's command as one line: a shell string as is, a list joined by spaces."""
    if command is None:
        return "(the image's own)"
    return command if isinstance(command, str) else " ".join(command)


def job_repr(job: Job) -> str:
    """``Job(id='…', status=completed, host='local', exit_code=0)``: never output,
    never the spec (and so never an environment value). A listed job, whose output
    was not read, says so."""
    name = f", name={shorten(job.name, 40)!r}" if job.name else ""
    unloaded = "" if job.output_loaded else ", output not loaded"
    return (
        f"Job(id={job.id!r}{name}, status={job.status}, host={job.host!r}, "
        f"exit_code={job.exit_code!r}{unloaded})"
    )


# --- HTML ---------------------------------------------------------------------------


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(at: datetime | None) -> str:
    return "" if at is None else at.strftime("%Y-%m-%d %H:%M:%S")


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.2f} s"


def _status(status: object) -> str:
    colour = _STATUS_COLOURS.get(str(status))
    if colour is None:
        return _e(status)
    return f'<span style="color:{colour};font-weight:bold">{_e(status)}</span>'


def _pre(text: str) -> str:
    return f'<pre style="margin:0;text-align:left">{_e(text)}</pre>'


def _table(rows: Iterable[str], head: str = "", caption: str = "") -> str:
    cap = f"<caption>{_e(caption)}</caption>" if caption else ""
    thead = f"<thead>{head}</thead>" if head else ""
    return (
        f'<table class="containerjobs">{cap}{thead}<tbody>{"".join(rows)}</tbody></table>'
    )


def job_html(job: Job) -> str:
    """One job as a two-column table: the fields that matter, the last lines of its
    output, its environment's keys (never their values)."""
    spec = job.spec
    fields: list[tuple[str, str]] = [
        ("id", f"<code>{_e(job.id)}</code>"),
        ("name", _e(job.name or "")),
        ("status", _status(job.status)),
        ("host", _e(job.host or "")),
        ("exit code", _e("" if job.exit_code is None else job.exit_code)),
        ("image", _e(spec.image)),
        ("command", f"<code>{_e(shorten(command_text(spec.command)))}</code>"),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("duration", _seconds(job.duration)),
        ("attempts", _e(job.attempts)),
    ]
    if job.max_memory_bytes is not None:
        fields.append(("peak memory", f"{job.max_memory_bytes / 2**20:.1f} MiB"))
    if job.cpu_usage_percent is not None:
        fields.append(("CPU", f"{job.cpu_usage_percent:.1f} %"))
    if job.oom_killed:
        fields.append(("OOM killed", "yes"))
    if spec.environment:
        fields.append(("environment", _e(shorten(", ".join(spec.environment)))))
    if job.error:
        fields.append(("error", _pre(shorten(job.error, 4 * CELL_CHARS))))
    if not job.output_loaded:
        # A job from list_jobs: its output was not read (an empty one would pass for
        # a job that printed nothing).
        fields.append(("output", _e(f"not loaded: await manager.get({job.id!r}) reads it")))
    else:
        for stream in ("stdout", "stderr"):
            text: str = getattr(job, stream)
            if text:
                fields.append((stream, _pre(last_lines(text))))
    rows = (
        f'<tr><th style="text-align:left">{name}</th><td style="text-align:left">{value}</td></tr>'
        for name, value in fields
        if value
    )
    return _table(rows)


_LIST_COLUMNS = ("id", "name", "status", "host", "exit code", "created", "duration", "command")


def jobs_html(jobs: list[Job]) -> str:
    """Jobs as one table, a row each (at most `MAX_ROWS`, then a line saying how many
    more); no output, no environment."""
    head = "<tr>" + "".join(f"<th>{name}</th>" for name in _LIST_COLUMNS) + "</tr>"
    rows = [
        # Unwrapped: an id or a date cut over two lines reads badly.
        '<tr style="white-space:nowrap">'
        + "".join(
            f"<td>{cell}</td>"
            for cell in (
                f"<code>{_e(job.id)}</code>",
                _e(shorten(job.name or "", 40)),
                _status(job.status),
                _e(job.host or ""),
                _e("" if job.exit_code is None else job.exit_code),
                _when(job.created_at),
                _seconds(job.duration),
                f"<code>{_e(shorten(command_text(job.spec.command), 60))}</code>",
            )
        )
        + "</tr>"
        for job in jobs[:MAX_ROWS]
    ]
    if len(jobs) > MAX_ROWS:
        rows.append(
            f'<tr><td colspan="{len(_LIST_COLUMNS)}">… {len(jobs) - MAX_ROWS} more</td></tr>'
        )
    noun = "job" if len(jobs) == 1 else "jobs"
    return _table(rows, head, caption=f"{len(jobs)} {noun}")


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _e(value)


def _row_table(values: Mapping[str, Any], caption: str = "", statuses: bool = False) -> str:
    # Names across, values below: a few numbers take one line.
    head = "<tr>" + "".join(
        f"<th>{_status(name) if statuses else _e(name)}</th>" for name in values
    ) + "</tr>"
    row = "<tr>" + "".join(f"<td>{_scalar(value)}</td>" for value in values.values()) + "</tr>"
    return _table([row], head, caption)


def summary_html(summary: Mapping[str, Any]) -> str:
    """A manager's summary: each mapping of plain values (jobs per status) as a table
    of one row, each mapping of mappings (the hosts) as a table with a row per key,
    and the plain values (slots used and free) as one row too."""
    parts = []
    for key, value in summary.items():
        if not isinstance(value, Mapping):
            continue
        if value and all(isinstance(v, Mapping) for v in value.values()):
            columns = list(dict.fromkeys(c for row in value.values() for c in row))
            head = "<tr><th></th>" + "".join(f"<th>{_e(c)}</th>" for c in columns) + "</tr>"
            rows = (
                f'<tr><th style="text-align:left">{_e(name)}</th>'
                + "".join(f"<td>{_scalar(row.get(c, ''))}</td>" for c in columns)
                + "</tr>"
                for name, row in value.items()
            )
            parts.append(_table(rows, head, caption=key))
        elif value:
            parts.append(_row_table(value, caption=key, statuses=key == "jobs"))
    plain = {key: value for key, value in summary.items() if not isinstance(value, Mapping)}
    if plain:
        parts.append(_row_table(plain))
    return "<div>" + "".join(parts) + "</div>"


class JobList(list["Job"]):
    """A list of jobs, as `JobManager.list_jobs` returns it: a plain `list` in every
    way, shown in Jupyter as one table with a row per job."""

    __slots__ = ()

    def _repr_html_(self) -> str:
        return jobs_html(self)


class Summary(dict[str, Any]):
    """What `JobManager.summary` returns: a plain `dict` in every way, shown in
    Jupyter as small tables (jobs per status, slots per host)."""

    __slots__ = ()

    def _repr_html_(self) -> str:
        return summary_html(self)
