"""What the gateway tests share: issuing a warning as the duty officer, and polling the store
until a condition holds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tests.smallcounty import COUNTY
from warngate.alerts import Actor, ComposeRequest
from warngate.service import Gateway
from warngate.store import Store

ADMIN = Actor("admin", "admin")
TOWNSHIP = f"{COUNTY}001"


async def rows(store: Store, query: Any) -> list[Any]:
    async with store.read() as conn:
        return list((await conn.execute(query)).all())


async def wait_until(store: Store, query: Any, check: Callable[[list[Any]], bool],
                     within: float = 30.0) -> list[Any]:
    """Poll ``query`` until ``check`` holds (a ceiling for a hung test, not a timing claim)."""
    async with asyncio.timeout(within):
        while True:
            found = await rows(store, query)
            if check(found):
                return found
            await asyncio.sleep(0.05)


@dataclass
class GatewayRun:
    gw: Gateway

    @property
    def store(self) -> Store:
        return self.gw.store

    async def warn(self, level: str = "red", areas: Sequence[str] = (TOWNSHIP,)) -> int:
        """Compose and approve a rainstorm warning for ``areas``; its alert id."""
        accepted = await self.gw.alerts.compose(ADMIN, ComposeRequest(
            level=level, event="暴雨", headline="夏溪县气象台发布暴雨红色预警",  # type: ignore[arg-type]
            description="预计未来3小时内将出现50毫米以上降水。", instruction="请立即转移。",
            areas=list(areas)))
        await self.gw.alerts.approve(ADMIN, accepted.alert_id)
        return accepted.alert_id

    async def rows(self, query: Any) -> list[Any]:
        return await rows(self.store, query)

    async def until(self, query: Any, check: Callable[[list[Any]], bool],
                    within: float = 30.0) -> list[Any]:
        return await wait_until(self.store, query, check, within)
