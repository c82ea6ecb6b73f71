"""The role this orchestrator plays, and the one rule for acknowledging anything.

Only an active orchestrator whose lease cannot have lapsed may acknowledge: a submission,
a cancel, a result recorded for a worker, any answer a client waits on. The lease may have
lapsed once this node's monotonic clock passes the tenure's deadline (see
:class:`~mutirao.ha.lease.Tenure`) or, with the ``peer`` lease, once a standby that may
take over has heard nothing from us for as long (see :class:`~mutirao.ha.witness.Witness`).
The rule is checked at the moment an acknowledgement would go out, not by a timer: after a
pause (SIGSTOP, a VM stall) the first thing the process does is find its lease lapsed, and
stepping down is one synchronous act, so no request is served in between as the leader.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from enum import StrEnum

from mutirao.errors import NoSpaceError, NotLeaderError, TemporaryError
from mutirao.ha.lease import Tenure
from mutirao.ha.replication import Hub

log = logging.getLogger(__name__)


class Role(StrEnum):
    STARTING = "starting"
    STANDBY = "standby"
    ACTIVE = "active"
    STOPPING = "stopping"


class Roles:
    def __init__(
        self,
        node: str,
        hub: Hub,
        *,
        shared_record: bool,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self.hub = hub
        self.shared_record = shared_record
        """Whether the lease lives outside this process (file, kubernetes): then only the
        tenure bounds us; otherwise (peer) the standbys' views of it do too."""
        self.monotonic = monotonic
        self.role = Role.STARTING
        self.tenure: Tenure | None = None
        self.leader_url: str | None = None
        self.seen_epoch = 0
        """The newest epoch anyone has shown us (a worker, a peer); takeovers exceed it."""
        self.deposed = asyncio.Event()
        self.deposed_reason = ""
        self.read_only: str | None = None
        """Why this node serves reads only: it may lead (nobody else holds the lease) but
        its disk is full, so it cannot take the lease; writes get 507 with this reason."""

    def lead(self, tenure: Tenure, url: str) -> None:
        """Become active; a new tenure starts knowing no standby's view of it."""
        self.hub.witness.clear()
        self.deposed.clear()
        self.deposed_reason = ""
        self.read_only = None
        self.tenure = tenure
        self.leader_url = url
        self.role = Role.ACTIVE

    def lapse(self, now: float) -> str | None:
        """Why the lease may have lapsed at monotonic time ``now``; None while it holds."""
        tenure = self.tenure
        if tenure is None:
            return "no lease held"
        if tenure.lapsed(now):
            return (
                f"the lease (epoch {tenure.lease.epoch}) may have lapsed: last confirmed "
                f"{now - tenure.asked_at:.1f}s ago, lease {tenure.lease.duration:g}s"
            )
        if not self.shared_record:
            oldest = self.hub.witness.oldest()
            if oldest is not None and now >= oldest[1] + tenure.lease.duration - tenure.margin:
                return (
                    f"standby {oldest[0]} heard nothing from us for {now - oldest[1]:.1f}s "
                    "and may have taken over"
                )
        return None

    def acknowledgeable(self) -> bool:
        """Whether this node may acknowledge now; steps down at once if the lease lapsed."""
        if self.role is not Role.ACTIVE:
            return False
        reason = self.lapse(self.monotonic())
        if reason is None:
            return True
        self.step_down(reason)
        return False

    def require_active(self) -> None:
        if self.acknowledgeable():
            return
        if self.read_only is not None:
            raise NoSpaceError(self.read_only)
        if self.role is Role.STANDBY:
            leader = self.leader_url or "unknown yet"
            raise NotLeaderError(
                f"{self.node} is a standby; the active orchestrator is {leader}",
                leader=self.leader_url,
                delay=0.1,
            )
        raise TemporaryError(f"orchestrator {self.node} is {self.role}", delay=0.2)

    def step_down(self, reason: str, newer_epoch: int = 0) -> None:
        """Stop acting as the leader, all at once: the role flips (``/readyz`` 503, writes
        421), and everything waiting to be acknowledged fails, before anything else runs.
        The controller then closes the active's links and stands by."""
        self.seen_epoch = max(self.seen_epoch, newer_epoch)
        if self.role is not Role.ACTIVE:
            return
        log.warning("stepping down as the active orchestrator: %s", reason)
        self.role = Role.STANDBY
        self.leader_url = None
        self.tenure = None
        self.deposed_reason = reason
        self.deposed.set()
        self.hub.fail_all()
