"""Webhook benchmark: the whole gateway (web app, SQLite, receipt writer) receiving Twilio's
signed callbacks from a load generator in another process.

    .venv/bin/python bench/webhooks.py                   # 3 runs, medians
    .venv/bin/python bench/webhooks.py --runs 5 --villages 80 --uvloop

A red warning is sent by SMS through the real adapter to the fake Twilio (in its own
process); then the generator posts, as Twilio would and signed with
``RequestValidator.compute_signature``: a ``sent`` and a ``delivered`` status callback for
every message, a ``<Gather>`` key press "1" for a third of the people and an SMS reply "收到"
for another third. For each kind it prints webhooks per second answered, per second recorded
in the database (until the receipt writer has written them all), and the gateway's CPU per
webhook (user + system, ``getrusage``, including the database work).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twilio_sms import (  # beside this file
    ACCOUNT,
    TOKEN,
    all_at_fake,
    count,
    cpu,
    fake_process,
    gateway,
    run_loop,
    until,
    warn_all,
)
from warngate_twilio import TwilioSmsAdapter
from warngate_twilio.testing import FakeTwilio, free_port, serving

from warngate.settings import AdapterSettings
from warngate.store import Store
from warngate.store.schema import (
    acknowledgements,
    contacts,
    deliveries,
    receipts,
    rejected_inputs,
)
from warngate.testing import RecordingSink


def _generator_main(requests: list[tuple[str, dict[str, str], str]], concurrency: int,
                    ready: Any, go: Any, out: Any) -> None:
    """Post pre-signed webhooks as fast as the gateway takes them; report rate and codes."""
    async def main() -> None:
        codes: dict[int, int] = {}
        pending = iter(requests)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency),
            cookie_jar=aiohttp.DummyCookieJar(),
        ) as session:
            async def worker() -> None:
                for url, params, sig in pending:
                    async with session.post(url, data=params,
                                            headers={"X-Twilio-Signature": sig}) as resp:
                        await resp.read()
                        codes[resp.status] = codes.get(resp.status, 0) + 1

            ready.set()
            go.wait()
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            out.put({"elapsed": time.perf_counter() - t0, "codes": codes})

    asyncio.run(main())


class Generator:
    """The load generator in its own process, started (imports done) before measuring."""

    def __init__(self, requests: list[tuple[str, dict[str, str], str]],
                 concurrency: int) -> None:
        ctx = mp.get_context("spawn")
        self.ready, self.go, self.out = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=_generator_main, daemon=True,
                                args=(requests, concurrency, self.ready, self.go, self.out))

    async def start(self) -> None:
        self.proc.start()
        await asyncio.get_running_loop().run_in_executor(None, self.ready.wait)

    async def run(self) -> dict[str, Any]:
        """Let it go; returns when it has had every answer."""
        loop = asyncio.get_running_loop()
        self.go.set()
        result: dict[str, Any] = await loop.run_in_executor(None, self.out.get)
        await loop.run_in_executor(None, self.proc.join)
        return result


async def webhooks_run(args: argparse.Namespace, fake_base: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        async with gateway(Path(d), fake_base, rate=5000, concurrency=64,
                           villages=args.villages, households=20) as (gw, public, _db):
            total = await warn_all(gw)
            store = gw.store
            await until(lambda: all_at_fake(fake_base, total))
            async with store.read() as conn:
                rows = (await conn.execute(
                    select(deliveries.c.id, deliveries.c.provider_ref, contacts.c.phone)
                    .join(contacts, contacts.c.id == deliveries.c.contact_id)
                    .order_by(deliveries.c.id))).all()
            fake = FakeTwilio(account_sid=ACCOUNT, auth_token=TOKEN)  # for signing only
            status_url = f"{public}/hooks/twilio/sms/status"
            gather_url = f"{public}/hooks/twilio/voice/gather"
            inbound_url = f"{public}/hooks/twilio/sms/inbound"
            third = len(rows) // 3

            def signed(url: str, params: dict[str, str]) -> tuple[str, dict[str, str], str]:
                return url, params, fake.sign(url, params)

            statuses = [signed(f"{status_url}?d={r.id}",
                               {"MessageSid": r.provider_ref or f"SMfe{r.id:030x}",
                                "MessageStatus": st, "AccountSid": ACCOUNT, "To": r.phone,
                                "From": "+15005550006"})
                        for st in ("sent", "delivered") for r in rows]
            presses = [signed(f"{gather_url}?d={r.id}&n=1",
                              {"CallSid": f"CA{r.id:032x}", "Digits": "1",
                               "AccountSid": ACCOUNT, "To": r.phone})
                       for r in rows[:third]]
            replies = [signed(inbound_url,
                              {"MessageSid": f"SM{10**9 + r.id:032x}", "From": r.phone,
                               "To": "+15005550006", "Body": "收到", "AccountSid": ACCOUNT})
                       for r in rows[third:2 * third]]
            result: dict[str, float] = {"deliveries": len(rows)}
            for name, batch, table, expect in (
                ("status", statuses, receipts, len(statuses)),
                ("key press", presses, acknowledgements, len(presses)),
                ("SMS reply", replies, acknowledgements, len(presses) + len(replies)),
            ):
                generator = Generator(batch, args.concurrency)
                await generator.start()
                c0, t0 = cpu(), time.perf_counter()
                sent = await generator.run()
                def recorded(t: Any = table, e: int = expect) -> Coroutine[Any, Any, bool]:
                    return _at_least(store, t, e)

                try:
                    await until(recorded, within=120)
                except TimeoutError:
                    raise SystemExit(await _diagnose(store, name, table, expect, sent)) from None
                written = time.perf_counter() - t0
                used = cpu() - c0
                bad = {k: v for k, v in sent["codes"].items() if k not in (200, 204)}
                assert not bad, f"{name}: unexpected answers {bad}"
                result[f"{name} per_s"] = len(batch) / sent["elapsed"]
                result[f"{name} written_per_s"] = len(batch) / written
                result[f"{name} cpu_us"] = 1e6 * used / len(batch)
            return result


async def _diagnose(store: Store, name: str, table: Any, expect: int,
                    sent: dict[str, Any]) -> str:
    async with store.read() as conn:
        have = (await conn.execute(select(func.count()).select_from(table))).scalar_one()
        states = (await conn.execute(select(deliveries.c.state, func.count())
                                     .group_by(deliveries.c.state))).all()
        rejected = (await conn.execute(select(rejected_inputs.c.reason, func.count())
                                       .group_by(rejected_inputs.c.reason).limit(5))).all()
    return (f"{name}: {have} of {expect} recorded after 120 s; answers {sent['codes']}; "
            f"delivery states {dict(states)}; rejected {rejected}")


async def _at_least(store: Store, table: Any, n: int) -> bool:
    return await count(store, select(func.count()).select_from(table)) >= n


async def adapter_only_run(args: argparse.Namespace, n: int) -> dict[str, float]:
    """The webhook layer alone: the SMS adapter's routes on a bare app, a sink that only
    counts. What the adapter costs per webhook, without the gateway's database work."""
    os.environ["TWILIO_AUTH_TOKEN"] = TOKEN
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    settings = AdapterSettings(name="sms", type="twilio-sms", channel="sms", options={
        "account_sid": ACCOUNT, "from_number": "+15005550006"})
    adapter = TwilioSmsAdapter(settings, public_url=public)
    sink = RecordingSink()
    await adapter.start(sink)
    app = web.Application()
    app.router.add_routes(adapter.routes())
    fake = FakeTwilio(account_sid=ACCOUNT, auth_token=TOKEN)
    url = f"{public}/hooks/twilio/sms/status"
    batch = []
    for i in range(n):
        params = {"MessageSid": f"SM{i:032x}", "MessageStatus": "delivered",
                  "AccountSid": ACCOUNT, "To": f"+86170{i:08d}", "From": "+15005550006"}
        batch.append((f"{url}?d={i + 1}", params, fake.sign(f"{url}?d={i + 1}", params)))
    try:
        async with serving(app, port):
            generator = Generator(batch, args.concurrency)
            await generator.start()
            c0 = cpu()
            sent = await generator.run()
            used = cpu() - c0
    finally:
        await adapter.stop()
    assert sent["codes"] == {204: n}, sent["codes"]
    assert len(sink.receipts) == n
    return {"per_s": n / sent["elapsed"], "cpu_us": 1e6 * used / n}


