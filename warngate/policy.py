"""Who gets what, over which channel, and what happens when nobody answers.

Loaded from ``config/policy.yaml``. For each warning level and each contact role the policy
names the first channels, whether an acknowledgement (叫应) is required, and the escalation
steps taken while it is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from warngate.durations import Duration
from warngate.yamlfile import read_yaml

LEVELS: tuple[str, ...] = ("blue", "yellow", "orange", "red")
LEVEL_RANK: dict[str, int] = {name: i for i, name in enumerate(LEVELS)}
ROLES: tuple[str, ...] = ("township_duty", "village_head", "grid_worker", "household")
#: Responsible people are reached before households; lower is earlier.
ROLE_PRIORITY: dict[str, int] = {
    "county_duty": 0,
    "township_duty": 0,
    "village_head": 1,
    "grid_worker": 2,
    "speaker": 3,
    "household": 5,
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AckRule(_Frozen):
    required: bool = False
    within: Duration = 600.0


class EscalationStep(_Frozen):
    after: Duration = Field(description="seconds after the first message, if still no ack")
    channel: str
    to: Literal["self", "supervisor"] = "self"


class RolePolicy(_Frozen):
    channels: tuple[str, ...] = ("sms",)
    ack: AckRule = AckRule()
    escalation: tuple[EscalationStep, ...] = ()

    @model_validator(mode="after")
    def _ordered(self) -> RolePolicy:
        afters = [s.after for s in self.escalation]
        if afters != sorted(afters):
            raise ValueError("escalation steps must be in order of 'after'")
        if self.escalation and not self.ack.required:
            raise ValueError("escalation steps need ack.required: true")
        return self


class SpeakerPolicy(_Frozen):
    enabled: bool = True
    repeat_every: Duration | None = None
    fallback_role: str | None = "village_head"
    fallback_channel: str = "voice"


class LevelPolicy(_Frozen):
    roles: dict[str, RolePolicy] = {}
    speakers: SpeakerPolicy = SpeakerPolicy(enabled=False)


class DrillPolicy(_Frozen):
    """Exercise/Test alerts reach only these roles, never households."""

    roles: tuple[str, ...] = ("township_duty",)


class UnreachedPolicy(_Frozen):
    """Who is told, and how, when a warning matches nobody in the registry (wrong region
    codes, an empty village): a warning that reaches nobody must never be silent."""

    roles: tuple[str, ...] = ("county_duty",)
    channels: tuple[str, ...] = ("sms",)


class Policy(_Frozen):
    levels: dict[str, LevelPolicy]
    drills: DrillPolicy = DrillPolicy()
    unreached: UnreachedPolicy = UnreachedPolicy()

    @model_validator(mode="after")
    def _known_levels(self) -> Policy:
        unknown = set(self.levels) - set(LEVELS)
        if unknown:
            raise ValueError(f"unknown level(s) {sorted(unknown)}; use {list(LEVELS)}")
        missing = set(LEVELS) - set(self.levels)
        if missing:
            raise ValueError(f"policy has no entry for level(s) {sorted(missing)}")
        for level in self.drills.roles:
            if level == "household":
                raise ValueError("drills must not reach households")
        return self

    def channels_used(self) -> set[str]:
        used: set[str] = set(self.unreached.channels) if self.unreached.roles else set()
        for lp in self.levels.values():
            for rp in lp.roles.values():
                used.update(rp.channels)
                used.update(s.channel for s in rp.escalation)
            if lp.speakers.enabled:
                used.add("speaker")
                if lp.speakers.fallback_role:
                    used.add(lp.speakers.fallback_channel)
        return used


class PolicyError(Exception):
    """The policy file cannot be used; the message says where and why."""


def load_policy(path: Path) -> Policy:
    data = read_yaml(path, "policy", PolicyError)
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{path}: {exc}") from exc
