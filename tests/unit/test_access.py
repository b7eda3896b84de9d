"""The authorization table, role × action, and the two facts that refine it (a township's
scope, a feed's senders). Every handler asks warngate.access; this is what it answers."""

from __future__ import annotations

import pytest

from warngate.access import ROLES, Action, may, require
from warngate.alerts import Actor, AlertError

A, D, P, T, F = "admin", "duty_officer", "approver", "township", "feed"
#: The whole table, written out: a change to who may do what shows up here.
TABLE = {
    Action.VIEW: {A, D, P, T},
    Action.COMPOSE: {A, D},
    Action.APPROVE: {A, D, P},
    Action.CANCEL: {A, D, P},
    Action.PUSH_CAP: {A, F},
    Action.READINGS: {A, F},
    Action.METRICS: {A, D, P, T, F},
    Action.RECORD_ACK: {A, D, T},
}
ACTORS = {
    A: Actor("root", A), D: Actor("duty", D), P: Actor("boss", P),
    T: Actor("town1", T, township="339901001"), F: Actor("met", F, senders=("qxj",)),
}


@pytest.mark.parametrize("action", list(Action))
@pytest.mark.parametrize("role", [A, D, P, T, F])
def test_role_by_action(role: str, action: Action) -> None:
    decision = may(ACTORS[role], action)
    assert bool(decision) is (role in TABLE[action]), (role, action)
    if not decision:
        assert decision.code == "forbidden" and decision.reason
        with pytest.raises(AlertError) as err:
            require(ACTORS[role], action)
        assert (err.value.status, err.value.code) == (403, "forbidden")


def test_the_table_covers_every_action() -> None:
    assert set(ROLES) == set(Action) == set(TABLE)


@pytest.mark.parametrize(("areas", "allowed"), [
    (["339901001"], True), (["339901001002", "339901001"], True),
    (["339901002"], False), (["339901001", "339901002001"], False), ([], True),
])
def test_a_township_acts_within_its_township(areas: list[str], allowed: bool) -> None:
    decision = may(ACTORS[T], Action.VIEW, areas=areas)
    assert bool(decision) is allowed
    if not allowed:
        assert decision.code == "outside_township"
    # A county token is not scoped; a duty officer bound to a township is.
    assert may(ACTORS[D], Action.CANCEL, areas=areas)
    scoped = Actor("duty-town1", D, township="339901001")
    assert bool(may(scoped, Action.CANCEL, areas=areas)) is allowed


@pytest.mark.parametrize(("senders", "named", "allowed"), [
    (("qxj",), ["qxj"], True),
    (("qxj",), ["qxj", "qxj"], True),
    (("qxj",), ["swj"], False),
    (("qxj",), ["qxj", "warngate:duty"], False),  # a Cancel naming a duty officer's alert
    (("qxj", "swj"), ["qxj", "swj"], True),
    (("*",), ["anyone", "warngate:duty"], True),  # any sender, said explicitly
    ((), ["qxj"], False),
])
def test_a_feed_names_only_its_senders(senders: tuple[str, ...], named: list[str],
                                       allowed: bool) -> None:
    feed = Actor("met", F, senders=senders)
    decision = may(feed, Action.PUSH_CAP, senders=named)
    assert bool(decision) is allowed
    if not allowed:
        assert decision.code == "sender_not_allowed" and "met" in decision.reason
    # The admin may speak for anyone; nobody else submits CAP at all.
    assert may(ACTORS[A], Action.PUSH_CAP, senders=named)
    assert may(ACTORS[D], Action.PUSH_CAP, senders=named).code == "forbidden"


def test_web_handlers_never_touch_tables() -> None:
    """The web layer calls services: no SQL, no table objects, authorization via access."""
    import ast
    from pathlib import Path

    import warngate.web

    for path in Path(warngate.web.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
                names: list[str] = []
            elif isinstance(node, ast.ImportFrom):
                modules, names = [node.module or ""], [a.name for a in node.names]
            else:
                continue
            assert not any(m.split(".")[0] == "sqlalchemy" for m in modules), path.name
            if "warngate.store.schema" in modules:
                # Constants (the state names) only, never a table.
                assert all(n.isupper() for n in names), (path.name, names)
