"""Gauge readings through the HTTP API raise, upgrade and lift alerts for the villages
downstream, without flapping; duplicates and out-of-order readings change nothing."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError

from tests.integration.test_api import Api, api_settings
from tests.integration.test_pipeline import policy
from tests.smallcounty import write_small_county
from warngate.alerts import AlertService
from warngate.hydrology import Hydrology, Reading
from warngate.settings import HydrologySettings, HydroStation, RiseRule
from warngate.store import Store
from warngate.store.schema import alerts, deliveries, hydro_readings, hydro_state, rejected_inputs
from warngate.web.app import build_app

VILLAGES = ("339901001001", "339901001002")
START = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[Api]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'hydro.db'}"
    store = await Store.open(url)
    try:
        await write_small_county(store)
    finally:
        await store.close()
    settings = api_settings(url).model_copy(update={"hydrology": HydrologySettings(
        confirm=2, stations=(HydroStation(
            id="qx-01", name="清溪水文站", river="清溪", warning_level_m=12.0,
            guaranteed_level_m=13.5, hysteresis_m=0.2, areas=VILLAGES),))})
    app = build_app(settings, policy(step1_after=600, step2_after=1200))
    async with TestClient(TestServer(app)) as client:
        yield Api(client, url)


async def post(api: Api, *levels: float, start: int = 0) -> list[dict[str, Any]]:
    readings = [{"station": "qx-01", "level_m": lv,
                 "at": (START + timedelta(minutes=5 * (start + i))).isoformat()}
                for i, lv in enumerate(levels)]
    status, body = await api.call("POST", "/api/v1/hydrology/readings", who="feed",
                                  json={"readings": readings})
    assert status == 200, body
    return list(body["results"])


async def alert_rows(api: Api) -> list[Any]:
    store = await Store.open(api.store_url)
    try:
        async with store.read() as conn:
            return list((await conn.execute(select(
                alerts.c.id, alerts.c.msg_type, alerts.c.level, alerts.c.state,
                alerts.c.headline, alerts.c.areas).order_by(alerts.c.id))).all())
    finally:
        await store.close()


async def test_raise_upgrade_lift_without_flapping(api: Api) -> None:
    # Noise around the warning level: never two in a row above it → nothing raised.
    out = await post(api, 11.9, 12.05, 11.95, 12.02, 11.97)
    assert {r["outcome"] for r in out} == {"recorded"}
    assert await alert_rows(api) == []

    out = await post(api, 12.1, 12.2, start=5)
    assert [r["outcome"] for r in out] == ["recorded", "raised"]
    [first] = await alert_rows(api)
    assert (first.msg_type, first.level) == ("Alert", "orange")
    assert first.state in ("dispatching", "active")
    assert "超警戒水位" in first.headline and first.areas == list(VILLAGES)

    out = await post(api, 13.6, 13.7, start=7)
    assert out[-1]["outcome"] == "upgraded"
    rows = await alert_rows(api)
    assert [(r.msg_type, r.level) for r in rows] == [("Alert", "orange"), ("Update", "red")]
    assert rows[0].state == "superseded"

    # Falling, but within the hysteresis of the warning level: still an alert (orange).
    out = await post(api, 13.2, 13.1, 11.9, 11.85, start=9)
    assert [r["outcome"] for r in out] == ["recorded", "downgraded", "recorded", "recorded"]
    out = await post(api, 11.7, 11.6, start=13)
    assert out[-1]["outcome"] == "lifted"
    rows = await alert_rows(api)
    assert [r.msg_type for r in rows] == ["Alert", "Update", "Update", "Cancel"]
    assert rows[2].state == "cancelled"

    # Only the villages downstream were planned.
    store = await Store.open(api.store_url)
    try:
        async with asyncio.timeout(30):
            while True:
                async with store.read() as conn:
                    villages = set((await conn.execute(
                        select(deliveries.c.village_code).distinct()
                        .where(deliveries.c.village_code.is_not(None)))).scalars())
                if villages:
                    break
                await asyncio.sleep(0.05)
    finally:
        await store.close()
    assert villages <= set(VILLAGES)


async def test_duplicates_out_of_order_and_unknown(api: Api) -> None:
    await post(api, 12.5, 12.6)
    dup = await post(api, 12.6, start=1)
    assert dup[0]["outcome"] == "duplicate"
    late = await post(api, 14.0, start=-3)  # an old reading arriving late
    assert late[0]["outcome"] == "out_of_order"
    assert [r.level for r in await alert_rows(api)] == ["orange"]

    status, body = await api.call("POST", "/api/v1/hydrology/readings", who="feed", json={
        "readings": [{"station": "nowhere", "at": START.isoformat(), "level_m": 1.0}]})
    assert status == 200 and body["results"][0]["outcome"] == "unknown_station"
    status, body = await api.call("POST", "/api/v1/hydrology/readings", who="feed", json={
        "readings": [{"station": "qx-01", "at": "yesterday", "level_m": "high"}]})
    assert status == 400
    assert {d["field"] for d in body["error"]["detail"]} == {"readings.0.at",
                                                             "readings.0.level_m"}
    status, _ = await api.call("POST", "/api/v1/hydrology/readings", who="town1",
                               json={"readings": []})
    assert status == 403
    store = await Store.open(api.store_url)
    try:
        async with store.read() as conn:
            reasons = list((await conn.execute(select(rejected_inputs.c.reason))).scalars())
    finally:
        await store.close()
    assert any("nowhere" in r for r in reasons) and any("invalid readings" in r
                                                        for r in reasons)


# -- batches on the store, both backends ----------------------------------------------------

#: One episode up to red and back, then a short second one: raised (orange), upgraded (red),
#: downgraded (orange), lifted, raised, lifted — with confirm=2.
EPISODES = (11.0, 12.1, 12.2, 13.6, 13.7, 13.2, 13.1, 11.9, 11.7, 11.6, 12.3, 12.4, 11.0, 11.0)
TRANSITIONS = [("1-1", "Alert", "orange"), ("1-2", "Update", "red"),
               ("1-3", "Update", "orange"), ("1-4", "Cancel", "orange"),
               ("2-1", "Alert", "orange"), ("2-2", "Cancel", "orange")]


def station(id_: str, *, rise: bool = False) -> HydroStation:
    return HydroStation(id=id_, name="清溪水文站", river="清溪", warning_level_m=12.0,
                        guaranteed_level_m=13.5, hysteresis_m=0.2, areas=VILLAGES,
                        rise=RiseRule(metres=0.5, within=1800) if rise else None)


def readings(station_id: str, levels: Sequence[float], start: int = 0) -> list[Reading]:
    return [Reading(station=station_id, at=START + timedelta(minutes=5 * (start + i)),
                    level_m=lv) for i, lv in enumerate(levels)]


def hydrology(store: Store, stations: Sequence[HydroStation]) -> Hydrology:
    return Hydrology(store, AlertService(store, policy()), tuple(stations), confirm=2)


async def sent_alerts(store: Store) -> list[Any]:
    async with store.read() as conn:
        return list((await conn.execute(select(
            alerts.c.sender, alerts.c.identifier, alerts.c.msg_type, alerts.c.level,
            alerts.c.state, alerts.c.headline).order_by(alerts.c.id))).all())


async def test_concurrent_batches_never_double_raise_nor_lose_a_transition(
        store: Store) -> None:
    """Two gateways (two Hydrology instances on one database) receive the same readings at
    the same moment — a gauge posting to both, or a retry crossing the first attempt — in
    batches ordered differently; every transition happens exactly once."""
    ids = [f"s{n}" for n in range(4)]
    stations = [station(i) for i in ids]
    first, second = hydrology(store, stations), hydrology(store, stations)
    chunk = 3
    for start in range(0, len(EPISODES), chunk):
        batch = [r for i in ids for r in readings(i, EPISODES[start:start + chunk], start)]
        await asyncio.gather(first.apply(batch), second.apply(batch[::-1]))
    rows = await sent_alerts(store)
    for i in ids:
        mine = [(r.identifier, r.msg_type, r.level) for r in rows
                if r.sender == f"hydrology:{i}"]
        assert mine == [(f"{i}-{n}", t, lv) for n, t, lv in TRANSITIONS], i
    async with store.read() as conn:
        states = (await conn.execute(select(hydro_state).order_by(hydro_state.c.station))).all()
    assert [(s.station, s.colour, s.episode, s.seq) for s in states] == [
        (i, None, 2, 2) for i in ids]


async def test_concurrent_batches_of_different_readings_stay_consistent(
        store: Store) -> None:
    """Readings of the same stations split between two gateways at random (some to both):
    whatever order the batches commit in, each station's alerts form one unbroken chain —
    no identifier twice, no episode raised twice, every Update and Cancel referencing the
    alert before it — and the stored state is where that chain ends."""
    rng = random.Random(13)
    ids = [f"s{n}" for n in range(3)]
    stations = [station(i) for i in ids]
    first, second = hydrology(store, stations), hydrology(store, stations)
    levels = [*EPISODES, *EPISODES, 11.0, 11.0, 11.0]
    for start in range(0, len(levels), 4):
        chunk = [r for i in ids for r in readings(i, levels[start:start + 4], start)]
        split = [rng.choice((0, 1, 2)) for _ in chunk]
        await asyncio.gather(
            first.apply([r for r, to in zip(chunk, split, strict=True) if to != 1]),
            second.apply([r for r, to in zip(chunk, split, strict=True) if to != 0]))
    async with store.read() as conn:
        rows = (await conn.execute(select(alerts).order_by(alerts.c.id))).all()
        states = {s.station: s for s in (await conn.execute(select(hydro_state))).all()}
    for i in ids:
        chain = [r for r in rows if r.sender == f"hydrology:{i}"]
        assert chain, i
        numbers = [tuple(int(n) for n in r.identifier.split("-")[1:]) for r in chain]
        assert len(set(numbers)) == len(numbers), numbers
        previous: Any = None
        for r, (episode, seq) in zip(chain, numbers, strict=True):
            if seq == 1:
                assert r.msg_type == "Alert" and r.references is None
                assert previous is None or previous.msg_type == "Cancel"
                assert episode == (1 if previous is None else int(
                    previous.identifier.split("-")[1]) + 1)
            else:
                assert previous is not None and r.msg_type in ("Update", "Cancel")
                assert r.identifier == f"{i}-{episode}-{seq}"
                assert previous.identifier == f"{i}-{episode}-{seq - 1}"
                assert previous.msg_type != "Cancel"
                assert r.references == f"{previous.sender},{previous.identifier},{previous.sent}"
            previous = r
        state = states[i]
        assert (state.episode, state.seq) == numbers[-1]
        assert chain[-1].msg_type == "Cancel" and state.colour is None  # ends low


async def test_one_batch_folds_like_readings_one_at_a_time(store: Store) -> None:
    """Random walks around the thresholds, with a rate-of-rise rule, repeated and late
    readings: one batch (shuffled) gives the outcomes and alerts of one reading per call."""
    rng = random.Random(9)
    levels: list[float] = []
    level = 11.5
    for _ in range(120):
        level = min(max(level + rng.uniform(-0.45, 0.5), 10.5), 14.5)
        levels.append(round(level, 2))
    one, batch = station("one", rise=True), station("batch", rise=True)
    h = hydrology(store, [one, batch])
    alone = [(await h.apply([r]))[0] for r in readings("one", levels)]
    posted = readings("batch", levels)
    posted += [posted[7], posted[30]]  # repeated inside the batch
    rng.shuffle(posted)
    together = await h.apply(posted)

    def outcome(r: dict[str, Any]) -> tuple[Any, ...]:
        return r["at"], r["outcome"], r.get("level"), r.get("pending")

    by_at = {}
    for r in together:  # in input order: the second of a repeated pair is the duplicate
        by_at.setdefault(r["at"], r)
    assert [outcome(by_at[r["at"]]) for r in alone] == [outcome(r) for r in alone]
    assert sorted(r["outcome"] for r in together
                  if list(by_at.values()).count(r) == 0) == ["duplicate", "duplicate"]
    rows = await sent_alerts(store)
    assert len(rows) > 4  # the walk crosses the thresholds several times
    assert [(r.identifier.split("-", 1)[1], r.msg_type, r.level, r.headline)
            for r in rows if r.sender == "hydrology:one"] == [
        (r.identifier.split("-", 1)[1], r.msg_type, r.level, r.headline)
        for r in rows if r.sender == "hydrology:batch"]
    late = await h.apply(readings("batch", [14.0], start=-3))
    assert late[0]["outcome"] == "out_of_order"


async def test_ten_thousand_readings_in_one_call(store: Store) -> None:
    """A gauge network catching up after an outage: 10 stations × 1,000 readings."""
    def level(i: int) -> float:
        if 400 <= i < 500 or 520 <= i < 600:
            return 12.5
        return 13.8 if 500 <= i < 520 else 11.0

    ids = [f"g{n}" for n in range(10)]
    batch = [r for i in ids for r in readings(i, [level(n) for n in range(1000)])]
    assert len(batch) == 10_000
    results = await hydrology(store, [station(i) for i in ids]).apply(batch)
    outcomes = Counter(r["outcome"] for r in results)
    assert outcomes == {"recorded": 9960, "raised": 10, "upgraded": 10, "downgraded": 10,
                        "lifted": 10}
    async with store.read() as conn:
        kept = (await conn.execute(select(func.count()).select_from(hydro_readings))).scalar()
    assert kept == 10_000 and len(await sent_alerts(store)) == 40


async def test_a_failed_batch_leaves_nothing_half_done(store: Store) -> None:
    """The state that decided an alert commits with the alert: when the batch fails after
    the alert was accepted, neither stays, and the retry raises it exactly once."""
    h = hydrology(store, [station("ok"), station("boom")])
    async with store.write() as conn:
        await conn.execute(insert(hydro_state).values(station="boom"))
        if store.is_postgres:
            await conn.execute(text(
                "CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS "
                "$$ BEGIN RAISE EXCEPTION 'disk full'; END $$"))
            await conn.execute(text(
                "CREATE TRIGGER boom BEFORE UPDATE ON hydro_state FOR EACH ROW "
                "WHEN (NEW.station = 'boom') EXECUTE FUNCTION boom()"))
        else:
            await conn.execute(text(
                "CREATE TRIGGER boom BEFORE UPDATE ON hydro_state "
                "WHEN NEW.station = 'boom' BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
    batch = readings("ok", [12.5, 12.6]) + readings("boom", [11.0, 11.1])
    with pytest.raises(DBAPIError, match="disk full"):
        await h.apply(batch)
    assert await sent_alerts(store) == []
    async with store.write() as conn:
        assert (await conn.execute(select(func.count()).select_from(hydro_readings))
                ).scalar() == 0
        await conn.execute(text("DROP TRIGGER boom" + (" ON hydro_state"
                                                       if store.is_postgres else "")))
    assert [r["outcome"] for r in await h.apply(batch)] == ["recorded", "raised",
                                                            "recorded", "recorded"]
    assert [(r.identifier, r.msg_type) for r in await sent_alerts(store)] == [
        ("ok-1-1", "Alert")]
