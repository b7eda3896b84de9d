"""Board readers benchmark: what open receipt boards cost a fan-out.

    .venv/bin/python bench/board_readers.py                  # 100,000 on SQLite and PostgreSQL
    .venv/bin/python bench/board_readers.py --backend postgres -n 100000 --readers 100 --runs 3

Each run builds an N-household registry (as bench/fanout.py does, outside the measured time),
starts the whole service (``build_app``: HTTP API and gateway) on 127.0.0.1 and dispatches one
red warning to everyone through the simulated SMS provider, twice: once with nobody watching
and once with ``--readers`` board readers polling ``GET /api/v1/alerts/{id}/receipts`` over
HTTP. The readers run in a separate process, as browsers would, each asking again ``--poll``
seconds after its answer arrives (3 s as the board page does; 0: at once, a stress test). The two
phases alternate in order between runs. Printed: deliveries dispatched per second in each
phase, the drop in percent, the readers' requests and their median / worst answer time, and
the load average. Target: less than 10% drop.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import time
from multiprocessing.queues import Queue
from pathlib import Path
from typing import Any

from aiohttp import ClientError, ClientSession, ClientTimeout, TCPConnector, web
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# The readers' process (spawned: it runs this file again as ``__mp_main__``) needs only
# aiohttp; it must not pay for, or depend on, the service's imports.
if __name__ != "__mp_main__":
    from fanout import POLICY, build_registry, new_alert, townships_of

    from tests.databases import throwaway_database
    from warngate.settings import (
        AdapterSettings,
        ApiToken,
        AuthSettings,
        DispatchSettings,
        Settings,
        hash_token,
    )
    from warngate.sim import SimSmsAdapter
    from warngate.store import Store
    from warngate.store.schema import alerts, deliveries
    from warngate.web.app import GATEWAY, build_app

TOKEN = "bench-board-reader"


def settings(url: str) -> Settings:
    return Settings(
        database={"url": url},  # type: ignore[arg-type]
        auth=AuthSettings(tokens=(ApiToken(name="board", role="duty_officer",
                                           token_sha256=hash_token(TOKEN)),)),
        adapters=(AdapterSettings(name="sms", type="sim-sms", channel="sms", concurrency=64,
                                  rate_per_second=1e7),),
        dispatch=DispatchSettings(batch_size=2000, lease=120),
    )


# -- the readers' process ---------------------------------------------------------------------

def readers_process(base: str, readers: int, poll: float, orders: Queue[Any],
                    results: Queue[Any]) -> None:
    """Poll one alert's board from ``readers`` clients until told to stop."""
    asyncio.run(_read_boards(base, readers, poll, orders, results))


