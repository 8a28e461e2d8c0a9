"""The test bed's PostgreSQL server answers as the PostgreSQL store's tests need.

A failure here is about the bed (scripts/testbed up), not about containerjobs.
"""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

import asyncpg
import pytest

from tests.conftest import Bed

pytestmark = pytest.mark.docker  # needs the project's test bed


def _with_database(url: str, database: str) -> str:
    return urlsplit(url)._replace(path=f"/{database}").geturl()


def _with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    netloc = f"{parts.username}:{password}@{parts.hostname}:{parts.port}"
    return parts._replace(netloc=netloc).geturl()


async def test_the_test_user_connects_and_makes_and_drops_a_database(testbed: Bed) -> None:
    conn = await asyncpg.connect(testbed.postgres_url, timeout=10)
    try:
        version = await conn.fetchval("SELECT version()")
        assert version.startswith("PostgreSQL ")
        assert await conn.fetchval("SELECT current_user") == urlsplit(testbed.postgres_url).username

        # Tests make a fresh database per session or per test: the user may.
        name = f"cj_testbed_scratch_{uuid.uuid4().hex[:12]}"
        await conn.execute(f'CREATE DATABASE "{name}"')
        try:
            scratch = await asyncpg.connect(_with_database(testbed.postgres_url, name), timeout=10)
            try:
                await scratch.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
                await scratch.execute("INSERT INTO t VALUES (1, 'hello')")
                assert await scratch.fetchval("SELECT note FROM t WHERE id = 1") == "hello"
            finally:
                await scratch.close()
        finally:
            await conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        exists = "SELECT EXISTS (SELECT FROM pg_database WHERE datname = $1)"
        assert not await conn.fetchval(exists, name)
    finally:
        await conn.close()


async def test_a_wrong_password_is_refused(testbed: Bed) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(_with_password(testbed.postgres_url, "not-the-password"), timeout=10)
