"""Declared roles, hazard rules and community drills in the policy (issue 10, item 6, 9)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from warngate.policy import DEFAULT_ROLES, Policy, PolicyError, load_policy

ROOT = Path(__file__).resolve().parents[2]


def base(**extra: Any) -> dict[str, Any]:
    return {"levels": {lv: {"roles": {"grid_worker": {}}}
                       for lv in ("blue", "yellow", "orange", "red")}, **extra}


def test_the_five_roles_and_the_specialists_are_declared_with_chinese_labels() -> None:
    pol = Policy.model_validate(base())
    assert {"county_duty", "township_duty", "village_head", "grid_worker",
            "household"} <= set(pol.declared_roles())
    assert pol.role_label("geo_monitor") == "群测群防员"
    assert pol.role_label("village_head") == "村居负责人"
    assert pol.role_label("nobody_knows") == "nobody_knows"
    assert DEFAULT_ROLES["reservoir_patroller"].label == "水库巡查员"


def test_an_undeclared_role_is_refused_with_where_it_is_named() -> None:
    with pytest.raises(ValueError, match=r"levels\.red: ferry_keeper"):
        Policy.model_validate(base(levels={
            **base()["levels"], "red": {"roles": {"ferry_keeper": {}}}}))
    with pytest.raises(ValueError, match=r"hazards\.洪水: ferry_keeper"):
        Policy.model_validate(base(hazards={"洪水": {"roles": {"ferry_keeper": {}}}}))
    pol = Policy.model_validate(base(
        roles={"ferry_keeper": {"label": "渡口管理员"}},
        hazards={"洪水": {"roles": {"ferry_keeper": {}}}}))
    assert "ferry_keeper" in pol.roles_for("blue", "洪水预警")


def test_a_name_may_mean_one_role_only() -> None:
    with pytest.raises(ValueError, match="网格员"):
        Policy.model_validate(base(roles={"x": {"label": "网格员"}}))


def test_hazards_match_keywords_in_the_event_from_their_minimum_level() -> None:
    pol = load_policy(ROOT / "config" / "policy.yaml")
    assert pol.hazards_of("地质灾害气象风险预警") == ["地质灾害"]
    assert pol.hazards_of("Landslide warning") == ["地质灾害"]
    assert pol.hazards_of("暴雨") == []
    assert "geo_monitor" in pol.roles_for("blue", "滑坡")
    assert "geo_monitor" not in pol.roles_for("red", "暴雨")
    assert "fishing_safety_officer" not in pol.roles_for("yellow", "台风")
    assert "fishing_safety_officer" in pol.roles_for("orange", "台风")
    # The hazard's entry is merged over the level's roles, which stay.
    assert set(pol.levels["red"].roles) <= set(pol.roles_for("red", "水库"))


def test_a_hazard_entry_overrides_the_levels_entry_of_the_same_role() -> None:
    pol = Policy.model_validate(base(hazards={"台风": {"roles": {
        "grid_worker": {"channels": ["sms", "voice"]}}}}))
    assert pol.roles_for("red", "台风")["grid_worker"].channels == ("sms", "voice")
    assert pol.roles_for("red", "暴雨")["grid_worker"].channels == ("sms",)


def test_households_only_in_a_community_drill() -> None:
    with pytest.raises(ValueError, match="drills must not reach households"):
        Policy.model_validate(base(drills={"roles": ["household"]}))
    pol = Policy.model_validate(base(drills={
        "roles": ["township_duty"], "community": {"roles": ["township_duty", "household"]}}))
    assert pol.drill_roles(False) == ("township_duty",)
    assert pol.drill_roles(True) == ("township_duty", "household")
    assert Policy.model_validate(base()).drill_roles(True) == ("township_duty",)


def test_reach_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("levels:\n" + "".join(
        f"  {lv}:\n    roles:\n      township_duty: {{reach: village}}\n"
        for lv in ("blue", "yellow", "orange", "red")), encoding="utf-8")
    with pytest.raises(PolicyError, match="reach"):
        load_policy(path)
