"""Service configuration: one YAML file, every key overridable by ``WARNGATE_...`` variables.

Nested keys use ``__`` in variable names (``WARNGATE_DATABASE__URL``). Secrets are
``SecretStr`` and are only read from the environment or from a secrets file named in YAML.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from warngate.durations import Duration
from warngate.yamlfile import read_yaml

Role = Literal["admin", "duty_officer", "approver", "township", "feed"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DatabaseSettings(_Frozen):
    url: str = "sqlite+aiosqlite:///var/warngate.db"
    echo: bool = False
    #: Connections for receipt boards, the alert API and metrics, apart from the senders'.
    board_pool_size: int = Field(default=4, ge=1, le=64)


class HttpSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = 8080
    #: Base of the one-tap acknowledgement links sent in SMS.
    public_url: str = "http://127.0.0.1:8080"
    max_body_bytes: int = Field(default=1_048_576, ge=1024)


class ApiToken(_Frozen):
    """A bearer token. Only its SHA-256 is configured, so the file holds no secret."""

    name: str
    role: Role
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    #: Township users see and act on this township only.
    township: str | None = None
    #: Feed tokens: the CAP ``sender`` values this token may submit, and whose alerts its
    #: Updates and Cancels may name; ``["*"]`` for any sender, said explicitly.
    senders: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _township_scope(self) -> ApiToken:
        if self.role == "township" and not self.township:
            raise ValueError(f"token {self.name!r}: role 'township' needs a township code")
        return self

    @model_validator(mode="after")
    def _feed_senders(self) -> ApiToken:
        # An empty list once meant "any sender": a feed's token could then cancel or replace
        # anyone's warning, a duty officer's included. Any sender must now be asked for.
        if self.role == "feed" and not self.senders:
            raise ValueError(
                f"token {self.name!r}: a feed token needs `senders`, the CAP <sender> values "
                f'it may submit (and whose alerts it may update or cancel), or senders: ["*"] '
                f"for any sender")
        return self


class AuthSettings(_Frozen):
    tokens: tuple[ApiToken, ...] = ()
    #: Composer and approver must be different people.
    four_eyes: bool = True


class RetrySettings(_Frozen):
    max_attempts: int = Field(default=6, ge=1)
    base_delay: Duration = 2.0
    max_delay: Duration = 300.0


class AdapterSettings(_Frozen):
    """One channel adapter instance; ``type`` is its ``warngate.adapters`` entry point."""

    name: str
    type: str
    channel: str
    concurrency: int = Field(default=20, ge=1)
    rate_per_second: float = Field(default=50.0, gt=0)
    retry: RetrySettings = RetrySettings()
    #: Adapter-specific keys, validated by the adapter's own model.
    options: dict[str, Any] = {}


class FeedSettings(_Frozen):
    """One polled source; adding a source is adding one of these to the configuration."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    url: str
    #: ``auto`` tells ATOM, RSS and a bare CAP message apart by the document's root.
    kind: Literal["auto", "atom", "rss", "cap"] = "auto"
    interval: Duration = 60.0
    timeout: Duration = 15.0
    max_bytes: int = Field(default=5_242_880, ge=1024)
    #: CAP ``sender`` values accepted from this feed; empty accepts any.
    senders: tuple[str, ...] = ()
    #: New entries taken per poll, in feed order; the rest are taken at the next polls.
    max_entries: int = Field(default=500, ge=1)
    headers: dict[str, str] = {}


class RiseRule(_Frozen):
    """A rise of ``metres`` within ``within`` raises ``colour`` even below the warning level."""

    metres: float = Field(gt=0)
    within: Duration = 3600.0
    colour: Literal["blue", "yellow", "orange", "red"] = "yellow"


class HydroStation(_Frozen):
    """A gauge: thresholds in metres, and the region codes downstream of it."""

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    name: str
    river: str = ""
    warning_level_m: float
    guaranteed_level_m: float
    hysteresis_m: float = Field(default=0.1, ge=0)
    warning_colour: Literal["blue", "yellow", "orange", "red"] = "orange"
    guaranteed_colour: Literal["blue", "yellow", "orange", "red"] = "red"
    rise: RiseRule | None = None
    areas: tuple[str, ...] = Field(min_length=1)
    instruction: str = "请沿河低洼地带群众立即转移到安全地带，远离河道。"

    @model_validator(mode="after")
    def _ordered(self) -> HydroStation:
        if self.guaranteed_level_m <= self.warning_level_m:
            raise ValueError(f"station {self.id!r}: guaranteed_level_m must be above "
                             f"warning_level_m")
        return self


