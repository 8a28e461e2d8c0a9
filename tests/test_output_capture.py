"""Output capture without Docker: the size cap, and the log reader's resume logic
against a simulated engine that ends and breaks its streams where Hypothesis says."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from containerjobs._harvest import Output
from containerjobs._models import LogLine
from containerjobs.executors._base import OutputLine
from containerjobs.executors._docker_logs import MAX_LINE_CHARS, DockerLogReader

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def output_bytes(max_size: int) -> st.SearchStrategy[bytes]:
    """What a job may print: text, newlines, characters of 2 to 4 bytes (whole or
    cut), and bytes that are not UTF-8 at all."""
    pieces = st.sampled_from(
        [b"a", b"\n", b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"\xe2\x82", b"\xff"]
    )
    return st.lists(pieces, max_size=max_size).map(b"".join)


def as_items(text: str, stream: str = "stdout") -> list[OutputLine]:
    parts = text.split("\n")
    items = [OutputLine(LogLine(stream, part, NOW)) for part in parts[:-1]]  # type: ignore[arg-type]
    if parts[-1]:
        items.append(OutputLine(LogLine(stream, parts[-1], NOW), newline=False))  # type: ignore[arg-type]
    return items


def utf8_head(text: str, size: int) -> str:
    return text.encode()[:size].decode("utf-8", "ignore")


def utf8_tail(text: str, size: int) -> str:
    return text.encode()[len(text.encode()) - size :].decode("utf-8", "ignore") if size else ""


def capture(text: str, cap: int) -> tuple[Output, list[LogLine]]:
    output = Output(cap)
    stored = [kept for item in as_items(text) if (kept := output.add(item)) is not None]
    stored += output.finish()
    return output, stored


def check_capped(text: str, kept: str, cap: int) -> None:
    """Past the cap: the first half exact (up to a whole character), the rest of the
    cap from the end exact, and a marker between them."""
    head = utf8_head(text, cap // 2)
    tail = utf8_tail(text, cap - len(head.encode()))
    assert kept.startswith(head) and kept.endswith(tail)
    middle = kept[len(head) : len(kept) - len(tail)]
    assert middle.lstrip("\n").startswith("[containerjobs: ") and middle.endswith(" bytes]\n")
    assert "bytes left out here" in middle


@given(
    text=st.lists(
        st.sampled_from(["a", "é", "€", "😀", "\n", "bb\n", "\ufffd"]), max_size=400
    ).map("".join),
    cap=st.integers(1, 600),
)
def test_the_cap_keeps_exact_halves_or_everything(text: str, cap: int) -> None:
    output, stored = capture(text, cap)
    kept = output.text("stdout")
    if len(text.encode()) <= cap:
        assert kept == text and not output.truncated
        # Lines stay whole under the cap, even the one the first half ends in.
        assert [line.text for line in stored] == as_texts(text)
    else:
        assert output.truncated
        check_capped(text, kept, cap)
        # What is stored is what is kept, and never more than about the cap.
        stored_bytes = sum(len(line.text.encode()) + 1 for line in stored)
        assert stored_bytes <= cap + 200


def as_texts(text: str) -> list[str]:
    return [item.line.text for item in as_items(text)]


def test_one_endless_line_is_cut_inside() -> None:
    output, stored = capture("x" * 1_000_000, 100_000)
    assert output.truncated
    assert len(output.text("stdout")) < 100_200
    assert stored[0].text == "x" * 50_000 and stored[-1].text == "x" * 50_000
    assert stored[1].text == (
        "[containerjobs: 900000 bytes left out here: the stdout of this job passed 100000 bytes]"
    )


# --- the Docker log reader against a simulated engine ---------------------------------


def _stamp(ns: int) -> bytes:
    seconds, nanos = divmod(ns, 10**9)
    whole = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{whole}.{nanos:09d}Z".encode()


def _frame(stream: int, ns: int, body: bytes) -> bytes:
    payload = _stamp(ns) + b" " + body
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


class _Reply:
    """The minimal StreamReader the reader uses: read(n) over bytes, in pieces of a
    few bytes, so frames and stamps arrive cut anywhere."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    async def read(self, n: int) -> bytes:
        await asyncio.sleep(0)
        chunk = self._data[self._at : self._at + min(n, 7 + self._at % 5)]
        self._at += len(chunk)
        return chunk


