"""Who may do what: the one place authorization is decided.

Every HTTP handler asks :func:`may` (or :func:`require`) before it calls a service. The
table is role × action; two facts of the alert refine it: its areas (a token bound to a
township acts within that township only) and the CAP senders it names (a feed token submits,
and refers to, only the senders it is configured for).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from warngate.alerts import Actor, AlertError

#: In a feed token's ``senders``: every sender (must be said explicitly).
ANY_SENDER = "*"


class Action(StrEnum):
    VIEW = "view"  # the alert list, one alert, its receipts
    COMPOSE = "compose"
    APPROVE = "approve"
    CANCEL = "cancel"
    PUSH_CAP = "push_cap"  # POST /api/v1/cap, including Updates and Cancels by reference
    READINGS = "readings"  # gauge readings
    METRICS = "metrics"
    #: Record that someone was reached in another way (staff's call or visit, a grid worker).
    RECORD_ACK = "record_ack"


_ALL = frozenset({"admin", "duty_officer", "approver", "township", "feed"})

#: Role × action. Township tokens read their township only; acting on alerts is for the
#: county's duty office. Feeds submit machine input and read nothing back.
ROLES: dict[Action, frozenset[str]] = {
    Action.VIEW: _ALL - {"feed"},
    Action.COMPOSE: frozenset({"admin", "duty_officer"}),
    Action.APPROVE: frozenset({"admin", "duty_officer", "approver"}),
    Action.CANCEL: frozenset({"admin", "duty_officer", "approver"}),
    Action.PUSH_CAP: frozenset({"admin", "feed"}),
    Action.READINGS: frozenset({"admin", "feed"}),
    Action.METRICS: _ALL,
    Action.RECORD_ACK: frozenset({"admin", "duty_officer", "township"}),
}

_DENIED_ROLE = {
    Action.VIEW: "this token may not read alerts",
    Action.COMPOSE: "only duty officers compose alerts",
    Action.APPROVE: "this token may not approve alerts",
    Action.CANCEL: "this token may not cancel alerts",
    Action.PUSH_CAP: "this token may not submit CAP messages",
    Action.READINGS: "this token may not submit gauge readings",
    Action.METRICS: "this token may not read metrics",
    Action.RECORD_ACK: "this token may not record acknowledgements for others",
}


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    code: str = ""
    reason: str = ""
    detail: object = None

    def __bool__(self) -> bool:
        return self.allowed


ALLOWED = Decision(True)


def may_use_sender(actor: Actor, sender: str) -> bool:
    """Whether ``actor`` may submit CAP as ``sender`` or name ``sender``'s alerts."""
    if actor.role == "admin":
        return True
    return actor.role == "feed" and (ANY_SENDER in actor.senders or sender in actor.senders)


def may(actor: Actor, action: Action, *, areas: Iterable[str] | None = None,
        senders: Iterable[str] = ()) -> Decision:
    """Whether ``actor`` may do ``action``, on an alert covering ``areas`` (when known) and
    naming ``senders`` (a CAP message's own sender and those of the alerts it references)."""
    if actor.role not in ROLES[action]:
        return Decision(False, "forbidden", _DENIED_ROLE[action])
    if areas is not None and actor.township:
        outside = [a for a in areas if not a.startswith(actor.township)]
        if outside:
            return Decision(False, "outside_township",
                            f"areas outside township {actor.township}", outside)
    for sender in senders:
        if not may_use_sender(actor, sender):
            return Decision(False, "sender_not_allowed",
                            f"sender {sender!r} is not allowed for token {actor.name!r}")
    return ALLOWED


def require(actor: Actor, action: Action, *, areas: Iterable[str] | None = None,
            senders: Iterable[str] = ()) -> None:
    """:func:`may`, or the 403 that says why not."""
    decision = may(actor, action, areas=areas, senders=senders)
    if not decision:
        raise AlertError(403, decision.code, decision.reason, decision.detail)

