"""Gauge readings → alerts for the villages downstream: raise, upgrade, lift, without flapping.

Each station has a warning level (警戒水位) and a guaranteed level (保证水位), optionally a
rate-of-rise rule, and the villages downstream. The wanted colour for a reading is the
highest threshold it reaches; staying at a colour only needs the level to stay above that
threshold minus the station's hysteresis. A change (up, down, or off) happens only after
``confirm`` consecutive readings want it, so a noisy gauge does not make alerts flap.

* nothing → colour: a new alert (CAP msgType Alert);
* colour → another colour: an Update referencing the episode's last alert (those already
  reached are told what changed);
* colour → nothing: a Cancel referencing it (those reached are told it is lifted).

Readings older than the newest seen for a station are kept but do not drive the state;
a repeated (station, time) is the same reading. State lives in the database, so a restart
continues the episode.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from warngate.alerts import NewAlert
from warngate.settings import HydroStation
from warngate.store import Store
from warngate.store.schema import hydro_readings, hydro_state

if TYPE_CHECKING:
    from warngate.alerts import AlertService

RANK = {None: 0, "blue": 1, "yellow": 2, "orange": 3, "red": 4}
LEVEL_ZH = {"blue": "蓝色", "yellow": "黄色", "orange": "橙色", "red": "红色"}


class Reading(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    station: str = Field(min_length=1, max_length=64)
    at: AwareDatetime
    level_m: float = Field(ge=-1000, le=10000)


class ReadingsBody(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    readings: list[Reading] = Field(min_length=1, max_length=10_000)


@dataclass
class State:
    colour: str | None = None
    pending: str | None = None
    pending_count: int = 0
    last_at: float | None = None
    episode: int = 0
    seq: int = 0
    #: sender,identifier,sent of the episode's last alert (CAP references).
    last_ref: str | None = None


def wanted(station: HydroStation, level: float, rise: float | None, current: str | None
           ) -> str | None:
    """The colour this reading asks for, with hysteresis for staying where we are."""
    def reaches(threshold: float, colour: str) -> bool:
        # Staying at (or above) the current colour only needs threshold − hysteresis.
        slack = station.hysteresis_m if RANK[current] >= RANK[colour] else 0.0
        return level >= threshold - slack

    if reaches(station.guaranteed_level_m, station.guaranteed_colour):
        return station.guaranteed_colour
    if reaches(station.warning_level_m, station.warning_colour):
        return station.warning_colour
    rule = station.rise
    if rule is not None and rise is not None and rise >= rule.metres:
        return rule.colour
    if rule is not None and current == rule.colour and rise is not None and rise > 0:
        return current  # still rising: do not lift a rate-of-rise warning mid-rise
    return None


def step(state: State, want: str | None, confirm: int) -> bool:
    """Debounce: True when ``want`` has been asked for ``confirm`` times in a row."""
    if want == state.colour:
        state.pending, state.pending_count = None, 0
        return False
    if want == state.pending:
        state.pending_count += 1
    else:
        state.pending, state.pending_count = want, 1
    return state.pending_count >= confirm


class Hydrology:
    """Applies readings; one at a time per process (the state is read-modify-write)."""

    def __init__(self, store: Store, alerts: AlertService, stations: tuple[HydroStation, ...],
                 *, confirm: int = 2) -> None:
        self.store = store
        self.alerts = alerts
        self.stations = {s.id: s for s in stations}
        self.confirm = confirm
        self._lock = asyncio.Lock()

    async def apply(self, readings: list[Reading]) -> list[dict[str, Any]]:
        async with self._lock:
            return [await self._one(r) for r in sorted(readings, key=lambda r: r.at)]

    async def _one(self, r: Reading) -> dict[str, Any]:
        out: dict[str, Any] = {"station": r.station, "at": r.at.isoformat()}
        station = self.stations.get(r.station)
        if station is None:
            return {**out, "outcome": "unknown_station"}
        at = r.at.timestamp()
        try:
            async with self.store.write() as conn:
                await conn.execute(insert(hydro_readings).values(
                    station=r.station, at=at, level_m=r.level_m, received_at=time.time()))
        except IntegrityError:
            return {**out, "outcome": "duplicate"}
        state = await self._state(r.station)
        if state.last_at is not None and at < state.last_at:
            return {**out, "outcome": "out_of_order"}
        rise = await self._rise(station, at, r.level_m)
        want = wanted(station, r.level_m, rise, state.colour)
        action = None
        if step(state, want, self.confirm):
            action = await self._transition(station, state, want, r, rise)
        state.last_at = at
        await self._save(r.station, state)
        return {**out, "outcome": action or "recorded", "level": state.colour,
                "pending": state.pending}

    async def _rise(self, station: HydroStation, at: float, level: float) -> float | None:
        if station.rise is None:
            return None
        async with self.store.read() as conn:
            low = (await conn.execute(
                select(hydro_readings.c.level_m)
                .where(hydro_readings.c.station == station.id,
                       hydro_readings.c.at >= at - station.rise.within,
                       hydro_readings.c.at < at)
                .order_by(hydro_readings.c.at).limit(1))).scalar_one_or_none()
        return None if low is None else level - low

    async def _transition(self, station: HydroStation, state: State, want: str | None,
                          r: Reading, rise: float | None) -> str:
        sender = f"hydrology:{station.id}"
        sent = r.at.isoformat()
        if state.colour is None:
            state.episode += 1
            state.seq = 0
            msg_type, action = "Alert", "raised"
        elif want is None:
            msg_type, action = "Cancel", "lifted"
        else:
            msg_type = "Update"
            action = "upgraded" if RANK[want] > RANK[state.colour] else "downgraded"
        state.seq += 1
        identifier = f"{station.id}-{state.episode}-{state.seq}"
        colour = want or state.colour or "blue"
        new = NewAlert(
            source="hydrology", sender=sender, identifier=identifier, sent=sent,
            msg_type=msg_type, references=state.last_ref if msg_type != "Alert" else None,
            level=colour, event="洪水", headline=_headline(station, r.level_m, colour, want,
                                                          rise),
            description=_description(station, r.level_m, r.at),
            instruction=station.instruction, areas=list(station.areas),
            created_by=sender, raw=r.model_dump_json(),
        )
        await self.alerts.accept(new, actor=sender)
        state.colour = want
        state.pending, state.pending_count = None, 0
        state.last_ref = None if want is None else f"{sender},{identifier},{sent}"
        return action

    async def _state(self, station: str) -> State:
        async with self.store.read() as conn:
            row = (await conn.execute(
                select(hydro_state).where(hydro_state.c.station == station))).first()
        if row is None:
            return State()
        return State(colour=row.colour, pending=row.pending, pending_count=row.pending_count,
                     last_at=row.last_at, episode=row.episode, seq=row.seq,
                     last_ref=row.last_ref)

    async def _save(self, station: str, s: State) -> None:
        values = {"colour": s.colour, "pending": s.pending, "pending_count": s.pending_count,
                  "last_at": s.last_at, "episode": s.episode, "seq": s.seq,
                  "last_ref": s.last_ref}
        async with self.store.write() as conn:
            res = await conn.execute(update(hydro_state)
                                     .where(hydro_state.c.station == station).values(**values))
            if res.rowcount == 0:
                await conn.execute(insert(hydro_state).values(station=station, **values))


def _headline(station: HydroStation, level: float, colour: str, want: str | None,
              rise: float | None) -> str:
    if want is None:
        return f"{station.name}水位回落：{level:.2f}米，{station.river}洪水预警解除"
    if want == station.guaranteed_colour and level >= station.guaranteed_level_m - 1e-9:
        what = f"超保证水位（{station.guaranteed_level_m:.2f}米）"
    elif level >= station.warning_level_m - station.hysteresis_m:
        what = f"超警戒水位（{station.warning_level_m:.2f}米）"
    else:
        what = f"快速上涨{rise or 0:.2f}米"
    return (f"{station.name}{station.river}水位{level:.2f}米，{what}，"
            f"发布洪水{LEVEL_ZH.get(colour, colour)}预警")


def _description(station: HydroStation, level: float, at: datetime) -> str:
    return (f"{at.strftime('%m月%d日%H:%M')} {station.name}实测水位{level:.2f}米；"
            f"警戒水位{station.warning_level_m:.2f}米，保证水位{station.guaranteed_level_m:.2f}米。")