class CapTrust(_Frozen):
    """Certificates (PEM files) whose signatures are trusted for one CAP sender."""

    sender: str
    certificates: tuple[Path, ...] = Field(min_length=1)

    def pems(self) -> list[str]:
        try:
            return [p.read_text(encoding="ascii") for p in self.certificates]
        except OSError as exc:
            raise ConfigError(f"cap.trust {self.sender}: cannot read certificate: {exc}"
                              ) from exc


class CapSettings(_Frozen):
    #: Senders whose XML signatures are verified; others' signatures are only reported.
    trust: tuple[CapTrust, ...] = ()

    def trusted(self, sender: str) -> list[str]:
        return [pem for t in self.trust if t.sender == sender for pem in t.pems()]


class HydrologySettings(_Frozen):
    #: Consecutive readings that must agree before an alert is raised, changed or lifted.
    confirm: int = Field(default=2, ge=1)
    stations: tuple[HydroStation, ...] = ()


class DispatchSettings(_Frozen):
    batch_size: int = Field(default=500, ge=1)
    lease: Duration = 60.0
    idle_poll: Duration = 0.2


class PlanningSettings(_Frozen):
    #: Households are planned in chunks of this many villages, each its own transaction.
    villages_per_chunk: int = Field(default=200, ge=1)


class EscalationSettings(_Frozen):
    sweep_every: Duration = 5.0


def _default_adapters() -> tuple[AdapterSettings, ...]:
    return (
        AdapterSettings(name="sms", type="sim-sms", channel="sms", concurrency=200,
                        rate_per_second=2000),
        AdapterSettings(name="voice", type="sim-voice", channel="voice", concurrency=50,
                        rate_per_second=50),
        AdapterSettings(name="speaker", type="sim-speaker", channel="speaker", concurrency=100,
                        rate_per_second=500),
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="WARNGATE_", env_nested_delimiter="__", frozen=True, extra="forbid"
    )

    database: DatabaseSettings = DatabaseSettings()
    http: HttpSettings = HttpSettings()
    auth: AuthSettings = AuthSettings()
    policy_file: Path = Path("config/policy.yaml")
    adapters: tuple[AdapterSettings, ...] = Field(default_factory=_default_adapters)
    dispatch: DispatchSettings = DispatchSettings()
    planning: PlanningSettings = PlanningSettings()
    escalation: EscalationSettings = EscalationSettings()
    #: Polled CAP sources (ATOM/RSS indexes or plain CAP URLs).
    feeds: tuple[FeedSettings, ...] = ()
    #: CAP ingest: trusted signing certificates per sender.
    cap: CapSettings = CapSettings()
    #: River gauges whose readings raise, upgrade and lift flood alerts.
    hydrology: HydrologySettings = HydrologySettings()
    #: Signs acknowledgement links; set it (env only) so links survive restarts.
    ack_key: SecretStr | None = None
    #: Optional YAML file with secrets (``ack_key``, adapter secrets); keep it out of git.
    secrets_file: Path | None = None

    @model_validator(mode="after")
    def _one_adapter_per_channel(self) -> Settings:
        seen: dict[str, str] = {}
        for a in self.adapters:
            if a.channel in seen:
                raise ValueError(
                    f"adapters {seen[a.channel]!r} and {a.name!r} both serve channel "
                    f"{a.channel!r}; one adapter per channel"
                )
            seen[a.channel] = a.name
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file, which arrives as init kwargs.
        return (env_settings, init_settings)

    def adapter_for(self, channel: str) -> AdapterSettings | None:
        return next((a for a in self.adapters if a.channel == channel), None)


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file and key."""


def load_settings(path: Path | None, **overrides: Any) -> Settings:
    """Read ``path`` (YAML), apply environment overrides and ``overrides``, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path, "configuration", ConfigError)
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        data = loaded or {}
        base = path.parent
        for key in ("policy_file", "secrets_file"):
            if isinstance(data.get(key), str) and not Path(data[key]).is_absolute():
                data[key] = str(base / data[key])
    data.update(overrides)
    secrets_file = data.get("secrets_file")
    if secrets_file:
        secrets = read_yaml(Path(secrets_file), "secrets file", ConfigError) or {}
        if not isinstance(secrets, dict):
            raise ConfigError(f"{secrets_file}: the top level must be a mapping of keys")
        for key, value in secrets.items():
            data.setdefault(key, value)
    try:
        return Settings(**data)
    except ValidationError as exc:
        where = path if path is not None else "configuration"
        raise ConfigError(f"{where}: {exc}") from exc


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()
