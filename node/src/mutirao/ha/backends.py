"""Choose the lease backend named in the settings."""

from __future__ import annotations

from mutirao.errors import ValidationError
from mutirao.ha.file_lease import FileLease
from mutirao.ha.lease import LeaseBackend
from mutirao.ha.peer_lease import PeerLease
from mutirao.settings import Settings

BACKENDS = ("file", "peer", "kubernetes")


def make_lease(settings: Settings) -> LeaseBackend:
    ha = settings.ha
    if ha.backend == "file":
        return FileLease(ha.lease_dir, settings.node_id, ha.lease_duration)
    if ha.backend == "peer":
        return PeerLease(settings.node_id, ha.peers, ha.lease_duration, settings.tls)
    if ha.backend == "kubernetes":
        # Imported here: only this backend needs the kubernetes client.
        from mutirao.ha.kubernetes_lease import KubernetesLease

        # Every API call ends well before the holder must step down.
        timeout = ha.step_down_margin / 2
        return KubernetesLease(
            ha.namespace, ha.lease_name, settings.node_id, ha.lease_duration, timeout=timeout
        )
    raise ValidationError(
        f"unknown lease backend {ha.backend!r}: use one of {', '.join(BACKENDS)}",
        field="ha.backend",
    )
