"""The threshold rules alone: which colour a reading wants, and the debounce."""

from __future__ import annotations

from warngate.hydrology import State, step, wanted
from warngate.settings import HydroStation, RiseRule

STATION = HydroStation(id="qx", name="清溪水文站", river="清溪", warning_level_m=12.0,
                       guaranteed_level_m=13.5, hysteresis_m=0.2,
                       rise=RiseRule(metres=0.5, within=3600), areas=("339901001001",))


def test_thresholds() -> None:
    assert wanted(STATION, 11.0, 0.0, None) is None
    assert wanted(STATION, 12.0, 0.0, None) == "orange"
    assert wanted(STATION, 13.6, 0.0, None) == "red"
    assert wanted(STATION, 11.5, 0.6, None) == "yellow"  # fast rise below the warning level


def test_hysteresis_keeps_the_current_colour() -> None:
    assert wanted(STATION, 11.85, 0.0, "orange") == "orange"  # within 0.2 m below
    assert wanted(STATION, 11.75, 0.0, "orange") is None
    assert wanted(STATION, 13.4, 0.0, "red") == "red"
    assert wanted(STATION, 13.25, 0.0, "red") == "orange"
    assert wanted(STATION, 11.9, 0.0, None) is None  # hysteresis never raises


def test_debounce_needs_consecutive_agreement() -> None:
    s = State()
    assert not step(s, "orange", 2)
    assert not step(s, None, 2)  # noise: back below, the count restarts
    assert not step(s, "orange", 2)
    assert step(s, "orange", 2)
    s.colour = "orange"
    assert not step(s, "orange", 2) and s.pending is None
