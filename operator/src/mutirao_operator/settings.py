"""The operator's settings: one dataclass, read from ``MUTIRAO_*`` variables at startup.

The Helm chart sets every variable (see ``operator/README.md``); nothing reads the
environment at import time.

How the operator authenticates to the orchestrator API: with ``MUTIRAO_TOKEN`` if set (a
token from ``mutirao login``; it expires), otherwise by minting its own short-lived tokens
for the user ``MUTIRAO_OPERATOR_USER`` with ``MUTIRAO_AUTH_TOKEN_SECRET``, the key the
orchestrators sign and check tokens with. The chart keeps that key in the Secret
``<release>-token-secret`` and gives it to both the orchestrators and the operator.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


class OperatorSettingsError(ValueError):
    """A setting of the operator is missing or cannot be understood."""


@dataclass
class OperatorSettings:
    urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:7000"])
    """``MUTIRAO_URL``: orchestrator URLs to start with (the chart: the leader-only Service)."""
    token: str = ""
    """``MUTIRAO_TOKEN``: a bearer token for the orchestrator API (wins over token_secret)."""
    token_secret: str = ""
    """``MUTIRAO_AUTH_TOKEN_SECRET``: the orchestrators' token-signing key; the operator mints
    its own tokens with it."""
    user: str = "mutirao-operator"
    """Owner of the tasks the operator submits (the subject of the tokens it mints)."""
    token_ttl: float = 3600.0
    """Seconds a minted token is valid; a new one is minted after half of it."""
    namespace: str = "default"
    """Namespace of the orchestrators' Lease and pods."""
    lease_name: str = "mutirao-leader"
    """Name of the coordination.k8s.io Lease the orchestrators elect their leader with."""
    leader_label: str = "mutirao.dev/leader"
    """Label set to "true" on the leader's pod (and removed from the others)."""
    orchestrator_selector: str = "app.kubernetes.io/component=orchestrator"
    """Label selector of the orchestrator pods."""
    orchestrator_service: str = ""
    """Headless Service of the orchestrator pods: a holder without a URL in the Lease is
    reached at ``http://<pod>.<service>:<port>``."""
    orchestrator_port: int = 7000
    """Port of the orchestrators' API."""
    metrics_host: str = "0.0.0.0"
    """Interface of the operator's /metrics endpoint."""
    metrics_port: int = 9090
    """Port of the operator's /metrics endpoint; 0 picks a free one."""
    poll_wait: float = 10.0
    """Longest long-poll (``result?wait=``) for a running Task, in seconds."""
    retry_for: float = 10.0
    """Seconds one API call keeps trying the known orchestrators before giving up."""
    ca: str = ""
    """``MUTIRAO_TLS_CA``: PEM file of the authority of the orchestrators' certificates; set,
    the orchestrators are spoken to over HTTPS (and checked against it)."""

    @property
    def scheme(self) -> str:
        return "https" if self.ca else "http"

    def validate(self) -> OperatorSettings:
        if not self.urls:
            raise OperatorSettingsError("MUTIRAO_URL: at least one orchestrator URL is needed")
        if not (self.token or self.token_secret):
            raise OperatorSettingsError(
                "set MUTIRAO_AUTH_TOKEN_SECRET (the orchestrators' token key) or MUTIRAO_TOKEN"
            )
        if self.poll_wait < 0:
            raise OperatorSettingsError(f"{env_name('poll_wait')} must be >= 0")
        return self


_ENV = {
    "urls": "MUTIRAO_URL",
    "token": "MUTIRAO_TOKEN",
    "token_secret": "MUTIRAO_AUTH_TOKEN_SECRET",
    "ca": "MUTIRAO_TLS_CA",
}


def env_name(name: str) -> str:
    return _ENV.get(name, "MUTIRAO_OPERATOR_" + name.upper())


def _coerce(name: str, text: str, current: Any) -> Any:
    try:
        if isinstance(current, list):
            return [item.strip() for item in text.split(",") if item.strip()]
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
    except ValueError as exc:
        raise OperatorSettingsError(f"{env_name(name)}={text!r}: {exc}") from None
    return text


def from_env(env: Mapping[str, str] | None = None) -> OperatorSettings:
    """Defaults overlaid with the environment (``MUTIRAO_OPERATOR_POLL_INTERVAL=2`` ...)."""
    env = os.environ if env is None else env
    settings = OperatorSettings()
    for f in dataclasses.fields(settings):
        name = env_name(f.name)
        if name in env:
            setattr(settings, f.name, _coerce(f.name, env[name], getattr(settings, f.name)))
    return settings.validate()
