"""Alerts in: composed by a duty officer, or from CAP; approve, cancel, supersede.

Sources only produce alerts. Accepting one commits the alert (state ``dispatching``) and
its audit entry together; the planner takes it from there. Every refused input is kept in
``rejected_inputs`` with its reason.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from warngate.delivery import REACHED, Event, in_states, move, plan_insert
from warngate.planning import Targets, estimate_recipients, priority_of, resolve_targets
from warngate.policy import LEVELS, Policy
from warngate.store import Store
from warngate.store.schema import LIVE_ALERT_STATES, alerts, audit_log, deliveries, rejected_inputs

REJECTED_BODY_LIMIT = 2 * 1024 * 1024
_LIVE = LIVE_ALERT_STATES


@dataclass(frozen=True, slots=True)
class Actor:
    """Who is acting: a person's token or a feed's."""

    name: str
    role: str
    township: str | None = None
    senders: tuple[str, ...] = ()


class AlertError(Exception):
    """A request about alerts that cannot be done; carries the HTTP answer."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.detail = status, code, message, detail


@dataclass(frozen=True, slots=True)
class Accepted:
    alert_id: int
    state: str
    recipients: dict[str, int] = field(default_factory=dict)
    duplicate: bool = False
    unknown_areas: tuple[str, ...] = ()
    #: Flaws accepted with the message ({rule, element, message}), see NewAlert.warnings.
    warnings: tuple[dict[str, str], ...] = ()

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "alert_id": self.alert_id, "state": self.state, "recipients": self.recipients,
        }
        if self.duplicate:
            out["duplicate"] = True
        if self.unknown_areas:
            out["unknown_areas"] = list(self.unknown_areas)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if not self.recipients and self.state not in ("cancelled", "ignored"):
            out["no_recipients"] = True
        return out


