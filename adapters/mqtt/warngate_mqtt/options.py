"""The ``options`` keys of the ``mqtt-speaker`` adapter, validated once at start-up.

The broker password never sits in the YAML file (the configuration contract): it comes from
an environment variable (``password_env``) or a file (``password_file``: Docker and
Kubernetes secrets).
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from warngate.adapter import AdapterConfigError, read_secret
from warngate.durations import Duration
from warngate_mqtt.topics import DEFAULT_PREFIX, TopicError, check_prefix


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class TlsOptions(_Frozen):
    """TLS to the broker. Present (even empty) means TLS on, verified against the system CAs."""

    #: CA bundle that signed the broker's certificate (a private CA); default: system CAs.
    ca_file: Path | None = None
    #: Client certificate and key, for brokers that authenticate clients by certificate.
    cert_file: Path | None = None
    key_file: Path | None = None
    #: Accept a certificate whose name does not match ``host``. Only for trials.
    insecure: bool = False

    def context(self, adapter: str) -> ssl.SSLContext:
        """An SSL context, or AdapterConfigError naming the unreadable file."""
        for key in ("ca_file", "cert_file", "key_file"):
            path: Path | None = getattr(self, key)
            if path is not None and not path.is_file():
                raise AdapterConfigError(f"adapter {adapter!r}: options.tls.{key}: no such "
                                         f"file {path}")
        if self.key_file is not None and self.cert_file is None:
            raise AdapterConfigError(
                f"adapter {adapter!r}: options.tls.key_file needs options.tls.cert_file")
        try:
            ctx = ssl.create_default_context(
                cafile=str(self.ca_file) if self.ca_file else None)
            if self.cert_file is not None:
                ctx.load_cert_chain(str(self.cert_file),
                                    str(self.key_file) if self.key_file else None)
        except (ssl.SSLError, OSError) as exc:
            raise AdapterConfigError(f"adapter {adapter!r}: options.tls: {exc}") from exc
        if self.insecure:
            ctx.check_hostname = False
        return ctx


def _default_client_id() -> str:
    return f"warngate-{socket.gethostname()}"[:64]


class MqttOptions(_Frozen):
    host: str = "127.0.0.1"
    #: Default 1883, or 8883 with TLS.
    port: int | None = Field(default=None, ge=1, le=65535)
    username: str | None = None
    #: Where the password is read from (only if ``username`` is set).
    password_env: str = "WARNGATE_MQTT_PASSWORD"
    password_file: Path | None = None
    tls: TlsOptions | None = None
    #: Stable across restarts, unique per gateway process: the broker keeps this client's
    #: session (its subscriptions and the acks that arrive while it is away) under this id.
    client_id: str = Field(default_factory=_default_client_id, min_length=1, max_length=128)
    #: How long the broker keeps our session while we are disconnected.
    session_expiry: Duration = 86400.0
    keepalive: int = Field(default=30, ge=5, le=65535)
    prefix: str = DEFAULT_PREFIX
    #: Most commands awaiting the broker's PUBACK at once; the broker's own Receive Maximum
    #: (Mosquitto: ``max_inflight_messages``) lowers it further.
    max_inflight: int = Field(default=1000, ge=1, le=65535)
    #: A command without PUBACK after this long is reported as a transient failure.
    publish_timeout: Duration = 10.0
    #: How long a send waits for a (re)connection before it is retried later by the lane.
    connect_wait: Duration = 5.0
    #: Ceiling of the reconnect backoff.
    reconnect_max_delay: Duration = 30.0
    #: A speaker that has not answered a command at all this long after the broker took it
    #: counts as unresponsive: it is reported offline, so its village gets the policy's
    #: fallback, and the command gets an ``unanswered`` receipt. ``null`` waits forever.
    ack_timeout: Duration | None = 120.0
    #: Times a speaker plays each warning back to back (the payload's ``repeat``).
    repeat: int = Field(default=1, ge=1, le=10)

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        try:
            return check_prefix(value)
        except TopicError as exc:
            raise ValueError(str(exc)) from None

    @property
    def broker_port(self) -> int:
        if self.port is not None:
            return self.port
        return 8883 if self.tls is not None else 1883

    def password(self, adapter: str) -> SecretStr | None:
        """The broker password, or None; AdapterConfigError if a named file is unusable."""
        return read_secret(adapter, "options.password_file", self.password_env,
                           self.password_file)


