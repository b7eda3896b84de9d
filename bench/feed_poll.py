"""Feed polling benchmark: a generated ATOM feed of about 2 MB, end to end.

    .venv/bin/python bench/feed_poll.py                        # 500 entries, both backends
    .venv/bin/python bench/feed_poll.py --backend postgres --entries 1000 --runs 5

The feed is ``tests.feed_server.big_feed``: two entries in three carry their CAP message, the
third links to it; a few links answer 500 once or twice before they work; three linked
messages are over 460 KB and arrive slowly in 16 KB pieces; some keys are written twice. It
is served by the test feed server on 127.0.0.1 in the same process (so the server's work is
counted too). Each run starts on an empty database with the small test county and polls
back to back, as the scheduler would after each interval, until every alert exists.

For each run it prints: the first poll's time, the time until every alert exists (first
poll to last alert), the polls that took, entries taken per second, and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.databases import throwaway_database
from tests.feed_server import FeedServer, big_feed
from tests.smallcounty import write_small_county
from warngate.alerts import AlertService
from warngate.feeds import FeedPoller
from warngate.policy import Policy
from warngate.settings import FeedSettings
from warngate.store import Store
from warngate.store.schema import alerts

POLICY = Policy.model_validate({
    "levels": {lvl: {"roles": {"grid_worker": {"channels": ["sms"]}}}
               for lvl in ("blue", "yellow", "orange", "red")},
})
MAX_POLLS = 10


async def alert_count(store: Store) -> int:
    async with store.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(alerts))).scalar_one())


async def one_run(url: str, entries: int, run: int) -> dict[str, float]:
    generated = big_feed(entries, prefix=f"B{run}")
    store = await Store.open(url)
    try:
        await write_small_county(store)
        async with FeedServer() as srv:
            generated.install(srv)
            srv.slow_paths.add("/atom.xml")
            size = len(srv.atom())
            feed = FeedSettings(name="bench", url=srv.url("/atom.xml"), timeout=120,
                                max_entries=max(500, 2 * entries))
            poller = FeedPoller((feed,), store, AlertService(store, POLICY))
            await poller.start()
            try:
                t0 = time.perf_counter()
                await poller.poll(feed)
                first_s = time.perf_counter() - t0
                polls = 1
                while await alert_count(store) < len(generated.identifiers):
                    if polls == MAX_POLLS:
                        raise SystemExit(f"not every alert after {polls} polls: "
                                         f"{poller.status['bench']}")
                    await poller.poll(feed)
                    polls += 1
                total_s = time.perf_counter() - t0
            finally:
                await poller.stop()
        assert await alert_count(store) == len(generated.identifiers)
        return {
            "first_poll_s": first_s,
            "all_alerts_s": total_s,
            "polls": polls,
            "entries_per_s": len(generated.items) / total_s,
            "feed_mb": size / 1e6,
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    finally:
        await store.close()


async def run_backend(backend: str, entries: int, run: int) -> dict[str, float]:
    async with throwaway_database(backend) as url:
        return await one_run(url, entries, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=500, help="feed entries (500)")
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--runs", type=int, default=3, help="runs per backend; median shown")
    args = parser.parse_args()
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    for backend in backends:
        results: list[dict[str, Any]] = []
        for i in range(args.runs):
            r = asyncio.run(run_backend(backend, args.entries, i))
            results.append(r)
            print(f"{backend} run {i + 1}: " + "  ".join(f"{k}={v:,.2f}" for k, v in r.items()),
                  flush=True)
        med = {k: statistics.median(r[k] for r in results) for k in results[0]}
        print(f"{backend} entries={args.entries:,} ({med['feed_mb']:.1f} MB) median of "
              f"{args.runs}: first poll {med['first_poll_s']:.1f} s, every alert after "
              f"{med['all_alerts_s']:.1f} s ({med['polls']:.0f} polls), "
              f"{med['entries_per_s']:,.0f} entries/s, peak RSS {med['rss_mb']:.0f} MB",
              flush=True)


if __name__ == "__main__":
    main()
