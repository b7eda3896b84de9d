"""Running the service as a process, as ``warngate serve`` and ``warngate demo`` do: the web
application with its gateway, until a stop signal arrives or the gateway stops itself."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from aiohttp import web

from warngate.service import SHUTDOWN_GRACE, Gateway
from warngate.waiting import wait_any
from warngate.web.app import GATEWAY

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_signals() -> Iterator[asyncio.Event]:
    """An event SIGINT and SIGTERM set, while the block runs (then the defaults are back)."""
    loop = asyncio.get_running_loop()
    received = asyncio.Event()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, received.set)
    try:
        yield received
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)


@dataclass(frozen=True)
class Running:
    """A started service: its gateway, and whether it is time to stop."""

    gateway: Gateway
    signalled: asyncio.Event

    @property
    def stopping(self) -> bool:
        """A stop signal arrived, or the gateway stopped (see ``gateway.failure``)."""
        return self.signalled.is_set() or self.gateway.stopped.is_set()

    async def wait(self, seconds: float | None = None) -> bool:
        """Wait until it is time to stop, or ``seconds`` pass; True if it is time."""
        return await wait_any((self.signalled, self.gateway.stopped), seconds)


@contextlib.asynccontextmanager
async def serving(app: web.Application, host: str, port: int) -> AsyncIterator[Running]:
    """Start ``app`` (and so its gateway) on ``host:port``; stop it all on leaving.

    Signals are handled from before the start to the end of the shutdown, so a Ctrl-C at
    any point asks for the same orderly stop and never interrupts one half-way.
    """
    # Open connections get the gateway's grace too: shutdown stays bounded.
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=SHUTDOWN_GRACE)
    with stop_signals() as signalled:
        try:
            await runner.setup()
            await web.TCPSite(runner, host, port).start()
            yield Running(app[GATEWAY], signalled)
        finally:
            await runner.cleanup()
