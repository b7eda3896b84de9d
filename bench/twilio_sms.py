"""Twilio sending benchmark: the real adapters and the real ``twilio`` library against the
fake Twilio on loopback (``bench/webhooks.py`` measures the callbacks coming back).

    .venv/bin/python bench/twilio_sms.py                 # everything, 3 runs each, medians
    .venv/bin/python bench/twilio_sms.py sms calls --runs 5 -n 20000
    .venv/bin/python bench/twilio_sms.py rate --uvloop

Sections (each prints every run, then the median):

- ``sms``: SMS API calls per second into the fake (``TwilioSmsAdapter.send``: Chinese
  warning composed and segment-counted, ``messages.create_async``), with the CPU this
  process used (user + system, from ``getrusage``) and the fake's CPU per call. The fake runs
  in its own process, so on two cores the sender has one core to itself at best.
- ``bare``: the floor for comparison: aiohttp alone posting the same form to the same fake,
  without the ``twilio`` library.
- ``calls``: the same for ``calls.create_async`` with the call's inline TwiML.
- ``rate``: sender rate accuracy through the real dispatch lane (claim, render, rate limit,
  concurrency) into the fake with 20 ms of latency per call: configured versus achieved
  rate at the fake, and the most requests the fake ever saw in flight against the lane's
  concurrency cap.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from warngate_twilio import TwilioSmsAdapter, TwilioVoiceAdapter
from warngate_twilio.rest import form_encode
from warngate_twilio.testing import FakeTwilio, free_port, serving

from tests.smallcounty import write_small_county
from warngate.adapter import Outbound
from warngate.alerts import Actor, ComposeRequest
from warngate.policy import Policy
from warngate.service import load_adapters
from warngate.settings import (
    AdapterSettings,
    AuthSettings,
    DispatchSettings,
    HttpSettings,
    RetrySettings,
    Settings,
)
from warngate.store import Store
from warngate.store.schema import deliveries
from warngate.testing import RecordingSink
from warngate.web.app import GATEWAY, build_app

ACCOUNT = "AC" + "0" * 32
TOKEN = "fake-auth-token"
ADMIN = Actor("bench", "admin")
HEADLINE = "夏溪县气象台发布暴雨红色预警"
BODY = ("预计未来3小时内夏溪县大部地区将出现50毫米以上降水，局地可达100毫米，"
        "请立即组织危险区域群众转移，注意防范山洪、地质灾害。")
POLICY = Policy.model_validate({
    "levels": {lvl: {"roles": {r: {"channels": ["sms"], "ack": {"required": True,
                                                                "within": 3600}}
                               for r in ("township_duty", "village_head", "grid_worker",
                                         "household")}}
               for lvl in ("blue", "yellow", "orange", "red")},
    "drills": {"roles": ["township_duty"]},
})


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_loop(coro: Coroutine[Any, Any, Any], use_uvloop: bool) -> Any:
    if use_uvloop:
        import uvloop  # optional: pip install uvloop

        return uvloop.run(coro)
    return asyncio.run(coro)


# -- the fake in its own process ----------------------------------------------------------

def _fake_main(port: int, latency: float, ready: Any, use_uvloop: bool) -> None:
    async def main() -> None:
        fake = FakeTwilio(account_sid=ACCOUNT, auth_token=TOKEN, latency=latency,
                          keep_requests=False)
        await fake.start(port)
        ready.set()
        await asyncio.Event().wait()

    run_loop(main(), use_uvloop)


@contextlib.contextmanager
def fake_process(latency: float = 0.0, use_uvloop: bool = False) -> Any:
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    port = free_port()
    proc = ctx.Process(target=_fake_main, args=(port, latency, ready, use_uvloop), daemon=True)
    proc.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the fake Twilio did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.join()


async def fake_call(base: str, what: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s:
        method = s.get if what == "stats" else s.post
        async with method(f"{base}/_fake/{what}") as resp:
            data: dict[str, Any] = await resp.json()
            return data


# -- REST API calls -------------------------------------------------------------------------

def message(i: int, channel: str) -> Outbound:
    return Outbound(
        delivery_id=i, alert_id=1, kind="alert", channel=channel,
        address=f"+86170{i % 10**8:08d}", level="red", headline=HEADLINE, text=BODY,
        ack_url=f"https://yj.example.cn/ack/{i:x}-k7x9q2mz4d", ack_required=True,
    )


async def api_calls(base: str, kind: str, n: int, concurrency: int) -> dict[str, float]:
    os.environ["TWILIO_AUTH_TOKEN"] = TOKEN
    cls = TwilioSmsAdapter if kind == "sms" else TwilioVoiceAdapter
    settings = AdapterSettings(name=kind, type=f"twilio-{kind}", channel=kind,
                               concurrency=concurrency,
                               options={"account_sid": ACCOUNT, "from_number": "+15005550006",
                                        "api_base_url": base})
    adapter = cls(settings, public_url="https://yj.example.cn")
    await adapter.start(RecordingSink())
    try:
        outbound = [message(i, kind) for i in range(1, n + 1)]
        for m in outbound[:200]:  # warm up: connections, imports, caches
            await adapter.send(m)
        await fake_call(base, "reset")
        pending = iter(outbound)

        async def worker() -> None:
            for m in pending:
                await adapter.send(m)

        c0, t0 = cpu(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, used = time.perf_counter() - t0, cpu() - c0
        stats = await fake_call(base, "stats")
    finally:
        await adapter.stop()
    done = stats["messages"] + stats["calls"]
    assert done == n, f"the fake accepted {done} of {n}"
    reset_cpu = stats["cpu"]
    return {"per_s": n / elapsed, "cpu_pct": 100 * used / elapsed, "cpu_us": 1e6 * used / n,
            "fake_cpu_total": reset_cpu}


async def bare_calls(base: str, n: int, concurrency: int) -> dict[str, float]:
    """The floor: aiohttp alone posting the same form the adapter sends, no twilio library."""
    os.environ["TWILIO_AUTH_TOKEN"] = TOKEN
    sms = TwilioSmsAdapter(AdapterSettings(
        name="sms", type="twilio-sms", channel="sms",
        options={"account_sid": ACCOUNT, "from_number": "+15005550006"},
    ), public_url="https://yj.example.cn")
    url = f"{base}/2010-04-01/Accounts/{ACCOUNT}/Messages.json"
    auth = "Basic " + base64.b64encode(f"{ACCOUNT}:{TOKEN}".encode()).decode()
    headers = {"Authorization": auth, "Accept": "application/json",
               "Content-Type": "application/x-www-form-urlencoded"}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency),
                                     cookie_jar=aiohttp.DummyCookieJar()) as session:
        async def post(m: Outbound) -> None:
            body = form_encode({"To": m.address, "From": "+15005550006",
                                "Body": sms.compose(m).text,
                                "StatusCallback": sms.hook_url("status", d=m.delivery_id)})
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                assert resp.status == 201, resp.status

        outbound = [message(i, "sms") for i in range(1, n + 1)]
        for m in outbound[:200]:
            await post(m)
        await fake_call(base, "reset")
        pending = iter(outbound)

        async def worker() -> None:
            for m in pending:
                await post(m)

        c0, t0 = cpu(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed, used = time.perf_counter() - t0, cpu() - c0
        stats = await fake_call(base, "stats")
    return {"per_s": n / elapsed, "cpu_pct": 100 * used / elapsed, "cpu_us": 1e6 * used / n,
            "fake_cpu_total": stats["cpu"]}


def bench_api(kind: str, args: argparse.Namespace) -> list[str]:
    lines = []
    with fake_process(use_uvloop=args.uvloop) as base:
        results = []
        for run in range(args.runs):
            async def one() -> dict[str, float]:
                before = (await fake_call(base, "stats"))["cpu"]
                if kind == "bare":
                    r = await bare_calls(base, args.n, args.concurrency)
                else:
                    r = await api_calls(base, kind, args.n, args.concurrency)
                r["fake_cpu_us"] = 1e6 * (r.pop("fake_cpu_total") - before) / args.n
                return r
            r = run_loop(one(), args.uvloop)
            results.append(r)
            lines.append(f"  run {run + 1}: {r['per_s']:7.0f} {kind}/s  sender CPU "
                         f"{r['cpu_pct']:3.0f}% ({r['cpu_us']:4.0f} µs/call)  fake CPU "
                         f"{r['fake_cpu_us']:4.0f} µs/call")
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    what = {"sms": "SMS API calls", "voice": "voice API calls",
            "bare": "bare aiohttp POSTs"}[kind]
    lines.append(f"  median: {med['per_s']:7.0f} {what}/s, sender CPU {med['cpu_pct']:.0f}% "
                 f"of a core, {med['cpu_us']:.0f} µs CPU per call (fake {med['fake_cpu_us']:.0f})")
    return lines


# -- the gateway with Twilio adapters ---------------------------------------------------------

@contextlib.asynccontextmanager
async def gateway(tmp: Path, fake_base: str, *, rate: float, concurrency: int,
                  villages: int, households: int) -> AsyncIterator[tuple[Any, str, Path]]:
    os.environ["TWILIO_AUTH_TOKEN"] = TOKEN
    db = tmp / "warngate.db"
    url = f"sqlite+aiosqlite:///{db}"
    store = await Store.open(url)
    try:
        await write_small_county(store, townships=1, villages=villages, grids=5,
                                 households=households)
    finally:
        await store.close()
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    options = {"account_sid": ACCOUNT, "from_number": "+15005550006",
               "api_base_url": fake_base}
    settings = Settings(
        database={"url": url},  # type: ignore[arg-type]
        http=HttpSettings(public_url=public),
        auth=AuthSettings(four_eyes=False),
        adapters=(
            AdapterSettings(name="sms", type="twilio-sms", channel="sms",
                            concurrency=concurrency, rate_per_second=rate,
                            retry=RetrySettings(base_delay=0.5), options=options),
            AdapterSettings(name="voice", type="twilio-voice", channel="voice",
                            concurrency=10, rate_per_second=10, options=options),
        ),
        # A long lease: a send result the lane loses (see the report) must not be sent again
        # mid-measurement.
        dispatch=DispatchSettings(idle_poll=0.05, lease=3600),
    )
    adapters = load_adapters(settings, POLICY, public_url=public)
    app = build_app(settings, POLICY, adapters)
    async with serving(app, port):
        yield app[GATEWAY], public, db


async def warn_all(gw: Any) -> int:
    """A red warning to the whole county; returns once all its deliveries are planned."""
    accepted = await gw.alerts.compose(ADMIN, ComposeRequest(
        level="red", event="暴雨", headline=HEADLINE, description=BODY, areas=["339901"]))
    await gw.alerts.approve(ADMIN, accepted.alert_id)
    expected = int(sum(accepted.recipients.values()))
    query = select(func.count()).select_from(deliveries)
    await until(lambda: _at(gw.store, query, expected))
    return expected


async def _at(store: Store, query: Any, n: int) -> bool:
    return await count(store, query) >= n


async def count(store: Store, query: Any) -> int:
    async with store.read() as conn:
        return int((await conn.execute(query)).scalar_one())


async def until(check: Callable[[], Coroutine[Any, Any, bool]], within: float = 300) -> None:
    """Poll the database until ``check`` holds (nothing to wait on but the store)."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110  # nothing to wait on but the store
            await asyncio.sleep(0.05)


