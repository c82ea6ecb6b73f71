"""Pure decisions about the orchestrators' Lease: who leads, where, and which pods to label.

The orchestrators' ``kubernetes`` lease backend (:mod:`mutirao.ha.kubernetes_lease`) writes
the holder's node id (its pod name) in ``spec.holderIdentity``, the epoch in
``spec.leaseTransitions`` and the holder's URL in the ``mutirao.dev/url`` annotation.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mutirao.ha.kubernetes_lease import URL_ANNOTATION


@dataclass(frozen=True)
class Leadership:
    holder: str
    url: str
    epoch: int


def leadership_of(
    lease: Mapping[str, Any], service: str = "", port: int = 0, scheme: str = "http"
) -> Leadership | None:
    """Who holds the Lease, or None while nobody does (never taken, or released).

    Without a URL in the Lease, the holder is reached through the headless ``service``.
    """
    spec = lease.get("spec") or {}
    holder = spec.get("holderIdentity") or ""
    if not holder:
        return None
    annotations = (lease.get("metadata") or {}).get("annotations") or {}
    url = annotations.get(URL_ANNOTATION) or ""
    if not url and service:
        url = f"{scheme}://{holder}.{service}:{port}"
    return Leadership(holder, url, int(spec.get("leaseTransitions") or 0))


def label_changes(
    pods: Iterable[Mapping[str, Any]], holder: str, label: str
) -> list[tuple[str, str | None]]:
    """``(pod, value)`` label changes that mark only ``holder``'s pod ``label="true"``.

    Removals come first, so the Service selecting the label never has two endpoints.
    """
    removals: list[tuple[str, str | None]] = []
    additions: list[tuple[str, str | None]] = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        name = meta.get("name", "")
        value = (meta.get("labels") or {}).get(label)
        if name == holder and value != "true":
            additions.append((name, "true"))
        elif name != holder and value is not None:
            removals.append((name, None))
    return removals + additions


def selector_matches(obj: Mapping[str, Any], selector: str) -> bool:
    """Whether the object's labels match an equality-based selector (``k=v``, ``k==v``,
    ``k!=v``, ``k``; comma-separated). The API server filters by it too; this guards
    against one that does not."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (part.strip() for part in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term not in labels:
            return False
    return True
