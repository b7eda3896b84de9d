"""Fan-out benchmark: plan and dispatch N recipients through the simulated SMS provider.

    .venv/bin/python bench/fanout.py                      # 100,000 on SQLite and PostgreSQL
    .venv/bin/python bench/fanout.py -n 1000000 --runs 3 --backend sqlite

For each run it prints: recipients planned per second (planning alone, no dispatch running),
the time from an alert being accepted to its first outbound message with dispatch running,
deliveries dispatched per second, and peak RSS of the process. The registry is generated in
the database (INSERT ... SELECT over a recursive counter), outside the measured time.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.databases import throwaway_database
from warngate.adapter import Outbound, SendResult
from warngate.alerts import NewAlert
from warngate.planning import Planner
from warngate.policy import Policy
from warngate.service import Gateway
from warngate.settings import AdapterSettings, DispatchSettings, Settings
from warngate.sim import SimSmsAdapter
from warngate.store import Store
from warngate.store.schema import alerts, deliveries

HOUSEHOLDS_PER_VILLAGE = 250
VILLAGES_PER_TOWNSHIP = 100

POLICY = Policy.model_validate({
    "levels": {lvl: {"roles": {"household": {"channels": ["sms"]},
                               "grid_worker": {"channels": ["sms"]}}}
               for lvl in ("blue", "yellow", "orange", "red")},
})


class TimedSms(SimSmsAdapter):
    """The simulated SMS provider, noting when the first and last messages left."""

    first_at: float | None = None
    last_at: float = 0.0

    async def _send(self, message: Outbound) -> SendResult:
        now = time.perf_counter()
        if self.first_at is None:
            self.first_at = now
        self.last_at = now
        return await super()._send(message)


async def build_registry(store: Store, n: int) -> None:
    """``n`` households in villages of 250, 100 villages a township, one grid a village."""
    villages = max(1, n // HOUSEHOLDS_PER_VILLAGE)
    pg = store.is_postgres
    seq = "generate_series(0, :m - 1) AS t(i)" if pg else (
        "(WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < :m - 1) "
        "SELECT i FROM c)")
    pad = (lambda e, w: f"lpad(({e})::text, {w}, '0')") if pg else (
        lambda e, w: f"printf('%0{w}d', {e})")
    town = pad(f"i / {VILLAGES_PER_TOWNSHIP} + 1", 3)
    vil = pad(f"i % {VILLAGES_PER_TOWNSHIP} + 1", 3)
    async with store.write() as conn:
        await conn.execute(text(
            "INSERT INTO regions (code, name, level) VALUES ('339901', '夏溪县', 'county')"))
        await conn.execute(text(
            f"INSERT INTO regions (code, name, level, parent_code, township_code, village_code) "
            f"SELECT '339901' || {town} || {vil}, '村' || i, 'village', '339901' || {town}, "
            f"'339901' || {town}, '339901' || {town} || {vil} FROM {seq}"), {"m": villages})
        await conn.execute(text(
            "INSERT INTO regions (code, name, level, parent_code, township_code) "
            "SELECT DISTINCT township_code, '镇' || township_code, 'township', '339901', "
            "township_code FROM regions WHERE level = 'village'"))
        await conn.execute(text(
            f"INSERT INTO contacts (external_id, name, phone, role, region_code, township_code, "
            f"village_code, grid_code, vulnerable, lang) "
            f"SELECT 'hh-' || i, '住户' || i, '+86170' || {pad('i', 8)}, 'household', "
            f"v.code || '001', v.township_code, v.code, v.code || '001', false, 'zh-CN' "
            f"FROM {seq.replace(':m', ':n')} "
            f"JOIN (SELECT code, township_code, row_number() OVER (ORDER BY code) - 1 AS k "
            f"      FROM regions WHERE level = 'village') v "
            f"  ON v.k = i % {villages}"), {"n": n})
    if pg:
        async with store.engine.connect() as conn:
            await conn.execute(text("ANALYZE"))
            await conn.commit()


def settings(url: str) -> Settings:
    return Settings(
        database={"url": url},  # type: ignore[arg-type]
        adapters=(AdapterSettings(name="sms", type="sim-sms", channel="sms", concurrency=64,
                                  rate_per_second=1e7),),
        dispatch=DispatchSettings(batch_size=2000, lease=120),
    )


def new_alert(townships: list[str]) -> NewAlert:
    return NewAlert(source="bench", sender="bench", identifier=str(uuid.uuid4()),
                    sent=str(time.time()), level="red", event="暴雨", headline="暴雨红色预警",
                    areas=townships, created_by="bench")


async def townships_of(store: Store) -> list[str]:
    async with store.read() as conn:
        return list((await conn.execute(
            select(text("code")).select_from(text("regions")).where(text("level='township'"))
        )).scalars())


async def one_run(url: str, n: int) -> dict[str, float]:
    store = await Store.open(url)
    try:
        await build_registry(store, n)
        towns = await townships_of(store)
        gw_settings = settings(url)
        # 1. Planning alone.
        from warngate.alerts import AlertService
        service = AlertService(store, POLICY)
        accepted = await service.accept(new_alert(towns), actor="bench")
        planner = Planner(store, POLICY, villages_per_chunk=gw_settings.planning.villages_per_chunk)
        t0 = time.perf_counter()
        await planner.plan_alert(accepted.alert_id)
        plan_s = time.perf_counter() - t0
        async with store.read() as conn:
            planned = (await conn.execute(
                select(func.count()).select_from(deliveries)
                .where(deliveries.c.alert_id == accepted.alert_id))).scalar_one()
        assert planned == n, (planned, n)
        async with store.write() as conn:  # leave only the second alert to dispatch
            await conn.execute(deliveries.delete())
            await conn.execute(alerts.update().values(state="expired"))
        if store.is_postgres:
            # A million dead index entries would otherwise stand between the first claim
            # and the first live row — an artefact of this bench, not of a real gateway.
            async with store.engine.connect() as conn:
                ac = await conn.execution_options(isolation_level="AUTOCOMMIT")
                await ac.execute(text("VACUUM ANALYZE deliveries"))
        # 2. Accept → first message → all dispatched, planner and lanes running together.
        sms = TimedSms(gw_settings.adapters[0])
        async with Gateway(gw_settings, POLICY, store, [sms]) as gw:
            t_accept = time.perf_counter()
            accepted = await gw.alerts.accept(new_alert(towns), actor="bench")
            t_accepted = time.perf_counter()
            # Polling keeps the measured code free of bench-only hooks.
            while sms.sent < n:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            lane = gw.dispatcher.lanes["sms"]
            while lane.counts["sent"] + lane.counts["delivered"] < n:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        assert sms.first_at is not None
        return {
            "plan_per_s": n / plan_s,
            "plan_s": plan_s,
            "accept_ms": (t_accepted - t_accept) * 1000,
            "first_ms": (sms.first_at - t_accepted) * 1000,
            "dispatch_per_s": n / (sms.last_at - sms.first_at),
            "total_s": sms.last_at - t_accept,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    finally:
        await store.close()


async def run_backend(backend: str, n: int) -> dict[str, float]:
    async with throwaway_database(backend) as url:
        return await one_run(url, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=100_000, help="recipients (100000)")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--runs", type=int, default=3, help="runs per backend; median shown")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        results: list[dict[str, Any]] = []
        for i in range(args.runs):
            # Each run in a fresh event loop; RSS is the whole process's peak so far.
            r = asyncio.run(run_backend(backend, args.n))
            results.append(r)
            print(f"{backend} run {i + 1}: " + "  ".join(f"{k}={v:,.1f}" for k, v in r.items()),
                  flush=True)
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(f"{backend} n={args.n:,} median of {args.runs}: "
              f"planned {med['plan_per_s']:,.0f}/s ({med['plan_s']:.2f} s), "
              f"accept {med['accept_ms']:.1f} ms, first message {med['first_ms']:.1f} ms "
              f"after accept, dispatched {med['dispatch_per_s']:,.0f}/s, "
              f"all sent {med['total_s']:.1f} s, peak RSS {med['rss_mb']:.0f} MB", flush=True)


if __name__ == "__main__":
    main()