async def _read_boards(base: str, readers: int, poll: float, orders: Queue[Any],
                       results: Queue[Any]) -> None:
    loop = asyncio.get_running_loop()
    alert_id = await loop.run_in_executor(None, orders.get)
    stop = asyncio.Event()
    times: list[float] = []
    errors = 0
    path = f"{base}/api/v1/alerts/{alert_id}/receipts"
    headers = {"Authorization": f"Bearer {TOKEN}"}

    async def reader(session: ClientSession) -> None:
        nonlocal errors
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                async with session.get(path, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        errors += 1
            except (ClientError, TimeoutError):
                errors += 1
            times.append(time.perf_counter() - t0)
            if poll:
                try:
                    async with asyncio.timeout(poll):
                        await stop.wait()
                except TimeoutError:
                    pass

    # One connection per reader, as a hundred browser tabs would hold.
    async with ClientSession(connector=TCPConnector(limit=readers),
                             timeout=ClientTimeout(total=120)) as session:
        tasks = [asyncio.create_task(reader(session), name=f"board-reader-{i}")
                 for i in range(readers)]
        results.put("reading")
        await loop.run_in_executor(None, orders.get)
        stop.set()
        await asyncio.gather(*tasks)
    results.put({"requests": len(times), "errors": errors,
                 "median_ms": statistics.median(times) * 1000 if times else 0.0,
                 "max_ms": max(times, default=0.0) * 1000})


# -- the service's process --------------------------------------------------------------------

async def clear_deliveries(url: str) -> None:
    """Leave the registry, drop the last phase's alert and rows (outside the measured time)."""
    store = await Store.open(url)
    try:
        async with store.write() as conn:
            await conn.execute(deliveries.delete())
            await conn.execute(alerts.update().values(state="expired"))
        if store.is_postgres:
            async with store.engine.connect() as conn:
                ac = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await ac.execute(text("VACUUM ANALYZE deliveries"))
    finally:
        await store.close()


async def one_phase(url: str, n: int, towns: list[str], readers: int,
                    poll: float) -> dict[str, float]:
    sms = SimSmsAdapter(settings(url).adapters[0])
    app = build_app(settings(url), POLICY, adapters=[sms])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ctx = mp.get_context("spawn")
    orders: Queue[Any] = ctx.Queue()
    results: Queue[Any] = ctx.Queue()
    proc = None
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        loop = asyncio.get_running_loop()
        if readers:
            proc = ctx.Process(target=readers_process, name="board-readers",
                               args=(f"http://127.0.0.1:{port}", readers, poll, orders,
                                     results))
            proc.start()
        gw = app[GATEWAY]
        accepted = await gw.alerts.accept(new_alert(towns), actor="bench")
        if proc is not None:
            orders.put(accepted.alert_id)
            assert await loop.run_in_executor(None, results.get, True, 120) == "reading"
        first = last = 0.0
        # Polling the provider's counter keeps the measured code free of bench-only hooks.
        async with asyncio.timeout(3600):
            while sms.sent < n:
                if not first and sms.sent:
                    first = time.perf_counter()
                await asyncio.sleep(0.005)
        last = time.perf_counter()
        seen: dict[str, Any] = {}
        if proc is not None:
            orders.put("stop")
            seen = await loop.run_in_executor(None, results.get, True, 120)
        return {"per_s": n / (last - first), **seen}
    finally:
        await runner.cleanup()
        if proc is not None:
            await asyncio.get_running_loop().run_in_executor(None, proc.join, 30)


async def one_run(backend: str, n: int, readers: int, poll: float,
                  readers_first: bool) -> dict[str, Any]:
    async with throwaway_database(backend) as url:
        store = await Store.open(url)
        try:
            await build_registry(store, n)
            towns = await townships_of(store)
        finally:
            await store.close()
        out: dict[str, Any] = {}
        for phase in (["readers", "alone"] if readers_first else ["alone", "readers"]):
            await clear_deliveries(url)
            out[phase] = await one_phase(url, n, towns, readers if phase == "readers" else 0,
                                         poll)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000, help="recipients (100000)")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--readers", type=int, default=100, help="board readers (100)")
    parser.add_argument("--poll", type=float, default=3.0,
                        help="seconds a reader waits between answers: 3 as the board page "
                             "does (0: none, a stress test)")
    parser.add_argument("--runs", type=int, default=3, help="runs per backend; median shown")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        runs = []
        for i in range(args.runs):
            r = asyncio.run(one_run(backend, args.n, args.readers, args.poll,
                                    readers_first=i % 2 == 1))
            runs.append(r)
            rd = r["readers"]
            drop = 100 * (1 - rd["per_s"] / r["alone"]["per_s"])
            print(f"{backend} run {i + 1}: alone {r['alone']['per_s']:,.0f}/s, with "
                  f"{args.readers} readers {rd['per_s']:,.0f}/s ({drop:.1f}% drop); "
                  f"{rd['requests']:,} board requests, {rd['errors']} errors, answer median "
                  f"{rd['median_ms']:.0f} ms, worst {rd['max_ms']:.0f} ms; "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
        alone = statistics.median(r["alone"]["per_s"] for r in runs)
        read = statistics.median(r["readers"]["per_s"] for r in runs)
        drops = [100 * (1 - r["readers"]["per_s"] / r["alone"]["per_s"]) for r in runs]
        print(f"{backend} n={args.n:,} median of {args.runs}: dispatched {alone:,.0f}/s alone, "
              f"{read:,.0f}/s with {args.readers} board readers (poll {args.poll:g} s): "
              f"{100 * (1 - read / alone):.1f}% drop (median of per-run drops "
              f"{statistics.median(drops):.1f}%); load average "
              f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
