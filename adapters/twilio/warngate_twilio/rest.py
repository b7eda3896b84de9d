"""The REST side: the official ``twilio`` client on an aiohttp session and base URL we choose.

``AsyncTwilioHttpClient`` is the library's documented extension point (a custom
``http_client``). Ours does four things the stock one does not: sends every request to
``api_base_url`` (a regional edge, a proxy, or the test fake) instead of the host the
library computes; keeps ``Retry-After`` and answers 429/5xx/network failures with
``TransientError`` before the library turns them into a header-less exception; runs on the
gateway's shared ``aiohttp.ClientSession`` when given one; and otherwise bounds its own
session's connections to the lane's concurrency.

The stock client's constructor takes no session (it makes its own, or none and one per
request), but its ``request`` is the only method the library calls, and ours replaces it:
so the session is simply ours to choose, and a borrowed one is never closed here. On the
shared session the lane's concurrency still bounds our connections: a send is one request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from email.utils import parsedate_to_datetime
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import yarl
from twilio.base.exceptions import TwilioRestException, TwilioServiceException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.http.response import Response
from twilio.rest import Client

from warngate.adapter import AuthError, PermanentError, TransientError

log = logging.getLogger(__name__)

#: Errors about our account or sender: every message fails the same way until someone fixes
#: the configuration, so the lane keeps them queued instead of burning attempts.
CONFIG_CODES = {
    20003: "authentication failed (account SID, auth token or API key)",
    20005: "the Twilio account is not active",
    21212: "the From number is not valid",
    21606: "the From number cannot send SMS",
    21659: "the From number is not a Twilio number",
}
#: Errors about this recipient: retrying never helps.
RECIPIENT_CODES = {
    21211: "invalid 'To' number",
    21214: "the number cannot be reached",
    21217: "the number does not appear to be valid",
    21401: "invalid phone number",
    21407: "this number type cannot receive SMS",
    21408: "sending to this region is not enabled on the account",
    21610: "the recipient opted out (replied STOP)",
    21612: "Twilio cannot route to this number",
    21614: "not a mobile number",
    13223: "invalid phone number format",
    13224: "invalid phone number",
}


def retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        log.warning("ignoring unreadable Retry-After header %r", value)
        return None


#: ASCII characters a form value may carry as they are; every other one is %XX-escaped.
_FORM_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")
_FORM_ASCII = str.maketrans({chr(b): f"%{b:02X}" for b in range(128) if b not in _FORM_SAFE})


def _form_quote(text: str) -> str:
    if text.isascii():
        return text.translate(_FORM_ASCII)
    return "%" + text.encode("utf-8").hex("%")


def form_encode(data: dict[str, object]) -> bytes:
    """``application/x-www-form-urlencoded`` bytes of the library's parameters.

    Done here rather than by aiohttp's FormData (``urlencode`` walks every byte in Python:
    a quarter of the CPU of a send with a Chinese body). ``str.translate`` and
    ``bytes.hex`` escape in C; any form decoder reads the result as it reads ``urlencode``'s.
    """
    parts: list[str] = []
    for key, value in data.items():
        name = _form_quote(key)
        for item in value if isinstance(value, list | tuple) else (value,):
            parts.append(f"{name}={_form_quote(str(item))}")
    return "&".join(parts).encode("ascii")


def _twilio_message(text: str) -> str:
    try:
        data = json.loads(text)
    except ValueError:
        return text[:200]
    if isinstance(data, dict):
        code = data.get("code")
        msg = data.get("message") or data.get("detail") or data.get("title") or ""
        return f"{code}: {msg}" if code else str(msg)
    return text[:200]


class BaseUrlHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]  # twilio is untyped
    """The library's async client, aimed at ``base_url`` on ``session`` (the gateway's shared
    one, never closed here) or, without one, on a bounded session of its own."""

    def __init__(self, *, base_url: str, timeout: float, max_connections: int,
                 session: aiohttp.ClientSession | None = None) -> None:
        super().__init__(pool_connections=False, timeout=timeout)
        base = urlsplit(base_url.rstrip("/"))
        self._scheme, self._netloc, self._prefix = base.scheme, base.netloc, base.path
        self._auth_header: dict[tuple[str, str], str] = {}
        self._targets: dict[str, yarl.URL] = {}
        # Per call, not the session's: a shared session's timeout is not ours to set.
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._owns_session = session is None
        if session is None:
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=max_connections),
                cookie_jar=aiohttp.DummyCookieJar(),  # the API sets none; saves work per call
                timeout=self._timeout,
            )
        self.session: aiohttp.ClientSession | None = session

    def target(self, url: str) -> str:
        """``url`` (an api.twilio.com URL) moved onto the configured base."""
        parts = urlsplit(url)
        return urlunsplit((self._scheme, self._netloc, self._prefix + parts.path, parts.query,
                           ""))

    def _target_url(self, url: str) -> yarl.URL:
        # The library asks for the same few URLs (Messages.json, Calls.json) over and over:
        # moving and parsing each once saves a good share of a send's CPU.
        found = self._targets.get(url)
        if found is None:
            if len(self._targets) >= 64:
                self._targets.clear()
            found = self._targets[url] = yarl.URL(self.target(url))
        return found

    def _with_auth(
        self, headers: dict[str, str] | None, auth: tuple[str, str] | None
    ) -> dict[str, str] | None:
        if auth is None:
            return headers
        value = self._auth_header.get(auth)
        if value is None:
            # Built by hand: aiohttp's BasicAuth is deprecated and the value never changes.
            value = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
            self._auth_header = {auth: value}
        return {**(headers or {}), "Authorization": value}

    async def request(
        self,
        method: str,
        url: str,
        params: dict[str, object] | None = None,
        data: dict[str, object] | None = None,
        headers: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
        timeout: float | None = None,  # noqa: ASYNC109  # the library's signature
        allow_redirects: bool = False,
    ) -> Response:
        session = self.session
        if not isinstance(session, aiohttp.ClientSession) or session.closed:
            raise RuntimeError("the Twilio client is closed")
        target = self._target_url(url)
        # None would mean "no timeout" to aiohttp: keep our configured one then.
        per_call = aiohttp.ClientTimeout(total=timeout) if timeout else self._timeout
        try:
            async with session.request(
                method.upper(), target, params=params,  # type: ignore[arg-type]
                data=form_encode(data) if isinstance(data, dict) else data,
                headers=self._with_auth(headers, auth),
                allow_redirects=allow_redirects, timeout=per_call,
            ) as resp:
                # Twilio answers UTF-8 JSON: no charset sniffing needed.
                text = (await resp.read()).decode("utf-8", errors="replace")
                status, resp_headers = resp.status, resp.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"Twilio not reachable at {self._netloc}: {exc!r}") from exc
        if status == 429 or status >= 500:
            raise TransientError(
                f"Twilio answered {status} ({_twilio_message(text)})",
                retry_after=retry_after(resp_headers.get("Retry-After")),
            )
        return Response(status, text, resp_headers)

    async def close(self) -> None:
        if self._owns_session and isinstance(self.session, aiohttp.ClientSession):
            await self.session.close()
            # Let the connector's transports finish closing before the loop might end.
            await asyncio.sleep(0)
        self.session = None

    async def __aexit__(self, *excinfo: object) -> None:
        # The library's own would close the session even when it is the gateway's.
        await self.close()


def make_client(
    *,
    account_sid: str,
    auth_token: str,
    api_key: tuple[str, str] | None,
    base_url: str,
    timeout: float,
    max_connections: int,
    session: aiohttp.ClientSession | None = None,
) -> tuple[Client, BaseUrlHttpClient]:
    """A twilio ``Client`` on our HTTP client; call inside the running event loop."""
    http = BaseUrlHttpClient(base_url=base_url, timeout=timeout, max_connections=max_connections,
                             session=session)
    username, password = api_key if api_key else (account_sid, auth_token)
    client = Client(username=username, password=password, account_sid=account_sid,
                    http_client=http)
    return client, http


def classify(
    exc: TwilioRestException | TwilioServiceException,
) -> TransientError | PermanentError | AuthError:
    """The adapter error for a refusal from Twilio's REST API."""
    code = exc.code if isinstance(exc.code, int) else None
    status = int(exc.status)
    if isinstance(exc, TwilioRestException):
        text = str(exc.msg)
    else:
        text = f"{exc.title}: {exc.detail}" if exc.detail else str(exc.title)
    what = f"Twilio {status}" + (f" error {code}" if code else "")
    message = f"{what}: {text}"
    if status == 429 or status >= 500:
        return TransientError(message)
    if status == 401 or code in CONFIG_CODES:
        return AuthError(f"{message} ({CONFIG_CODES.get(code or 20003, 'credentials refused')})")
    if code in RECIPIENT_CODES:
        return PermanentError(f"{message} ({RECIPIENT_CODES[code]})")
    return PermanentError(message)
