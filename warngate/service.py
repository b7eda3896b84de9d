"""Wires the parts into one running gateway: store, adapters, planner, lanes, receipts, jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from warngate.acktoken import load_or_create_key, make_token
from warngate.adapter import Adapter, AdapterConfigError, load_adapter
from warngate.alerts import AlertService
from warngate.dispatch import Dispatcher, Lane
from warngate.escalation import (
    escalate_due,
    expire_due,
    repeat_speakers,
    speaker_fallback,
    speakers_needing_fallback,
)
from warngate.feeds import FeedPoller
from warngate.hydrology import Hydrology
from warngate.planning import Planner
from warngate.policy import Policy
from warngate.receipts import ReceiptWriter
from warngate.settings import ConfigError, Settings
from warngate.store import Store
from warngate.waiting import cancel_and_wait

log = logging.getLogger(__name__)


def load_adapters(settings: Settings, policy: Policy, **context: Any) -> list[Adapter]:
    """Instantiate every configured adapter; every channel the policy uses must have one."""
    missing = sorted(c for c in policy.channels_used() if settings.adapter_for(c) is None)
    if missing:
        raise ConfigError(
            f"the policy sends over {missing} but no adapter serves "
            f"{'that channel' if len(missing) == 1 else 'those channels'}: add it under "
            f"'adapters' in the configuration"
        )
    try:
        return [load_adapter(a, **context) for a in settings.adapters]
    except AdapterConfigError as exc:
        raise ConfigError(str(exc)) from exc


def sqlite_data_dir(url: str) -> Path:
    """Where state beside a SQLite database lives (the ack key of installs without one)."""
    if url.startswith("sqlite") and ":///" in url:
        db = url.split(":///", 1)[1]
        if db and db != ":memory:":
            return Path(db).resolve().parent
    return Path("var").resolve()


class Gateway:
    """Everything behind the HTTP API; ``async with`` starts and stops it all."""

    def __init__(
        self, settings: Settings, policy: Policy, store: Store, adapters: list[Adapter]
    ) -> None:
        self.settings = settings
        self.policy = policy
        self.store = store
        self.adapters = adapters
        if settings.ack_key is not None:
            self.ack_key = settings.ack_key.get_secret_value().encode()
        else:
            self.ack_key = load_or_create_key(sqlite_data_dir(settings.database.url) / "ack.key")
        base = settings.http.public_url.rstrip("/")
        lanes = [
            Lane(store, adapter, adapter_settings, settings.dispatch,
                 ack_url=lambda d: f"{base}/ack/{make_token(self.ack_key, d)}")
            for adapter in adapters
            if (adapter_settings := settings.adapter_for(adapter.channel)) is not None
        ]
        self.dispatcher = Dispatcher(store, lanes)
        self._offline: asyncio.Queue[str] = asyncio.Queue()
        self.receipts = ReceiptWriter(store, on_speaker_offline=self._offline.put_nowait)
        self.planner = Planner(
            store, policy, villages_per_chunk=settings.planning.villages_per_chunk,
            on_planned=self.dispatcher.wake,
        )
        self.alerts = AlertService(
            store, policy, four_eyes=settings.auth.four_eyes, on_accepted=self._accepted,
            plan_first=self.planner.plan_first,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self._scheduler: AsyncIOScheduler | None = None
        self._jobs: set[asyncio.Task[Any]] = set()
        self.feeds = (FeedPoller(settings.feeds, store, self.alerts,
                                 trusted=settings.cap.trusted)
                      if settings.feeds else None)
        self.hydrology = Hydrology(store, self.alerts, settings.hydrology.stations,
                                   confirm=settings.hydrology.confirm)

    async def __aenter__(self) -> Gateway:
        for adapter in self.adapters:
            await adapter.start(self.receipts)
        self._tasks = [
            asyncio.create_task(self.receipts.run(), name="receipts"),
            asyncio.create_task(self.planner.run(), name="planner"),
            asyncio.create_task(self.dispatcher.run(), name="dispatcher"),
            asyncio.create_task(self._fallbacks(), name="speaker-fallback"),
        ]
        for task in self._tasks:
            task.add_done_callback(self._died)
        self._scheduler = AsyncIOScheduler()
        self._scheduler.add_job(
            self._job, "interval", args=[self._escalate],
            seconds=self.settings.escalation.sweep_every,
            id="escalation", max_instances=1, coalesce=True,
        )
        self._scheduler.add_job(
            self._job, "interval", args=[self._expire], seconds=30, id="expiry",
            max_instances=1, coalesce=True,
        )
        if self.feeds is not None:
            await self.feeds.start()
            for feed in self.feeds.feeds:
                self._scheduler.add_job(
                    self._job, "interval", args=[partial(self.feeds.poll_due, feed)],
                    seconds=min(feed.interval, 30.0), id=f"feed-{feed.name}",
                    max_instances=1, coalesce=True, next_run_time=datetime.now(UTC),
                )
        self._scheduler.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # A sweep half-way through its transaction finishes rather than being torn down
        # (the scheduler's shutdown would cancel it mid-transaction).
        if self._scheduler is not None:
            self._scheduler.pause()
        if self._jobs:
            await asyncio.gather(*self._jobs, return_exceptions=True)
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        if self.feeds is not None:
            await self.feeds.stop()
        for task in self._tasks:
            task.remove_done_callback(self._died)
        await cancel_and_wait(self._tasks)
        for adapter in self.adapters:
            try:
                await adapter.stop()
            except Exception:
                log.exception("adapter %s did not stop cleanly", adapter.name)
        await self.receipts.flush()

    def _died(self, task: asyncio.Task[None]) -> None:
        # A core loop must never end while the gateway runs: say so loudly, then stop the
        # process rather than limp on without dispatch (procrastinate's rule).
        if task.cancelled():
            return
        log.critical("core task %s stopped: %r", task.get_name(), task.exception())
        import os
        import signal
        os.kill(os.getpid(), signal.SIGTERM)

    def _accepted(self) -> None:
        self.planner.wake.set()
        self.dispatcher.wake()

    async def _job(self, fn: Callable[[], Awaitable[None]]) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._jobs.add(task)
        try:
            await fn()
        finally:
            self._jobs.discard(task)

    async def _expire(self) -> None:
        await expire_due(self.store)

    async def _escalate(self) -> None:
        stepped = await escalate_due(self.store, self.policy)
        repeated = await repeat_speakers(self.store, self.policy)
        for speaker_id in await speakers_needing_fallback(self.store):
            stepped += await speaker_fallback(self.store, self.policy, speaker_id)
        if stepped or repeated:
            self.dispatcher.wake()

    async def _fallbacks(self) -> None:
        while True:
            speaker_id = await self._offline.get()
            try:
                if await speaker_fallback(self.store, self.policy, speaker_id):
                    self.dispatcher.wake()
            except Exception:
                log.exception("fallback for offline speaker %s failed", speaker_id)


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings, policy: Policy, adapters: list[Adapter]
) -> AsyncIterator[Gateway]:
    store = await Store.open(settings.database.url, echo=settings.database.echo)
    try:
        async with Gateway(settings, policy, store, adapters) as gateway:
            yield gateway
    finally:
        await store.close()
