"""What a job printed, made useful: ANSI-free text and the JSON it ends with."""

from __future__ import annotations

import json
import re
from typing import Any

# CSI sequences (colours, cursor moves), OSC sequences (titles, links) and the
# two-byte escapes; see ECMA-48.
_ANSI = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)"  # OSC, ended by BEL or ST
    r"|\x1b[@-Z\\-_]"  # Fe escapes
)


def _resolve_carriage_returns(line: str) -> str:
    # A terminal shows only what the last \r overwrote: progress bars collapse to
    # their final state. A trailing \r (from \r\n endings) overwrites nothing.
    if "\r" not in line:
        return line
    shown = ""
    for segment in line.rstrip("\r").split("\r"):
        shown = segment + shown[len(segment) :]
    return shown


def clean_output(text: str) -> str:
    """Drop ANSI escapes and resolve carriage-return overwrites, line by line."""
    text = _ANSI.sub("", text)
    # Split on \n only: str.splitlines() would also split on the \r we resolve.
    return "\n".join(_resolve_carriage_returns(line) for line in text.split("\n"))


def parse_output(text: str) -> Any:
    """The JSON value of `text`, else of its last non-empty line, else None."""
    stripped = text.strip()
    if not stripped:
        return None
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    last = stripped.splitlines()[-1].strip()
    try:
        return json.loads(last)
    except ValueError:
        return None
