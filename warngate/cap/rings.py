"""Is a CAP polygon's ring usable: does it enclose an area, and is it simple?

Pure Python, so that reading a CAP message never loads shapely and numpy (a tenth of a
second, most of ``warngate cap validate``'s cost on one file). The answers are GEOS's (the
geometry engine under shapely, which matching still uses: warngate/geomatch.py), rule for
rule, so a ring warned about or dropped here is the one shapely would have flagged:

* the area is GEOS's shoelace sum, term for term, so the 1e-12 line falls where it did;
* simplicity is GEOS's ``IsValidOp`` for a polygon without holes: repeated consecutive
  points are dropped first, then any two segments that cross, or overlap along a line, make
  a "Self-intersection", and two segments that are not neighbours in the ring and meet in
  one point (a vertex on another segment, a vertex visited twice) a "Ring
  Self-intersection". Orientation signs are exact (a float filter, then integers), as
  GEOS's double-double ones practically are;
* a ring with faults of both kinds gets the name GEOS gives it, which depends on the order
  its spatial index visits the ring's pieces in: for a faulty ring that walk is retraced
  (at the end).

Points are (x, y) given as two sequences; a ring is closed (its first point is its last).
"""

from __future__ import annotations

import math
import operator
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from functools import reduce
from itertools import compress, repeat

SELF_INTERSECTION = "Self-intersection"
RING_SELF_INTERSECTION = "Ring Self-intersection"
TOO_FEW_POINTS = "Too few points in geometry component"

#: Square degrees: about a hundredth of a square metre, i.e. the points are on a line.
NO_AREA = 1e-12

# Shewchuk's bound on the rounding error of the float orientation determinant ((3 + 16ε)ε):
# a determinant larger than this has the sign of the exact one.
_ERR = 3.3306690738754716e-16
# Products that underflow escape that bound: anything this small is settled exactly too.
_TINY = 1e-290

_APART, _TOUCH, _CROSS = 0, 1, 2
_NAMES = {_TOUCH: RING_SELF_INTERSECTION, _CROSS: SELF_INTERSECTION}


