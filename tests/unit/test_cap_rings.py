"""warngate/cap/rings.py gives GEOS's answers (shapely, the oracle) without loading shapely.

Random rings on small integer grids make touching, collinear and repeated points common;
random floats, bow ties, points on a line and tiny rings cover the rest. The answers
compared: the area, the hull's area, "encloses no area", and simple or not with GEOS's
reason. Then every CAP file we have, and generated messages, must carry the same warnings
as the shapely implementation gave.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import shapely
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from shapely.validation import explain_validity

import warngate.cap.parse as cap_parse
from tests.unit.test_cap_leniency import area, cap_doc
from warngate.cap import CapAlert, CapError, parse_cap
from warngate.cap.model import Point
from warngate.cap.rings import NO_AREA, encloses_no_area, hull_area, ring_area, ring_problem

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "cap"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cap"
VALID = "Valid Geometry"

XY = tuple[float, float]


def geos(ring: list[XY]) -> tuple[float, float, str]:
    """shapely's area, convex hull area and validity reason (without the location)."""
    poly = shapely.Polygon(ring)
    return poly.area, poly.convex_hull.area, explain_validity(poly).split("[")[0].strip()


def closed(points: list[XY]) -> list[XY]:
    return points if points[0] == points[-1] else [*points, points[0]]


def assert_as_geos(points: list[XY]) -> None:
    # What _polygon() lets through to the ring check: 3 distinct points or more, closed.
    assume(len(set(points)) >= 3)
    ring = closed(points)
    xs, ys = [float(x) for x, _ in ring], [float(y) for _, y in ring]
    area_, hull, reason = geos(ring)
    assert ring_area(xs, ys) == area_  # the same sum, so the same float
    assert hull_area(xs, ys) == pytest.approx(hull, rel=1e-9, abs=1e-15)
    assert encloses_no_area(xs, ys) == (area_ < NO_AREA and hull < NO_AREA)
    assert (ring_problem(xs, ys) or VALID) == reason


@st.composite
def grid_rings(draw: st.DrawFn, max_points: int = 14) -> list[XY]:
    """Points on a small grid, some repeated in place: touches, spikes and overlaps."""
    size = draw(st.sampled_from([2, 3, 4, 8]))
    coord = st.integers(0, size).map(float)
    points = draw(st.lists(st.tuples(coord, coord), min_size=3, max_size=max_points))
    repeats = draw(st.lists(st.integers(0, len(points) - 1), max_size=3))
    for at in sorted(repeats, reverse=True):
        points.insert(at, points[at])
    return points


@st.composite
def sheared_grid_rings(draw: st.DrawFn) -> list[XY]:
    """Grid rings through an integer shear: still exact, but the chains' extents rarely tie
    (GEOS's index order then rests on the coordinates, not on how its sort breaks ties)."""
    points = draw(grid_rings(max_points=40))
    a, d = draw(st.integers(500, 1500)), draw(st.integers(500, 1500))
    b, c = draw(st.integers(-97, 97)), draw(st.integers(-97, 97))
    return [(a * x + b * y, c * x + d * y) for x, y in points]


lons = st.floats(-180, 180, allow_nan=False)
lats = st.floats(-90, 90, allow_nan=False)


@st.composite
def float_rings(draw: st.DrawFn) -> list[XY]:
    return draw(st.lists(st.tuples(lons, lats), min_size=3, max_size=30))


@st.composite
def bow_ties(draw: st.DrawFn) -> list[XY]:
    """Two lobes that cancel (or nearly) in the shoelace sum; not empty."""
    x, y = draw(lons), draw(lats)
    w, h = draw(st.floats(1e-4, 5)), draw(st.floats(1e-4, 5))
    points = [(x, y), (x + w, y + h), (x + w, y), (x, y + h)]
    start = draw(st.integers(0, 3))
    return points[start:] + points[:start]


@st.composite
def lines(draw: st.DrawFn) -> list[XY]:
    """Points on one line, in any order: no area, and never simple."""
    x, y = draw(st.integers(-100, 100)), draw(st.integers(-50, 50))
    dx, dy = draw(st.integers(-3, 3)), draw(st.integers(-3, 3))
    assume((dx, dy) != (0, 0))
    steps = draw(st.lists(st.integers(0, 6), min_size=3, max_size=8))
    return [(float(x + k * dx), float(y + k * dy)) for k in steps]


@st.composite
def tiny_rings(draw: st.DrawFn) -> list[XY]:
    """Real shapes a ten-millionth of a degree across: below the 1e-12 line."""
    x, y = draw(lons), draw(lats)
    offset = st.floats(0, 1e-7)
    return [(x + dx, y + dy) for dx, dy in
            draw(st.lists(st.tuples(offset, offset), min_size=3, max_size=8))]


EXAMPLES = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.filter_too_much,
                                           HealthCheck.too_slow])


@EXAMPLES
@given(grid_rings())
def test_grid_rings_as_geos(points: list[XY]) -> None:
    assert_as_geos(points)


@EXAMPLES
@given(grid_rings(max_points=300))
def test_long_grid_rings_as_geos(points: list[XY]) -> None:
    # Over ten chains GEOS's index has several levels; over sixteen its sort partitions.
    assert_as_geos(points)


@EXAMPLES
@given(sheared_grid_rings())
def test_sheared_grid_rings_as_geos(points: list[XY]) -> None:
    assert_as_geos(points)


@EXAMPLES
@given(st.one_of(float_rings(), bow_ties(), lines(), tiny_rings()))
def test_float_rings_as_geos(points: list[XY]) -> None:
    assert_as_geos(points)


