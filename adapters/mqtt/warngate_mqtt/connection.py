"""A broker connection that comes back, with a QoS 1 publish path fast enough for a fan-out.

aiomqtt owns the connection: the socket in the event loop, TLS, CONNECT/CONNACK, SUBSCRIBE.
Its ``publish()`` is slow under load, though: each call scans every pending call, creates
an Event and a ``wait_for`` task, and with an in-flight cap paho rescans its queue on every
PUBACK. Measured on this 2-core machine against Mosquitto on loopback
(``bench/mqtt_publish.py adapter native``): about 4,600 QoS 1 publishes per second through
aiomqtt's ``publish`` (215 µs of CPU each), 10,500 through this module (94 µs each; paho
itself costs about 75). So commands are handed to the paho client aiomqtt wraps, and
PUBACKs resolve one future each through paho's ``on_publish``; incoming messages likewise
go straight from paho's ``on_message`` to the handler, skipping aiomqtt's queue and its
task per message. Everything that touches aiomqtt's private ``_client`` is in
``_Session``, and the dependency is pinned to aiomqtt 2.x for it.

Commands are not lost to a reconnect: each stays in :class:`Link`'s pending table until the
broker acknowledges it, and is published again on the next connection (the speaker ignores a
``delivery_id`` it has already played). The session is persistent (``clean_start`` False,
a session expiry, a stable client id), so the broker keeps our subscriptions and queues the
acks that arrive while we are away. No more commands await PUBACK than the broker's
Receive Maximum allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.client import MQTT_ERR_SUCCESS, MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from warngate.waiting import cancel_and_wait, wait_set

log = logging.getLogger(__name__)
# paho logs every lost connection at ERROR: right for the gateway's one link, noise for a
# thousand simulated speakers while their broker restarts.
_QUIET_PAHO = logging.getLogger(f"{__name__}.quiet")
_QUIET_PAHO.setLevel(logging.CRITICAL)

#: (topic, payload, retained) for every message a subscription delivers.
MessageHandler = Callable[[str, bytes, bool], None]

_NOT_AUTHORIZED = frozenset({0x86, 0x87, 0x8C})  # bad user/password, not authorised, bad auth


class LinkError(Exception):
    """Base of what :meth:`Link.publish` raises."""


class NotConnected(LinkError):
    """No connection to the broker within the wait; ``refused`` if it turned us away."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class PublishTimeout(LinkError):
    """The broker did not acknowledge the message in time (it may still arrive)."""


class PublishRefused(LinkError):
    """The broker answered the PUBLISH with a failure reason code (e.g. ACL: not authorised)."""

    def __init__(self, message: str, *, code: int) -> None:
        super().__init__(message)
        self.code = code

    @property
    def not_authorized(self) -> bool:
        return self.code in _NOT_AUTHORIZED


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    """Where and as whom to connect."""

    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: ssl.SSLContext | None = None

    def __str__(self) -> str:
        scheme = "mqtts" if self.tls is not None else "mqtt"
        who = f"{self.username}@" if self.username else ""
        return f"{scheme}://{who}{self.host}:{self.port}"


@dataclass(slots=True)
class _Pending:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    future: asyncio.Future[None]
    deadline: float


