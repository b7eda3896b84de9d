"""Fixtures shared by every tier: a store on SQLite and on PostgreSQL, and a guard against
tasks a test leaves running."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.databases import PG_ADMIN_URL, pg_available, throwaway_database
from warngate.store import Store

CONFIG = Path(__file__).resolve().parents[1] / "config"

# CI (.ci/run) replays the same examples every run, so a landing never hangs on a new random
# draw; runs on a developer's machine keep exploring and report what they find.
settings.register_profile("ci", derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@contextlib.asynccontextmanager
async def pg_database() -> AsyncIterator[str]:
    """A throwaway PostgreSQL database, dropped afterwards; skips the test without a server."""
    if not await pg_available():
        pytest.skip(f"PostgreSQL not reachable at {PG_ADMIN_URL}")
    async with throwaway_database("postgres") as url:
        yield url


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    async with pg_database() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    """A migrated, empty store on each backend."""
    async with contextlib.AsyncExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite+aiosqlite:///{tmp_path / 'warngate.db'}"
        else:
            url = await stack.enter_async_context(pg_database())
        s = await Store.open(url)
        try:
            yield s
        finally:
            await s.close()


@pytest.fixture(autouse=True)
async def no_lingering_tasks() -> AsyncIterator[None]:
    """A test that leaves tasks running fails: they would hide errors and hang shutdown."""
    yield
    await asyncio.sleep(0)
    pending = [t for t in asyncio.all_tasks() if not t.done() and t is not asyncio.current_task()]
    if pending:
        # Connection handlers of a just-closed server finish within a few loop turns.
        await asyncio.wait(pending, timeout=1.0)
        pending = [t for t in pending if not t.done()]
    if pending:
        pytest.fail(f"tasks left running: {[t.get_name() for t in pending]}")