@pytest.mark.parametrize(("ring", "problem"), [
    ([(0, 0), (4, 0), (4, 4), (0, 4)], None),
    ([(0, 0), (0, 0), (4, 0), (4, 4), (4, 4), (0, 4)], None),  # repeats in place: fine
    ([(0, 0), (4, 4), (4, 0), (0, 4)], "Self-intersection"),  # bow tie
    ([(0, 0), (4, 0), (4, 4), (2, 0), (0, 4)], "Ring Self-intersection"),  # vertex on edge
    ([(0, 0), (4, 0), (2, 2), (4, 4), (0, 4), (2, 2)], "Ring Self-intersection"),  # twice
    # Both kinds: GEOS names the one its index visits last. A spike is always both: it
    # overlaps itself, and its end lies on the segment it came along (Met Éireann's).
    ([(0, 0), (4, 0), (4, 4), (4, 6), (4, 5), (0, 4)], "Ring Self-intersection"),
    ([(1, 1), (0, 2), (2, 2), (0, 0)], "Ring Self-intersection"),
    ([(1, -1), (0, -2), (2, -2), (0, 0)], "Self-intersection"),
])
def test_known_rings(ring: list[XY], problem: str | None) -> None:
    xs, ys = [float(x) for x, _ in closed(ring)], [float(y) for _, y in closed(ring)]
    assert ring_problem(xs, ys) == problem
    assert (problem or VALID) == geos(closed(ring))[2]


def wobbly_circle(n: int) -> list[XY]:
    return [(10 + (1 + 0.05 * math.sin(7 * k)) * math.cos(2 * math.pi * k / n),
             50 + (1 + 0.05 * math.sin(7 * k)) * math.sin(2 * math.pi * k / n))
            for k in range(n)]


def test_a_long_ring_costs_about_its_length() -> None:
    """20,000 points: well under a second; testing every pair of segments (2·10⁸)
    would take minutes. The bound is loose so that a busy machine does not fail it."""
    points = wobbly_circle(20_000)
    ring = closed(points)
    xs, ys = [x for x, _ in ring], [y for _, y in ring]
    began = time.perf_counter()
    assert ring_problem(xs, ys) is None
    assert time.perf_counter() - began < 5.0
    points[100], points[10_100] = points[10_100], points[100]  # two spokes across the ring
    ring = closed(points)
    xs, ys = [x for x, _ in ring], [y for _, y in ring]
    assert ring_problem(xs, ys) == geos(ring)[2] == "Self-intersection"


# -- the parser: the same warnings as with shapely ------------------------------------------

def shapely_check_rings(rings: cap_parse._Rings,
                        warn: Callable[[str, str, str], None]) -> list[tuple[Point, ...]]:
    """The ring check as it was, on shapely: the oracle."""
    empty = []
    for pts, where, _ in rings:
        poly = shapely.Polygon([(lon, lat) for lat, lon in pts])
        if poly.area < 1e-12 and poly.convex_hull.area < 1e-12:
            empty.append(pts)
        elif not poly.is_valid:
            problem = explain_validity(poly).split("[")[0].strip()
            warn("polygon-self-intersecting", where,
                 f"{problem or 'not a simple ring'}; used as repaired")
    for pts, where, _ in rings:
        if any(pts is e for e in empty):
            warn("polygon-degenerate", where, "the points enclose no area; polygon ignored")
    return empty


def outcome(data: bytes) -> tuple[object, ...]:
    try:
        cap = parse_cap(data)
    except CapError as e:
        return ("refused", str(e))
    return ("parsed", cap.warnings, polygons(cap))


def polygons(cap: CapAlert) -> list[tuple[Point, ...]]:
    return [p for info in cap.infos for a in info.areas for p in a.polygons]


def as_with_shapely(data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    got = outcome(data)
    with monkeypatch.context() as m:
        m.setattr(cap_parse, "_check_rings", shapely_check_rings)
        want = outcome(data)
    assert got == want


CAP_FILES = sorted({*SHARED.rglob("*.xml"), *FIXTURES.glob("*.xml")}) if SHARED.is_dir() \
    else sorted(FIXTURES.glob("*.xml"))


@pytest.mark.parametrize("path", CAP_FILES, ids=lambda p: p.name)
def test_every_cap_file_warns_as_with_shapely(path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    as_with_shapely(path.read_bytes(), monkeypatch)


def test_met_eireanns_ring_is_still_flagged() -> None:
    """The one real ring in our files that touches and crosses itself (a spike)."""
    path = SHARED / "valid" / "ie-met-eireann-low-temp-ice.xml"
    if not path.is_file():
        pytest.skip("shared CAP files are not here")
    [w] = parse_cap(path.read_bytes()).warnings
    assert (w.rule, w.element, w.message) == (
        "polygon-self-intersecting", "alert/info[1]/area[1]/polygon[5]",
        "Ring Self-intersection; used as repaired")


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rings=st.lists(grid_rings(max_points=20), min_size=1, max_size=3),
       step=st.sampled_from([0.01, 1e-8]))
def test_generated_messages_warn_as_with_shapely(rings: list[list[XY]], step: float,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Grid points as lat,lon near 30 N 120 E; a 1e-8 step makes rings with no area.
    texts = [" ".join(f"{30 + y * step!r},{120 + x * step!r}" for x, y in ring)
             for ring in rings]
    as_with_shapely(cap_doc(areas=[area(polygons=texts)]), monkeypatch)