class _Session:
    """One connected aiomqtt client and the paho callbacks we take over from it."""

    def __init__(self, client: aiomqtt.Client, on_message: MessageHandler | None,
                 on_puback: Callable[..., None]) -> None:
        self.client = client
        # aiomqtt 2.x keeps the paho client here; see the module docstring for why.
        self.paho = client._client
        # paho logs two DEBUG lines per message (a tenth of the cost of a publish even when
        # discarded) and every lost connection at ERROR; the link logs what matters itself.
        self.paho.disable_logger()
        self.receive_maximum = 65535
        self.session_present = False
        self._on_message = on_message
        self._aiomqtt_on_connect: Any = self.paho.on_connect
        self.paho.on_connect = self._connected
        # paho's own signature: (client, userdata, mid, reason, properties), no wrapper.
        self.paho.on_publish = on_puback
        if on_message is not None:
            self.paho.on_message = self._message

    def _connected(self, client: Any, userdata: Any, flags: Any, reason: ReasonCode,
                   properties: Properties | None = None) -> None:
        if properties is not None and hasattr(properties, "ReceiveMaximum"):
            self.receive_maximum = int(properties.ReceiveMaximum)
        self.session_present = bool(getattr(flags, "session_present", False))
        self._aiomqtt_on_connect(client, userdata, flags, reason, properties)

    def _message(self, client: Any, userdata: Any, message: MQTTMessage) -> None:
        assert self._on_message is not None
        try:
            topic = message.topic
        except UnicodeDecodeError:
            log.warning("dropped a message whose topic is not UTF-8")
            return
        # An exception here would tear the connection down: the handler must not raise,
        # and if it does anyway, the message is logged rather than the link lost.
        try:
            self._on_message(topic, bytes(message.payload), bool(message.retain))
        except Exception:
            log.exception("message handler failed on %s", topic)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> int:
        """Hand one message to paho; return its message id (0 for QoS 0)."""
        info = self.paho.publish(topic, payload, qos, retain)
        if info.rc != MQTT_ERR_SUCCESS:
            raise NotConnected(f"publish on {topic} not accepted by the client (rc {info.rc})")
        return info.mid if qos > 0 else 0

    def disconnect_with_will(self) -> None:
        """Leave as a crashed device would: the broker publishes our last will."""
        self.paho.disconnect(ReasonCode(PacketTypes.DISCONNECT, identifier=0x04))


def backoff_delay(attempt: int, ceiling: float) -> float:
    """Jittered exponential backoff: about 0.25 s, 0.5 s, 1 s ... up to ``ceiling``."""
    base = min(ceiling, 0.25 * 2 ** min(attempt, 16))
    return random.uniform(base / 2, base)


@dataclass
class LinkConfig:
    """How a :class:`Link` connects."""

    broker: BrokerAddress
    client_id: str
    #: Seconds the broker keeps the session (subscriptions, queued messages) after we drop.
    session_expiry: float = 3600.0
    keepalive: int = 30
    subscriptions: Sequence[str] = ()
    will: aiomqtt.Will | None = None
    max_inflight: int = 1000
    reconnect_max_delay: float = 30.0
    #: Published (QoS 1) on every connection before anything else, e.g. a retained status.
    birth: tuple[str, bytes, bool] | None = None
    #: How often publishes past their ``ack_within`` are failed.
    sweep_every: float = 1.0
    #: Log (re)connections at DEBUG rather than INFO (a thousand simulated speakers).
    quiet: bool = False
    name: str = field(default="")