class CancelRequest(BaseModel):
    """Why a duty officer lifts a warning (kept in the audit log)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: str = Field(default="", max_length=500)


class ComposeRequest(BaseModel):
    """What a duty officer fills in."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    level: Literal["blue", "yellow", "orange", "red"]
    event: str = Field(min_length=1, max_length=100)
    headline: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=4000)
    instruction: str = Field(default="", max_length=2000)
    areas: list[str] = Field(min_length=1, max_length=5000)
    expires: datetime | None = None
    status: Literal["Actual", "Exercise", "Test"] = "Actual"
    #: A drill for everyone (全民演练): households take part when the policy allows
    #: (``drills.community``); ignored for Actual alerts.
    community_drill: bool = False

    @field_validator("expires")
    @classmethod
    def _aware_future(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return v
        if v.tzinfo is None:
            raise ValueError("expires needs a timezone, e.g. 2026-07-01T18:00:00+08:00")
        if v.timestamp() <= time.time():
            raise ValueError("expires is in the past")
        return v


@dataclass(frozen=True, slots=True)
class NewAlert:
    source: str
    sender: str
    identifier: str
    sent: str
    level: str
    event: str
    headline: str
    areas: list[str]
    created_by: str
    msg_type: str = "Alert"
    references: str | None = None
    status: str = "Actual"
    description: str = ""
    instruction: str = ""
    onset: float | None = None
    expires: float | None = None
    raw: str | None = None
    #: For CAP: what became of its XML signature (unsigned / verified / unverified).
    signature: str | None = None
    #: Texts in other languages: {lang: {event, headline, description, instruction}}.
    translations: dict[str, dict[str, str]] | None = None
    #: For CAP: the bytes exactly as received (``raw`` is their text, for display).
    raw_bytes: bytes | None = None
    #: An Exercise/Test alert for everyone, households included (policy ``drills.community``).
    community_drill: bool = False
    #: Flaws accepted with the message: [{rule, element, message}] (docs/feeds.md).
    warnings: tuple[dict[str, str], ...] = ()


async def audit(
    conn: AsyncConnection, actor: str, action: str, alert_id: int | None, **detail: Any
) -> None:
    await conn.execute(
        insert(audit_log).values(at=time.time(), actor=actor, action=action, alert_id=alert_id,
                                 detail=detail or None)
    )


async def record_rejection(
    store: Store,
    *,
    entry_point: str,
    source: str | None,
    reason: str,
    body: bytes | None,
    content_type: str | None = None,
) -> int:
    """Keep refused input with its reason; bodies beyond 2 MiB are kept truncated."""
    truncated = body is not None and len(body) > REJECTED_BODY_LIMIT
    async with store.write() as conn:
        res = await conn.execute(
            insert(rejected_inputs)
            .values(
                at=time.time(), entry_point=entry_point, source=source, reason=reason[:4000],
                content_type=content_type,
                body=body[:REJECTED_BODY_LIMIT] if body is not None else None,
                truncated=truncated,
            )
            .returning(rejected_inputs.c.id)
        )
        return int(res.scalar_one())


class AlertService:
    """The operations behind the alert API, the CAP feed and the demo."""

    def __init__(self, store: Store, policy: Policy, *, four_eyes: bool = True,
                 on_accepted: Any = None,
                 plan_first: Callable[[AsyncConnection, int, float], Awaitable[int]]
                 | None = None) -> None:
        self.store = store
        self.policy = policy
        self.four_eyes = four_eyes
        self._on_accepted = on_accepted or (lambda: None)
        # Plans the first recipients inside the accepting transaction (planning.Planner).
        self._plan_first = plan_first

    # -- composing ------------------------------------------------------------------------

    async def compose(self, actor: Actor, req: ComposeRequest) -> Accepted:
        if actor.role not in ("admin", "duty_officer"):
            raise AlertError(403, "forbidden", "only duty officers compose alerts")
        areas = list(dict.fromkeys(req.areas))
        if actor.township:
            outside = [a for a in areas if not a.startswith(actor.township)]
            if outside:
                raise AlertError(403, "outside_township",
                                 f"areas outside township {actor.township}", outside)
        now = time.time()
        async with self.store.write() as conn:
            targets = await resolve_targets(conn, areas)
            if targets.unknown:
                raise AlertError(
                    400, "unknown_region",
                    f"unknown region code(s): {', '.join(targets.unknown)}",
                    list(targets.unknown),
                )
            new = NewAlert(
                source="composer", sender=f"warngate:{actor.name}",
                identifier=str(uuid.uuid4()), sent=_iso(now), level=req.level,
                event=req.event, headline=req.headline, description=req.description,
                instruction=req.instruction, areas=areas, status=req.status,
                community_drill=req.community_drill and req.status != "Actual",
                expires=req.expires.timestamp() if req.expires else None,
                created_by=actor.name, raw=req.model_dump_json(),
            )
            alert_id = await _insert_alert(conn, new, state="pending_approval", now=now)
            await audit(conn, actor.name, "compose", alert_id, level=req.level,
                        headline=req.headline, areas=areas,
                        **({"community_drill": True} if new.community_drill else {}))
            counts = await estimate_recipients(conn, self.policy, req.level, req.status, targets,
                                               event=req.event,
                                               community=new.community_drill)
        return Accepted(alert_id, "pending_approval", counts)

    async def approve(self, actor: Actor, alert_id: int) -> Accepted:
        if actor.role not in ("admin", "approver", "duty_officer"):
            raise AlertError(403, "forbidden", "this token may not approve alerts")
        now = time.time()
        async with self.store.write() as conn:
            row = await _get(conn, alert_id)
            if row.state != "pending_approval":
                raise AlertError(409, "wrong_state",
                                 f"alert {alert_id} is {row.state}, not pending_approval")
            if self.four_eyes and row.created_by == actor.name:
                raise AlertError(403, "four_eyes",
                                 "the composer cannot approve their own alert")
            _check_scope(actor, row.areas)
            await conn.execute(
                update(alerts).where(alerts.c.id == alert_id)
                .values(state="dispatching", approved_by=actor.name, updated_at=now)
            )
            await audit(conn, actor.name, "approve", alert_id)
            if self._plan_first is not None:
                await self._plan_first(conn, alert_id, now)
            targets = await resolve_targets(conn, row.areas)
            counts = await estimate_recipients(conn, self.policy, row.level, row.status,
                                               targets, event=row.event,
                                               community=row.community_drill)
        self._on_accepted()
        return Accepted(alert_id, "dispatching", counts)

    async def cancel(self, actor: Actor, alert_id: int, reason: str = "") -> dict[str, Any]:
        if actor.role not in ("admin", "duty_officer", "approver"):
            raise AlertError(403, "forbidden", "this token may not cancel alerts")
        async with self.store.write() as conn:
            row = await _get(conn, alert_id)
            _check_scope(actor, row.areas)
            if row.state in ("cancelled", "expired", "superseded"):
                raise AlertError(409, "wrong_state", f"alert {alert_id} is already {row.state}")
            stopped, notices = await cancel_in(conn, row, actor.name, time.time())
            await audit(conn, actor.name, "cancel", alert_id, reason=reason,
                        stopped=stopped, notices=notices)
        self._on_accepted()
        return {"alert_id": alert_id, "state": "cancelled", "stopped": stopped,
                "lifted_notices": notices}

    # -- accepting from machines ----------------------------------------------------------

    async def accept(self, new: NewAlert, *, actor: str,
                     within: AsyncConnection | None = None) -> Accepted:
        """Accept an alert from a trusted source (CAP feed, hydrology): no approval step.

        Idempotent: the same (sender, identifier, sent) again returns the first alert.
        Update supersedes, Cancel cancels, the alerts named in ``references``.
        ``within``: the caller's open write transaction, which the alert joins (hydrology
        commits the state that decided an alert with the alert); the caller then commits
        and calls :meth:`wake`.
        The answer carries the flaws accepted with the message (``new.warnings``).
        """
        accepted = await self._accept(new, actor=actor, within=within)
        return dataclasses.replace(accepted, warnings=new.warnings) if new.warnings \
            else accepted

    async def _accept(self, new: NewAlert, *, actor: str,
                      within: AsyncConnection | None) -> Accepted:
        now = time.time()
        try:
            async with self._transaction(within) as conn:
                existing = await _find(conn, new.sender, new.identifier, new.sent)
                if existing is not None:
                    return Accepted(existing.id, existing.state, duplicate=True)
                targets = await resolve_targets(conn, new.areas)
                referenced = await _referenced(conn, new.references)
                if new.msg_type == "Cancel":
                    alert_id = await _insert_alert(conn, new, state="cancelled", now=now)
                    for old in referenced:
                        if old.state in _LIVE or old.state == "pending_approval":
                            await cancel_in(conn, old, actor, now)
                    await audit(conn, actor, "cancel", alert_id,
                                references=[r.id for r in referenced], signature=new.signature)
                    return Accepted(alert_id, "cancelled", {},
                                    unknown_areas=targets.unknown)
                if new.expires is not None and new.expires <= now:
                    # Kept for the record, never sent: a stale warning misleads.
                    alert_id = await _insert_alert(conn, new, state="expired", now=now)
                    # An Update that ends a warning (expires <= sent) still replaces what it
                    # names: pending sends stop and those reached are told it is lifted.
                    ended = [old for old in referenced if old.state in _LIVE]
                    for old in ended:
                        await supersede_in(conn, old, alert_id, Targets(), now)
                    await audit(conn, actor, "ingest", alert_id, expired_on_arrival=True,
                                superseded=[r.id for r in ended], signature=new.signature)
                    return Accepted(alert_id, "expired", {}, unknown_areas=targets.unknown)
                if new.status not in ("Actual", "Exercise", "Test"):
                    alert_id = await _insert_alert(conn, new, state="ignored", now=now)
                    await audit(conn, actor, "ingest", alert_id, status=new.status)
                    return Accepted(alert_id, "ignored")
                alert_id = await _insert_alert(conn, new, state="dispatching", now=now)
                for old in referenced:
                    if old.state in _LIVE:
                        await supersede_in(conn, old, alert_id, targets, now)
                await audit(conn, actor, "ingest", alert_id, msg_type=new.msg_type,
                            superseded=[r.id for r in referenced], signature=new.signature)
                if self._plan_first is not None:
                    await self._plan_first(conn, alert_id, now)
                counts = await estimate_recipients(conn, self.policy, new.level, new.status,
                                                   targets, event=new.event,
                                                   community=new.community_drill)
        except IntegrityError:
            if within is not None:
                raise  # the caller's transaction is spoilt; it decides what to do
            async with self.store.read() as conn:
                existing = await _find(conn, new.sender, new.identifier, new.sent)
            if existing is None:
                raise
            return Accepted(existing.id, existing.state, duplicate=True)
        if within is None:
            self._on_accepted()
        return Accepted(alert_id, "dispatching", counts, unknown_areas=targets.unknown)

    def wake(self) -> None:
        """Start planning what was accepted ``within`` a transaction, once it committed."""
        self._on_accepted()

    def _transaction(self, within: AsyncConnection | None
                     ) -> contextlib.AbstractAsyncContextManager[AsyncConnection]:
        return self.store.write() if within is None else contextlib.nullcontext(within)


def _check_scope(actor: Actor, areas: list[str]) -> None:
    if actor.township and any(not a.startswith(actor.township) for a in areas):
        raise AlertError(403, "outside_township", f"alert is not within {actor.township}")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


async def _insert_alert(conn: AsyncConnection, new: NewAlert, *, state: str, now: float) -> int:
    if new.level not in LEVELS:
        raise AlertError(400, "bad_level", f"level must be one of {list(LEVELS)}")
    res = await conn.execute(
        insert(alerts)
        .values(
            source=new.source, sender=new.sender, identifier=new.identifier, sent=new.sent,
            msg_type=new.msg_type, references=new.references, status=new.status,
            level=new.level, event=new.event, headline=new.headline,
            description=new.description, instruction=new.instruction, areas=new.areas,
            onset=new.onset, expires=new.expires, raw=new.raw, state=state,
            translations=new.translations, raw_bytes=new.raw_bytes,
            community_drill=new.community_drill,
            warnings=list(new.warnings) or None,
            created_by=new.created_by, created_at=now, updated_at=now,
            plan_stage=0 if state in ("pending_approval", "dispatching") else 2,
        )
        .returning(alerts.c.id)
    )
    return int(res.scalar_one())


async def _get(conn: AsyncConnection, alert_id: int) -> Any:
    row = (await conn.execute(select(alerts).where(alerts.c.id == alert_id))).one_or_none()
    if row is None:
        raise AlertError(404, "not_found", f"no alert {alert_id}")
    return row


async def _find(conn: AsyncConnection, sender: str, identifier: str, sent: str) -> Any:
    return (
        await conn.execute(
            select(alerts.c.id, alerts.c.state).where(
                alerts.c.sender == sender, alerts.c.identifier == identifier,
                alerts.c.sent == sent,
            )
        )
    ).one_or_none()


async def _referenced(conn: AsyncConnection, references: str | None) -> list[Any]:
    """Alerts named by CAP ``references`` (``sender,identifier,sent`` triples)."""
    if not references:
        return []
    found = []
    for triple in references.split():
        parts = triple.split(",")
        if len(parts) != 3:
            continue
        sender, identifier, sent = parts
        row = (
            await conn.execute(
                select(alerts).where(alerts.c.sender == sender,
                                     alerts.c.identifier == identifier)
                .order_by(alerts.c.id.desc())
            )
        ).first()
        if row is not None and (row.sent == sent or _same_instant(row.sent, sent)):
            found.append(row)
    return found


def _same_instant(a: str, b: str) -> bool:
    try:
        return datetime.fromisoformat(a) == datetime.fromisoformat(b)
    except ValueError:
        return False


async def cancel_in(conn: AsyncConnection, row: Any, actor: str, now: float) -> tuple[int, int]:
    """Stop what is pending; tell everyone already reached that the warning is lifted.

    Returns (deliveries stopped, lifted notices planned).
    """
    await conn.execute(
        update(alerts).where(alerts.c.id == row.id)
        .values(state="cancelled", cancelled_by=actor, plan_stage=2, updated_at=now)
    )
    stopped = await _stop_pending(conn, row.id, Event.CANCEL)
    return stopped, await _lifted_notices(conn, row, now)


async def supersede_in(conn: AsyncConnection, old: Any, new_id: int, targets: Targets,
                       now: float) -> None:
    """An Update replaces ``old``: its pending deliveries stop; the update reaches everyone in
    its area, and those ``old`` reached outside that area are told it is lifted for them."""
    await conn.execute(
        update(alerts).where(alerts.c.id == old.id)
        .values(state="superseded", plan_stage=2, updated_at=now)
    )
    await conn.execute(
        update(alerts).where(alerts.c.id == new_id).values(supersedes_id=old.id)
    )
    await _stop_pending(conn, old.id, Event.SUPERSEDE)
    await _lifted_notices(conn, old, now, still_covered=targets)


async def _lifted_notices(conn: AsyncConnection, row: Any, now: float, *,
                          still_covered: Targets | None = None) -> int:
    """Plan a "lifted" message to everyone ``row`` reached, except where ``still_covered``."""
    reached = [deliveries.c.alert_id == row.id, deliveries.c.kind != "cancel",
               in_states(REACHED)]
    people_where = [*reached, deliveries.c.contact_id.is_not(None)]
    speaker_where = [*reached, deliveries.c.speaker_id.is_not(None)]
    if still_covered is not None:
        people_where.append(~still_covered.covers(deliveries))
        # A speaker serves its village: a grid still warned keeps its village's speaker.
        villages = set(still_covered.villages) | {g[:12] for g in still_covered.grids}
        speaker_where.append(~or_(deliveries.c.township_code.in_(still_covered.townships),
                                  deliveries.c.village_code.in_(sorted(villages))))
    common = {"alert_id": row.id, "kind": "cancel", "due_at": now, "created_at": now,
              "township_code": func.min(deliveries.c.township_code),
              "village_code": func.min(deliveries.c.village_code)}
    a = await conn.execute(plan_insert(
        {**common, "contact_id": deliveries.c.contact_id,
         "role": func.min(deliveries.c.role), "channel": func.min(deliveries.c.channel),
         "priority": priority_of(row.level, "township_duty"),
         "grid_code": func.min(deliveries.c.grid_code)},
        lambda sel: sel.where(*people_where).group_by(deliveries.c.contact_id)))
    b = await conn.execute(plan_insert(
        {**common, "speaker_id": deliveries.c.speaker_id, "role": "speaker",
         "channel": "speaker", "priority": 0},
        lambda sel: sel.where(*speaker_where).group_by(deliveries.c.speaker_id)))
    return max(a.rowcount, 0) + max(b.rowcount, 0)


async def _stop_pending(conn: AsyncConnection, alert_id: int, event: Event) -> int:
    """What of the alert is not sent yet stops (``event``: cancel or supersede), and none
    of it escalates or repeats any more; returns how many deliveries were stopped."""
    stopped = await conn.execute(
        move(event, deliveries.c.alert_id == alert_id, escalate_at=None))
    await conn.execute(
        update(deliveries)
        .where(deliveries.c.alert_id == alert_id, deliveries.c.escalate_at.is_not(None))
        .values(escalate_at=None)
    )
    return max(stopped.rowcount, 0)
