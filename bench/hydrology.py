"""Gauge readings applied per second, for one batch of 1,000 and one of 10,000.

    .venv/bin/python bench/hydrology.py [--backend sqlite|postgres|both] [--runs 3]

PostgreSQL: a database created for the run (tests/databases.py; WARNGATE_TEST_PG).

``Hydrology.apply`` as the API calls it, with the gateway's alert service (each raised alert
planned for its first recipients inside the accepting transaction) over a small county.
Ten stations share each batch; each station rises past its warning and guaranteed levels
and falls back once per batch (four alerts per station). Each run is a fresh database;
medians of ``--runs``. Also: how long a one-reading post for another station waits while
a 10,000-reading batch is being applied.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.databases import throwaway_database
from tests.integration.test_pipeline import policy
from tests.smallcounty import write_small_county
from warngate.alerts import AlertService
from warngate.hydrology import Hydrology, Reading
from warngate.planning import Planner
from warngate.settings import HydroStation
from warngate.store import Store

STATIONS = 10
START = datetime(2026, 7, 1, tzinfo=UTC)


def station(n: int) -> HydroStation:
    return HydroStation(id=f"g{n}", name=f"水文站{n}", river="清溪", warning_level_m=12.0,
                        guaranteed_level_m=13.5, hysteresis_m=0.2,
                        areas=(f"339901{1 + n % 2:03d}001",))


def batch(size: int, stations: int = STATIONS) -> list[Reading]:
    each = size // stations

    def level(i: int) -> float:  # up at 40 %, red 50–52 %, orange again, down at 60 %
        f = i / each
        return 13.8 if 0.5 <= f < 0.52 else 12.5 if 0.4 <= f < 0.6 else 11.0

    return [Reading(station=f"g{n}", at=START + timedelta(minutes=5 * i), level_m=level(i))
            for n in range(stations) for i in range(each)]


async def one_run(backend: str, size: int) -> tuple[float, float | None]:
    """Seconds to apply one batch of ``size``; with 10k, also the wait of a small post."""
    async with throwaway_database(backend) as url:
        store = await Store.open(url)
        try:
            await write_small_county(store, townships=2, villages=5, grids=2, households=5)
            planner = Planner(store, policy())
            alerts = AlertService(store, policy(), plan_first=planner.plan_first)
            extra = station(STATIONS)
            hydro = Hydrology(store, alerts, (*(station(n) for n in range(STATIONS)), extra),
                              confirm=2)
            readings = batch(size)
            small = [Reading(station=extra.id, at=START, level_m=11.0)]
            waited: float | None = None

            async def small_post() -> None:
                nonlocal waited
                await asyncio.sleep(0.2)  # the big batch is under way
                t = time.perf_counter()
                await hydro.apply(small)
                waited = time.perf_counter() - t

            t0 = time.perf_counter()
            if size >= 10_000:
                results, _ = await asyncio.gather(hydro.apply(readings), small_post())
            else:
                results = await hydro.apply(readings)
            took = time.perf_counter() - t0
            raised = sum(r["outcome"] == "raised" for r in results)
            assert raised == STATIONS, raised
            return took, waited
        finally:
            await store.close()


async def run(backends: list[str], runs: int) -> None:
    for backend in backends:
        for size in (1_000, 10_000):
            got = [await one_run(backend, size) for _ in range(runs)]
            took = statistics.median(t for t, _ in got)
            line = (f"{backend:8s} {size:6d} readings: {took:6.2f} s  "
                    f"{size / took:8.0f} readings/s (median of {runs})")
            waits = [w for _, w in got if w is not None]
            if waits:
                line += f"; a 1-reading post meanwhile waited {statistics.median(waits):.2f} s"
            print(line, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    asyncio.run(run(backends, args.runs))


if __name__ == "__main__":
    main()
