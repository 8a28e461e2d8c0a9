"""The docs site builds with ``mkdocs build --strict``, and its API reference names
every public object under a heading of its own, with the fields of the records listed.

The build needs no Docker: mkdocstrings reads the sources (and imports the package for
the attrs signatures, docs/griffe_attrs.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import attrs
import pytest

import containerjobs
import containerjobs.executors
import containerjobs.testing

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(300)


class _Headings(HTMLParser):
    """The h2..h5 headings of a page: (id, text), and each heading's place in it."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[tuple[str, str]] = []
        self._open: tuple[str, str] | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attributes: list[tuple[str, str | None]]) -> None:
        if tag in ("h2", "h3", "h4", "h5"):
            self._open = (tag, dict(attributes).get("id") or "")
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if self._open is not None and tag == self._open[0]:
            text = " ".join("".join(self._text).replace("¶", "").split())
            self.headings.append((self._open[1], text))
            self._open = None


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-d", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=240,
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stderr}"
    return out


@pytest.fixture(scope="module")
def reference(site: Path) -> dict[str, str]:
    pages = {
        str(page.relative_to(site)): page.read_text(encoding="utf-8")
        for page in sorted((site / "reference").rglob("index.html"))
    }
    assert pages, "the site has no reference pages"
    return pages


@pytest.fixture(scope="module")
def headings(reference: dict[str, str]) -> list[tuple[str, str]]:
    found = []
    for html in reference.values():
        parser = _Headings()
        parser.feed(html)
        found.extend(parser.headings)
    return found


PUBLIC = sorted(
    {(module.__name__, name) for module in (containerjobs,) for name in module.__all__}
    | {(containerjobs.executors.__name__, name) for name in containerjobs.executors.__all__}
    | {(containerjobs.testing.__name__, name) for name in containerjobs.testing.__all__}
)


@pytest.mark.parametrize(("module", "name"), PUBLIC, ids=[f"{m}.{n}" for m, n in PUBLIC])
def test_every_public_name_has_a_heading_in_the_reference(
    headings: list[tuple[str, str]], module: str, name: str
) -> None:
    # mkdocstrings gives each object's heading the object's path as its id (the path
    # it was documented by, such as containerjobs.testing._storage_contract for the
    # lazily imported contract suites) and its short name as its text.
    matches = [
        (anchor, text)
        for anchor, text in headings
        if anchor.startswith("containerjobs.")
        and anchor.rsplit(".", 1)[-1] == name
        and name in text.split()
    ]
    assert matches, f"{module}.{name} has no h2-h5 heading in the built API reference"


@pytest.mark.parametrize(
    "cls", [containerjobs.JobSpec, containerjobs.Job, containerjobs.SecurityPolicy]
)
def test_each_field_of_a_record_has_a_line(reference: dict[str, str], cls: type) -> None:
    html = "".join(reference.values())
    anchor = f'id="containerjobs.{cls.__name__}"'
    assert anchor in html
    section = html.split(anchor, 1)[1]
    # The class's own part of the page: up to the next object of its level.
    section = re.split(r'<h2 id="containerjobs\.', section, maxsplit=1)[0]
    # Each row of its Attributes table: the field's name in the first cell.
    cells = re.findall(r"<tr[^>]*>\s*<td>(.*?)</td>", section, flags=re.S)
    named = {re.sub(r"<[^>]+>", "", cell).strip() for cell in cells}
    # By the name a user knows it by: a private field's alias (Job's _stdout is stdout).
    missing = [field.alias for field in attrs.fields(cls) if field.alias not in named]
    assert not missing, f"{cls.__name__}'s fields without a line in the reference: {missing}"


def test_internal_job_advance_is_left_out(headings: list[tuple[str, str]]) -> None:
    assert "containerjobs.Job.advance" not in {anchor for anchor, _ in headings}


def test_docstring_examples_are_highlighted_code(reference: dict[str, str]) -> None:
    for page, html in reference.items():
        text = re.sub(r"<[^>]+>", "", html)
        # A reST literal block (``::`` then an indented block) renders as a paragraph
        # ending in "::" and the code as plain text.
        leftovers = [line.strip() for line in text.splitlines() if line.rstrip().endswith("::")]
        assert not leftovers, f"{page}: leftover '::' markers: {leftovers}"
    # JobManager's example (a fenced Python block in its docstring) as tokens.
    manager = reference[os.path.join("reference", "manager", "index.html")]
    blocks = re.findall(r'<div class="highlight">(.*?)</div>', manager, flags=re.S)
    assert any('<span class="k">async</span>' in block for block in blocks)


def test_the_get_started_pages_say_what_a_new_user_needs(site: Path) -> None:
    notebook = (site / "notebook" / "index.html").read_text(encoding="utf-8")
    assert "RuntimeError: Already running asyncio in this thread" in notebook
    faq = _Headings()
    faq.feed((site / "faq" / "index.html").read_text(encoding="utf-8"))
    assert "pending" in faq.headings[0][1].lower(), faq.headings[:1]