def ring_area(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The area a closed ring encloses (unsigned), summed as GEOS's ``Area::ofRing`` does;
    lobes of opposite orientation (a bow tie) cancel."""
    n = len(xs)
    if n < 3:
        return 0.0
    x0 = xs[0]
    # reduce, not sum(): the same left-to-right float additions as GEOS's loop.
    total = reduce(operator.add, map(operator.mul, [x - x0 for x in xs[1:-1]],
                                     map(operator.sub, ys[:-2], ys[2:])), 0.0)
    return abs(total / 2.0)


def hull_area(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The area of the points' convex hull (Andrew's monotone chain); 0 on a line."""
    pts = sorted(set(zip(xs, ys, strict=True)))
    if len(pts) < 3:
        return 0.0
    hull = _half_hull(pts)[:-1] + _half_hull(pts[::-1])[:-1]
    if len(hull) < 3:
        return 0.0
    hull.append(hull[0])
    return ring_area([p[0] for p in hull], [p[1] for p in hull])


def _half_hull(pts: list[tuple[float, float]]) -> list[tuple[float, float]]:
    out: list[tuple[float, float]] = []
    for p in pts:
        # Collinear points are dropped too: a hull of points on a line has no corners.
        while len(out) >= 2 and _orient(*out[-2], *out[-1], *p) <= 0:
            out.pop()
        out.append(p)
    return out


def encloses_no_area(xs: Sequence[float], ys: Sequence[float]) -> bool:
    """The points are (within 1e-12 square degrees) on a line.

    A bow tie's lobes cancel in its area, so only a hull without area settles it (costlier,
    so only then)."""
    return ring_area(xs, ys) < NO_AREA and hull_area(xs, ys) < NO_AREA


def ring_problem(xs: Sequence[float], ys: Sequence[float]) -> str | None:
    """None if the closed ring is simple, else GEOS's reason (``explain_validity``'s text
    without the location)."""
    px, py = _without_repeats(xs, ys)
    if len(px) < 4:
        return TOO_FEW_POINTS
    faults = _faults(px, py)
    if faults is not None:
        kinds = set(faults.values())
        if len(kinds) < 2:
            return _NAMES[kinds.pop()] if kinds else None
    # Both kinds (or too many faults to have looked at all): which one GEOS names depends
    # on the order its index visits the ring's pieces in, so that walk is retraced (below).
    return _NAMES[_last_fault_geos(px, py, faults)]


#: More faults than this and a ring is a scribble: finding them all could take O(n²), so
#: GEOS's walk, which stops at the first, decides alone.
_MANY = 64


def _faults(px: list[float], py: list[float]) -> dict[tuple[int, int], int] | None:
    """The pairs of segments (a < b) that meet where they should not, and how; None if
    there are more than _MANY."""
    n = len(px) - 1  # segments; segment k runs from point k to point k + 1
    dx = list(map(operator.sub, px[1:], px[:-1]))
    dy = list(map(operator.sub, py[1:], py[:-1]))
    faults = _spikes(px, py, dx, dy)
    # A sweep compares each segment with those whose extent along the sweep overlaps its
    # own: as many as a line across the sweep meets the outline at, a few for a real ring,
    # so the sweep costs about O(n log n), not the O(n²) of testing every pair. That number
    # is, on average, the segments' total length along the axis over the ring's; it is
    # taken along the axis where it is smaller (a comb's teeth cross one axis many times,
    # the other once). Simplicity does not change when the axes are swapped.
    wide, high = max(px) - min(px), max(py) - min(py)
    along_y = wide == 0 or (high > 0 and sum(map(abs, dy)) * wide < sum(map(abs, dx)) * high)
    sx, sy = (py, px) if along_y else (px, py)
    lo = list(map(min, sx[:-1], sx[1:]))
    hi = list(map(max, sx[:-1], sx[1:]))
    ylo = list(map(min, sy[:-1], sy[1:]))
    yhi = list(map(max, sy[:-1], sy[1:]))
    order = sorted(range(n), key=lo.__getitem__)
    starts = [lo[k] for k in order]
    # Where each segment's run of others starting within its extent ends, all at once.
    ends = map(bisect_right, repeat(starts), [hi[k] for k in order], range(1, n + 1))
    last = n - 1
    for at, (i, end) in enumerate(zip(order, ends, strict=True)):
        if end == at + 1:
            continue
        bottom, top = ylo[i], yhi[i]
        for j in order[at + 1:end]:
            if ylo[j] > top or yhi[j] < bottom:
                continue
            d = i - j
            if d == 1 or d == -1 or d == last or d == -last:
                continue  # neighbours: _spikes() has seen to them
            kind = _meet(px[i], py[i], px[i + 1], py[i + 1], px[j], py[j], px[j + 1], py[j + 1])
            if kind:
                faults[(i, j) if i < j else (j, i)] = kind
                if len(faults) > _MANY:
                    return None
    return faults


def _without_repeats(xs: Sequence[float], ys: Sequence[float]
                     ) -> tuple[list[float], list[float]]:
    """GEOS drops consecutive repeated points before it looks for intersections."""
    keep = [k for k in range(1, len(xs)) if xs[k] != xs[k - 1] or ys[k] != ys[k - 1]]
    if len(keep) == len(xs) - 1:
        return list(xs), list(ys)
    return [xs[0], *(xs[k] for k in keep)], [ys[0], *(ys[k] for k in keep)]


def _spikes(px: list[float], py: list[float], dx: list[float], dy: list[float]
            ) -> dict[tuple[int, int], int]:
    """Where the ring turns straight back (a spike of no width): neighbouring segments meet
    at their shared point, and beyond it only there. As _faults() gives them; ``dx`` and
    ``dy`` are the segments' steps."""
    # Turning back makes the dot product of the two directions negative (or 0 if it
    # underflows): only those corners are looked at closely.
    dots = map(operator.add, map(operator.mul, dx, dx[1:] + dx[:1]),
               map(operator.mul, dy, dy[1:] + dy[:1]))
    n = len(dx)
    found = {}
    for k in compress(range(n), map(operator.le, dots, repeat(0.0))):
        if k + 1 < n:
            if _spike(px, py, k, k + 1, k + 2):
                found[k, k + 1] = _CROSS
        elif _spike(px, py, k, 0, 1):  # the last segment, then the first
            found[0, k] = _CROSS
    return found


def _spike(xs: list[float], ys: list[float], a: int, b: int, c: int) -> int:
    """How neighbouring segments a→b, b→c meet beyond their shared point: along a line
    (_CROSS) when c turns back on the line through a and b (a spike of no width)."""
    dx1, dy1 = xs[b] - xs[a], ys[b] - ys[a]
    dx2, dy2 = xs[c] - xs[b], ys[c] - ys[b]
    # Cheap first: a turn back on a line has a negative dot product (positive only through
    # rounding near a right angle, where the points are not on a line anyway).
    if dx1 * dx2 + dy1 * dy2 > 0:
        return _APART
    if _orient(xs[a], ys[a], xs[b], ys[b], xs[c], ys[c]) != 0:
        return _APART
    # On one line: it turns back if it reverses along an axis it moves on. A float
    # difference has the sign of the exact one, so this is exact.
    if dx1 != 0:
        return _CROSS if (dx1 < 0) != (dx2 < 0) else _APART
    return _CROSS if (dy1 < 0) != (dy2 < 0) else _APART


def _meet(p1x: float, p1y: float, p2x: float, p2y: float,
          q1x: float, q1y: float, q2x: float, q2y: float) -> int:
    """How segments p and q (extents overlapping) meet: GEOS's ``LineIntersector``.

    _CROSS for a crossing inside both or an overlap along a line, _TOUCH for one point that
    is an end of either, _APART for none."""
    pq1 = _orient(p1x, p1y, p2x, p2y, q1x, q1y)
    pq2 = _orient(p1x, p1y, p2x, p2y, q2x, q2y)
    if pq1 * pq2 > 0:
        return _APART
    qp1 = _orient(q1x, q1y, q2x, q2y, p1x, p1y)
    qp2 = _orient(q1x, q1y, q2x, q2y, p2x, p2y)
    if qp1 * qp2 > 0:
        return _APART
    if pq1 == pq2 == qp1 == qp2 == 0:
        return _collinear(p1x, p1y, p2x, p2y, q1x, q1y, q2x, q2y)
    if pq1 == 0 or pq2 == 0 or qp1 == 0 or qp2 == 0:
        return _TOUCH
    return _CROSS


def _collinear(p1x: float, p1y: float, p2x: float, p2y: float,
               q1x: float, q1y: float, q2x: float, q2y: float) -> int:
    """Segments on one line: one shared end and nothing more is a touch, more a crossing."""
    def inside(ax: float, ay: float, bx: float, by: float, x: float, y: float) -> bool:
        return min(ax, bx) <= x <= max(ax, bx) and min(ay, by) <= y <= max(ay, by)

    q1in = inside(p1x, p1y, p2x, p2y, q1x, q1y)
    q2in = inside(p1x, p1y, p2x, p2y, q2x, q2y)
    p1in = inside(q1x, q1y, q2x, q2y, p1x, p1y)
    p2in = inside(q1x, q1y, q2x, q2y, p2x, p2y)
    if (q1in and q2in) or (p1in and p2in):
        return _CROSS
    for q_in, p_in, same, other_q, other_p in (
            (q1in, p1in, (q1x, q1y) == (p1x, p1y), q2in, p2in),
            (q1in, p2in, (q1x, q1y) == (p2x, p2y), q2in, p1in),
            (q2in, p1in, (q2x, q2y) == (p1x, p1y), q1in, p2in),
            (q2in, p2in, (q2x, q2y) == (p2x, p2y), q1in, p1in)):
        if q_in and p_in:
            return _TOUCH if same and not other_q and not other_p else _CROSS
    return _APART


def _orient(ax: float, ay: float, bx: float, by: float, cx: float, cy: float) -> int:
    """Which side of the line a→b point c is on (1 left, -1 right, 0 on it), exactly."""
    left = (ax - cx) * (by - cy)
    right = (ay - cy) * (bx - cx)
    det = left - right
    bound = _ERR * (abs(left) + abs(right)) + _TINY
    if det > bound:
        return 1
    if det < -bound:
        return -1
    if (ax == cx and ay == cy) or (bx == cx and by == cy):
        return 0  # c is an end: common where a ring touches itself
    # Too close to call in floats: in integers. Every float is an integer over a power of
    # two, so over the largest of the six powers all six are integers.
    ratios = [v.as_integer_ratio() for v in (ax, ay, bx, by, cx, cy)]
    scale = max(den for _, den in ratios)
    iax, iay, ibx, iby, icx, icy = (num * (scale // den) for num, den in ratios)
    exact = (iax - icx) * (iby - icy) - (iay - icy) * (ibx - icx)
    return (exact > 0) - (exact < 0)


# GEOS's walk, for a ring with faults of both kinds. ``IsValidOp`` cuts the ring into
# monotone chains (runs of segments heading into one quadrant), puts their extents in an
# STR tree, and visits the pairs of chains whose extents meet: for each leaf in the tree's
# order, the later leaves in depth-first order; within a pair of chains, segment pairs in
# the order of ``MonotoneChain::computeOverlaps``, the last fault met replacing earlier
# ones. The tree's order comes from ``std::sort``, which leaves equal keys in no particular
# order: libstdc++'s (GEOS as shapely's Linux wheels build it) is retraced step for step.

_NODE_CAPACITY = 10  # TemplateSTRtree's default, as MCIndexNoder uses it

_Env = tuple[float, float, float, float]  # min x, min y, max x, max y


class _Node:
    __slots__ = ("chain", "env", "kids")

    def __init__(self, env: _Env, chain: int = -1, kids: list[_Node] | None = None) -> None:
        self.env, self.chain, self.kids = env, chain, kids


def _last_fault_geos(px: list[float], py: list[float],
                     faults: dict[tuple[int, int], int] | None) -> int:
    """GEOS's walk: the fault it ends on. ``faults``, if known, are all of them."""
    chains = _chains(px, py)
    leaves = [_Node(_envelope(px, py, s, e), chain=c) for c, (s, e) in enumerate(chains)]
    level = leaves
    while len(level) > 1:
        level = _parents(level)  # sorts ``level`` in place: the leaves' order is set first
    root = level[0]
    position = [0] * len(leaves)
    for k, leaf in enumerate(leaves):
        position[leaf.chain] = k
    last = len(px) - 2

    def later(query: _Node, node: _Node) -> Iterator[_Node]:
        """The leaves after ``query`` that it meets, depth first (queryPairs)."""
        for kid in node.kids or ():
            if kid.kids is None:
                if position[kid.chain] > position[query.chain] and _meets(kid.env, query.env):
                    yield kid
            elif _meets(kid.env, query.env):
                yield from later(query, kid)

    segments = list(zip(map(min, px[:-1], px[1:]), map(min, py[:-1], py[1:]),
                        map(max, px[:-1], px[1:]), map(max, py[:-1], py[1:]), strict=True))

    def fault(one: _Node, other: _Node, found: int) -> int:
        """The last fault between two chains, or the one found before if there is none.

        Their segment pairs in MonotoneChain::computeOverlaps's order: halving both
        chains, first halves first, passing over halves whose extents do not meet."""
        todo = [(*chains[one.chain], *chains[other.chain])]
        while todo:
            s0, e0, s1, e1 = todo.pop()
            if e0 - s0 == 1 and e1 - s1 == 1:
                if _meets(segments[s0], segments[s1]):
                    a, b = (s0, s1) if s0 < s1 else (s1, s0)
                    found = (faults.get((a, b), _APART) if faults is not None
                             else _kind(px, py, a, b, last)) or found
                continue
            if not _meets(_envelope(px, py, s0, e0), _envelope(px, py, s1, e1)):
                continue
            m0, m1 = (s0 + e0) // 2, (s1 + e1) // 2
            halves = [(a, b, c, d) for a, b in ((s0, m0), (m0, e0)) if a < b
                      for c, d in ((s1, m1), (m1, e1)) if c < d]
            todo.extend(reversed(halves))  # popped first halves first
        return found

    # With the faults known, only pairs of chains with one need a look, and the walks of
    # the leaves before the first such pair find nothing.
    faulty: set[tuple[int, int]] = set()
    start = 0
    if faults is not None:
        first_segments = [s for s, _ in chains]
        for a, b in faults:
            c, d = bisect_right(first_segments, a) - 1, bisect_right(first_segments, b) - 1
            faulty.update(((c, d), (d, c)))
        start = min(position[c] for c, _ in faulty)
    # A fault sets GEOS's "done", which stops the walk it is met in; but the walks of the
    # leaves after that still start (TemplateSTRtree::queryPairs ignores the stop), each
    # stopping after its first pair, whose fault, if any, replaces the one found.
    found = _APART
    for query in leaves[start:]:
        for test in later(query, root):
            if faults is None or (query.chain, test.chain) in faulty:
                found = fault(query, test, found)
            if found != _APART:
                break
    return found


def _kind(px: list[float], py: list[float], a: int, b: int, last: int) -> int:
    """How segments a < b of a ring meet, as GEOS's ``PolygonIntersectionAnalyzer`` judges:
    neighbours only where the ring turns back."""
    if b - a == 1:
        return _spike(px, py, a, b, b + 1)
    if a == 0 and b == last:
        return _spike(px, py, last, 0, 1)
    return _meet(px[a], py[a], px[a + 1], py[a + 1], px[b], py[b], px[b + 1], py[b + 1])


def _chains(px: list[float], py: list[float]) -> list[tuple[int, int]]:
    """(first point, last point) of each monotone chain, in ring order (MonotoneChainBuilder:
    a chain ends where a segment heads into another quadrant)."""
    out = []
    start, quadrant = 0, -1
    for k in range(1, len(px)):
        q = (px[k] - px[k - 1] < 0, py[k] - py[k - 1] < 0)
        now = 2 * q[0] + q[1]
        if quadrant >= 0 and now != quadrant:
            out.append((start, k - 1))
            start = k - 1
        quadrant = now
    out.append((start, len(px) - 1))
    return out


def _envelope(px: list[float], py: list[float], s: int, e: int) -> _Env:
    # A monotone chain's extent is that of its ends.
    return min(px[s], px[e]), min(py[s], py[e]), max(px[s], px[e]), max(py[s], py[e])


def _meets(a: _Env, b: _Env) -> bool:
    return not (b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1])


def _parents(level: list[_Node]) -> list[_Node]:
    """TemplateSTRtree::createParentNodes: sorted by x into vertical slices, each sorted by
    y and cut into nodes of up to ten."""
    number = len(level)
    slices = math.ceil(math.sqrt(math.ceil(number / _NODE_CAPACITY)))
    per_slice = math.ceil(number / slices)
    _std_sort(level, 0, number, lambda node: node.env[0] + node.env[2])
    out = []
    for first in range(0, number, per_slice):
        end = min(first + per_slice, number)
        _std_sort(level, first, end, lambda node: node.env[1] + node.env[3])
        for k in range(first, end, _NODE_CAPACITY):
            kids = level[k:min(k + _NODE_CAPACITY, end)]
            out.append(_Node((min(n.env[0] for n in kids), min(n.env[1] for n in kids),
                              max(n.env[2] for n in kids), max(n.env[3] for n in kids)),
                             kids=kids))
    return out


def _std_sort(items: list[_Node], first: int, last: int, key: Callable[[_Node], float]) -> None:
    """libstdc++'s std::sort of items[first:last]: introsort, then insertion sort."""
    if last - first < 2:
        return
    part = items[first:last]
    keys = [key(node) for node in part]
    _introsort(keys, part, 0, len(part), 2 * (len(part).bit_length() - 1))
    # Insertion sort keeps equal keys in the order the partitions left them: a stable sort.
    items[first:last] = [part[k] for k in sorted(range(len(part)), key=keys.__getitem__)]


def _introsort(keys: list[float], items: list[_Node], first: int, last: int,
               depth: int) -> None:
    while last - first > 16:
        if depth == 0:
            # libstdc++ heap-sorts here; equal keys may then end up in another order. It
            # takes about 2 log2 n lopsided partitions in a row, which chains' extents
            # do not make.
            return
        depth -= 1
        # __unguarded_partition_pivot: the median of three to the front, then Hoare.
        mid = first + (last - first) // 2
        a, b, c = first + 1, mid, last - 1
        ka, kb, kc = keys[a], keys[b], keys[c]
        if ka < kb:
            median = b if kb < kc else c if ka < kc else a
        else:
            median = a if ka < kc else c if kb < kc else b
        keys[first], keys[median] = keys[median], keys[first]
        items[first], items[median] = items[median], items[first]
        pivot = keys[first]
        lo, hi = first + 1, last
        while True:
            while keys[lo] < pivot:
                lo += 1
            hi -= 1
            while pivot < keys[hi]:
                hi -= 1
            if not lo < hi:
                break
            keys[lo], keys[hi] = keys[hi], keys[lo]
            items[lo], items[hi] = items[hi], items[lo]
            lo += 1
        _introsort(keys, items, lo, last, depth)
        last = lo
