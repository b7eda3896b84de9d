"""Reading an adapter's ``options`` and secrets: now in ``warngate.adapter``, the one module
an adapter imports from the core. Kept so existing imports keep working."""

from __future__ import annotations

from warngate.adapter import parse_options, read_secret

__all__ = ["parse_options", "read_secret"]
