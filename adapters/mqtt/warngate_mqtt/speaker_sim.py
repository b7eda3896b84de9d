"""Simulated loudspeakers that talk to a real broker exactly as devices do.

Each speaker has its own MQTT 5 connection (user name and client id = its speaker id, a
persistent session), subscribes to its ``cmd`` topic, publishes a retained ``online``
status with ``offline`` as its last will, and answers each command ``received`` →
``playing`` → ``played`` (or ``failed``), QoS 1. Like a device it plays one warning at a
time, ignores a command it has already played (the gateway may send one twice after a
reconnect) and stops on ``stop``.

    async with SpeakerSimulator(host="127.0.0.1", port=1883, speaker_ids=ids) as sim:
        ...                      # every speaker connected and online
        sim.power_cut("spk-1")   # drops off; the broker publishes its last will
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import zlib
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from types import TracebackType

import aiomqtt

from warngate.waiting import cancel_and_wait, wait_set
from warngate_mqtt.connection import BrokerAddress, Link, LinkConfig, LinkError
from warngate_mqtt.payloads import (
    Ack,
    AckStatus,
    Command,
    PayloadError,
    encode_status,
    parse_command,
)
from warngate_mqtt.topics import DEFAULT_PREFIX, Topics, check_speaker_id

log = logging.getLogger(__name__)


def _fraction(*parts: object) -> float:
    """A stable number in [0, 1) for these parts, the same every run."""
    return zlib.crc32(":".join(map(str, parts)).encode()) / 2**32


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How the simulated speakers behave; decisions are stable for a given seed."""

    #: Seconds one play of a warning lasts (times the command's ``repeat``).
    play_seconds: float = 0.0
    #: Share of commands a speaker fails to play (it answers ``failed``).
    fail_rate: float = 0.0
    #: Share of speakers that are switched off: they connect once, then drop (their last
    #: will says ``offline``) and stay away, commands queueing in their broker session.
    offline_rate: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("fail_rate", "offline_rate"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        if self.play_seconds < 0:
            raise ValueError(f"play_seconds cannot be negative, got {self.play_seconds!r}")


@dataclass
class SpeakerLog:
    """What one speaker received and answered (tests read it)."""

    commands: list[Command] = field(default_factory=list)
    acks: list[Ack] = field(default_factory=list)
    duplicates: int = 0
    malformed: int = 0


class FakeSpeaker:
    """One simulated loudspeaker."""

    def __init__(self, speaker_id: str, *, broker: BrokerAddress, topics: Topics,
                 behaviour: Behaviour, session_expiry: float = 3600.0) -> None:
        self.id = check_speaker_id(speaker_id)
        self.topics = topics
        self.behaviour = behaviour
        #: A mute speaker takes commands but never answers (broken firmware).
        self.mute = False
        self.log = SpeakerLog()
        status = topics.status(speaker_id)
        self.link = Link(
            LinkConfig(
                broker=broker, client_id=speaker_id, session_expiry=session_expiry,
                keepalive=30, subscriptions=(topics.cmd(speaker_id),),
                will=aiomqtt.Will(status, encode_status(False), qos=1, retain=True),
                birth=(status, encode_status(True), True), max_inflight=20,
                reconnect_max_delay=5.0, sweep_every=5.0, quiet=True, name=f"speaker {speaker_id}",
            ),
            on_message=self._on_command,
        )
        self._inbox: asyncio.Queue[Command] = asyncio.Queue()
        self._plays: asyncio.Queue[Command] = asyncio.Queue()
        self._final: dict[int, AckStatus] = {}
        self._stopped: set[int] = set()
        self._current: Command | None = None
        self._interrupt = asyncio.Event()

    @property
    def switched_off(self) -> bool:
        return _fraction(self.behaviour.seed, "offline", self.id) < self.behaviour.offline_rate

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self.link.run(), name=f"speaker-{self.id}-link")
            tg.create_task(self._serve(), name=f"speaker-{self.id}-inbox")
            tg.create_task(self._play(), name=f"speaker-{self.id}-player")

    def _on_command(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            command = parse_command(payload)
        except PayloadError as exc:
            self.log.malformed += 1
            log.warning("speaker %s: ignoring a malformed command: %s", self.id, exc)
            return
        self._inbox.put_nowait(command)

    async def say_offline(self) -> None:
        try:
            await self.link.publish(self.topics.status(self.id), encode_status(False), qos=1,
                                    retain=True, connect_wait=1.0, ack_within=5.0)
        except LinkError as exc:
            log.info("speaker %s: could not say offline: %s", self.id, exc)

    async def _ack(self, command: Command, status: AckStatus, detail: str | None = None) -> None:
        self._final[command.delivery_id] = status
        if self.mute:
            return
        ack = Ack(delivery_id=command.delivery_id, ref=None, status=status, detail=detail)
        self.log.acks.append(ack)
        try:
            await self.link.publish(self.topics.ack(self.id), ack.encode(), qos=1,
                                    connect_wait=3600.0, ack_within=600.0)
        except LinkError as exc:
            log.warning("speaker %s: could not send ack %s for %d: %s", self.id, status,
                        command.delivery_id, exc)

    async def _serve(self) -> None:
        while True:
            command = await self._inbox.get()
            if command.delivery_id in self._final:
                # Sent again (the gateway reconnected): say how it ended, do not replay.
                self.log.duplicates += 1
                final = self._final[command.delivery_id]
                if final != "received" or command.type == "stop":
                    await self._ack(command, final)
                continue
            self.log.commands.append(command)
            await self._ack(command, "received")
            if command.type == "stop":
                self._stopped.add(command.alert_id)
                if self._current is not None and self._current.alert_id == command.alert_id:
                    self._interrupt.set()
                continue
            self._plays.put_nowait(command)

    async def _play(self) -> None:
        b = self.behaviour
        while True:
            command = await self._plays.get()
            if command.alert_id in self._stopped:
                await self._ack(command, "failed", "stopped before playing: warning lifted")
                continue
            if command.expires is not None and command.expires <= time.time():
                await self._ack(command, "failed", "expired before playing")
                continue
            if _fraction(b.seed, "fail", self.id, command.delivery_id) < b.fail_rate:
                await self._ack(command, "failed", "amplifier fault (simulated)")
                continue
            self._current = command
            self._interrupt.clear()
            await self._ack(command, "playing")
            stopped = False
            if b.play_seconds > 0:
                stopped = await wait_set(self._interrupt, b.play_seconds * command.repeat)
            self._current = None
            if stopped:
                await self._ack(command, "failed", "stopped while playing: warning lifted")
            else:
                await self._ack(command, "played")


class SpeakerSimulator:
    """N simulated speakers on one broker; an async context manager.

    On entry every speaker is connected (switched-off ones have connected once and dropped,
    so their retained status is ``offline``); on exit they disconnect cleanly.
    ``clear_retained`` removes their retained statuses on exit (tests on a shared broker).
    """

    def __init__(
        self,
        *,
        host: str,
        port: int = 1883,
        speaker_ids: Sequence[str],
        prefix: str = DEFAULT_PREFIX,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        behaviour: Behaviour | None = None,
        session_expiry: float = 3600.0,
        mute: Collection[str] = (),
        clear_retained: bool = False,
        ready_within: float = 60.0,
    ) -> None:
        if len(set(speaker_ids)) != len(speaker_ids):
            raise ValueError("speaker ids must be unique")
        self.topics = Topics(prefix)
        self.behaviour = behaviour or Behaviour()
        self.host, self.port = host, port
        self.clear_retained = clear_retained
        self.ready_within = ready_within
        self._password = password
        self._tls = tls
        self.speakers: dict[str, FakeSpeaker] = {}
        for sid in speaker_ids:
            speaker = FakeSpeaker(
                sid, broker=BrokerAddress(host, port, username=sid, password=password, tls=tls),
                topics=self.topics, behaviour=self.behaviour, session_expiry=session_expiry)
            speaker.mute = sid in mute
            self.speakers[sid] = speaker
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> SpeakerSimulator:
        for speaker in self.speakers.values():
            self._tasks.append(asyncio.create_task(speaker.run(), name=f"speaker-{speaker.id}"))
        try:
            await self.wait_connected(self.speakers, within=self.ready_within)
        except BaseException:
            await self._stop()
            raise
        off = [s for s in self.speakers.values() if s.switched_off]
        for speaker in off:
            speaker.link.drop(with_will=True)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._stop()

    async def wait_connected(self, ids: Collection[str], *, within: float = 30.0) -> None:
        """Wait until these speakers are connected; TimeoutError names those that are not."""
        try:
            async with asyncio.timeout(within):
                for sid in ids:
                    await self.speakers[sid].link.connected.wait()
        except TimeoutError:
            down = [s for s in ids if not self.speakers[s].link.connected.is_set()]
            errors = {self.speakers[s].link.last_error for s in down[:5]}
            raise TimeoutError(
                f"{len(down)} speaker(s) not connected to {self.host}:{self.port} within "
                f"{within:g}s (e.g. {down[:5]}): {errors}") from None

    async def _stop(self) -> None:
        if not self.clear_retained:
            # Leaving cleanly sends no last will: say "offline" as a device switched off would.
            live = [s for s in self.speakers.values() if s.link.connected.is_set()]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(10.0):
                    await asyncio.gather(*(s.say_offline() for s in live))
        await cancel_and_wait(self._tasks)
        self._tasks = []
        if self.clear_retained:
            gate = asyncio.Semaphore(20)
            await asyncio.gather(*(self._forget(sid, gate) for sid in self.speakers))

    async def _forget(self, speaker_id: str, gate: asyncio.Semaphore) -> None:
        """Delete a speaker's retained status and its broker session (tests on a shared
        broker): an empty retained message deletes the retained one, and a clean start
        without session expiry ends the session when we leave."""
        async with gate:
            try:
                async with aiomqtt.Client(
                    self.host, self.port, username=speaker_id, password=self._password,
                    tls_context=self._tls, identifier=speaker_id, clean_start=True,
                    protocol=aiomqtt.ProtocolVersion.V5,
                ) as client:
                    await client.publish(self.topics.status(speaker_id), b"", qos=1,
                                         retain=True)
            except aiomqtt.MqttError as exc:
                log.warning("speaker %s: could not clear its retained status: %s",
                            speaker_id, exc)

    # -- the world happening to speakers ---------------------------------------------------

    def power_cut(self, speaker_id: str) -> None:
        """The speaker drops off without a goodbye: the broker publishes its last will."""
        self.speakers[speaker_id].link.drop(with_will=True)

    def power_on(self, speaker_id: str) -> None:
        self.speakers[speaker_id].link.resume()

    def counts(self) -> Counter[str]:
        """Acks sent by status, plus commands, duplicates and malformed commands."""
        c: Counter[str] = Counter()
        for s in self.speakers.values():
            c["commands"] += len(s.log.commands)
            c["duplicates"] += s.log.duplicates
            c["malformed"] += s.log.malformed
            c.update(a.status for a in s.log.acks)
        return c
