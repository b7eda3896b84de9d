"""Mosquitto brokers for the MQTT tests: ``warngate_mqtt.testing``'s, started from the
repository's shipped ``config/mosquitto`` so the tests exercise what is shipped, and
skipping the test where no broker can run. ``system_mosquitto`` is the machine's broker on
127.0.0.1:1883 (anonymous), for tests that need no auth.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from warngate_mqtt.testing import (
    GATEWAY_USER,
    Mosquitto,
    free_port,
    reachable,
    render_config,
    write_passwords,
)
from warngate_mqtt.testing import throwaway_mosquitto as _throwaway

__all__ = ["CONFIG", "GATEWAY_USER", "Mosquitto", "free_port", "reachable", "render_config",
           "system_mosquitto", "throwaway_mosquitto", "write_passwords"]

CONFIG = Path(__file__).resolve().parents[1] / "config" / "mosquitto"
SYSTEM = ("127.0.0.1", 1883)


def system_mosquitto() -> tuple[str, int]:
    """The local broker (anonymous allowed), or skip the test if it is not running."""
    if not reachable(*SYSTEM):
        pytest.skip("no MQTT broker on 127.0.0.1:1883")
    return SYSTEM


@contextlib.asynccontextmanager
async def throwaway_mosquitto(
    users: Mapping[str, str] | None = None, *, directory: Path | None = None,
    extra: str = "", mosquitto_passwd: bool = True,
) -> AsyncIterator[Mosquitto]:
    """A private broker with the shipped config and ACL; skips the test without Mosquitto."""
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    async with _throwaway(users, config_dir=CONFIG, directory=directory, extra=extra,
                          mosquitto_passwd=mosquitto_passwd) as broker:
        yield broker
