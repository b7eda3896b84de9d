"""The words people receive, in Chinese first (English for contacts whose lang is en)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LEVEL_ZH = {"blue": "蓝色", "yellow": "黄色", "orange": "橙色", "red": "红色"}


@dataclass(frozen=True, slots=True)
class AlertText:
    """What the renderer needs of an alert; cached by the dispatcher per alert."""

    level: str
    event: str
    headline: str
    description: str
    instruction: str
    expires: float | None
    lang: str = "zh-CN"
    #: The same alert in other languages, as the source gave them (CAP info blocks).
    translations: tuple[AlertText, ...] = ()

    @classmethod
    def from_row(cls, row: Any) -> AlertText:
        others = tuple(
            cls(level=row.level, event=t.get("event") or row.event,
                headline=t.get("headline") or row.headline,
                description=t.get("description") or "",
                instruction=t.get("instruction") or "", expires=row.expires, lang=lang)
            for lang, t in (getattr(row, "translations", None) or {}).items()
        )
        return cls(
            level=row.level,
            event=row.event,
            headline=row.headline,
            description=row.description or "",
            instruction=row.instruction or "",
            expires=row.expires,
            translations=others,
        )

    def for_lang(self, lang: str) -> AlertText:
        """The text in the reader's language: exact, same language, else the primary text."""
        want = lang.lower()
        for exact in (True, False):
            for t in (self, *self.translations):
                code = t.lang.lower()
                if code == want if exact else code.split("-")[0] == want.split("-")[0]:
                    return t
        return self


def render(alert: AlertText, kind: str, lang: str) -> tuple[str, str]:
    """Return (headline, body) for one message of ``kind`` (alert | update | cancel |
    nobody: the alarm to the duty officers that a warning matched nobody)."""
    alert = alert.for_lang(lang)
    english = lang.lower().startswith("en")
    if kind == "nobody":
        if english:
            return (f"NOT SENT: {alert.headline}",
                    "This warning matched no recipient in the registry and went to nobody. "
                    "Check its area codes and warn the area by other means now.")
        return (f"【无人可达】{alert.headline}",
                "该预警按所列区域未匹配到任何接收人，未能发出。"
                "请立即核查区域代码，并通过其他途径通知相关区域。")
    if kind == "cancel":
        if english:
            return f"LIFTED: {alert.headline}", "This warning has been lifted."
        return f"【解除】{alert.headline}", f"{alert.event}{LEVEL_ZH[alert.level]}预警已解除。"
    headline = alert.headline
    if kind == "update":
        headline = f"[UPDATE] {headline}" if english else f"【更新】{headline}"
    body = "\n".join(p for p in (alert.description, alert.instruction) if p)
    return headline, body