def bench_webhooks(args: argparse.Namespace) -> list[str]:
    lines = []
    alone = [run_loop(adapter_only_run(args, 10_000), args.uvloop) for _ in range(args.runs)]
    for i, a in enumerate(alone):
        lines.append(f"  adapter alone, run {i + 1}: {a['per_s']:5.0f} status callbacks/s, "
                     f"{a['cpu_us']:4.0f} µs CPU each")
    lines.append(f"  median adapter alone: {statistics.median(a['per_s'] for a in alone):.0f} "
                 f"signed webhooks/s, {statistics.median(a['cpu_us'] for a in alone):.0f} µs "
                 f"CPU each (aiohttp server, signature, parsing; no database)")
    results = []
    with fake_process(use_uvloop=args.uvloop) as base:
        for run in range(args.runs):
            r = run_loop(webhooks_run(args, base), args.uvloop)
            results.append(r)
            parts = [f"{k}: {r[f'{k} per_s']:5.0f}/s answered, {r[f'{k} written_per_s']:5.0f}/s "
                     f"written, {r[f'{k} cpu_us']:4.0f} µs CPU"
                     for k in ("status", "key press", "SMS reply")]
            lines.append(f"  run {run + 1} ({r['deliveries']:.0f} deliveries): "
                         + "; ".join(parts))
    for k in ("status", "key press", "SMS reply"):
        lines.append(
            f"  median {k:9s}: {statistics.median(r[f'{k} per_s'] for r in results):6.0f} "
            f"signed webhooks/s answered, "
            f"{statistics.median(r[f'{k} written_per_s'] for r in results):6.0f}/s recorded, "
            f"{statistics.median(r[f'{k} cpu_us'] for r in results):4.0f} µs gateway CPU each")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--villages", type=int, default=40,
                        help="villages of 5 grids × 21 people (about 106 deliveries each)")
    parser.add_argument("--uvloop", action="store_true", help="run every loop on uvloop")
    args = parser.parse_args()
    print(f"webhook bench: {os.cpu_count()} cores, loop "
          f"{'uvloop' if args.uvloop else 'asyncio'}, {args.runs} runs")
    for line in bench_webhooks(args):
        print(line, flush=True)


if __name__ == "__main__":
    main()