class _Engine:
    """A log of frames served as Docker serves them: `since` keeps frames stamped at
    or after it, in log order; each reply stops early as the plan says (a clean end
    after some frames, or a frame cut in half)."""

    def __init__(self, frames: list[tuple[int, int, bytes]], plan: list[tuple[int, bool]]):
        self.frames = frames
        self.plan = list(plan)

    @asynccontextmanager
    async def open(self, params: dict[str, str]) -> AsyncIterator[_Reply]:
        since = params.get("since")
        floor = -1
        if since is not None:
            seconds, _, nanos = since.partition(".")
            floor = int(seconds) * 10**9 + int(nanos)
        chosen = [f for f in self.frames if f[1] >= floor]
        data = b""
        if self.plan:
            count, cut = self.plan.pop(0)
            for stream, ns, body in chosen[:count]:
                data += _frame(stream, ns, body)
            if cut and count < len(chosen):
                stream, ns, body = chosen[count]
                data += _frame(stream, ns, body)[:-1]
        else:
            data = b"".join(_frame(*f) for f in chosen)
        yield _Reply(data)  # type: ignore[misc]


@st.composite
def engine_logs(draw: st.DrawFn) -> list[tuple[int, int, bytes]]:
    frames = []
    ns = 1_767_225_600 * 10**9
    for _ in range(draw(st.integers(0, 30))):
        # Mostly forward, sometimes a hair back (the other stream stamped first),
        # sometimes the very same instant.
        ns += draw(st.sampled_from([0, 1, 1000, 10**6, -5, -1000]))
        stream = draw(st.sampled_from([1, 2]))
        frames.append((stream, ns, draw(output_bytes(max_size=12))))
    return frames


@settings(max_examples=300)
@given(
    frames=engine_logs(),
    plan=st.lists(st.tuples(st.integers(0, 8), st.booleans()), max_size=6),
)
async def test_reads_resume_with_nothing_lost_or_doubled(
    frames: list[tuple[int, int, bytes]], plan: list[tuple[int, bool]]
) -> None:
    engine = _Engine(frames, plan)
    reader = DockerLogReader("c" * 64, engine.open)
    got: list[OutputLine] = []
    while engine.plan:
        try:
            await reader.read(got.append, follow=True)
        except Exception as exc:
            assert "cut mid-frame" in str(exc)
    await reader.read(got.append, follow=False)
    got += reader.finish()
    for stream, name in ((1, "stdout"), (2, "stderr")):
        wrote = b"".join(body for s, _, body in frames if s == stream)
        text = "".join(
            item.written
            for item in got
            if item.line.stream == name
        )
        assert text == wrote.decode("utf-8", "replace")
        stamps = [item.line.timestamp for item in got if item.line.stream == name]
        assert stamps == sorted(stamps)


async def test_a_line_longer_than_the_limit_comes_in_pieces() -> None:
    body = b"y" * (MAX_LINE_CHARS + 10)
    frames = [(1, 10**18 + i, body[i * 16384 : (i + 1) * 16384]) for i in range(65)]
    frames.append((1, 10**18 + 100, b"\n"))
    reader = DockerLogReader("c" * 64, _Engine(frames, []).open)
    got: list[OutputLine] = []
    await reader.read(got.append, follow=False)
    assert [item.newline for item in got] == [False, True]
    assert "".join(item.line.text for item in got) == body.decode()


@pytest.mark.parametrize("cap", [2000, 100_000])
def test_stored_lines_within_the_cap(cap: int) -> None:
    text = "".join(f"line {i:04d}\n" for i in range(20000))
    _, stored = capture(text, cap)
    assert sum(len(line.text) + 1 for line in stored) <= cap + 100
