"""Acknowledgement links: what the link in an SMS shows, and acknowledging through it.

A link names one delivery (``acktoken``). Opening it only shows the warning; the person
acknowledges by pressing the button, which posts back. Link previewers and scanners in
messaging apps fetch every link they see (GET and HEAD), so reading a link must never count
as the person having seen the warning. A warning that no longer stands (cancelled, expired,
replaced) is shown as such and acknowledges nothing: "确认收到" for a lifted warning would tell
the duty officer someone is acting on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, Protocol

from sqlalchemy import select

from warngate.acktoken import verify_token
from warngate.store import Store
from warngate.store.schema import alerts, deliveries


class LinkState(StrEnum):
    """What a link's page says, and whether its button may acknowledge."""

    OPEN = "open"  # the warning stands and the person has not answered yet
    ACKNOWLEDGED = "acknowledged"  # answered before (by link, reply, keypad or a supervisor)
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    SUPERSEDED = "superseded"


#: Alert states in which the warning no longer stands, as the page names them.
_ENDED = {"cancelled": LinkState.CANCELLED, "expired": LinkState.EXPIRED,
          "superseded": LinkState.SUPERSEDED}


class Acknowledger(Protocol):
    """The part of the receipt writer a link needs."""

    def acknowledge(self, *, delivery_id: int | None = None, via: str) -> None: ...

    async def flush(self) -> None: ...


@dataclass(frozen=True, slots=True)
class AckLink:
    """One link as its page shows it."""

    delivery_id: int
    alert_id: int
    level: str
    event: str
    headline: str
    instruction: str
    state: LinkState
    #: Set by ``confirm`` when the button was pressed but the store has not taken the
    #: acknowledgement yet (the writer keeps it and retries): the page must not claim it.
    pending: bool = False


class AckLinks:
    """Looks links up and acknowledges through them; the web layer only renders."""

    def __init__(self, store: Store, receipts: Acknowledger, key: bytes, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._receipts = receipts
        self._key = key
        self._clock = clock

    async def look_up(self, token: str) -> AckLink | None:
        """The link's delivery and what its page should say; None for a token not ours."""
        delivery_id = verify_token(self._key, token)
        if delivery_id is None or not 0 < delivery_id < 2**63:
            return None
        async with self._store.read() as conn:
            row = (await conn.execute(
                select(deliveries.c.id, deliveries.c.kind, deliveries.c.state.label("d_state"),
                       deliveries.c.acked_at, deliveries.c.acked_how,
                       deliveries.c.on_behalf_of, alerts.c.id.label("alert_id"), alerts.c.level,
                       alerts.c.event, alerts.c.headline, alerts.c.instruction,
                       alerts.c.state.label("a_state"), alerts.c.expires)
                .join(alerts, alerts.c.id == deliveries.c.alert_id)
                .where(deliveries.c.id == delivery_id)
            )).one_or_none()
        if row is None:
            return None
        return AckLink(delivery_id=row.id, alert_id=row.alert_id, level=row.level,
                       event=row.event, headline=row.headline, instruction=row.instruction,
                       state=self._state(row))

    async def confirm(self, token: str) -> AckLink | None:
        """The person pressed "确认收到": acknowledge if the warning still stands.

        Returns the link as it stands afterwards (None for a token not ours).
        """
        link = await self.look_up(token)
        if link is None or link.state is not LinkState.OPEN:
            return link
        self._receipts.acknowledge(delivery_id=link.delivery_id, via="link")
        await self._receipts.flush()
        # Read back rather than assume: the page says "已确认收到" only once it is stored.
        after = await self.look_up(token)
        if after is None or after.state is LinkState.OPEN:
            return replace(link, pending=True)
        return after

    def _state(self, row: Any) -> LinkState:
        if row.a_state in _ENDED:
            return _ENDED[row.a_state]
        if row.expires is not None and row.expires <= self._clock():
            return LinkState.EXPIRED  # the expiry sweep has not run yet; the time has passed
        if row.kind == "cancel":
            return LinkState.CANCELLED  # a "lifted" notice carries no link; nothing to confirm
        # Someone who answered for the person (staff, their grid worker) does not answer for
        # them here: the person's own confirmation is still taken, and counted as theirs.
        covered = row.acked_how == "covered" and row.on_behalf_of is None
        if (row.acked_at is not None or row.d_state == "acknowledged") and not covered:
            return LinkState.ACKNOWLEDGED
        return LinkState.OPEN
