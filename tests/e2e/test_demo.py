"""`warngate demo` as a newcomer runs it: within a minute the receipts API shows every village
of the two townships reached, acknowledgements arriving, and unanswering grid workers called."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import select

from tests.e2e.test_crash_restart import free_port
from warngate.store import Store
from warngate.store.schema import regions

TOKEN = "demo-e2e-token"
TOWNSHIPS = ("339901001", "339901002")
ROOT = Path(__file__).resolve().parents[2]


async def _get(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


def _reached(board: dict[str, Any]) -> set[str]:
    """Villages where at least one SMS was delivered or acknowledged."""
    return {
        v["code"] for t in board["townships"] for v in t["villages"]
        if v["code"] and any(v["counts"].get("sms", {}).get(s, 0)
                             for s in ("delivered", "acknowledged"))
    }


def _last_numbers(output: str) -> dict[str, str]:
    """The figures of the demo's last accountability lines."""
    if "责任人 (responsible)" not in output:
        return {}
    last = output[output.rindex("责任人 (responsible)"):]
    return dict(re.findall(r"(answered|covered|silent|moved|reports) (\d+)", last))


def _field_done(output: str) -> bool:
    numbers = _last_numbers(output)
    return int(numbers.get("moved", 0)) > 0 and int(numbers.get("reports", 0)) >= 1


@pytest.mark.timeout(360)
async def test_demo_reaches_every_village_and_escalates(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "warngate", "demo", "--port", str(port),
            "--data-dir", str(tmp_path / "data"), "--token", TOKEN, "--duration", "150",
            stdout=out, stderr=out, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    board: dict[str, Any] = {}
    villages: set[str] = set()
    called: list[dict[str, Any]] = []
    try:
        async with aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            async with asyncio.timeout(90):  # registry import, then the service
                while True:
                    if proc.returncode is not None:
                        pytest.fail(f"demo exited:\n{log.read_text(errors='replace')}")
                    try:
                        listed = await _get(http, f"{base}/api/v1/alerts")
                        if listed["alerts"]:
                            break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.5)
            alert = listed["alerts"][0]
            assert alert["level"] == "red" and alert["event"] == "暴雨"
            started = asyncio.get_running_loop().time()

            store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'warngate.db'}")
            try:
                async with store.read() as conn:
                    villages = set((await conn.execute(
                        select(regions.c.code).where(regions.c.level == "village",
                                                     regions.c.township_code.in_(TOWNSHIPS))
                    )).scalars())
            finally:
                await store.close()
            assert len(villages) >= 20

            receipts = f"{base}/api/v1/alerts/{alert['id']}/receipts"
            try:
                # The issue asks for this within a minute; the ceiling is generous for CI.
                async with asyncio.timeout(120):
                    while True:
                        board = await _get(http, receipts)
                        totals = board["totals"]
                        acked = sum(c.get("acknowledged", 0) for c in totals.values())
                        escalated = (await _get(
                            http, f"{receipts}?state=escalated&limit=5000"))["people"]
                        # Grid workers who did not answer the SMS are being called.
                        called = [p for p in escalated if p["role"] == "grid_worker"]
                        if _reached(board) == villages and acked and called:
                            break
                        await asyncio.sleep(1.0)
            except TimeoutError:
                pytest.fail(f"after {asyncio.get_running_loop().time() - started:.0f}s: "
                            f"{len(_reached(board))}/{len(villages)} villages, totals "
                            f"{board.get('totals')}, {len(called)} grid workers called")
            elapsed = asyncio.get_running_loop().time() - started

            assert all(p["channel"] == "voice" and p["step"] >= 1 for p in called)
            print(f"demo: every village reached, acks and calls after {elapsed:.0f}s; "
                  f"{len(called)} grid workers called")
            # The field team acts from 20-30 s on: wait for households moved and a report.
            try:
                async with asyncio.timeout(120):
                    while not _field_done(log.read_text(encoding="utf-8", errors="replace")):  # noqa: ASYNC110
                        await asyncio.sleep(1.0)
            except TimeoutError:
                pytest.fail("no household moved or field report shown:\n"
                            + log.read_text(encoding="utf-8", errors="replace")[-2000:])
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGINT)
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
    output = log.read_text(encoding="utf-8", errors="replace")
    assert "API token: " + TOKEN in output
    assert "escalation steps taken" in output
    assert proc.returncode == 0, output[-3000:]
    # Issue 10: answered apart from covered and silent; households followed up and some
    # moved; a field report; the accountability report written at the end.
    numbers = _last_numbers(output)
    assert int(numbers["answered"]) > 0 and "covered" in numbers and "silent" in numbers
    assert _field_done(output), numbers
    [report] = (tmp_path / "data").glob("通报_预警*.xlsx")
    assert f"通报 (accountability report) → {report}" in output
