"""SIGKILL the service in the middle of a fan-out, start it again: no delivery is lost.

The real ``warngate serve`` runs as a child process on a YAML configuration, exactly as an
operator runs it; the test only talks HTTP to it and reads the database afterwards.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from sqlalchemy import func, select

from tests.smallcounty import write_small_county
from warngate.settings import hash_token
from warngate.store import Store
from warngate.store.schema import alerts, deliveries

TOKEN = "crash-test-token"
# What the killed process had handed to the (simulated) provider stays "sent": its receipt
# died with the process, as a real provider's would not. Everything else must be delivered.
GONE_OUT = {"sent", "delivered"}
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Path, db_url: str, port: int) -> Path:
    policy = {"levels": {level: {"roles": {
        "grid_worker": {"channels": ["sms"]}, "household": {"channels": ["sms"]}}}
        for level in ("blue", "yellow", "orange", "red")}}
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy), encoding="utf-8")
    config = {
        "database": {"url": db_url},
        "http": {"host": "127.0.0.1", "port": port,
                 "public_url": f"http://127.0.0.1:{port}"},
        "auth": {"four_eyes": False, "tokens": [
            {"name": "ops", "role": "admin", "token_sha256": hash_token(TOKEN)}]},
        "policy_file": "policy.yaml",
        # Slow enough that the kill lands mid-fan-out; a short lease so that what the
        # dead process had claimed comes back quickly.
        "adapters": [{"name": "sms", "type": "sim-sms", "channel": "sms", "concurrency": 20,
                      "rate_per_second": 400, "options": {"delivery_delay": [0.0, 0.2]}}],
        "dispatch": {"lease": 2, "batch_size": 100, "idle_poll": 0.05},
    }
    path = tmp_path / "warngate.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    return path


class Service:
    def __init__(self, config: Path, port: int) -> None:
        self.config = config
        self.base = f"http://127.0.0.1:{port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.log = config.parent / "service.log"

    async def start(self, http: aiohttp.ClientSession) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "warngate", "serve", "--config", str(self.config),
                stdout=log, stderr=log, cwd=self.config.parent)
        async with asyncio.timeout(60):
            while True:
                if self.proc.returncode is not None:
                    pytest.fail(f"service exited: {self.log.read_text(errors='replace')}")
                try:
                    async with http.get(f"{self.base}/healthz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            try:
                async with asyncio.timeout(20):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'warngate.db'}"
    else:
        from tests.conftest import pg_database
        async with pg_database() as url:
            yield url


async def counts(store: Store, alert_id: int) -> dict[str, int]:
    async with store.read() as conn:
        rows = (await conn.execute(
            select(deliveries.c.state, func.count()).where(deliveries.c.alert_id == alert_id)
            .group_by(deliveries.c.state))).all()
    return {state: n for state, n in rows}


async def wait_for(store: Store, alert_id: int, check: Callable[[dict[str, int]], bool],
                   service: Service, *, within: float) -> None:
    """Poll the delivery states until ``check`` holds; on a hang, say where it stood."""
    seen: dict[str, int] = {}
    try:
        async with asyncio.timeout(within):
            while not check(seen := await counts(store, alert_id)):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        tail = service.log.read_text(errors="replace")[-3000:]
        pytest.fail(f"deliveries stuck at {seen}; service log:\n{tail}")


async def test_sigkill_mid_fanout_loses_nothing(tmp_path: Path, db_url: str) -> None:
    store = await Store.open(db_url)
    try:
        # 2 townships × 10 villages × 3 grids: 60 grid workers, 60 × 25 households.
        await write_small_county(store, townships=2, villages=10, grids=3, households=25)
        expected = 60 + 60 * 25
        port = free_port()
        service = Service(write_config(tmp_path, db_url, port), port)
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            await service.start(http)
            try:
                async with http.post(f"{service.base}/api/v1/alerts", json={
                    "level": "red", "event": "暴雨", "headline": "暴雨红色预警",
                    "areas": ["339901001", "339901002"]}) as resp:
                    assert resp.status == 201, await resp.text()
                    alert_id = (await resp.json())["alert_id"]
                async with http.post(
                        f"{service.base}/api/v1/alerts/{alert_id}/approve") as resp:
                    assert resp.status == 200, await resp.text()

                # Kill once some, but far from all, messages have gone out.
                await wait_for(store, alert_id, lambda c: c.get("delivered", 0) >= 100,
                               service, within=60)
                await service.kill()
                before = await counts(store, alert_id)
                assert before.get("delivered", 0) < expected, before

                await service.start(http)
                await wait_for(
                    store, alert_id,
                    lambda c: sum(c.values()) == expected and set(c) <= GONE_OUT,
                    service, within=90)
                async with http.get(
                        f"{service.base}/api/v1/alerts/{alert_id}/receipts") as resp:
                    board: dict[str, Any] = await resp.json()
            finally:
                await service.stop()
        sms = board["totals"]["sms"]
        assert set(sms) <= GONE_OUT and sum(sms.values()) == expected, sms
        assert sms.get("sent", 0) <= before.get("sent", 0) + before.get("sending", 0), before
        async with store.read() as conn:
            # One delivery per person: the restart re-sent what was in flight, it did not
            # plan anyone twice.
            people = (await conn.execute(
                select(func.count(func.distinct(deliveries.c.contact_id)))
                .where(deliveries.c.alert_id == alert_id))).scalar_one()
            state = (await conn.execute(
                select(alerts.c.state).where(alerts.c.id == alert_id))).scalar_one()
        assert people == expected
        assert state == "active", state  # planning finished after the restart
    finally:
        await store.close()
