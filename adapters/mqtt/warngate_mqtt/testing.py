"""Brokers and speakers for testing code that talks to warngate's loudspeakers over MQTT.

``throwaway_mosquitto`` starts a private Mosquitto on a free loopback port, with a password
file for the given users (written by ``mosquitto_passwd`` when installed, else by
``warngate_mqtt.passwords``) and the topic ACL. It reads a ``mosquitto.conf`` and ``acl``
from ``config_dir`` — warngate's own tests pass the repository's ``config/mosquitto`` so
they exercise what is shipped — and rewrites only paths, the listener and the log; without
``config_dir`` it uses a minimal configuration and the ACL of the topic contract. The broker
can be stopped, killed and restarted on the same port with the same persistence directory.

``SpeakerSimulator`` (speakers that answer commands as the firmware does) is re-exported
from ``warngate_mqtt.speaker_sim``.
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

from warngate.testing import free_port
from warngate_mqtt.passwords import write_password_file
from warngate_mqtt.speaker_sim import Behaviour, SpeakerSimulator
from warngate_mqtt.topics import DEFAULT_PREFIX

__all__ = [
    "GATEWAY_USER", "Behaviour", "Mosquitto", "MosquittoUnavailable", "SpeakerSimulator",
    "default_acl", "free_port", "reachable", "render_config", "throwaway_mosquitto",
    "write_passwords",
]

#: The user the gateway connects as in the shipped ACL; every other user is a speaker.
GATEWAY_USER = "warngate"

# Only the keys render_config rewrites, plus persistence: enough for a test broker.
_MINIMAL_CONF = """\
per_listener_settings false
allow_anonymous false
password_file passwd
acl_file acl
listener 1883
use_username_as_clientid true
persistence true
persistence_location data/
log_dest stdout
"""


class MosquittoUnavailable(RuntimeError):
    """No ``mosquitto`` executable on this machine (a test skips, a benchmark stops)."""


def reachable(host: str, port: int) -> bool:
    """Something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def default_acl(prefix: str = DEFAULT_PREFIX, gateway_user: str = GATEWAY_USER) -> str:
    """The topic contract as a Mosquitto ACL: the gateway commands every speaker and reads
    their acks and statuses; a speaker (user name = speaker id) only its own topics."""
    return (f"user {gateway_user}\n"
            f"topic write {prefix}/speakers/+/cmd\n"
            f"topic read {prefix}/speakers/+/ack\n"
            f"topic read {prefix}/speakers/+/status\n\n"
            f"pattern read {prefix}/speakers/%u/cmd\n"
            f"pattern write {prefix}/speakers/%u/ack\n"
            f"pattern write {prefix}/speakers/%u/status\n")


def render_config(shipped: str, *, port: int, passwd: Path | None, acl: Path | None,
                  data_dir: Path) -> str:
    """``shipped`` with this broker's paths, port and log file.

    Fails if a setting it rewrites is missing from ``shipped``, so tests that pass the
    shipped file keep exercising it.
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
        raise ValueError(f"mosquitto.conf does not set {sorted(missing)}")
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
    users: Mapping[str, str] | None = None, *, config_dir: Path | None = None,
    directory: Path | None = None, extra: str = "", mosquitto_passwd: bool = True,
) -> AsyncIterator[Mosquitto]:
    """A private broker; ``users=None``: anonymous, no ACL.

    ``config_dir`` holds the ``mosquitto.conf`` and ``acl`` to start from (default: a
    minimal one and ``default_acl()``); ``extra`` is appended to the configuration (e.g. a
    TLS listener); ``mosquitto_passwd=False`` writes the password file with warngate's own
    writer. Raises ``MosquittoUnavailable`` if Mosquitto is not installed.
    """
    if shutil.which("mosquitto") is None:
        raise MosquittoUnavailable("mosquitto is not installed")
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
            if config_dir is not None:
                shutil.copyfile(config_dir / "acl", acl)
            else:
                acl.write_text(default_acl(), encoding="utf-8")
        shipped = ((config_dir / "mosquitto.conf").read_text(encoding="utf-8")
                   if config_dir is not None else _MINIMAL_CONF)
        port = free_port()
        conf = base / "mosquitto.conf"
        conf.write_text(render_config(shipped, port=port, passwd=passwd, acl=acl,
                                      data_dir=data) + extra, encoding="utf-8")
        broker = Mosquitto(conf=conf, data_dir=data, port=port, users=dict(users or {}))
        await broker.start()
        try:
            yield broker
        finally:
            await broker.stop()
