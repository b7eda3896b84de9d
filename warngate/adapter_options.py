"""Reading an adapter's ``options`` and secrets, the same way for every adapter.

Secrets never sit in the YAML file (the configuration contract): they come from a file
(Docker and Kubernetes secrets) or from an environment variable.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, SecretStr, ValidationError

from warngate.adapter import AdapterConfigError
from warngate.settings import AdapterSettings

_M = TypeVar("_M", bound=BaseModel)


def parse_options(model: type[_M], settings: AdapterSettings) -> _M:
    """Validate ``settings.options`` or raise AdapterConfigError naming every bad key."""
    try:
        return model.model_validate(settings.options)
    except ValidationError as exc:
        problems = "; ".join(
            f"options.{'.'.join(map(str, e['loc'])) or '(all)'}: {e['msg']}" for e in exc.errors()
        )
        raise AdapterConfigError(f"adapter {settings.name!r}: {problems}") from None


def read_secret(adapter: str, what: str, env: str, file: Path | None) -> SecretStr | None:
    """The secret in ``file`` if one is named, else in the environment variable ``env``;
    None if neither holds one. ``what`` names the file in errors (unreadable, empty)."""
    if file is not None:
        try:
            value = file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AdapterConfigError(
                f"adapter {adapter!r}: cannot read {what} {file}: {exc.strerror}") from exc
        if not value:
            raise AdapterConfigError(f"adapter {adapter!r}: {what} {file} is empty")
        return SecretStr(value)
    value = os.environ.get(env, "").strip()
    return SecretStr(value) if value else None
