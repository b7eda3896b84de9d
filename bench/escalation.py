"""Escalation benchmark: N grid workers who did not answer a red warning, each step for all.

    .venv/bin/python bench/escalation.py                   # 100,000 on SQLite and PostgreSQL
    .venv/bin/python bench/escalation.py -n 10000 --runs 1 --backend sqlite

The registry (grid workers in villages of 100, each with its village head as supervisor)
and the warning's deliveries are made outside the measured time; every first message was
sent and nobody answered. For each run it prints:

* step 1 (a voice call to the person) and step 2 (a voice call to their supervisor): the
  time one ``escalate_due`` takes for all N overdue people, and the rate;
* silent: the sweep at the deadline after the last step, which marks all N silent and
  alarms each township's duty officer and the county's (one message per township);
* through a running gateway (sim adapters, the escalation sweep every ``--sweep`` seconds):
  the time from the deadline until every person's next-step row exists, next to the sweep
  interval it should stay within.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text, update

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.databases import throwaway_database
from warngate.alerts import AlertService, NewAlert
from warngate.escalation import escalate_due
from warngate.planning import Planner
from warngate.policy import Policy
from warngate.service import Gateway, load_adapters
from warngate.settings import (
    AdapterSettings,
    DispatchSettings,
    EscalationSettings,
    Settings,
)
from warngate.store import Store
from warngate.store.schema import deliveries

PER_VILLAGE = 100
VILLAGES_PER_TOWNSHIP = 100
STEP1_AFTER, STEP2_AFTER = 600.0, 1200.0
#: The deadline (ack.within) after the last step, so that step has time to be answered.
WITHIN = 1800.0

POLICY = Policy.model_validate({
    "levels": {
        **{lvl: {"roles": {"grid_worker": {"channels": ["sms"]}}}
           for lvl in ("blue", "yellow", "orange")},
        "red": {"roles": {"grid_worker": {
            "channels": ["sms"], "ack": {"required": True, "within": WITHIN},
            "escalation": [{"after": STEP1_AFTER, "channel": "voice"},
                           {"after": STEP2_AFTER, "channel": "voice", "to": "supervisor"}],
        }}},
    },
})


async def build_registry(store: Store, n: int) -> None:
    """``n`` grid workers, 100 a village; each village's head is their supervisor."""
    villages = max(1, -(-n // PER_VILLAGE))
    pg = store.is_postgres
    seq = "generate_series(0, :m - 1) AS t(i)" if pg else (
        "(WITH RECURSIVE c(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM c WHERE i < :m - 1) "
        "SELECT i FROM c)")

    def pad(e: str, w: int) -> str:
        return f"lpad(({e})::text, {w}, '0')" if pg else f"printf('%0{w}d', {e})"

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
            "INSERT INTO contacts (external_id, name, phone, role, region_code, township_code, "
            "village_code, vulnerable, lang) "
            "SELECT 'head-' || code, '村长' || code, '+86139' || substr(code, 7, 8), "
            "'village_head', code, township_code, code, false, 'zh-CN' "
            "FROM regions WHERE level = 'village'"))
        await conn.execute(text(
            "INSERT INTO contacts (external_id, name, phone, role, region_code, township_code, "
            "vulnerable, lang) "
            "SELECT 'duty-' || code, '值班员' || code, '+86138' || substr(code, 4, 8), "
            "'township_duty', code, code, false, 'zh-CN' FROM regions WHERE level = 'township' "
            "UNION ALL SELECT 'county-duty', '县值班员', '+8613800000000', 'county_duty', "
            "'339901', NULL, false, 'zh-CN'"))
        await conn.execute(text(
            f"INSERT INTO contacts (external_id, name, phone, role, region_code, township_code, "
            f"village_code, grid_code, supervisor_id, vulnerable, lang) "
            f"SELECT 'gw-' || i, '网格员' || i, '+86170' || {pad('i', 8)}, 'grid_worker', "
            f"v.code || '001', v.township_code, v.code, v.code || '001', h.id, false, 'zh-CN' "
            f"FROM {seq.replace(':m', ':n')} "
            f"JOIN (SELECT code, township_code, row_number() OVER (ORDER BY code) - 1 AS k "
            f"      FROM regions WHERE level = 'village') v ON v.k = i / {PER_VILLAGE} "
            f"JOIN contacts h ON h.external_id = 'head-' || v.code"), {"n": n})


async def analyze(store: Store) -> None:
    if store.is_postgres:
        async with store.engine.connect() as conn:
            ac = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await ac.execute(text("VACUUM ANALYZE"))


async def warn_everyone(store: Store, n: int) -> int:
    """A red warning to every grid worker, planned, "sent", and not answered; its id."""
    async with store.read() as conn:
        townships = list((await conn.execute(text(
            "SELECT code FROM regions WHERE level = 'township'"))).scalars())
    accepted = await AlertService(store, POLICY).accept(NewAlert(
        source="bench", sender="bench", identifier=str(uuid.uuid4()), sent=str(time.time()),
        level="red", event="暴雨", headline="暴雨红色预警", areas=townships,
        created_by="bench"), actor="bench")
    await Planner(store, POLICY).plan_alert(accepted.alert_id)
    async with store.write() as conn:
        await conn.execute(update(deliveries).values(state="sent"))
    assert await count_step(store, 0) == n
    return accepted.alert_id


