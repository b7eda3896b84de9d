"""Each recipient reads the CAP info block in their own language when the sender gave one."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from warngate.cap import parse_cap
from warngate.messages import AlertText, render
from warngate.sources import cap_to_alert

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cap"


def test_every_info_language_is_kept_and_rendered() -> None:
    new = cap_to_alert(parse_cap((FIXTURES / "red-rainstorm-zh-en.xml").read_bytes()),
                       actor="t")
    assert new.headline == "夏溪县气象台发布暴雨红色预警信号"
    assert new.translations == {"en-US": {
        "event": "Rainstorm", "headline": "Rainstorm red warning", "description": "",
        "instruction": ""}}
    row = SimpleNamespace(level=new.level, event=new.event, headline=new.headline,
                          description=new.description, instruction=new.instruction,
                          expires=None, translations=new.translations)
    text = AlertText.from_row(row)
    assert render(text, "alert", "zh-CN")[0] == "夏溪县气象台发布暴雨红色预警信号"
    assert render(text, "alert", "en-GB")[0] == "Rainstorm red warning"
    assert render(text, "update", "en-US")[0] == "[UPDATE] Rainstorm red warning"
    assert render(text, "alert", "fr-FR")[0] == "夏溪县气象台发布暴雨红色预警信号"
