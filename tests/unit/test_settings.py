"""The example configuration loads, documents every key, and bad files say what is wrong."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from warngate.policy import load_policy
from warngate.settings import ConfigError, Settings, load_settings

CONFIG = Path(__file__).resolve().parents[2] / "config"
EXAMPLE = CONFIG / "warngate.example.yaml"


def _keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        ann = field.annotation
        inner = getattr(ann, "__args__", (ann,))
        for t in inner:
            if isinstance(t, type) and issubclass(t, BaseModel):
                keys.extend(_keys(t, prefix + name + "."))
    return keys


def test_example_loads_with_its_policy() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.http.port == 8080
    assert {a.channel for a in settings.adapters} == {"sms", "voice", "speaker"}
    assert {t.role for t in settings.auth.tokens} == {"duty_officer", "township", "feed"}
    policy = load_policy(settings.policy_file)
    assert policy.channels_used() <= {"sms", "voice", "speaker"}


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    missing = [k for k in _keys(Settings)
               if not re.search(rf"^\s*#?\s*-?\s*{re.escape(k.rsplit('.', 1)[-1])}:", text,
                                re.MULTILINE)]
    assert not missing, f"keys not in {EXAMPLE.name}: {missing}"


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WARNGATE_HTTP__PORT", "9191")
    assert load_settings(EXAMPLE).http.port == 9191


@pytest.mark.parametrize(("content", "message"), [
    ("http: [1, 2", "not valid YAML"),
    ("- a list", "must be a mapping"),
    ("htp: {port: 1}", "htp"),
    ("http: {port: eighty}", "http.port"),
    ("auth: {tokens: [{name: t, role: township, token_sha256: " + "a" * 64 + "}]}",
     "needs a township code"),
])
def test_bad_configuration_names_the_problem(tmp_path: Path, content: str,
                                             message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_docker_configuration_loads() -> None:
    docker = CONFIG.parent / "docker" / "warngate.yaml"
    settings = load_settings(docker, policy_file=str(CONFIG / "policy.yaml"))
    assert settings.http.host == "0.0.0.0"
    load_policy(settings.policy_file)
