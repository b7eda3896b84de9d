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


def role_label(role: str) -> str:
    """The Chinese label of a role (the policy's defaults; the id when unknown)."""
    from warngate.policy import DEFAULT_ROLES

    found = DEFAULT_ROLES.get(role)
    return found.label if found else role


@dataclass(frozen=True, slots=True)
class Person:
    """Whom an escalation message or a duty officer's alarm is about."""

    name: str
    role: str
    village: str | None = None


def _who(p: Person, *, english: bool) -> str:
    if english:
        return f"{p.name} ({p.role}{', ' + p.village if p.village else ''})"
    return f"{role_label(p.role)}{p.name}{f'（{p.village}）' if p.village else ''}"


#: How many silent people an alarm names before "等N人" (an SMS stays readable).
ALARM_NAMES = 8


def render_escalation(alert: AlertText, lang: str, person: Person) -> tuple[str, str]:
    """A message to a supervisor (or another duty officer) about ``person``, who has not
    confirmed receiving the warning: who it is and what to do."""
    alert = alert.for_lang(lang)
    if lang.lower().startswith("en"):
        return (f"NO ANSWER: {_who(person, english=True)} — {alert.headline}",
                f"{_who(person, english=True)} has not confirmed receiving this warning "
                f"({alert.headline}). Contact them now and make sure the protective measures "
                f"are carried out; then confirm this message.")
    warning = f"{alert.event}{LEVEL_ZH.get(alert.level, '')}预警"
    return (f"【未叫应】{_who(person, english=False)}",
            f"{_who(person, english=False)}未确认收到{warning}（{alert.headline}），"
            f"请立即联系督促其落实防御措施，落实后回复确认。")


def render_silent(alert: AlertText, lang: str, people: list[Person]) -> tuple[str, str]:
    """The duty officers' alarm: these people did not answer to the end of their
    escalation. At most ``ALARM_NAMES`` are named, then "等N人"."""
    alert = alert.for_lang(lang)
    shown = people[:ALARM_NAMES]
    if lang.lower().startswith("en"):
        names = "; ".join(_who(p, english=True) for p in shown)
        more = f" and {len(people) - len(shown)} more" if len(people) > len(shown) else ""
        return (f"SILENT: {len(people)} not reached — {alert.headline}",
                f"Still no answer after every escalation step: {names}{more} "
                f"({len(people)} in all). Reach them by other means now (phone, a visit).")
    names = "、".join(_who(p, english=False) for p in shown)
    more = f"等{len(people)}人" if len(people) > len(shown) else f"共{len(people)}人"
    warning = f"{alert.event}{LEVEL_ZH.get(alert.level, '')}预警"
    return (f"【叫应未果】{warning}",
            f"{warning}（{alert.headline}）经逐级叫应仍未确认：{names}{more}。"
            f"请立即通过电话、上门等方式联系落实。")
