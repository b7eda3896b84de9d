"""The ``options`` keys of the Twilio adapters, validated once at start-up.

Secrets never sit in the YAML file (the configuration contract): the Auth Token and an API
key's secret come from an environment variable (named by ``*_env``, with Twilio's usual
names as defaults) or from a file (``*_file``: Docker and Kubernetes secrets).
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from warngate.adapter import AdapterConfigError, read_secret

_E164 = re.compile(r"^\+[1-9]\d{6,14}$")


class _Options(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    #: Where the Auth Token is read from. It signs every webhook, so it is needed even when
    #: REST calls use an API key.
    auth_token_env: str = "TWILIO_AUTH_TOKEN"
    auth_token_file: Path | None = None
    #: Optional API key for REST calls (``SK...``); its secret from env or file.
    api_key_sid: str | None = Field(default=None, pattern=r"^SK[0-9a-fA-F]{32}$")
    api_key_secret_env: str = "TWILIO_API_KEY_SECRET"
    api_key_secret_file: Path | None = None
    #: Base of the REST API. Another host for a regional edge, a proxy, or the test fake.
    api_base_url: AnyHttpUrl = AnyHttpUrl("https://api.twilio.com")
    #: Public base URL Twilio calls back (and signs). Default: the service's ``public_url``.
    webhook_base_url: AnyHttpUrl | None = None
    #: Seconds for one REST call before it counts as a transient failure.
    request_timeout: float = Field(default=15.0, gt=0)
    #: Refuse webhooks whose X-Twilio-Signature is missing or wrong. Only for local trials.
    validate_signatures: bool = True
    #: How many recent callbacks are remembered to drop Twilio's repeats.
    dedupe_window: int = Field(default=100_000, ge=0)

    def resolve_secrets(self, adapter: str) -> tuple[SecretStr, SecretStr | None]:
        """(auth token, API key secret or None), or an AdapterConfigError naming the key."""
        token = read_secret(adapter, "the auth token file", self.auth_token_env,
                            self.auth_token_file)
        if token is None:
            raise AdapterConfigError(
                f"adapter {adapter!r}: no Twilio auth token: set the environment variable "
                f"{self.auth_token_env} or options.auth_token_file"
            )
        key_secret = None
        if self.api_key_sid is not None:
            key_secret = read_secret(adapter, "the API key secret file",
                                     self.api_key_secret_env, self.api_key_secret_file)
            if key_secret is None:
                raise AdapterConfigError(
                    f"adapter {adapter!r}: options.api_key_sid is set but its secret is not: "
                    f"set {self.api_key_secret_env} or options.api_key_secret_file"
                )
        return token, key_secret


def _e164(value: str | None) -> str | None:
    if value is not None and not _E164.match(value):
        raise ValueError(f"{value!r} is not an E.164 number (like +8613800138000)")
    return value


_DEFAULT_ACK_WORDS = ("1", "收到", "确认", "已收到", "好", "好的", "ok", "okay", "yes", "y",
                      "是", "知道了", "明白")


class SmsOptions(_Options):
    #: Send from this number, or (better: pooled numbers, sticky sender, opt-out handling)
    #: through a Messaging Service.
    from_number: str | None = None
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    #: Put in front of every message, e.g. the sender signature Chinese carriers require.
    prefix: str = ""
    #: The whole message is cut (body first) to this many segments.
    max_segments: int = Field(default=6, ge=1, le=10)
    #: The acknowledgement line by language (``zh``, ``en``...), followed by the link.
    ack_instruction: dict[str, str] = {"zh": "回复1或点链接确认：", "en": "Reply 1 or tap: "}
    #: Replies that acknowledge (compared after trimming punctuation, case-insensitively).
    ack_words: tuple[str, ...] = _DEFAULT_ACK_WORDS
    #: Texted back after an acknowledging reply; empty: no reply (each reply is billed).
    ack_reply: str = ""

    @field_validator("from_number")
    @classmethod
    def _check_from(cls, value: str | None) -> str | None:
        return _e164(value)

    @model_validator(mode="after")
    def _one_sender(self) -> SmsOptions:
        if (self.from_number is None) == (self.messaging_service_sid is None):
            raise ValueError("set exactly one of from_number and messaging_service_sid")
        if not self.ack_words:
            raise ValueError("ack_words must name at least one reply")
        return self


class VoiceOptions(_Options):
    from_number: str
    #: Text-to-speech voice for ``<Say>``, e.g. ``Polly.Zhiyu`` or ``Google.cmn-CN-Standard-A``.
    voice: str = "Polly.Zhiyu"
    language: str = "cmn-CN"
    #: How many times the warning is read.
    repeat: int = Field(default=2, ge=1, le=5)
    prompt: str = "收到请按1键确认。"
    thanks: str = "已确认，谢谢。"
    #: Said when no key was pressed, before hanging up.
    no_input: str = "未收到确认，请留意后续通知。"
    #: Seconds the phone rings before the call counts as not answered.
    ring_timeout: int = Field(default=30, ge=5, le=600)
    #: Seconds to wait for the key after the last word.
    gather_timeout: int = Field(default=8, ge=1, le=60)

    @field_validator("from_number")
    @classmethod
    def _check_from(cls, value: str) -> str:
        _e164(value)
        return value


def webhook_base(options: _Options, public_url: str | None, adapter: str) -> str:
    """The URL prefix Twilio calls back, without a trailing slash."""
    base = str(options.webhook_base_url) if options.webhook_base_url else public_url
    if not base:
        raise AdapterConfigError(
            f"adapter {adapter!r}: no public URL for Twilio's callbacks: set http.public_url "
            f"or options.webhook_base_url"
        )
    return base.rstrip("/")

