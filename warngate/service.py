"""Wires the parts into one running gateway: store, adapters, planner, lanes, receipts, jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from warngate.acktoken import load_or_create_key, make_token
from warngate.adapter import Adapter, AdapterConfigError, BaseAdapter, load_adapter
from warngate.alerts import AlertService
from warngate.clock import Clock, SystemClock
from warngate.dispatch import Dispatcher, Lane
from warngate.escalation import (
    escalate_due,
    expire_due,
    next_deadline,
    repeat_speakers,
    speaker_fallback,
    speakers_needing_fallback,
)
from warngate.feeds import FeedPoller
from warngate.fieldreports import forward as forward_reports
from warngate.followup import follow_up
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


#: Seconds an in-flight sweep, a core task's last write or an adapter's ``stop`` gets at
#: shutdown before it is cancelled (or, if it ignores that, left behind with an error).
SHUTDOWN_GRACE = 10.0

LoopFactory = Callable[[], Coroutine[Any, Any, None]]


class GatewayFailure(Exception):
    """A core task ended while the gateway ran, so the gateway stopped itself.

    ``task`` names it; ``__cause__`` is the exception it ended with, if any.
    """

    def __init__(self, task: str, reason: str) -> None:
        super().__init__(f"core task {task} stopped: {reason}")
        self.task = task


class Gateway:
    """Everything behind the HTTP API; ``async with`` starts and stops it all.

    Start order, each step undone in reverse if a later one fails: the receipt writer,
    the adapters one by one, the core loops (planner, speaker fallback, added loops,
    dispatcher), the feed poller, the scheduled sweeps, and last the supervisor. If a core
    loop ends while the gateway runs, the supervisor logs why and stops everything;
    ``stopped`` is then set and ``failure`` says which loop and why. Every step of a
    shutdown is bounded by ``grace`` seconds. See ``docs/lifecycle.md``.
    """

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        store: Store,
        adapters: list[Adapter],
        *,
        clock: Clock | None = None,
        grace: float = SHUTDOWN_GRACE,
    ) -> None:
        if grace <= 0:
            raise ValueError(f"grace must be positive, got {grace}")
        self.settings = settings
        self.policy = policy
        self.store = store
        self.adapters = adapters
        #: The time and sleeping for the parts that take it (``warngate.clock``).
        self.clock: Clock = clock or SystemClock()
        self.grace = grace
        #: Set once the gateway has stopped: after ``async with``, a failed start, or the
        #: supervisor stopping it because a core loop ended.
        self.stopped = asyncio.Event()
        #: Why the supervisor stopped the gateway; None while it runs or after a clean stop.
        self.failure: GatewayFailure | None = None
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
            on_planned=self._planned,
        )
        self.alerts = AlertService(
            store, policy, four_eyes=settings.auth.four_eyes, on_accepted=self._accepted,
            plan_first=self.planner.plan_first,
        )
        self._loops: list[tuple[str, LoopFactory]] = []
        self._started = False
        self._stack: contextlib.AsyncExitStack | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._closing = False
        self._reported: asyncio.Task[None] | None = None
        self._jobs: set[asyncio.Task[Any]] = set()
        self._scheduler: AsyncIOScheduler | None = None
        self._deadlines_learnt = 0.0
        self.feeds = (FeedPoller(settings.feeds, store, self.alerts,
                                 trusted=settings.cap.trusted)
                      if settings.feeds else None)
        self.hydrology = Hydrology(store, self.alerts, settings.hydrology.stations,
                                   confirm=settings.hydrology.confirm)

    def add_loop(self, name: str, loop: LoopFactory) -> None:
        """Run ``loop()`` as a core task named ``name``, supervised like the gateway's own.

        Like them it must run until cancelled: if it returns or raises, the gateway stops.
        A factory rather than a coroutine, so nothing is created if the start fails.
        """
        if self._started:
            raise RuntimeError(f"add_loop({name!r}) after the gateway started")
        self._loops.append((name, loop))

    async def __aenter__(self) -> Gateway:
        if self._started:
            raise RuntimeError("a Gateway runs once; make a new one to start again")
        self._started = True
        async with contextlib.AsyncExitStack() as stack:
            stack.callback(self.stopped.set)
            # Last of all, whatever was reported during the shutdown is written down.
            stack.push_async_callback(self._last_flush)
            # The writer outlives the adapters, so what they report while stopping is kept.
            core = [self._spawn(stack, "receipts", self.receipts.run)]
            # One HTTP session for every adapter, closed after the last of them stopped.
            # No connection cap of its own: each lane's concurrency is the cap.
            http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                         cookie_jar=aiohttp.DummyCookieJar())
            stack.push_async_callback(http.close)
            for adapter in self.adapters:
                if isinstance(adapter, BaseAdapter):
                    adapter.use_http_session(http)
                await adapter.start(self.receipts)
                stack.push_async_callback(self._stop_adapter, adapter)
            core.append(self._spawn(stack, "planner", self.planner.run))
            core.append(self._spawn(stack, "speaker-fallback", self._fallbacks))
            core += [self._spawn(stack, name, loop) for name, loop in self._loops]
            # Started last among the loops so that it is the first to stop sending.
            core.append(self._spawn(stack, "dispatcher", self.dispatcher.run))
            if self.feeds is not None:
                await self.feeds.start()
                stack.push_async_callback(self.feeds.stop)
            scheduler = self._start_scheduler()
            stack.push_async_callback(self._stop_scheduler, scheduler)
            self._stack = stack.pop_all()
        self._supervisor = asyncio.create_task(self._supervise(core), name="gateway-supervisor")
        return self

    async def __aexit__(self, *exc: object) -> None:
        supervisor = self._supervisor
        try:
            if supervisor is not None:
                if not self._closing:
                    supervisor.cancel()
                # ``asyncio.wait``: a stop the supervisor began finishes even if this exit
                # is itself cancelled.
                await asyncio.wait([supervisor])
        finally:
            await self._close()

    async def _close(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _supervise(self, core: list[asyncio.Task[None]]) -> None:
        """Wait for a core task to end; any end is unexpected, so stop the gateway."""
        done, _ = await asyncio.wait(core, return_when=asyncio.FIRST_COMPLETED)
        self._closing = True
        task = next(t for t in core if t in done)
        self._reported = task
        cause: BaseException | None = None
        if task.cancelled():
            reason = "cancelled"
        elif (cause := task.exception()) is not None:
            reason = repr(cause)
        else:
            reason = "returned"
        self.failure = GatewayFailure(task.get_name(), reason)
        self.failure.__cause__ = cause
        # Stop rather than limp on without a planner or dispatch; the owner sees
        # ``stopped`` and ``failure`` (``warngate serve`` exits 1).
        log.critical("core task %s stopped (%s); stopping the gateway", task.get_name(),
                     reason, exc_info=cause)
        try:
            await self._close()
        except Exception:
            log.exception("the gateway did not stop cleanly")

    def _spawn(
        self, stack: contextlib.AsyncExitStack, name: str, loop: LoopFactory
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(loop(), name=name)
        stack.push_async_callback(self._end_task, task)
        return task

    async def _end_task(self, task: asyncio.Task[None]) -> None:
        if task is self._reported:
            return  # already ended, and the supervisor said why
        await cancel_and_wait([task], grace=self.grace)

    async def _stop_adapter(self, adapter: Adapter) -> None:
        # Its own task, so that a ``stop`` deaf to cancellation cannot hold the shutdown.
        stopping = asyncio.create_task(adapter.stop(), name=f"adapter-{adapter.name}-stop")
        done, _ = await asyncio.wait([stopping], timeout=self.grace)
        if not done:
            stopping.cancel()
            log.error("adapter %s did not stop within %.1f s; going on without it",
                      adapter.name, self.grace)
        elif not stopping.cancelled() and (exc := stopping.exception()) is not None:
            log.error("adapter %s did not stop cleanly", adapter.name, exc_info=exc)

    async def _last_flush(self) -> None:
        try:
            async with asyncio.timeout(self.grace):
                await self.receipts.flush()
        except TimeoutError:
            log.error("receipts not written within %.1f s of stopping; they are lost",
                      self.grace)

    def _start_scheduler(self) -> AsyncIOScheduler:
        # A run the loop was too busy to start on time still runs, however late (APScheduler
        # skips one over a second late by default): a skipped sweep left people who did not
        # answer uncalled for a whole interval.
        scheduler = AsyncIOScheduler(job_defaults={"misfire_grace_time": None})
        scheduler.add_job(
            self._job, "interval", args=[self._escalate],
            seconds=self.settings.escalation.sweep_every,
            id="escalation", max_instances=1, coalesce=True,
            # At once: it catches up on what is overdue and finds the next deadline.
            next_run_time=datetime.now(UTC),
        )
        scheduler.add_job(
            self._job, "interval", args=[self._expire], seconds=30, id="expiry",
            max_instances=1, coalesce=True,
        )
        if self.policy.followup.levels or self.policy.field_reports.forward_to:
            scheduler.add_job(
                self._job, "interval", args=[self._follow_up],
                seconds=self.policy.followup.every, id="followup", max_instances=1,
                coalesce=True, next_run_time=datetime.now(UTC),
            )
        if self.feeds is not None:
            for feed in self.feeds.feeds:
                scheduler.add_job(
                    self._job, "interval", args=[partial(self.feeds.poll_due, feed)],
                    seconds=min(feed.interval, 30.0), id=f"feed-{feed.name}",
                    max_instances=1, coalesce=True, next_run_time=datetime.now(UTC),
                )
        scheduler.start()
        self._scheduler = scheduler
        return scheduler

    async def _stop_scheduler(self, scheduler: AsyncIOScheduler) -> None:
        # A sweep half-way through its transaction gets the grace period to finish rather
        # than being torn down (the scheduler's shutdown would cancel it mid-transaction).
        scheduler.pause()
        if self._jobs:
            _, late = await asyncio.wait(set(self._jobs), timeout=self.grace)
            if late:
                log.error("%d sweeps still running %.1f s into the shutdown; cancelling them",
                          len(late), self.grace)
                await cancel_and_wait(late, grace=self.grace)
        scheduler.shutdown(wait=False)

    def _accepted(self) -> None:
        self.planner.wake.set()
        self.dispatcher.wake()
        self._learn_deadlines()

    def _planned(self) -> None:
        self.dispatcher.wake()
        self._learn_deadlines()

    def _learn_deadlines(self) -> None:
        """New deliveries may carry an earlier deadline than the sweep knows of: sweep soon
        (it finds nothing due yet, and schedules itself for that deadline). At most once
        a second, however fast planning commits its chunks."""
        job = self._scheduler.get_job("escalation") if self._scheduler is not None else None
        now = self.clock.now()
        if job is None or job.next_run_time is None or now - self._deadlines_learnt < 1.0:
            return
        self._deadlines_learnt = now
        if job.next_run_time.timestamp() > now + 1.0:
            job.modify(next_run_time=datetime.fromtimestamp(now + 0.2, UTC))

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

    async def _follow_up(self) -> None:
        """Households for their grid workers to visit; field reports to the duty officers."""
        listed = await follow_up(self.store, self.policy)
        forwarded = await forward_reports(self.store, self.policy)
        if listed.notified or forwarded:
            self.dispatcher.wake()

    async def _escalate(self) -> None:
        stepped = await escalate_due(self.store, self.policy)
        repeated = await repeat_speakers(self.store, self.policy)
        for speaker_id in await speakers_needing_fallback(self.store):
            stepped += await speaker_fallback(self.store, self.policy, speaker_id)
        if stepped or repeated:
            self.dispatcher.wake()
        await self._sweep_at_next_deadline()

    async def _sweep_at_next_deadline(self) -> None:
        """The next sweep runs at the next deadline if that comes before the interval: the
        people who did not answer are called when their time is up, not up to a whole
        interval later."""
        job = self._scheduler.get_job("escalation") if self._scheduler is not None else None
        due = await next_deadline(self.store)
        if job is None or due is None or job.next_run_time is None:
            return
        # Not before this run has ended (a run still going would skip it).
        at = max(due, self.clock.now() + 0.05)
        if at < job.next_run_time.timestamp():
            job.modify(next_run_time=datetime.fromtimestamp(at, UTC))

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
    store = await Store.open(settings.database.url, echo=settings.database.echo,
                             board_pool_size=settings.database.board_pool_size)
    try:
        async with Gateway(settings, policy, store, adapters) as gateway:
            yield gateway
    finally:
        await store.close()
