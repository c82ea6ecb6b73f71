"""How long each standby's view of our lease holds, when no shared record exists (peer lease).

With the ``peer`` backend a standby may take over once it has heard no beat for one lease
duration, if the last beat it heard counted it as in sync (*eligible*). Its view is
renewed only by beats, so the active may acknowledge only while every standby that may be
eligible has heard a beat recently enough: ``sent + duration - margin`` of the oldest beat
that bounds it. A standby's acks echo the ``sent`` of the newest beat it received and
whether that beat made it eligible; beats that made it eligible but are not yet confirmed
count from when they were sent (it cannot be eligible through them any earlier).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass
class _Standby:
    confirmed: float = float("-inf")
    """``sent`` of the newest beat it confirmed."""
    eligible: bool = False
    """Whether that beat made it eligible."""
    pending: deque[float] = field(default_factory=deque)
    """``sent`` of the beats making it eligible sent after ``confirmed``, oldest first."""

    def bound(self) -> float | None:
        if self.eligible:
            return self.confirmed
        return self.pending[0] if self.pending else None


@dataclass
class Witness:
    standbys: dict[str, _Standby] = field(default_factory=dict)

    def sent(self, node: str, at: float, eligible: bool) -> None:
        """A beat went to ``node`` at ``at``; ``eligible`` says whether it counts it in sync."""
        if eligible:
            self.standbys.setdefault(node, _Standby()).pending.append(at)

    def confirmed(self, node: str, beat: float, eligible: bool) -> None:
        """``node`` received the beat sent at ``beat``; it is now ``eligible`` or not."""
        standby = self.standbys.setdefault(node, _Standby())
        if beat <= standby.confirmed:
            return
        standby.confirmed, standby.eligible = beat, eligible
        while standby.pending and standby.pending[0] <= beat:
            standby.pending.popleft()

    def down(self, node: str) -> None:
        """``node``'s process is gone (its port refused us): restarted, it must sync anew
        before it can take over, so it no longer bounds us."""
        self.standbys.pop(node, None)

    def oldest(self) -> tuple[str, float] | None:
        """The standby whose view of our lease ends first, and the ``sent`` it counts from."""
        bounds = [(b, n) for n, s in self.standbys.items() if (b := s.bound()) is not None]
        if not bounds:
            return None
        sent, node = min(bounds)
        return node, sent

    def clear(self) -> None:
        self.standbys.clear()
