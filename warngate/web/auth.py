"""Bearer tokens for people and feeds. Only SHA-256 hashes are configured."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from warngate.alerts import Actor
from warngate.settings import ApiToken


class TokenBook:
    def __init__(self, tokens: tuple[ApiToken, ...]) -> None:
        self._by_hash = {t.token_sha256: t for t in tokens}

    def actor_for(self, request: web.Request) -> Actor | None:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        digest = hashlib.sha256(token.strip().encode()).hexdigest()
        found = self._by_hash.get(digest)
        # The dict lookup is by hash already; compare again in constant time for form.
        if found is None or not hmac.compare_digest(found.token_sha256, digest):
            return None
        return Actor(name=found.name, role=found.role, township=found.township,
                     senders=found.senders)
