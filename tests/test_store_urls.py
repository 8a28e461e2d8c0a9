"""One string names a store: storage_from_url, the CLI's --db and CONTAINERJOBS_DB."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import containerjobs as cj
from containerjobs.storage import storage_from_url
from containerjobs.storage._url import mask_url
from tests.conftest import REPO


def test_urls_name_their_stores(tmp_path: Path) -> None:
    assert isinstance(storage_from_url("memory://"), cj.InMemoryStorage)
    sqlite = storage_from_url(f"sqlite://{tmp_path}/jobs.db")
    assert isinstance(sqlite, cj.SQLiteStorage) and sqlite.path == f"{tmp_path}/jobs.db"
    bare = storage_from_url("jobs.db")
    assert isinstance(bare, cj.SQLiteStorage) and bare.path == "jobs.db"


@pytest.mark.parametrize(
    "url", ["mysql://u:pw-s3cret@h/db", "sqlite://host/x.db", "memory://x", "", "sqlite:///"]
)
def test_a_url_that_names_no_store_is_refused_without_its_password(url: str) -> None:
    with pytest.raises(ValueError) as refused:
        storage_from_url(url)
    assert "pw-s3cret" not in str(refused.value)


def test_passwords_are_masked() -> None:
    assert mask_url("postgresql://u:pw@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert mask_url("postgresql://u@h/db") == "postgresql://u@h/db"


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "containerjobs", *args],
        capture_output=True, text=True, cwd=REPO, timeout=60, env={**os.environ, **env},
    )


def test_the_cli_takes_the_store_from_its_variable_when_db_is_absent(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    env = {"CONTAINERJOBS_DB": f"sqlite://{db}"}
    # A read command names the store it was given, and does not make it.
    done = _cli("jobs", env=env)
    assert done.returncode == 2 and f"no job store at {str(db)!r}" in done.stderr
    assert not db.exists()
    submitted = _cli("submit", "example/image:1", env=env)  # submit makes it
    assert submitted.returncode == 0, submitted.stderr
    done = _cli("jobs", "-q", env=env)
    assert done.returncode == 0 and done.stdout == submitted.stdout
    missing = _cli("jobs", env={"CONTAINERJOBS_DB": ""})
    assert missing.returncode == 2 and "CONTAINERJOBS_DB" in missing.stderr


def test_a_postgresql_url_names_a_postgres_store_and_hides_its_password() -> None:
    store = cj.storage_from_url("postgresql://jobs:pw-s3cret@db.internal:5432/jobs")
    assert isinstance(store, cj.PostgresStorage)
    assert "pw-s3cret" not in repr(store)
    assert isinstance(cj.storage_from_url("postgres://jobs@db/jobs"), cj.PostgresStorage)
