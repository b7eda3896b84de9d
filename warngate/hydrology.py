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
continues the episode. A batch is one transaction (see :class:`Hydrology`), so several
gateways may share the database and take readings for the same stations.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.dialects import sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

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
    """Applies batches of readings: each batch is one transaction.

    The stations' state rows are locked first (``SELECT … FOR UPDATE`` in station order on
    PostgreSQL, so two gateways applying batches of the same stations wait for each other
    and never deadlock; SQLite has one writer at a time). The readings go in with one
    statement (a repeated station and time is ignored), each station's new readings are
    folded in time order, and the alerts they decide are accepted inside the same
    transaction: the state that decided an alert commits with the alert or not at all.
    """

    def __init__(self, store: Store, alerts: AlertService, stations: tuple[HydroStation, ...],
                 *, confirm: int = 2) -> None:
        self.store = store
        self.alerts = alerts
        self.stations = {s.id: s for s in stations}
        self.confirm = confirm

    async def apply(self, readings: Sequence[Reading]) -> list[dict[str, Any]]:
        """Apply one batch; one answer per reading, in the order given."""
        results: list[dict[str, Any]] = [
            {"station": r.station, "at": r.at.isoformat()} for r in readings]
        batch: dict[str, list[tuple[float, int, Reading]]] = {}
        seen: set[tuple[str, float]] = set()
        for i, r in enumerate(readings):
            at = r.at.timestamp()
            if r.station not in self.stations:
                results[i]["outcome"] = "unknown_station"
            elif (r.station, at) in seen:
                results[i]["outcome"] = "duplicate"
            else:
                seen.add((r.station, at))
                batch.setdefault(r.station, []).append((at, i, r))
        if not batch:
            return results
        changed = False
        async with self.store.write() as conn:
            states = await _lock_states(conn, sorted(batch))
            new = await self._insert(conn, batch)
            for station_id in sorted(batch):
                station = self.stations[station_id]
                state = states[station_id]
                series = sorted(batch[station_id], key=lambda x: x[0])
                rises = await self._rises(conn, station, state, series)
                for at, i, r in series:
                    if (station_id, at) not in new:
                        results[i]["outcome"] = "duplicate"
                        continue
                    if state.last_at is not None and at < state.last_at:
                        results[i]["outcome"] = "out_of_order"
                        continue
                    rise = rises(at, r.level_m)
                    want = wanted(station, r.level_m, rise, state.colour)
                    action = None
                    if step(state, want, self.confirm):
                        action = await self._transition(conn, station, state, want, r, rise)
                        changed = True
                    state.last_at = at
                    results[i].update(outcome=action or "recorded", level=state.colour,
                                      pending=state.pending)
            await _save_states(conn, {s: states[s] for s in batch})
        if changed:
            self.alerts.wake()
        return results

    async def _insert(self, conn: AsyncConnection,
                      batch: dict[str, list[tuple[float, int, Reading]]]
                      ) -> set[tuple[str, float]]:
        """Insert the readings; returns the (station, time) pairs that were new."""
        now = time.time()
        rows = [{"station": station, "at": at, "level_m": r.level_m, "received_at": now}
                for station, series in batch.items() for at, _, r in series]
        stmt = _insert_new(conn, hydro_readings).returning(hydro_readings.c.station,
                                                           hydro_readings.c.at)
        return {(row.station, row.at) for row in await conn.execute(stmt, rows)}

    async def _rises(self, conn: AsyncConnection, station: HydroStation, state: State,
                     series: list[tuple[float, int, Reading]]
                     ) -> Callable[[float, float], float | None]:
        """For the rate-of-rise rule: the rise of a reading over the earliest reading of the
        station within ``rise.within`` before it (stored ones and this batch's alike)."""
        rule = station.rise
        driving = [at for at, _, _ in series if state.last_at is None or at >= state.last_at]
        if rule is None or not driving:
            return lambda at, level: None
        window = (await conn.execute(
            select(hydro_readings.c.at, hydro_readings.c.level_m)
            .where(hydro_readings.c.station == station.id,
                   hydro_readings.c.at >= driving[0] - rule.within,
                   hydro_readings.c.at < driving[-1])
            .order_by(hydro_readings.c.at))).all()
        times = [row.at for row in window]

        def rise(at: float, level: float) -> float | None:
            first = bisect.bisect_left(times, at - rule.within)
            if first == len(times) or times[first] >= at:
                return None
            return level - float(window[first].level_m)

        return rise

    async def _transition(self, conn: AsyncConnection, station: HydroStation, state: State,
                          want: str | None, r: Reading, rise: float | None) -> str:
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
        # Unique per station, episode and step: the state row that numbers it commits in
        # the same transaction, so a number is never given to two alerts.
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
        await self.alerts.accept(new, actor=sender, within=conn)
        state.colour = want
        state.pending, state.pending_count = None, 0
        state.last_ref = None if want is None else f"{sender},{identifier},{sent}"
        return action


def _insert_new(conn: AsyncConnection, table: Table) -> pg.Insert | sqlite.Insert:
    """INSERT that skips rows whose key is already there (ON CONFLICT DO NOTHING)."""
    insert = pg.insert if conn.dialect.name == "postgresql" else sqlite.insert
    return insert(table).on_conflict_do_nothing()


_STATE_COLUMNS = ("colour", "pending", "pending_count", "last_at", "episode", "seq",
                  "last_ref")


async def _lock_states(conn: AsyncConnection, stations: list[str]) -> dict[str, State]:
    """The state of ``stations`` (sorted), their rows created if new and locked until commit.

    The first statement writes, so on SQLite the transaction holds the write lock before it
    reads anything and no other process can change a state between our read and write.
    """
    await conn.execute(_insert_new(conn, hydro_state), [{"station": s} for s in stations])
    rows = await conn.execute(
        select(hydro_state).where(hydro_state.c.station.in_(stations))
        .order_by(hydro_state.c.station).with_for_update())
    return {row.station: State(**{c: getattr(row, c) for c in _STATE_COLUMNS})
            for row in rows}


async def _save_states(conn: AsyncConnection, states: dict[str, State]) -> None:
    await conn.execute(
        update(hydro_state).where(hydro_state.c.station == bindparam("b_station")),
        [{"b_station": station, **{c: getattr(s, c) for c in _STATE_COLUMNS}}
         for station, s in states.items()])


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
