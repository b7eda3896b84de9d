"""Accountability report benchmark: the 通报 of a 1,000,000-recipient red warning.

    .venv/bin/python bench/report.py                        # 1,000,000 on SQLite and PostgreSQL
    .venv/bin/python bench/report.py -n 100000 --runs 5 --backend sqlite
    .venv/bin/python bench/report.py --all-answer            # households must answer too

Outside the measured time: the registry of bench/fanout.py (N households in villages of 250,
100 villages a township), a village head, a grid worker and a loudspeaker in every village,
the warning planned by the real planner, then what a day of it leaves behind, written with
set-based statements: nine in ten messages delivered a few seconds apart, one in ten failed;
of the people who must answer a third answered themselves (one in five of them late), a
third were covered by a supervisor's answer, a third stayed silent, escalated once, one in
four of those until their steps ran out; 50,000 households followed up (a fifth moved);
one speaker in twenty offline.

Measured: ``warngate.report.build_report`` (every aggregate: village, township and county
rows), ``--runs`` times, median shown; then, for information, the first page of the people
list (200) and the whole CSV export with every such person. Target: the report under 2 s
on both backends. The load average is printed with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fanout import build_registry, townships_of

from tests.databases import throwaway_database
from warngate.alerts import AlertService, NewAlert
from warngate.planning import Planner
from warngate.policy import Policy
from warngate.report import build_report, late_people, write_csv
from warngate.store import Store
from warngate.store.schema import deliveries


class _Discard(io.StringIO):
    """Where the export is written: nowhere (its time is what is measured)."""

    def write(self, s: str) -> int:
        return len(s)


def policy(all_answer: bool) -> Policy:
    responsible = {"channels": ["sms"], "ack": {"required": True, "within": "15m"},
                   "escalation": [{"after": "5m", "channel": "voice"},
                                  {"after": "10m", "channel": "voice", "to": "supervisor"}]}
    household: dict[str, Any] = {"channels": ["sms"]}
    if all_answer:
        household = {"channels": ["sms"], "ack": {"required": True, "within": "30m"}}
    return Policy.model_validate({"levels": {
        lvl: {"roles": {"village_head": responsible, "grid_worker": responsible,
                        "household": household},
              "speakers": {"enabled": True}}
        for lvl in ("blue", "yellow", "orange", "red")}})


async def add_responsible(store: Store) -> None:
    """A village head, a grid worker (their subordinate) and a speaker in every village."""
    async with store.write() as conn:
        for role, prefix, grid in (("village_head", "head", "NULL"),
                                   ("grid_worker", "gw", "code || '001'")):
            await conn.execute(text(
                f"INSERT INTO contacts (external_id, name, phone, role, region_code, "
                f"township_code, village_code, grid_code, vulnerable, lang, active) "
                f"SELECT '{prefix}-' || code, '{prefix}' || code, "
                f"'+86139' || substr(code, length(code) - 7, 8), '{role}', code, "
                f"township_code, code, {grid}, false, 'zh-CN', true "
                f"FROM regions WHERE level = 'village'"))
        await conn.execute(text(
            "UPDATE contacts SET supervisor_id = (SELECT h.id FROM contacts h "
            "WHERE h.external_id = 'head-' || contacts.village_code) "
            "WHERE role = 'grid_worker'"))
        await conn.execute(text(
            "UPDATE contacts SET responsible_id = (SELECT g.id FROM contacts g "
            "WHERE g.external_id = 'gw-' || contacts.village_code) WHERE role = 'household'"))
        await conn.execute(text(
            "INSERT INTO speakers (id, name, region_code, township_code, village_code, online) "
            "SELECT 'spk-' || code, code, code, township_code, code, true "
            "FROM regions WHERE level = 'village'"))


async def aftermath(store: Store, alert_id: int) -> None:
    """What sending, answering, escalating and following up left behind (set-based)."""
    a = {"a": alert_id}
    pg = store.is_postgres
    mod = (lambda e, m: f"mod({e}, {m})") if pg else (lambda e, m: f"(({e}) % {m})")
    async with store.write() as conn:
        await conn.execute(text(
            f"UPDATE deliveries SET state = CASE WHEN {mod('id', 10)} = 0 THEN 'failed' "
            f"ELSE 'delivered' END, sent_at = created_at + 1 + {mod('id', 60)}, "
            f"delivered_at = CASE WHEN {mod('id', 10)} = 0 THEN NULL "
            f"ELSE created_at + 3 + {mod('id', 60)} END WHERE alert_id = :a"), a)
        # People who must answer: by their id, a third themselves (a fifth of those late),
        # a third covered by their supervisor, a third silent.
        person = "contact_id"
        await conn.execute(text(
            f"INSERT INTO acknowledgements (delivery_id, alert_id, contact_id, via, at, "
            f"person_id, answered_by) "
            f"SELECT id, alert_id, contact_id, 'sms_reply', sent_at + "
            f"CASE WHEN {mod(person, 5)} = 0 THEN 5000 ELSE 60 END, contact_id, "
            f"CASE WHEN {mod(person, 3)} = 0 THEN 'self' ELSE 'supervisor' END "
            f"FROM deliveries WHERE alert_id = :a AND ack_required AND step = 0 "
            f"AND {mod(person, 3)} IN (0, 1)"), a)
        await conn.execute(text(
            f"UPDATE deliveries SET state = 'acknowledged', acked_at = sent_at + 60, "
            f"acked_how = CASE WHEN {mod(person, 3)} = 0 THEN 'self' ELSE 'covered' END, "
            f"escalate_at = NULL "
            f"WHERE alert_id = :a AND ack_required AND {mod(person, 3)} IN (0, 1)"), a)
        # The silent were called (step 1), a quarter of them until their steps ran out.
        await conn.execute(text(
            f"INSERT INTO deliveries (alert_id, kind, contact_id, role, channel, step, state, "
            f"priority, village_rank, attempts, due_at, ack_required, township_code, "
            f"village_code, grid_code, created_at, sent_at, silent_at) "
            f"SELECT alert_id, kind, contact_id, role, 'voice', 1, 'failed', priority, 0, 1, "
            f"created_at + 300, {'true' if pg else '1'}, township_code, village_code, "
            f"grid_code, created_at + 300, created_at + 301, "
            f"CASE WHEN {mod(person, 4)} = 2 THEN created_at + 900 END "
            f"FROM deliveries WHERE alert_id = :a AND ack_required AND step = 0 "
            f"AND {mod(person, 3)} = 2"), a)
        await conn.execute(text(
            f"INSERT INTO followups (alert_id, household_id, grid_worker_id, reason, "
            f"township_code, village_code, grid_code, created_at, outcome, people_moved, "
            f"outcome_at) "
            f"SELECT d.alert_id, d.contact_id, c.responsible_id, 'failed', d.township_code, "
            f"d.village_code, d.grid_code, d.created_at, "
            f"CASE {mod('d.contact_id', 5)} WHEN 0 THEN 'evacuated' WHEN 1 THEN 'informed' "
            f"WHEN 2 THEN 'refused' ELSE NULL END, "
            f"CASE WHEN {mod('d.contact_id', 5)} = 0 THEN 3 END, d.created_at + 1800 "
            f"FROM deliveries d JOIN contacts c ON c.id = d.contact_id "
            f"WHERE d.alert_id = :a AND d.id IN (SELECT id FROM deliveries WHERE alert_id = :a "
            f"AND role = 'household' AND state = 'failed' AND step = 0 "
            f"ORDER BY id LIMIT 50000)"), a)
        await conn.execute(text(
            f"UPDATE speakers SET online = false "
            f"WHERE {mod('CAST(substr(id, length(id) - 2, 3) AS INTEGER)', 20)} = 0"))
    if pg:
        async with store.engine.connect() as conn:
            ac = await conn.execution_options(isolation_level="AUTOCOMMIT")
            await ac.execute(text("VACUUM ANALYZE"))
    else:
        async with store.write() as conn:
            await conn.execute(text("ANALYZE"))


async def one_backend(backend: str, n: int, runs: int, all_answer: bool) -> dict[str, Any]:
    async with throwaway_database(backend) as url:
        store = await Store.open(url)
        try:
            t0 = time.perf_counter()
            await build_registry(store, n)
            await add_responsible(store)
            pol = policy(all_answer)
            accepted = await AlertService(store, pol).accept(NewAlert(
                source="bench", sender="bench", identifier=str(uuid.uuid4()),
                sent=str(time.time()), level="red", event="暴雨", headline="暴雨红色预警",
                areas=await townships_of(store), created_by="bench"), actor="bench")
            await Planner(store, pol).plan_alert(accepted.alert_id)
            await aftermath(store, accepted.alert_id)
            async with store.read() as conn:
                rows = (await conn.execute(select(func.count()).select_from(deliveries).where(
                    deliveries.c.alert_id == accepted.alert_id))).scalar_one()
            print(f"{backend}: {rows:,} deliveries ready in {time.perf_counter() - t0:.0f} s",
                  flush=True)
            times = []
            report = None
            for i in range(runs):
                t = time.perf_counter()
                report = await build_report(store, pol, alert_id=accepted.alert_id)
                times.append(time.perf_counter() - t)
                print(f"{backend} run {i + 1}: report {times[-1]:.3f} s", flush=True)
            assert report is not None
            t = time.perf_counter()
            page = await late_people(store, pol, [accepted.alert_id], limit=200)
            page_s = time.perf_counter() - t
            t = time.perf_counter()
            listed = await write_csv(store, pol, report, _Discard())
            export_s = time.perf_counter() - t
            county = report.rows[0].figures()
            return {"report_s": statistics.median(times), "times": times,
                    "rows": len(report.rows), "deliveries": rows, "page_s": page_s,
                    "page": len(page), "export_s": export_s, "listed": listed,
                    "county": county}
        finally:
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=1_000_000, help="households (1000000)")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--runs", type=int, default=3, help="reports per backend; median shown")
    parser.add_argument("--all-answer", action="store_true",
                        help="households must answer too (N people to count one by one)")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        r = asyncio.run(one_backend(backend, args.n, args.runs, args.all_answer))
        c = r["county"]
        load = os.getloadavg()
        print(f"{backend} n={args.n:,} ({r['deliveries']:,} deliveries, {r['rows']} report "
              f"rows): report median of {args.runs} {r['report_s']:.3f} s "
              f"(runs {', '.join(f'{t:.3f}' for t in r['times'])}); first page of the "
              f"people list ({r['page']}) {r['page_s']:.3f} s; whole CSV export with "
              f"{r['listed']:,} people {r['export_s']:.1f} s; county: {c['responsible']:,} "
              f"responsible, {c['on_time']:,} in time ({c['on_time_pct']}%), "
              f"{c['covered']:,} covered, {c['silent']:,} silent, {c['exhausted']:,} ran out, "
              f"{c['followups']:,} followed up, {c['speakers_silent']} speakers silent; "
              f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)


if __name__ == "__main__":
    main()
