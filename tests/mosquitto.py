"""Mosquitto brokers for the MQTT tests and benchmarks.

``throwaway_mosquitto`` starts a private broker on a free loopback port from the shipped
``config/mosquitto/mosquitto.conf`` and ``acl`` (only paths, the listener and the log are
rewritten), with a password file for the given users — written by ``mosquitto_passwd``
when installed, else by ``warngate_mqtt.passwords``. It can be stopped, killed and
restarted on the same port with the same persistence directory. ``system_mosquitto`` is
the machine's broker on 127.0.0.1:1883 (anonymous), for tests that need no auth.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from warngate_mqtt.passwords import write_password_file

CONFIG = Path(__file__).resolve().parents[1] / "config" / "mosquitto"
SYSTEM = ("127.0.0.1", 1883)
GATEWAY_USER = "warngate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def system_mosquitto() -> tuple[str, int]:
    """The local broker (anonymous allowed), or skip the test if it is not running."""
    if not reachable(*SYSTEM):
        pytest.skip("no MQTT broker on 127.0.0.1:1883")
    return SYSTEM


def render_config(shipped: str, *, port: int, passwd: Path | None, acl: Path | None,
                  data_dir: Path) -> str:
    """The shipped configuration with this broker's paths, port and log file.

    Fails if a setting it rewrites has gone from the shipped file, so the tests keep
    exercising what is shipped.
    """
    rewrite = {
        "listener": f"listener {port} 127.0.0.1",
        "password_file": f"password_file {passwd}" if passwd else "",
        "acl_file": f"acl_file {acl}" if acl else "",
        "allow_anonymous": f"allow_anonymous {'false' if passwd else 'true'}",
        "persistence_location": f"persistence_location {data_dir}/",
        "log_dest": f"log_dest file {data_dir}/mosquitto.log",
        # Anonymous clients have no user name to use as their client id.
        "use_username_as_clientid": "" if passwd is None else "use_username_as_clientid true",
    }
    seen: set[str] = set()
    out: list[str] = []
    for line in shipped.splitlines():
        words = line.split()
        key = words[0] if words and not words[0].startswith("#") else None
        if key in rewrite:
            if key not in seen:
                out.append(rewrite[key])
            seen.add(key)
            continue
        out.append(line)
    missing = set(rewrite) - seen
    if missing:
        raise AssertionError(f"shipped mosquitto.conf no longer sets {sorted(missing)}")
    if os.geteuid() == 0:
        out.append("user root")  # else it drops to 'mosquitto', who cannot read tmp dirs
    return "\n".join(out) + "\n"


def write_passwords(path: Path, users: Mapping[str, str], *, tool: bool = True) -> None:
    """With ``mosquitto_passwd`` if installed (and ``tool``), else warngate's own writer."""
    if tool and shutil.which("mosquitto_passwd"):
        path.write_text("".join(f"{u}:{p}\n" for u, p in users.items()), encoding="utf-8")
        path.chmod(0o600)
        subprocess.run(["mosquitto_passwd", "-U", str(path)], check=True,
                       capture_output=True)
    else:
        write_password_file(path, users.items())


@dataclass
class Mosquitto:
    """A broker process of our own."""

    conf: Path
    data_dir: Path
    port: int
    host: str = "127.0.0.1"
    users: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "mosquitto", "-c", str(self.conf),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        async with asyncio.timeout(10):
            while not reachable(self.host, self.port):
                if self.proc.returncode is not None:
                    raise RuntimeError(f"mosquitto exited ({self.proc.returncode}):\n"
                                       f"{self.log()[-2000:]}")
                await asyncio.sleep(0.02)

    async def stop(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM: a clean stop (saves sessions); SIGKILL: a crash."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(sig)
        async with asyncio.timeout(10):
            await self.proc.wait()
        self.proc = None

    async def restart(self, *, down_for: float = 0.0, sig: int = signal.SIGTERM) -> None:
        await self.stop(sig)
        await asyncio.sleep(down_for)
        await self.start()

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("the broker is not running")
        return self.proc.pid

    def log(self) -> str:
        path = self.data_dir / "mosquitto.log"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""


@contextlib.asynccontextmanager
async def throwaway_mosquitto(
    users: Mapping[str, str] | None = None, *, directory: Path | None = None,
    extra: str = "", mosquitto_passwd: bool = True,
) -> AsyncIterator[Mosquitto]:
    """A private broker with the shipped config and ACL; ``users=None``: anonymous, no ACL.

    ``extra`` is appended to the configuration (e.g. a TLS listener);
    ``mosquitto_passwd=False`` writes the password file with warngate's own writer.
    """
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed")
    with contextlib.ExitStack() as stack:
        base = directory or Path(stack.enter_context(tempfile.TemporaryDirectory(
            prefix="warngate-mosquitto-")))
        data = base / "data"
        data.mkdir(parents=True, exist_ok=True)
        passwd = acl = None
        if users is not None:
            passwd = base / "passwd"
            write_passwords(passwd, users, tool=mosquitto_passwd)
            acl = base / "acl"
            shutil.copyfile(CONFIG / "acl", acl)
        port = free_port()
        conf = base / "mosquitto.conf"
        conf.write_text(render_config(
            (CONFIG / "mosquitto.conf").read_text(encoding="utf-8"), port=port,
            passwd=passwd, acl=acl, data_dir=data) + extra, encoding="utf-8")
        broker = Mosquitto(conf=conf, data_dir=data, port=port, users=dict(users or {}))
        await broker.start()
        try:
            yield broker
        finally:
            await broker.stop()
