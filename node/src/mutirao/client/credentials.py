"""Where ``mutirao login`` keeps the token: ``$MUTIRAO_CONFIG_DIR`` or ``~/.config/mutirao``."""

from __future__ import annotations

import os
from pathlib import Path

import orjson


def config_dir() -> Path:
    explicit = os.environ.get("MUTIRAO_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mutirao"


def save(urls: list[str], token: str, user: str) -> Path:
    path = config_dir() / "credentials.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(orjson.dumps({"urls": urls, "token": token, "user": user}))
    return path


def forget() -> None:
    (config_dir() / "credentials.json").unlink(missing_ok=True)


def load() -> dict[str, object]:
    path = config_dir() / "credentials.json"
    if not path.exists():
        return {}
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}
