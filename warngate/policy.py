"""Who gets what, over which channel, and what happens when nobody answers.

Loaded from ``config/policy.yaml``. For each warning level and each contact role the policy
names the first channels, whether an acknowledgement (叫应) is required, and the escalation
steps taken while it is missing. Roles are declared (``roles:``, over ``DEFAULT_ROLES``), each
with the Chinese label rosters and screens use; ``reach`` widens who a role's entry covers
(上下贯通: the township's duty officers for any part of their township); ``hazards`` add or
override roles for warnings whose event names the hazard (地质灾害 → 群测群防员).
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
#: Where contacts of a role may be registered (region levels).
REGION_LEVELS: tuple[str, ...] = ("county", "township", "village", "grid")
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
    """Whether the person must answer (叫应), and by when.

    ``within`` is the person's deadline, counted from their first message. The escalation
    sweep enforces it: a person who has not answered when both the deadline has passed and
    their last escalation step is taken is *silent*, and the duty officers are alarmed
    (``Policy.silent``). Give ``within`` more than the last step's ``after`` so that the last
    step has time to be answered; otherwise the alarm goes with the last step.
    """

    required: bool = False
    within: Duration = 600.0


class EscalationStep(_Frozen):
    after: Duration = Field(description="seconds after the first message, if still no ack")
    channel: str
    #: ``duty``: the other duty officers of the person's region, those not on shift now
    #: (``warngate.duty``); the person's supervisor when there are none.
    to: Literal["self", "supervisor", "duty"] = "self"


class RoleDef(_Frozen):
    """A role contacts may have: its label (shown, and accepted in rosters), the other
    names rosters write for it, and where its people are registered."""

    label: str = Field(min_length=1, max_length=50)
    aliases: tuple[str, ...] = ()
    lives_at: tuple[Literal["county", "township", "village", "grid"], ...] = (
        "township", "village", "grid")


#: The roles every policy knows; a policy's ``roles:`` adds to them or relabels them.
DEFAULT_ROLES: dict[str, RoleDef] = {
    "county_duty": RoleDef(label="县级值班", aliases=("县值班", "县应急值班", "县值班员"),
                           lives_at=("county",)),
    "township_duty": RoleDef(label="乡镇值班", aliases=(
        "乡镇值班员", "镇值班", "乡镇领导", "乡镇带班领导", "乡镇负责人"), lives_at=("township",)),
    "village_head": RoleDef(label="村居负责人", aliases=(
        "村(居)负责人", "村（居）负责人", "村负责人", "村支书", "村主任", "社区负责人"),
        lives_at=("village",)),
    "grid_worker": RoleDef(label="网格员", aliases=("网格长", "网格责任人"), lives_at=("grid",)),
    "household": RoleDef(label="户", aliases=("户主", "群众", "住户", "居民", "农户"),
                         lives_at=("village", "grid")),
    "geo_monitor": RoleDef(label="群测群防员", aliases=("地质灾害监测员", "地灾监测员")),
    "reservoir_patroller": RoleDef(label="水库巡查员", aliases=("水库巡查责任人",)),
    "weather_informant": RoleDef(label="气象信息员"),
    "shelter_manager": RoleDef(label="避灾安置场所管理员", aliases=("安置点管理员",)),
    "fishing_safety_officer": RoleDef(label="渔船安全员"),
    "resident_cadre": RoleDef(label="驻村干部", aliases=("驻村工作队员",)),
}


class RolePolicy(_Frozen):
    channels: tuple[str, ...] = ("sms",)
    #: Who this entry covers: people inside the warned area (``area``); also everyone of the
    #: role in any township the warning touches (``township``: a village's warning reaches
    #: its township's duty officers); also those registered at a county the warning covers
    #: whole (``county``: the county's duty officers for county-wide warnings).
    reach: Literal["area", "township", "county"] = "area"
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


class HazardPolicy(_Frozen):
    """Roles added (or overridden) for warnings of one hazard.

    A warning matches when its event contains one of ``match`` (case does not matter;
    without ``match``, the hazard's own name). ``roles`` are merged over the level's roles
    for every level from ``min_level`` up.
    """

    match: tuple[str, ...] = ()
    min_level: Literal["blue", "yellow", "orange", "red"] = "blue"
    roles: dict[str, RolePolicy] = {}


class CommunityDrillPolicy(_Frozen):
    """A drill marked community-wide (全民演练) reaches these roles, households included."""

    roles: tuple[str, ...] = ()


class DrillPolicy(_Frozen):
    """Exercise/Test alerts reach only these roles, never households; a community-wide
    drill reaches ``community.roles`` instead."""

    roles: tuple[str, ...] = ("township_duty",)
    community: CommunityDrillPolicy = CommunityDrillPolicy()


class UnreachedPolicy(_Frozen):
    """Who is told, and how, when a warning matches nobody in the registry (wrong region
    codes, an empty village): a warning that reaches nobody must never be silent."""

    roles: tuple[str, ...] = ("county_duty",)
    channels: tuple[str, ...] = ("sms",)


class SilentPolicy(_Frozen):
    """Who is alarmed, and how, when people who must answer stay silent after their last
    escalation step (or have no supervisor to call): the duty officers of each such
    person's township and county, one message per alert and township per sweep, listing
    them (``warngate.escalation``). ``roles: []`` turns the alarm off."""

    roles: tuple[str, ...] = ("township_duty", "county_duty")
    channels: tuple[str, ...] = ("sms",)


class FollowupPolicy(_Frozen):
    """Households a bound grid worker must reach in person (``warngate.followup``): those
    whose every message of a warning failed, those without a phone, and the vulnerable.
    Only warnings of ``levels`` (those that reach households) make follow-up lists; each
    grid worker with new households on one gets one message over ``channel``."""

    levels: tuple[str, ...] = ("orange", "red")
    channel: str = "sms"
    #: How often the gateway looks for new follow-ups (and forwards field reports).
    every: Duration = 30.0


class FieldReportPolicy(_Frozen):
    """Where field reports (an SMS that is not an acknowledgement, a grid worker's report
    from the mobile page) are forwarded: to these roles of the report's township, over
    these channels (``warngate.fieldreports``). ``forward_to: []`` keeps them in the list
    only."""

    forward_to: tuple[str, ...] = ("township_duty",)
    channels: tuple[str, ...] = ("sms",)


class Policy(_Frozen):
    levels: dict[str, LevelPolicy]
    #: Declared roles, over DEFAULT_ROLES (an entry of the same id replaces the default).
    roles: dict[str, RoleDef] = {}
    hazards: dict[str, HazardPolicy] = {}
    drills: DrillPolicy = DrillPolicy()
    unreached: UnreachedPolicy = UnreachedPolicy()
    silent: SilentPolicy = SilentPolicy()
    followup: FollowupPolicy = FollowupPolicy()
    field_reports: FieldReportPolicy = FieldReportPolicy()

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
                raise ValueError("drills must not reach households (only drills.community)")
        self._check_roles()
        return self

    def _check_roles(self) -> None:
        declared = self.declared_roles()
        named = [(f"levels.{lv}", r) for lv, lp in self.levels.items() for r in lp.roles]
        named += [(f"hazards.{hz}", r) for hz, hp in self.hazards.items() for r in hp.roles]
        named += [("drills.roles", r) for r in self.drills.roles]
        named += [("drills.community.roles", r) for r in self.drills.community.roles]
        named += [(f"levels.{lv}.speakers.fallback_role", lp.speakers.fallback_role)
                  for lv, lp in self.levels.items() if lp.speakers.fallback_role]
        undeclared = [f"{where}: {role}" for where, role in named if role not in declared]
        if undeclared:
            raise ValueError(f"undeclared role(s) ({'; '.join(undeclared)}): declare them "
                             f"under roles: (known: {', '.join(declared)})")
        names: dict[str, str] = {}
        for role, rd in declared.items():
            for name in {role.casefold(), rd.label.casefold(),
                         *(a.casefold() for a in rd.aliases)}:
                other = names.setdefault(name, role)
                if other != role:
                    raise ValueError(f"role name {name!r} is used by both {other} and {role}")

    def declared_roles(self) -> dict[str, RoleDef]:
        """Every role contacts may have: DEFAULT_ROLES with this policy's ``roles:`` over it."""
        return {**DEFAULT_ROLES, **self.roles}

    def role_label(self, role: str) -> str:
        """The role's Chinese label for display (its id when undeclared)."""
        rd = self.declared_roles().get(role)
        return rd.label if rd else role

    def hazards_of(self, event: str) -> list[str]:
        """The hazards whose keywords the event contains, in the policy's order."""
        text = event.casefold()
        return [name for name, hp in self.hazards.items()
                if any(k.casefold() in text for k in (hp.match or (name,)))]

    def roles_for(self, level: str, event: str = "") -> dict[str, RolePolicy]:
        """The level's roles, with the roles of every hazard the event names merged over
        them (a later hazard's entry for the same role wins)."""
        roles = dict(self.levels[level].roles)
        for name in self.hazards_of(event):
            hp = self.hazards[name]
            if LEVEL_RANK[level] >= LEVEL_RANK[hp.min_level]:
                roles.update(hp.roles)
        return roles

    def drill_roles(self, community: bool) -> tuple[str, ...]:
        """Who an Exercise/Test alert reaches: households only in a community-wide drill,
        and only when the policy names community roles (else it is an ordinary drill)."""
        if community and self.drills.community.roles:
            return self.drills.community.roles
        return self.drills.roles

    def channels_used(self) -> set[str]:
        used: set[str] = set(self.unreached.channels) if self.unreached.roles else set()
        if self.silent.roles:
            used.update(self.silent.channels)
        if self.followup.levels:
            used.add(self.followup.channel)
        if self.field_reports.forward_to:
            used.update(self.field_reports.channels)
        entries = [rp for lp in self.levels.values() for rp in lp.roles.values()]
        entries += [rp for hp in self.hazards.values() for rp in hp.roles.values()]
        for rp in entries:
            used.update(rp.channels)
            used.update(s.channel for s in rp.escalation)
        for lp in self.levels.values():
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
