"""The ``mqtt-speaker`` adapter: village loudspeakers over MQTT 5 (ARCHITECTURE.md § MQTT).

``send`` publishes a ``play`` (or, for a cancel, ``stop``) command to the speaker's ``cmd``
topic with QoS 1 and returns once the broker has it. The speakers answer on their ``ack``
topic (``received`` → ``playing`` → ``played``, or ``failed``), which moves the delivery;
``played`` is also the village's acknowledgement. Their retained ``status`` (``offline``
is their last will) reports them online or offline; offline sends the village its
fallback at once. A speaker that does not answer a command at all within ``ack_timeout``
is as good as offline: it is reported offline (so its village gets the fallback) and the
command gets an ``unanswered`` receipt.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict, deque
from typing import ClassVar

from warngate.adapter import (
    AdapterConfig,
    AuthError,
    BaseAdapter,
    Outbound,
    PermanentError,
    ReceiptSink,
    SendResult,
    TransientError,
    parse_options,
)
from warngate.waiting import cancel_and_wait, wait_set
from warngate_mqtt.connection import (
    BrokerAddress,
    Link,
    LinkConfig,
    NotConnected,
    PublishRefused,
    PublishTimeout,
)
from warngate_mqtt.options import MqttOptions
from warngate_mqtt.payloads import PayloadError, command_payload, parse_ack, parse_status
from warngate_mqtt.topics import TopicError, Topics, check_speaker_id

log = logging.getLogger(__name__)

#: Receipt status of a command no speaker answered (recorded; the delivery stays "sent").
UNANSWERED = "unanswered"
#: Recent deliveries remembered with their speaker, to spot an ack from the wrong speaker.
_REMEMBERED = 200_000


class MqttSpeakerAdapter(BaseAdapter):
    """Loudspeakers reached through an MQTT 5 broker."""

    channels: ClassVar[tuple[str, ...]] = ("speaker",)

    def __init__(self, settings: AdapterConfig) -> None:
        super().__init__(settings)
        self.options: MqttOptions = parse_options(MqttOptions, settings)
        o = self.options
        self.topics = Topics(o.prefix)
        password = o.password(self.name) if o.username else None
        self.link = Link(
            LinkConfig(
                broker=BrokerAddress(
                    host=o.host, port=o.broker_port, username=o.username,
                    password=password.get_secret_value() if password else None,
                    tls=o.tls.context(self.name) if o.tls is not None else None,
                ),
                client_id=o.client_id,
                session_expiry=o.session_expiry,
                keepalive=o.keepalive,
                subscriptions=(self.topics.all_acks, self.topics.all_statuses),
                max_inflight=o.max_inflight,
                reconnect_max_delay=o.reconnect_max_delay,
                sweep_every=min(1.0, max(0.01, o.publish_timeout / 4)),
                name=f"adapter {self.name}",
            ),
            on_message=self._on_message,
        )
        # Beside send's own counts: commands, acks, statuses, malformed, wrong_speaker,
        # unexpected_topic, no_ack.
        # Commands not answered at all yet: delivery id → (send number, speaker), and their
        # deadlines in the order the broker took them (so the first is always the oldest).
        self._awaiting: dict[int, tuple[int, str]] = {}
        self._deadlines: deque[tuple[float, int, int]] = deque()
        self._send_no = itertools.count(1)
        # OrderedDict: dropping the oldest is O(1) (a dict's first key is not, once many
        # keys before it were deleted).
        self._sent_to: OrderedDict[int, str] = OrderedDict()
        self._unresponsive: set[str] = set()
        self._valid_ids: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self, receipts: ReceiptSink) -> None:
        await super().start(receipts)
        self._tasks = [
            asyncio.create_task(self.link.run(), name=f"mqtt-{self.name}-link"),
            asyncio.create_task(self._housekeeping(), name=f"mqtt-{self.name}-timeouts"),
        ]
        # A broker that is down must not stop the gateway from starting: sends wait for it
        # (connect_wait) and are retried by the lane.
        if not await wait_set(self.link.connected, self.options.connect_wait):
            log.warning("adapter %s: broker %s not reachable yet (%s); will keep trying",
                        self.name, self.link.config.broker, self.link.last_error)

    async def stop(self) -> None:
        await super().stop()
        await cancel_and_wait(self._tasks)
        self._tasks = []
        self.link.close()

    def metrics(self) -> dict[str, int]:
        """Counters for the metrics endpoint: send's, commands, acks, statuses, malformed,
        wrong_speaker, unexpected_topic, no_ack, and the broker connections made."""
        return {**super().metrics(), "connections": self.link.connections}

    # -- sending ----------------------------------------------------------------------------

    async def _send(self, message: Outbound) -> SendResult:
        speaker_id = message.address
        if speaker_id not in self._valid_ids:
            try:
                check_speaker_id(speaker_id)
            except TopicError as exc:
                raise PermanentError(str(exc)) from None
            if len(self._valid_ids) < _REMEMBERED:
                self._valid_ids.add(speaker_id)
        payload = command_payload(message, repeat=self.options.repeat)
        topic = self.topics.cmd(speaker_id)
        did = message.delivery_id
        # Registered before publishing: the speaker's ack can overtake our PUBACK.
        send_no = next(self._send_no)
        if self.options.ack_timeout is not None:
            self._awaiting[did] = (send_no, speaker_id)
        self._remember(did, speaker_id)
        try:
            await self.link.publish(topic, payload, qos=1,
                                    connect_wait=self.options.connect_wait,
                                    ack_within=self.options.publish_timeout)
        except NotConnected as exc:
            self._awaiting.pop(did, None)
            if exc.refused:
                raise AuthError(f"MQTT broker refused our credentials: {exc}") from None
            raise TransientError(str(exc)) from None
        except PublishRefused as exc:
            self._awaiting.pop(did, None)
            if exc.not_authorized:
                raise AuthError(f"the broker's ACL does not let {self.options.username!r} "
                                f"publish to {topic}: {exc}") from None
            raise TransientError(str(exc)) from None
        except PublishTimeout as exc:
            self._awaiting.pop(did, None)
            raise TransientError(str(exc)) from None
        self.counts["commands"] += 1
        if self.options.ack_timeout is not None:
            self._deadlines.append((time.monotonic() + self.options.ack_timeout, did, send_no))
        return SendResult(provider_ref=str(did))

    def _remember(self, delivery_id: int, speaker_id: str) -> None:
        sent = self._sent_to
        sent[delivery_id] = speaker_id
        sent.move_to_end(delivery_id)
        if len(sent) > _REMEMBERED:
            sent.popitem(last=False)

    # -- what the speakers say --------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        sink = self.receipts
        if sink is None:
            return
        parsed = self.topics.parse(topic)
        if parsed is None:
            self.counts["unexpected_topic"] += 1
            return
        speaker_id, leaf = parsed
        if leaf == "status":
            try:
                online = parse_status(payload)
            except PayloadError as exc:
                self._malformed(topic, payload, exc)
                return
            if online is None:
                return  # a retained status being cleared
            self.counts["statuses"] += 1
            if online:
                self._unresponsive.discard(speaker_id)
            sink.speaker_status(speaker_id, online=online)
            return
        try:
            ack = parse_ack(payload)
        except PayloadError as exc:
            self._malformed(topic, payload, exc)
            return
        did = ack.delivery_id
        if did is not None:
            sent_to = self._sent_to.get(did)
            if sent_to is not None and sent_to != speaker_id:
                self.counts["wrong_speaker"] += 1
                log.warning("adapter %s: speaker %s acknowledged delivery %d, which went to "
                            "speaker %s; ignored", self.name, speaker_id, did, sent_to)
                return
            self._awaiting.pop(did, None)
        self.counts["acks"] += 1
        if speaker_id in self._unresponsive:
            self._unresponsive.discard(speaker_id)
            sink.speaker_status(speaker_id, online=True)
        detail = ack.detail
        sink.receipt(delivery_id=did, provider_ref=ack.ref, status=ack.status, detail=detail)
        if ack.status == "played":
            sink.acknowledge(delivery_id=did, provider_ref=ack.ref, via="speaker",
                             detail=f"speaker {speaker_id}")

    def _malformed(self, topic: str, payload: bytes, exc: PayloadError) -> None:
        self.counts["malformed"] += 1
        n = self.counts["malformed"]
        # A babbling device must not flood the log: the first few, then every thousandth.
        if n <= 20 or n % 1000 == 0:
            log.warning("adapter %s: malformed message #%d on %s: %s (payload %r)", self.name,
                        n, topic, exc, payload[:200])

    # -- timeouts ---------------------------------------------------------------------------

    async def _housekeeping(self) -> None:
        o = self.options
        if o.ack_timeout is None:
            return
        every = max(0.01, min(1.0, o.ack_timeout / 4))
        while True:
            await asyncio.sleep(every)
            try:
                self.expire_unanswered()
            except Exception:  # the sweep must outlive one bad round
                log.exception("adapter %s: timeout sweep failed", self.name)

    def expire_unanswered(self, now: float | None = None) -> int:
        """Commands nobody answered within ``ack_timeout`` fail; their speakers are offline."""
        sink = self.receipts
        if sink is None or self.options.ack_timeout is None:
            return 0
        now = time.monotonic() if now is None else now
        n = 0
        while self._deadlines and self._deadlines[0][0] <= now:
            _, did, send_no = self._deadlines.popleft()
            waiting = self._awaiting.get(did)
            if waiting is None or waiting[0] != send_no:
                continue  # answered, or sent again since
            del self._awaiting[did]
            speaker_id = waiting[1]
            n += 1
            self.counts["no_ack"] += 1
            # Recorded without moving the delivery: the receipt writer applies receipts
            # before statuses, and the fallback only looks at deliveries still open, so a
            # "failed" here would cancel the very fallback the offline status asks for.
            # A late answer from the speaker still moves it.
            sink.receipt(delivery_id=did, status=UNANSWERED,
                         detail=f"speaker {speaker_id} did not answer within "
                                f"{self.options.ack_timeout:g}s")
            if speaker_id not in self._unresponsive:
                self._unresponsive.add(speaker_id)
                log.warning("adapter %s: speaker %s does not answer; reporting it offline",
                            self.name, speaker_id)
                sink.speaker_status(speaker_id, online=False)
        return n
