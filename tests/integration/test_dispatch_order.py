"""The order messages leave in: the higher level first, responsible people before households,
and households interleaved across villages so the first seconds reach every village."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import select

from tests.gateway_run import rows as fetch
from tests.smallcounty import write_small_county
from warngate.adapter import Outbound, SendResult
from warngate.alerts import AlertService, NewAlert
from warngate.dispatch import Lane
from warngate.planning import Planner
from warngate.policy import Policy
from warngate.receipts import ReceiptWriter
from warngate.settings import AdapterSettings, DispatchSettings
from warngate.sim import SimSmsAdapter
from warngate.store import Store
from warngate.store.schema import alerts, deliveries
from warngate.waiting import cancel_and_wait

T1 = "339901001"
ROLES = {"village_head": {"channels": ["sms"]}, "grid_worker": {"channels": ["sms"]},
         "household": {"channels": ["sms"]}}
POLICY = Policy.model_validate({"levels": {
    level: {"roles": ROLES} for level in ("blue", "yellow", "orange", "red")}})


class InOrder(SimSmsAdapter):
    """The simulated provider, noting the order deliveries reach it."""

    def __init__(self, settings: AdapterSettings) -> None:
        super().__init__(settings)
        self.order: list[int] = []

    async def _send(self, message: Outbound) -> SendResult:
        self.order.append(message.delivery_id)
        return await super()._send(message)


def warning(level: str) -> NewAlert:
    return NewAlert(source="test", sender="test", identifier=uuid.uuid4().hex, sent="now",
                    level=level, event="暴雨", headline=f"暴雨{level}预警", areas=[T1],
                    created_by="test")


async def test_level_then_responsible_people_then_households_across_villages(
        store: Store) -> None:
    await write_small_county(store, townships=1, villages=4, grids=2, households=5)
    service = AlertService(store, POLICY)
    planner = Planner(store, POLICY)
    # The orange warning is planned first; the red one must still go out first.
    for level in ("orange", "red"):
        accepted = await service.accept(warning(level), actor="test")
        await planner.plan_alert(accepted.alert_id)
    rows = (select(deliveries.c.id, deliveries.c.role, deliveries.c.village_code, alerts.c.level)
            .join(alerts, alerts.c.id == deliveries.c.alert_id))
    planned = {r.id: r for r in await fetch(store, rows)}

    # One message at a time, claimed five at a time: the order is the database's order.
    settings = AdapterSettings(name="sms", type="sim-sms", channel="sms", concurrency=1,
                               rate_per_second=1e6)
    sms = InOrder(settings)
    await sms.start(ReceiptWriter(store))
    lane = Lane(store, sms, settings, DispatchSettings(batch_size=5, idle_poll=0.02),
                ack_url=lambda d: f"https://gw.test/ack/{d}")
    task = asyncio.create_task(lane.run())
    try:
        async with asyncio.timeout(30):
            while len(sms.order) < len(planned):  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    finally:
        await cancel_and_wait([task])
        await sms.stop()

    sent = [planned[i] for i in sms.order]
    assert sorted(sms.order) == sorted(planned)  # each exactly once
    levels = [r.level for r in sent]
    assert levels == ["red"] * levels.count("red") + ["orange"] * levels.count("orange")
    for level in ("red", "orange"):
        roles = [r.role for r in sent if r.level == level]
        first_household = roles.index("household")
        assert "household" not in roles[:first_household]
        assert set(roles[first_household:]) == {"household"}  # nobody responsible after
        # The first four households sent are in the four villages, one each.
        villages = [r.village_code for r in sent if r.level == level and r.role == "household"]
        assert len(set(villages[:4])) == 4
