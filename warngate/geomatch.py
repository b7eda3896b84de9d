"""CAP polygons and circles → the regions they cover (shapely, not hand-written geometry).

A village (or grid) is covered when its own polygon intersects the alert's area, or, for a
region registered with a centroid only, when the centroid lies inside. A covered village
stands for its grids; grids are matched on their own only where their village is not.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

from shapely import Point, Polygon, prepared, unary_union
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from warngate.store.schema import regions

LatLon = tuple[float, float]
_EARTH_KM = 6371.0088


def _circle(centre: LatLon, radius_km: float) -> BaseGeometry:
    """A circle on the ground as a lon/lat polygon (64 points, fine at county scale)."""
    lat, lon = centre
    dlat = math.degrees(radius_km / _EARTH_KM)
    dlon = dlat / max(math.cos(math.radians(lat)), 1e-6)
    return Polygon([(lon + dlon * math.cos(a), lat + dlat * math.sin(a))
                    for a in (2 * math.pi * i / 64 for i in range(64))])


def area_geometry(polygons: Sequence[Sequence[LatLon]],
                  circles: Sequence[tuple[LatLon, float]]) -> BaseGeometry | None:
    shapes: list[BaseGeometry] = []
    for poly in polygons:
        if len(poly) >= 4:
            p = Polygon([(lon, lat) for lat, lon in poly])
            shapes.append(p if p.is_valid else p.buffer(0))
    shapes += [_circle(c, r) for c, r in circles if r > 0]
    shapes += [Point(c[1], c[0]).buffer(1e-4) for c, r in circles if r <= 0]
    return unary_union(shapes) if shapes else None


async def regions_in_area(conn: AsyncConnection, polygons: Sequence[Sequence[LatLon]],
                          circles: Sequence[tuple[LatLon, float]]) -> list[str]:
    """Codes of the villages (and lone grids) the area covers, in code order."""
    area = area_geometry(polygons, circles)
    if area is None or area.is_empty:
        return []
    fast = prepared.prep(area)
    minx, miny, maxx, maxy = area.bounds
    rows = (await conn.execute(
        select(regions.c.code, regions.c.level, regions.c.village_code, regions.c.lat,
               regions.c.lon, regions.c.polygon)
        .where(regions.c.level.in_(("village", "grid")))
        .order_by(regions.c.code))).all()
    villages: list[str] = []
    grids: list[tuple[str, str | None]] = []
    for r in rows:
        hit = False
        if r.polygon:
            try:
                hit = fast.intersects(shape(json.loads(r.polygon)))
            except (ValueError, TypeError, KeyError):
                hit = False
        elif r.lat is not None and r.lon is not None:
            hit = (minx <= r.lon <= maxx and miny <= r.lat <= maxy
                   and fast.contains(Point(r.lon, r.lat)))
        if hit:
            if r.level == "village":
                villages.append(r.code)
            else:
                grids.append((r.code, r.village_code))
    covered = set(villages)
    return villages + [g for g, v in grids if v not in covered]
