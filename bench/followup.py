"""Follow-up benchmark: N households whose every message of a red warning failed.

    .venv/bin/python bench/followup.py                   # 50,000 on SQLite and PostgreSQL
    .venv/bin/python bench/followup.py -n 10000 --backend sqlite

The registry (one township, villages of 100 households in grids of 25, each household bound
to its grid's worker) and the warning's failed deliveries are written outside the measured
time. Measured: one ``follow_up`` pass, which lists every household with one
``INSERT ... SELECT`` (statements counted) and plans one message per grid worker; then a
second pass, which must list nobody again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, func, insert, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.databases import throwaway_database
from warngate.followup import follow_up
from warngate.policy import Policy
from warngate.store import Store
from warngate.store.schema import alerts, contacts, deliveries, followups, regions

PER_GRID = 25
GRIDS_PER_VILLAGE = 4
TOWNSHIP = "339901001"

POLICY = Policy.model_validate({"levels": {
    lvl: {"roles": {"household": {"channels": ["sms"]}}}
    for lvl in ("blue", "yellow", "orange", "red")}})


async def populate(store: Store, n: int) -> int:
    """The registry and a live red warning whose N household messages all failed."""
    now = time.time()
    grids = -(-n // PER_GRID)
    region_rows: list[dict[str, Any]] = [
        {"code": TOWNSHIP, "name": "镇", "level": "township", "parent_code": None,
         "township_code": TOWNSHIP, "village_code": None}]
    workers: list[dict[str, Any]] = []
    for g in range(grids):
        village = f"{TOWNSHIP}{g // GRIDS_PER_VILLAGE + 1:03d}"
        grid = f"{village}{g % GRIDS_PER_VILLAGE + 1:03d}"
        if g % GRIDS_PER_VILLAGE == 0:
            region_rows.append({"code": village, "name": village, "level": "village",
                                "parent_code": TOWNSHIP, "township_code": TOWNSHIP,
                                "village_code": village})
        region_rows.append({"code": grid, "name": grid, "level": "grid",
                            "parent_code": village, "township_code": TOWNSHIP,
                            "village_code": village})
        workers.append({"external_id": f"gw-{grid}", "name": "网格员", "phone":
                        f"+86171{g:08d}", "role": "grid_worker", "region_code": grid,
                        "township_code": TOWNSHIP, "village_code": village,
                        "grid_code": grid})
    async with store.write() as conn:
        await conn.execute(insert(regions), region_rows)
        await conn.execute(insert(contacts), workers)
        worker_of = dict((await conn.execute(
            select(contacts.c.grid_code, contacts.c.id))).all())
        households = [
            {"external_id": f"hh-{i}", "name": f"住户{i}", "phone": f"+86172{i:08d}",
             "role": "household", "region_code": w["grid_code"], "township_code": TOWNSHIP,
             "village_code": w["village_code"], "grid_code": w["grid_code"],
             "responsible_id": worker_of[w["grid_code"]]}
            for i in range(n) for w in [workers[i // PER_GRID]]]
        for i in range(0, n, 5000):
            await conn.execute(insert(contacts), households[i : i + 5000])
        alert_id = (await conn.execute(insert(alerts).values(
            source="composer", sender="bench", identifier="bench-followup", sent="2026",
            level="red", event="台风", headline="台风红色预警", areas=[TOWNSHIP],
            state="active", created_by="bench", created_at=now, updated_at=now, plan_stage=2,
        ).returning(alerts.c.id))).scalar_one()
        ids = (await conn.execute(select(contacts.c.id, contacts.c.grid_code,
                                         contacts.c.village_code).where(
            contacts.c.role == "household"))).all()
        rows = [{"alert_id": alert_id, "contact_id": r.id, "role": "household",
                 "channel": "sms", "state": "failed", "priority": 35, "due_at": now,
                 "created_at": now, "township_code": TOWNSHIP, "village_code": r.village_code,
                 "grid_code": r.grid_code, "kind": "alert"} for r in ids]
        for i in range(0, len(rows), 5000):
            await conn.execute(insert(deliveries), rows[i : i + 5000])
    return int(alert_id)


async def run(backend: str, n: int) -> None:
    async with throwaway_database(backend) as url:
        store = await Store.open(url)
        try:
            alert_id = await populate(store, n)
            statements: list[str] = []

            def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
                if statement.lstrip().upper().startswith("INSERT INTO FOLLOWUPS"):
                    statements.append(statement)

            event.listen(store.engine.sync_engine, "before_cursor_execute", count)
            t0 = time.perf_counter()
            first = await follow_up(store, POLICY)
            took = time.perf_counter() - t0
            in_first = len(statements)
            t0 = time.perf_counter()
            second = await follow_up(store, POLICY)
            again = time.perf_counter() - t0
            event.remove(store.engine.sync_engine, "before_cursor_execute", count)
            async with store.read() as conn:
                listed = (await conn.execute(select(func.count()).select_from(followups).where(
                    followups.c.alert_id == alert_id))).scalar_one()
            assert listed == n and first.listed == n and second.listed == 0, (listed, first)
            print(f"{backend:9} {n:,} failed households: listed in {took:.2f} s "
                  f"({in_first} INSERT INTO followups statement(s), "
                  f"{first.notified:,} grid workers sent their list); "
                  f"second pass {again:.2f} s, listed {second.listed}")
        finally:
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=50_000)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    args = parser.parse_args()
    for backend in ("sqlite", "postgres") if args.backend == "both" else (args.backend,):
        asyncio.run(run(backend, args.n))


if __name__ == "__main__":
    main()