class Link:
    """A persistent-session connection that reconnects with backoff until stopped.

    ``run()`` is the connection loop (run it as a task); ``publish()`` waits for a
    connection, sends with the requested QoS and returns once the broker has taken the
    message. Messages arriving on ``subscriptions`` go to ``on_message``.
    """

    def __init__(self, config: LinkConfig, *, on_message: MessageHandler | None = None) -> None:
        self.config = config
        self.name = config.name or config.client_id
        self.on_message = on_message
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        #: The broker turned us away (bad credentials, not authorised): retrying will not
        #: help until someone fixes the configuration.
        self.refused = False
        self.connections = 0
        self.subscribe_failures: list[str] = []
        self._session: _Session | None = None
        self._pending: dict[int, _Pending] = {}
        self._by_mid: dict[int, int] = {}
        self._seq = itertools.count(1)
        #: QoS 1 messages allowed awaiting PUBACK at once (``max_inflight``, lowered to the
        #: broker's Receive Maximum), how many are, and who waits for a slot.
        self.window = config.max_inflight
        self._inflight = 0
        self._window_waiters: deque[asyncio.Future[None]] = deque()
        self._hold = False
        self._with_will = False
        self._hold_changed = asyncio.Event()

    # -- the connection loop ----------------------------------------------------------------

    async def run(self) -> None:
        attempt = 0
        sweeper = asyncio.create_task(self._sweep(), name=f"mqtt-{self.name}-timeouts")
        try:
            while True:
                try:
                    lasted = await self._connect_once()
                    # A connection that drops at once (another client taking over our
                    # client id, a broker refusing us after CONNACK) keeps backing off.
                    if lasted is not None and lasted >= 5.0:
                        attempt = 0
                except Exception as exc:  # a bug or a surprise from paho must not end the link
                    self.last_error = repr(exc)
                    log.exception("%s: connection failed unexpectedly", self.name)
                    self._down()
                while self._hold:
                    # Dropped on purpose (tests, the simulator's power cut): stay away.
                    self._hold_changed.clear()
                    await self._hold_changed.wait()
                attempt += 1
                await asyncio.sleep(backoff_delay(attempt, self.config.reconnect_max_delay))
        finally:
            await cancel_and_wait([sweeper])
            self.close()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.config.sweep_every)
            self.expire()

    async def _connect_once(self) -> float | None:
        """One connection, from CONNECT to its end; how long it was up, None if never."""
        client = self._client()
        session = _Session(client, self.on_message, self._puback)
        up_since: float | None = None
        try:
            async with client:
                up_since = time.monotonic()
                await self._on_up(session)
                self._hold_changed.clear()
                if not self._hold:
                    await self._until_gone_or_held(client)
                self._down()
                if self._hold and self._with_will:
                    session.disconnect_with_will()
        except MqttConnectError as exc:
            code = getattr(exc.rc, "value", exc.rc)
            self.refused = code in _NOT_AUTHORIZED
            self.last_error = f"broker refused the connection: {exc}"
            log.error("%s: %s at %s", self.name, self.last_error, self.config.broker)
        except aiomqtt.MqttError as exc:
            self.last_error = str(exc) or type(exc).__name__
            if exc.__cause__ is not None:  # e.g. the broker's reason: "Session taken over"
                self.last_error += f": {exc.__cause__}"
            if up_since is not None and not self.config.quiet:
                log.warning("%s: connection to %s lost: %s", self.name, self.config.broker,
                            self.last_error)
            else:
                log.log(logging.DEBUG if self.config.quiet else logging.INFO,
                        "%s: cannot connect to %s: %s", self.name, self.config.broker,
                        self.last_error)
        finally:
            self._down()
        return None if up_since is None else time.monotonic() - up_since

    async def _until_gone_or_held(self, client: aiomqtt.Client) -> None:
        gone = asyncio.create_task(_until_disconnected(client),
                                   name=f"mqtt-{self.name}-connection")
        held = asyncio.create_task(self._hold_changed.wait(), name=f"mqtt-{self.name}-hold")
        try:
            done, _ = await asyncio.wait({gone, held}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (gone, held):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                    await task
        if gone in done:
            gone.result()  # the connection ended on its own: MqttError

    def _client(self) -> aiomqtt.Client:
        c = self.config
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho
        props.SessionExpiryInterval = int(c.session_expiry)
        return aiomqtt.Client(
            c.broker.host, c.broker.port,
            username=c.broker.username, password=c.broker.password,
            identifier=c.client_id, protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False, properties=props, keepalive=c.keepalive,
            tls_context=c.broker.tls, will=c.will, logger=_QUIET_PAHO if c.quiet else None,
            # paho's own in-flight cap rescans its queue on every PUBACK: the window below
            # does the limiting instead.
            max_inflight_messages=0, timeout=10,
        )

    async def _on_up(self, session: _Session) -> None:
        self.refused = False
        self.last_error = None
        # The broker may allow fewer in flight than configured: its Receive Maximum.
        self.window = max(1, min(self.config.max_inflight, session.receive_maximum))
        self._wake_waiters()
        if self.config.subscriptions:
            codes = await session.client.subscribe(
                [(t, SubscribeOptions(qos=1)) for t in self.config.subscriptions])
            self.subscribe_failures = [
                f"{t}: {c}" for t, c in zip(self.config.subscriptions, codes, strict=False)
                if isinstance(c, ReasonCode) and c.is_failure]
            for failure in self.subscribe_failures:
                log.error("%s: broker refused subscription %s", self.name, failure)
        # From here to connected.set() nothing awaits, so no publish slips in between.
        try:
            if self.config.birth is not None:
                topic, payload, retain = self.config.birth
                session.publish(topic, payload, 1, retain)
            # What the previous connection did not get acknowledged goes out again, in order.
            for key, p in self._pending.items():
                self._by_mid[session.publish(p.topic, p.payload, p.qos, p.retain)] = key
        except NotConnected:
            self._by_mid.clear()
            return  # gone already: the connection loop notices and comes back
        self._session = session
        self.connections += 1
        self.connected.set()
        log.log(logging.DEBUG if self.config.quiet else logging.INFO,
                "%s: connected to %s (session %s, %d re-sent)", self.name, self.config.broker,
                "resumed" if session.session_present else "new", len(self._pending))

    def _down(self) -> None:
        self.connected.clear()
        self._session = None
        self._by_mid.clear()

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False,
                      connect_wait: float = 5.0, ack_within: float = 15.0) -> None:
        """Publish and return once the broker has it (PUBACK for QoS 1).

        A QoS 1 message survives a reconnect: it is sent again on the next connection.
        Raises NotConnected if no connection comes up within ``connect_wait``,
        PublishRefused if the broker refuses the message, PublishTimeout if ``ack_within``
        passes without PUBACK (the message may still be delivered later).
        """
        if not self.connected.is_set() and not await wait_set(self.connected, connect_wait):
            raise NotConnected(
                f"no connection to {self.config.broker} within {connect_wait:g}s"
                + (f": {self.last_error}" if self.last_error else ""),
                refused=self.refused)
        if qos == 0:
            if self._session is None:
                raise NotConnected(f"connection to {self.config.broker} lost")
            self._session.publish(topic, payload, 0, retain)
            return
        # A semaphore, inlined: the free-slot case is the hot path of a fan-out.
        if self._inflight < self.window and not self._window_waiters:
            self._inflight += 1
        else:
            await self._wait_for_slot()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        key = next(self._seq)
        self._pending[key] = _Pending(topic, payload, qos, retain, future,
                                      time.monotonic() + ack_within)
        try:
            session = self._session
            if session is not None:
                # try/except, not contextlib.suppress: this runs for every command.
                try:  # noqa: SIM105
                    self._by_mid[session.publish(topic, payload, qos, retain)] = key
                except NotConnected:
                    pass  # the socket just went: the next connection sends it
            await future
        finally:
            self._pending.pop(key, None)
            self._inflight -= 1
            self._wake_waiters()

    async def _wait_for_slot(self) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._window_waiters.append(waiter)
        try:
            await waiter  # the slot is counted for us by _wake_waiters
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._inflight -= 1  # granted as we were cancelled: hand it on
                self._wake_waiters()
            else:
                self._window_waiters.remove(waiter)
            raise

    def _wake_waiters(self) -> None:
        while self._window_waiters and self._inflight < self.window:
            waiter = self._window_waiters.popleft()
            if not waiter.done():
                self._inflight += 1
                waiter.set_result(None)

    def _puback(self, client: Any, userdata: Any, mid: int, reason: ReasonCode,
                properties: Properties | None = None) -> None:
        """paho's ``on_publish``: the broker acknowledged message ``mid``."""
        key = self._by_mid.pop(mid, None)
        if key is None:
            return
        pending = self._pending.pop(key, None)
        if pending is None or pending.future.done():
            return
        if reason.is_failure:
            pending.future.set_exception(PublishRefused(
                f"broker refused {pending.topic}: {reason}", code=reason.value))
        else:
            pending.future.set_result(None)

    def expire(self, now: float | None = None) -> int:
        """Fail publishes past their timeout with PublishTimeout; return how many."""
        now = time.monotonic() if now is None else now
        late = [k for k, p in self._pending.items() if p.deadline <= now]
        for key in late:
            p = self._pending.pop(key)
            if not p.future.done():
                p.future.set_exception(PublishTimeout(
                    f"no PUBACK for {p.topic} from {self.config.broker}"))
        if late:
            self._by_mid = {m: k for m, k in self._by_mid.items() if k in self._pending}
        return len(late)

    def close(self) -> None:
        """Fail whatever still waits for a PUBACK (the link is stopping)."""
        for p in self._pending.values():
            if not p.future.done():
                p.future.set_exception(NotConnected(f"link to {self.config.broker} stopped"))
        self._pending.clear()
        self._by_mid.clear()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # -- dropping on purpose (tests and the simulator) ------------------------------------------

    def drop(self, *, with_will: bool = False) -> None:
        """Disconnect and stay away until :meth:`resume`; ``with_will`` fires the last will,
        as a device losing power would."""
        self._hold = True
        self._with_will = with_will
        self._hold_changed.set()

    def resume(self) -> None:
        self._hold = False
        self._with_will = False
        self._hold_changed.set()


async def _until_disconnected(client: aiomqtt.Client) -> None:
    async for _ in client.messages:
        pass  # nothing arrives here: the paho callback takes every message
