"""Time from a CAP POST to the first outbound message of that alert, over many posts.

    .venv/bin/python bench/cap_post.py [--posts 200] [--backend sqlite|postgres]

PostgreSQL: a database created for the run (tests/databases.py; WARNGATE_TEST_PG).

The real HTTP service (aiohttp, auth, safe CAP parsing, accept, planning, dispatch) on
loopback with the simulated SMS provider; a small county of 2 townships. Each post is a new
red warning for one village; p50/p99 of POST → first message handed to the provider.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.databases import throwaway_database
from tests.smallcounty import write_small_county
from warngate.adapter import Outbound, SendResult
from warngate.policy import Policy
from warngate.settings import (
    AdapterSettings,
    ApiToken,
    AuthSettings,
    DispatchSettings,
    HttpSettings,
    Settings,
    hash_token,
)
from warngate.sim import SimSmsAdapter
from warngate.store import Store
from warngate.web.app import build_app

POLICY = Policy.model_validate({"levels": {lvl: {"roles": {
    "grid_worker": {"channels": ["sms"]}, "household": {"channels": ["sms"]}}}
    for lvl in ("blue", "yellow", "orange", "red")}})
TEMPLATE = """<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier><sender>met@bench</sender><sent>{sent}</sent>
  <status>Actual</status><msgType>Alert</msgType><scope>Public</scope>
  <info><language>zh-CN</language><category>Met</category><event>暴雨</event>
    <urgency>Immediate</urgency><severity>Extreme</severity><certainty>Likely</certainty>
    <expires>{expires}</expires><headline>暴雨红色预警</headline>
    <area><areaDesc>村</areaDesc><geocode><valueName>GB/T 2260</valueName>
      <value>{area}</value></geocode></area></info>
</alert>"""


class FirstSend(SimSmsAdapter):
    first: ClassVar[dict[int, float]] = {}

    async def _send(self, message: Outbound) -> SendResult:
        self.first.setdefault(message.alert_id, time.perf_counter())
        return await super()._send(message)


async def run(url: str, posts: int) -> list[float]:
    store = await Store.open(url)
    await write_small_county(store, townships=2, villages=10, grids=2, households=5)
    await store.close()
    settings = Settings(
        database={"url": url},  # type: ignore[arg-type]
        http=HttpSettings(port=0),
        auth=AuthSettings(tokens=(ApiToken(name="feed", role="feed", senders=("*",),
                                           token_sha256=hash_token("t")),)),
        adapters=(AdapterSettings(name="sms", type="sim-sms", channel="sms",
                                  rate_per_second=1e6, concurrency=32),),
        dispatch=DispatchSettings(idle_poll=0.2),
    )
    sms = FirstSend(settings.adapters[0])
    app = build_app(settings, POLICY, adapters=[sms])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    latencies: list[float] = []
    answers: list[float] = []
    try:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer t"}) as http:
            for i in range(posts):
                now = datetime.now(UTC)
                body = TEMPLATE.format(
                    identifier=uuid.uuid4().hex, sent=now.isoformat(timespec="seconds"),
                    expires=(now + timedelta(hours=1)).isoformat(timespec="seconds"),
                    area=f"339901{1 + i % 2:03d}{1 + i % 10:03d}").encode()
                t0 = time.perf_counter()
                async with http.post(f"http://127.0.0.1:{port}/api/v1/cap", data=body) as r:
                    assert r.status == 202, await r.text()
                    alert_id = (await r.json())["alert_id"]
                answers.append((time.perf_counter() - t0) * 1000)
                while alert_id not in sms.first:  # noqa: ASYNC110
                    await asyncio.sleep(0.0005)
                latencies.append((sms.first[alert_id] - t0) * 1000)
    finally:
        await runner.cleanup()
    answers.sort()
    print(f"POST answered (202): p50 {statistics.median(answers):.1f} ms, "
          f"p99 {answers[int(0.99 * (len(answers) - 1))]:.1f} ms")
    return latencies


async def run_on(backend: str, posts: int) -> list[float]:
    async with throwaway_database(backend) as url:
        return await run(url, posts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--posts", type=int, default=200)
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    args = ap.parse_args()
    lat = asyncio.run(run_on(args.backend, args.posts))
    lat.sort()
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
    print(f"{len(lat)} CAP posts: POST → first message p50 {statistics.median(lat):.1f} ms, "
          f"p90 {p(0.9):.1f} ms, p99 {p(0.99):.1f} ms, max {lat[-1]:.1f} ms")


if __name__ == "__main__":
    main()
