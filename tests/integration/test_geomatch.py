"""CAP polygons and circles select the villages (and grids) they cover."""

from __future__ import annotations

import json

from sqlalchemy import update

from tests.smallcounty import write_small_county
from warngate.cap import parse_cap
from warngate.geomatch import regions_in_area
from warngate.sources import cap_to_alert_with_geometry
from warngate.store import Store
from warngate.store.schema import regions

# Villages of township 339901001 on a line west → east, 0.1° apart, at latitude 29.
V1, V2, V3 = "339901001001", "339901001002", "339901001003"


async def place(store: Store) -> None:
    await write_small_county(store, townships=1)
    async with store.write() as conn:
        for i, code in enumerate((V1, V2, V3)):
            await conn.execute(update(regions).where(regions.c.code == code)
                               .values(lat=29.0, lon=119.0 + 0.1 * i))
        # One grid of V3 has its own polygon, well east of its village's centroid.
        square = {"type": "Polygon", "coordinates": [[[119.5, 28.9], [119.6, 28.9],
                                                       [119.6, 29.1], [119.5, 29.1],
                                                       [119.5, 28.9]]]}
        await conn.execute(update(regions).where(regions.c.code == V3 + "001")
                           .values(polygon=json.dumps(square)))


async def test_polygon_circle_and_region_polygons(store: Store) -> None:
    await place(store)
    box = [(28.95, 118.95), (28.95, 119.15), (29.05, 119.15), (29.05, 118.95), (28.95, 118.95)]
    async with store.read() as conn:
        assert await regions_in_area(conn, [box], []) == [V1, V2]
        # 5 km around V3's centroid (0.1° of longitude is ~9.7 km here).
        assert await regions_in_area(conn, [], [((29.0, 119.2), 5.0)]) == [V3]
        # A polygon far east touches only the grid with its own shape.
        east = [(28.95, 119.55), (28.95, 119.7), (29.05, 119.7), (29.05, 119.55),
                (28.95, 119.55)]
        assert await regions_in_area(conn, [east], []) == [V3 + "001"]
        assert await regions_in_area(conn, [], []) == []


async def test_cap_polygon_becomes_areas(store: Store) -> None:
    await place(store)
    xml = """<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>GEO-1</identifier><sender>met@example.gov.cn</sender>
  <sent>2026-11-25T08:00:00+08:00</sent><status>Actual</status><msgType>Alert</msgType>
  <scope>Public</scope>
  <info><category>Met</category><event>大风</event><urgency>Expected</urgency>
    <severity>Moderate</severity><certainty>Likely</certainty>
    <area><areaDesc>西部</areaDesc>
      <polygon>28.95,118.95 28.95,119.05 29.05,119.05 29.05,118.95 28.95,118.95</polygon>
      <circle>29.0,119.2 3</circle>
    </area>
  </info>
</alert>""".encode()
    new = await cap_to_alert_with_geometry(store, parse_cap(xml), actor="t")
    assert new.areas == [V1, V3]
    assert new.level == "yellow"
