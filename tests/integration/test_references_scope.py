"""A feed token's Updates and Cancels may only name alerts of the senders it may use: one
bureau's token cannot lift another's warning, nor a duty officer's (issue 9, item 11)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select

from tests.integration.test_api import CAP_HEADERS, RED, api_settings, cap_message
from tests.integration.test_pipeline import policy
from tests.smallcounty import write_small_county
from warngate.settings import ApiToken, AuthSettings, ConfigError, hash_token, load_settings
from warngate.store import Store
from warngate.store.schema import rejected_inputs
from warngate.web.app import build_app

OURS = "339901@qxj.example.gov.cn"
THEIRS = "339902@swj.example.gov.cn"


class Api:
    def __init__(self, client: TestClient[Any, Any], store: Store) -> None:
        self.client, self.store = client, store

    async def call(self, method: str, path: str, who: str, **kw: Any) -> tuple[int, Any]:
        resp = await self.client.request(
            method, path, headers={"Authorization": f"Bearer tok-{who}",
                                   **kw.pop("headers", {})}, **kw)
        return resp.status, await resp.json()

    async def push(self, who: str, body: bytes) -> tuple[int, Any]:
        return await self.call("POST", "/api/v1/cap", who, data=body, headers=CAP_HEADERS)

    async def reference(self, alert_id: int) -> str:
        _, alert = await self.call("GET", f"/api/v1/alerts/{alert_id}", "admin")
        return f"{alert['sender']},{alert['identifier']},{alert['sent']}"

    async def state(self, alert_id: int) -> str:
        _, alert = await self.call("GET", f"/api/v1/alerts/{alert_id}", "admin")
        return str(alert["state"])

    async def reasons(self) -> list[str]:
        async with self.store.read() as conn:
            return list((await conn.execute(
                select(rejected_inputs.c.reason).order_by(rejected_inputs.c.id))).scalars())


def as_sender(body: bytes, sender: str) -> bytes:
    return body.replace(f"<sender>{OURS}</sender>".encode(), f"<sender>{sender}</sender>".encode())


@pytest.fixture
async def api(store: Store) -> AsyncIterator[Api]:
    await write_small_county(store)
    url = store.engine.url.render_as_string(hide_password=False)
    base = api_settings(url)
    tokens = (*base.auth.tokens,
              ApiToken(name="theirs", role="feed", senders=(THEIRS,),
                       token_sha256=hash_token("tok-theirs")),
              ApiToken(name="any", role="feed", senders=("*",),
                       token_sha256=hash_token("tok-any")))
    settings = base.model_copy(update={"auth": AuthSettings(four_eyes=True, tokens=tokens)})
    app = build_app(settings, policy(step1_after=600, step2_after=1200))
    async with TestClient(TestServer(app)) as client:
        yield Api(client, store)


async def test_a_feed_cannot_cancel_or_replace_a_duty_officers_warning(api: Api) -> None:
    status, composed = await api.call("POST", "/api/v1/alerts", "duty", json=RED)
    assert status == 201
    warning = composed["alert_id"]
    status, _ = await api.call("POST", f"/api/v1/alerts/{warning}/approve", "approver")
    assert status == 200
    ref = await api.reference(warning)
    for i, msg_type in enumerate(("Cancel", "Update")):
        status, body = await api.push("feed", cap_message(f"QX-X{i}", msg_type=msg_type,
                                                          references=ref))
        assert (status, body["error"]["code"]) == (403, "sender_not_allowed"), body
        assert "warngate:duty" in body["error"]["message"]
    assert await api.state(warning) in ("dispatching", "active")
    assert [r.split(" is not")[0] for r in await api.reasons()] == ["sender 'warngate:duty'"] * 2


async def test_a_feed_cannot_cancel_another_bureaus_warning(api: Api) -> None:
    status, theirs = await api.push("theirs", as_sender(cap_message("SW-1"), THEIRS))
    assert status == 202, theirs
    ref = await api.reference(theirs["alert_id"])
    # Our token, our own sender, naming their alert (alone, or beside one of ours).
    status, ours = await api.push("feed", cap_message("QX-1"))
    assert status == 202
    both = f"{await api.reference(ours['alert_id'])} {ref}"
    for i, refs in enumerate((ref, both)):
        status, body = await api.push("feed", cap_message(f"QX-C{i}", msg_type="Cancel",
                                                          references=refs))
        assert (status, body["error"]["code"]) == (403, "sender_not_allowed"), body
    assert await api.state(theirs["alert_id"]) in ("dispatching", "active")
    assert await api.state(ours["alert_id"]) in ("dispatching", "active")
    assert len(await api.reasons()) == 2
    # Their own token may; so may a token that says any sender explicitly.
    status, body = await api.push("theirs", as_sender(
        cap_message("SW-2", msg_type="Cancel", references=ref), THEIRS))
    assert status == 202, body
    assert await api.state(theirs["alert_id"]) == "cancelled"
    status, body = await api.push("any", cap_message("QX-C9", msg_type="Cancel",
                                                     references=await api.reference(
                                                         ours["alert_id"])))
    assert status == 202, body
    assert await api.state(ours["alert_id"]) == "cancelled"


def test_a_feed_token_without_senders_is_a_configuration_error(tmp_path: Path) -> None:
    def config(senders: str) -> Path:
        path = tmp_path / "warngate.yaml"
        path.write_text(f"""
auth:
  tokens:
    - name: county-feed
      role: feed
      token_sha256: "{'2' * 64}"
{senders}
""", encoding="utf-8")
        return path

    for missing in ("", "      senders: []"):
        with pytest.raises(ConfigError) as err:
            load_settings(config(missing))
        assert "county-feed" in str(err.value) and 'senders: ["*"]' in str(err.value)
    assert load_settings(config('      senders: ["*"]')).auth.tokens[0].senders == ("*",)
    assert load_settings(config(f'      senders: ["{OURS}"]')).auth.tokens[0].senders == (
        OURS,)
