"""Where ``mutirao login`` keeps its tokens: ``$MUTIRAO_CONFIG_DIR`` or ``~/.config/mutirao``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from mutirao.settings import Settings, from_env

if TYPE_CHECKING:
    from mutirao.client.http import Client


class Target(NamedTuple):
    """Where a client command goes, as whom, and the authority (a PEM file) the servers'
    certificates are checked with (empty: the system's)."""

    urls: list[str]
    token: str
    ca: str


CLUSTER_FILE = "cluster.json"
"""What ``mutirao up`` writes at the top of its data dir: URLs, the development login, the
CA file with ``--tls``."""


def local_cluster() -> dict[str, object]:
    """The ``cluster.json`` of a ``mutirao up`` run from here (``$MUTIRAO_DATA_DIR``, else
    ``./mutirao-data``), or ``{}``."""
    path = Path(os.environ.get("MUTIRAO_DATA_DIR") or "mutirao-data") / CLUSTER_FILE
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def target(urls: list[str] | None = None, token: str | None = None) -> Target:
    """URLs, token and CA: those given, then the environment (``MUTIRAO_URL``,
    ``MUTIRAO_TOKEN``, ``MUTIRAO_TLS_CA``), then what ``mutirao login`` saved, then the
    ``cluster.json`` of a ``mutirao up`` run from here."""
    env = from_env()
    saved = load()
    local = local_cluster()
    if not urls:
        urls = env.urls
        if urls == Settings().urls:
            found = (saved.get("urls"), local.get("urls"))
            urls = next(([str(u) for u in f] for f in found if isinstance(f, list) and f), urls)
    token = token or env.token or str(saved.get("token") or "")
    # A saved or local CA belongs to the URLs it came with.
    ca = env.tls.ca or next(
        (str(d.get("ca") or "") for d in (saved, local) if d.get("urls") == urls), ""
    )
    return Target(urls, token, ca)


def connect(where: Target, **options: Any) -> Client:
    """An API client for ``where`` that renews a saved login's token as it expires."""
    from mutirao.client.http import Client

    return Client(
        where.urls,
        where.token,
        refresh_token=refresh_for(where.token),
        on_refresh=renewed,
        ca=where.ca,
        **options,
    )


def config_dir() -> Path:
    explicit = os.environ.get("MUTIRAO_CONFIG_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mutirao"


def save(urls: list[str], token: str, user: str, refresh_token: str = "", ca: str = "") -> Path:
    """Keep a login: where (``urls``, and ``ca``, the authority their certificates are
    checked with), who, and the tokens."""
    path = config_dir() / "credentials.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        doc = {"urls": urls, "token": token, "user": user, "refresh_token": refresh_token}
        fh.write(orjson.dumps({**doc, "ca": ca} if ca else doc))
    return path


def renewed(token: str) -> None:
    """Keep the access token a refresh just gave, in place of the expired one."""
    saved = load()
    if saved:
        urls, user = saved.get("urls"), saved.get("user")
        refresh, ca = str(saved.get("refresh_token") or ""), str(saved.get("ca") or "")
        save(urls if isinstance(urls, list) else [], token, str(user or ""), refresh, ca)


def refresh_for(token: str) -> str:
    """The saved refresh token, if ``token`` is the saved access token."""
    saved = load()
    return str(saved.get("refresh_token") or "") if token and saved.get("token") == token else ""


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
