"""The one owner of delivery states: every state, every way a delivery may move, and the
statements that move it.

A delivery is one (alert, recipient, channel, step). Its state only moves along
``TRANSITIONS``; each statement that moves deliveries is built here from that table, so the
``WHERE state IN (...)`` of every move *is* the table, and nothing else in the code writes
``deliveries.state`` except the inserts that create rows in ``PLANNED`` (``plan_insert``).

Statements take typed bound parameters (``bindparam(..., type_=...)``), never text one
backend types differently from the other: PostgreSQL types an untyped parameter inside a
``CASE`` as text, and a statement that fails there fails for every batch that contains it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    Boolean,
    ColumnElement,
    Float,
    FromClause,
    Integer,
    Select,
    String,
    Text,
    Update,
    bindparam,
    case,
    literal,
    literal_column,
    select,
    update,
)
from sqlalchemy.sql.dml import Insert

from warngate.store.schema import deliveries


class DeliveryState(StrEnum):
    PLANNED = "planned"  # waiting for its lane
    RETRY = "retry"  # a transient failure; due again at ``due_at``
    SENDING = "sending"  # claimed by a lane under a lease
    SENT = "sent"  # the provider took it
    DELIVERED = "delivered"  # the provider (or speaker) confirmed delivery
    ACKNOWLEDGED = "acknowledged"  # the person (or speaker's "played") confirmed
    FAILED = "failed"  # will never arrive this way
    CANCELLED = "cancelled"  # its alert was cancelled before it was sent
    SUPERSEDED = "superseded"  # an Update replaced its alert before it was sent
    EXPIRED = "expired"  # its alert expired before it was sent


S = DeliveryState

#: Not settled yet: a lane, a lease or a retry will still move it.
PENDING = frozenset({S.PLANNED, S.RETRY, S.SENDING})
#: Not sent yet: what a cancel, supersede or expiry stops.
UNSENT = frozenset({S.PLANNED, S.RETRY})
#: Reached the provider or beyond (a "lifted" notice goes to these).
REACHED = frozenset({S.SENDING, S.SENT, S.DELIVERED, S.ACKNOWLEDGED})
#: Someone may still answer it (an SMS reply resolves to the newest of these).
ANSWERABLE = frozenset({S.SENDING, S.SENT, S.DELIVERED})
#: The kinds of delivery that carry the warning itself (``deliveries.kind``). The others are
#: about it: a lifted notice (cancel), the duty officers' alarms (nobody, silent), a grid
#: worker's follow-up list, a forwarded field report. Boards, people lists and replies count
#: only these.
WARNING_KINDS = ("alert", "update")
#: Nothing will move it any more (a receipt may still turn FAILED into DELIVERED, and a
#: person may still answer a DELIVERED or FAILED one).
FINAL = frozenset({S.SENT, S.DELIVERED, S.ACKNOWLEDGED, S.FAILED, S.CANCELLED,
                   S.SUPERSEDED, S.EXPIRED})


class Event(StrEnum):
    """Everything that moves a delivery; ``TRANSITIONS`` says from where to where."""

    CLAIMED = "claimed"  # a lane took it under a lease
    SENT = "sent"  # the adapter handed it to the provider
    SENT_DELIVERED = "sent_delivered"  # ...which confirmed at once (a speaker's ack)
    SEND_RETRY = "send_retry"  # transient failure: again later
    SEND_FAILED = "send_failed"  # permanent failure, or attempts exhausted
    DROPPED = "dropped"  # claimed, but its alert is no longer live: not sent
    RELEASED = "released"  # claimed, never handed to the provider: the lane stopped
    REQUEUED = "requeued"  # a retry came due
    LEASE_EXPIRED = "lease_expired"  # the process that claimed it died
    RECEIPT_SENT = "receipt_sent"
    RECEIPT_DELIVERED = "receipt_delivered"
    RECEIPT_FAILED = "receipt_failed"  # undelivered, no answer, busy...
    ACK = "ack"  # the person answered
    CANCEL = "cancel"
    SUPERSEDE = "supersede"
    EXPIRE = "expire"


@dataclass(frozen=True, slots=True)
class Transition:
    sources: frozenset[DeliveryState]
    target: DeliveryState


TRANSITIONS: Mapping[Event, Transition] = {
    Event.CLAIMED: Transition(frozenset({S.PLANNED}), S.SENDING),
    Event.SENT: Transition(frozenset({S.SENDING}), S.SENT),
    Event.SENT_DELIVERED: Transition(frozenset({S.SENDING}), S.DELIVERED),
    Event.SEND_RETRY: Transition(frozenset({S.SENDING}), S.RETRY),
    Event.SEND_FAILED: Transition(frozenset({S.SENDING}), S.FAILED),
    Event.DROPPED: Transition(frozenset({S.SENDING}), S.CANCELLED),
    Event.RELEASED: Transition(frozenset({S.SENDING}), S.PLANNED),
    Event.REQUEUED: Transition(frozenset({S.RETRY}), S.PLANNED),
    Event.LEASE_EXPIRED: Transition(frozenset({S.SENDING}), S.PLANNED),
    # A receipt may overtake our own record of the send (callbacks are fast): it moves the
    # row on from wherever the send left it, but never back.
    Event.RECEIPT_SENT: Transition(frozenset({S.PLANNED, S.RETRY, S.SENDING}), S.SENT),
    Event.RECEIPT_DELIVERED: Transition(
        frozenset({S.PLANNED, S.RETRY, S.SENDING, S.SENT, S.FAILED}), S.DELIVERED),
    Event.RECEIPT_FAILED: Transition(
        frozenset({S.PLANNED, S.RETRY, S.SENDING, S.SENT}), S.FAILED),
    # A person may answer whatever reached them, even what the provider called failed;
    # nobody answers a warning that was stopped before it went out.
    Event.ACK: Transition(
        frozenset({S.PLANNED, S.RETRY, S.SENDING, S.SENT, S.DELIVERED, S.FAILED}),
        S.ACKNOWLEDGED),
    Event.CANCEL: Transition(UNSENT, S.CANCELLED),
    Event.SUPERSEDE: Transition(UNSENT, S.SUPERSEDED),
    Event.EXPIRE: Transition(UNSENT, S.EXPIRED),
}


def allowed(state: DeliveryState, event: Event) -> bool:
    return state in TRANSITIONS[event].sources


def in_states(states: frozenset[DeliveryState]) -> ColumnElement[bool]:
    """``state IN (...)`` written as literals, in a fixed order.

    Literals, not parameters: SQLite only uses a partial index (``WHERE state = 'planned'``)
    whose condition it can match against the statement's text.
    """
    names = sorted(s.value for s in states)
    if len(names) == 1:
        return deliveries.c.state == literal_column(f"'{names[0]}'")
    return deliveries.c.state.in_([literal_column(f"'{n}'") for n in names])


def state_is(state: DeliveryState) -> ColumnElement[bool]:
    return in_states(frozenset({state}))


def move(event: Event, *conditions: ColumnElement[bool], **values: Any) -> Update:
    """``UPDATE deliveries SET state = <target>, **values WHERE <conditions> AND state IN
    <sources>``: the one way a statement moves deliveries."""
    t = TRANSITIONS[event]
    return (
        update(deliveries)
        .where(*conditions, in_states(t.sources))
        .values(state=t.target.value, **values)
    )


def move_selected(event: Event, ids: Select[Any], **values: Any) -> Update:
    """``move`` for the rows ``ids`` selects (a claim: ``FOR UPDATE SKIP LOCKED``, a limit,
    an order): the table's ``WHERE state IN <sources>`` goes inside that selection.

    Not repeated outside it: on PostgreSQL a second state condition on the UPDATE itself
    turned the planner to re-running the locking subquery for every planned row (a claim
    of 100,000 planned rows took 16 s instead of milliseconds). The rows ``ids`` locked
    cannot change state before the UPDATE, so the condition inside is enough.
    """
    t = TRANSITIONS[event]
    return (
        update(deliveries)
        .where(deliveries.c.id.in_(ids.where(in_states(t.sources)).scalar_subquery()))
        .values(state=t.target.value, **values)
    )


def record(event: Event, *conditions: ColumnElement[bool], **values: Any) -> Update:
    """Write ``values`` on every matching row, and move the state only where ``event`` is
    allowed: a fact (the provider's reference, when it was sent) is kept even on a row a
    receipt has already moved further on."""
    t = TRANSITIONS[event]
    return (
        update(deliveries)
        .where(*conditions)
        .values(state=case((in_states(t.sources), literal(t.target.value, String())),
                           else_=deliveries.c.state),
                **values)
    )


class Batch:
    """A statement of this module run for many rows at once, as the hot paths need.

    Compiled once per dialect (typed: PostgreSQL's text carries ``$n::TYPE`` casts) and run
    with plain tuples through the driver: SQLAlchemy's per-row parameter handling cost a
    third of the lanes' throughput. Parameters a row does not give take the statement's own
    values (the target state).
    """

    def __init__(self, statement: Any) -> None:
        self.statement = statement
        self._compiled: dict[str, tuple[str, tuple[str, ...], dict[str, Any]]] = {}

    async def run(self, conn: Any, rows: Sequence[Mapping[str, Any]]) -> None:
        if not rows:
            return
        dialect = conn.dialect
        found = self._compiled.get(dialect.name)
        if found is None:
            compiled = self.statement.compile(dialect=dialect)
            names = tuple(compiled.positiontup or ())
            found = self._compiled[dialect.name] = (str(compiled), names, dict(compiled.params))
        sql, names, defaults = found
        # The rows of one call are built alike: what the first gives, all give. A tuple per
        # row by itemgetter (C) rather than a generator cost a fifth of the receipts writer.
        get: Callable[[Mapping[str, Any]], tuple[Any, ...]] = (
            itemgetter(*names) if len(names) > 1 else lambda r: tuple(r[n] for n in names))
        if all(n in rows[0] for n in names):
            params = list(map(get, rows))
        else:
            params = [get({**defaults, **row}) for row in rows]
        await conn.exec_driver_sql(sql, params)


# -- typed parameters ------------------------------------------------------------------------

def p_id(name: str = "b_id") -> Any:
    return bindparam(name, type_=deliveries.c.id.type)


def p_float(name: str) -> Any:
    return bindparam(name, type_=Float())


def p_text(name: str) -> Any:
    return bindparam(name, type_=Text())


def p_str(name: str) -> Any:
    return bindparam(name, type_=String())


def p_bool(name: str) -> Any:
    return bindparam(name, type_=Boolean())


def p_int(name: str) -> Any:
    return bindparam(name, type_=Integer())


def escalate_now_if_waiting(now_param: str = "b_now") -> ColumnElement[Any]:
    """A person who must answer and cannot be reached takes the next step now, not at the
    deadline; a row with no step pending keeps none."""
    return case(
        (deliveries.c.escalate_at.is_not(None), p_float(now_param)),
        else_=literal(None, Float()),
    )


def clean_text(value: str | None, limit: int | None = None) -> str | None:
    """Provider text as the store can keep it: PostgreSQL's text cannot hold NUL, and one
    such character must not fail the batch it arrives in."""
    if value is None:
        return None
    value = value.replace("\x00", "\N{REPLACEMENT CHARACTER}")
    return value[:limit] if limit is not None else value


# -- creating rows ---------------------------------------------------------------------------

#: What a new row is unless the caller says otherwise.
_NEW_ROW: Mapping[str, Any] = {
    "kind": "alert",
    "step": 0,
    "state": S.PLANNED.value,
    "village_rank": 0,
    "ack_required": False,
}


def delivery_rows(values: Mapping[str, Any]) -> Select[Any]:
    """New delivery rows as a ``SELECT`` of columns named like those of ``deliveries``.

    ``values`` maps column names to SQL expressions (columns of the tables the caller adds
    to FROM) or plain Python values, which become literals of the column's own type
    (PostgreSQL types an untyped parameter in a ``CASE`` or ``UNION`` as text). Every row
    starts ``PLANNED``.
    """
    merged = {**_NEW_ROW, **values}
    if merged["state"] != S.PLANNED.value:
        raise ValueError("new deliveries start planned")
    return select(*(
        (v if isinstance(v, ColumnElement) else literal(v, deliveries.c[k].type)).label(k)
        for k, v in merged.items()
    ))


def insert_rows(rows: FromClause, *where: ColumnElement[bool]) -> Insert:
    """``INSERT INTO deliveries ... SELECT`` the columns of ``rows`` that deliveries has."""
    names = [c.name for c in rows.c if c.name in deliveries.c]
    return deliveries.insert().from_select(
        names, select(*(rows.c[n] for n in names)).where(*where))


def plan_insert(values: Mapping[str, Any], shape: Callable[[Select[Any]], Select[Any]]
                ) -> Insert:
    """``INSERT INTO deliveries (...) SELECT ...``: the one builder of delivery rows from
    other tables (planning, escalation, fallbacks, lifted notices). ``shape`` adds the
    FROM, WHERE and GROUP BY to ``delivery_rows(values)``."""
    rows = shape(delivery_rows(values))
    names = [c.name for c in rows.selected_columns]
    return deliveries.insert().from_select(names, rows)


def new_row(**values: Any) -> dict[str, Any]:
    """One delivery row as a dict for ``insert(deliveries)`` (few rows, built in Python)."""
    row = {**_NEW_ROW, **values}
    if row["state"] != S.PLANNED.value:
        raise ValueError("new deliveries start planned")
    return row