async def count_step(store: Store, step: int) -> int:
    async with store.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(deliveries)
                                       .where(deliveries.c.step == step))).scalar_one())


async def deadline_at(store: Store, at: float) -> None:
    async with store.write() as conn:
        await conn.execute(update(deliveries).where(deliveries.c.escalate_at.is_not(None))
                           .values(escalate_at=at))


async def direct_steps(url: str, n: int) -> dict[str, float]:
    """Each step for all N, one ``escalate_due`` call each."""
    store = await Store.open(url)
    try:
        await build_registry(store, n)
        await warn_everyone(store, n)
        result: dict[str, float] = {}
        for step in (1, 2):
            await deadline_at(store, time.time() - 1)
            await analyze(store)
            t0 = time.perf_counter()
            added = await escalate_due(store, POLICY)
            result[f"step{step}_s"] = time.perf_counter() - t0
            assert added == n and await count_step(store, step) == n, (added, step)
            async with store.write() as conn:
                await conn.execute(update(deliveries).where(deliveries.c.step == step)
                                   .values(state="sent"))
        await deadline_at(store, time.time() - 1)
        await analyze(store)
        t0 = time.perf_counter()
        assert await escalate_due(store, POLICY) == 0
        result["silent_s"] = time.perf_counter() - t0
        async with store.read() as conn:
            silent, alarms = (await conn.execute(select(
                select(func.count()).select_from(deliveries)
                .where(deliveries.c.silent_at.is_not(None)).scalar_subquery(),
                select(func.count()).select_from(deliveries)
                .where(deliveries.c.kind == "silent").scalar_subquery()))).one()
        townships = -(-n // (PER_VILLAGE * VILLAGES_PER_TOWNSHIP))
        assert silent == n and alarms == 2 * townships, (silent, alarms)
        return result
    finally:
        await store.close()


def gateway_settings(url: str, sweep: float) -> Settings:
    sim = {"ack_probability": 0.0}
    return Settings(
        database={"url": url},  # type: ignore[arg-type]
        ack_key="bench-ack-key-0123456789abcdef",  # type: ignore[arg-type]
        adapters=(
            AdapterSettings(name="sms", type="sim-sms", channel="sms", rate_per_second=1e6,
                            options=sim),
            AdapterSettings(name="voice", type="sim-voice", channel="voice", concurrency=50,
                            rate_per_second=1e6, options=sim),
        ),
        dispatch=DispatchSettings(batch_size=2000),
        escalation=EscalationSettings(sweep_every=sweep),
    )


async def through_gateway(url: str, n: int, sweep: float) -> dict[str, float]:
    """From the deadline until every person's step-1 row exists, the gateway running."""
    store = await Store.open(url)
    try:
        await build_registry(store, n)
        await warn_everyone(store, n)
        # The deadline lies ahead, as a planned warning's does: the gateway learns it at its
        # first sweep and sweeps again when it comes.
        deadline = time.time() + 3.0
        await deadline_at(store, deadline)
        await analyze(store)
        s = gateway_settings(url, sweep)
        async with Gateway(s, POLICY, store, load_adapters(s, POLICY)):
            # Polling keeps the measured code free of bench-only hooks.
            while await count_step(store, 1) < n:  # noqa: ASYNC110
                await asyncio.sleep(0.1)
            done = time.time()
        return {"gateway_s": done - deadline}
    finally:
        await store.close()


async def one_run(backend: str, n: int, sweep: float) -> dict[str, float]:
    async with throwaway_database(backend) as url:
        direct = await direct_steps(url, n)
    async with throwaway_database(backend) as url:
        return {**direct, **await through_gateway(url, n, sweep)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--n", type=int, default=100_000, help="overdue people (100000)")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--runs", type=int, default=3, help="runs per backend; median shown")
    parser.add_argument("--sweep", type=float, default=5.0,
                        help="the gateway's escalation sweep interval, seconds (5)")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        results: list[dict[str, Any]] = []
        for i in range(args.runs):
            r = asyncio.run(one_run(backend, args.n, args.sweep))
            results.append(r)
            print(f"{backend} run {i + 1}: " + "  ".join(f"{k}={v:,.2f}" for k, v in r.items()),
                  flush=True)
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(f"{backend} n={args.n:,} median of {args.runs}: "
              f"step 1 (voice to self) {med['step1_s']:.2f} s "
              f"({args.n / med['step1_s']:,.0f}/s), "
              f"step 2 (supervisor) {med['step2_s']:.2f} s "
              f"({args.n / med['step2_s']:,.0f}/s), "
              f"silent + alarm {med['silent_s']:.2f} s "
              f"({args.n / med['silent_s']:,.0f}/s); "
              f"through the gateway {med['gateway_s']:.2f} s from the deadline "
              f"(sweep every {args.sweep:g} s)", flush=True)


if __name__ == "__main__":
    main()