async def all_at_fake(fake_base: str, total: int) -> bool:
    """Every message reached the fake. (Counted there, not from delivery states: see the
    note on lost send results in the Twilio report.)"""
    return int((await fake_call(fake_base, "stats"))["messages"]) >= total


# -- rate accuracy through the lane ---------------------------------------------------------

async def rate_run(fake_base: str, rate: float, concurrency: int,
                   villages: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        async with gateway(Path(d), fake_base, rate=rate, concurrency=concurrency,
                           villages=villages, households=20) as (gw, _public, _db):
            await fake_call(fake_base, "reset")
            total = await warn_all(gw)
            await until(lambda: all_at_fake(fake_base, total))
            stats = await fake_call(fake_base, "stats")
    n = stats["messages"]
    achieved = (n - 1) / (stats["last_at"] - stats["first_at"])
    return {"n": n, "achieved": achieved, "error_pct": 100 * (achieved - rate) / rate,
            "max_in_flight": stats["max_in_flight"]}


def bench_rate(args: argparse.Namespace) -> list[str]:
    lines = []
    # (rate, concurrency): the rate binds in the first two, the concurrency cap in the last
    # (20 in flight × 20 ms each cannot exceed 1,000/s).
    cases = [(200.0, 20), (1000.0, 80), (2000.0, 20)]
    with fake_process(latency=0.02, use_uvloop=args.uvloop) as base:
        for rate, conc in cases:
            villages = max(2, round(min(rate, 1000) * args.seconds / 106))  # 106 people each
            results = [run_loop(rate_run(base, rate, conc, villages), args.uvloop)
                       for _ in range(args.runs)]
            for i, r in enumerate(results):
                lines.append(f"  rate {rate:6.0f}/s cap {conc:3d}, run {i + 1}: "
                             f"{r['n']:.0f} messages at {r['achieved']:7.1f}/s "
                             f"({r['error_pct']:+.2f}%), max in flight {r['max_in_flight']:.0f}")
            med = statistics.median(r["achieved"] for r in results)
            top = max(r["max_in_flight"] for r in results)
            binds = " — the cap binds: 20 in flight × ≥ 20 ms" if conc * 50 < rate else ""
            lines.append(f"  median: configured {rate:.0f}/s → achieved {med:.1f}/s "
                         f"({100 * (med - rate) / rate:+.2f}%), max in flight {top:.0f} "
                         f"(cap {conc}){binds}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sections", nargs="*", help="bare, sms, calls, rate (default: all)")
    parser.add_argument("-n", type=int, default=20000, help="API calls per run")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="about how long each rate run sends")
    parser.add_argument("--uvloop", action="store_true", help="run every loop on uvloop")
    args = parser.parse_args()
    unknown = set(args.sections) - {"bare", "sms", "calls", "rate"}
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}: choose from bare, sms, calls, rate")
    print(f"twilio bench: {os.cpu_count()} cores, loop "
          f"{'uvloop' if args.uvloop else 'asyncio'}, {args.runs} runs each")
    for section in args.sections or ["bare", "sms", "calls", "rate"]:
        print(f"[{section}]", flush=True)
        if section in ("bare", "sms", "calls"):
            out = bench_api({"calls": "voice"}.get(section, section), args)
        else:
            out = bench_rate(args)
        for line in out:
            print(line, flush=True)


if __name__ == "__main__":
    main()
