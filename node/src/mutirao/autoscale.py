"""How many workers to run, from queue depth and wait time: pure logic (no processes, no
clock of its own), used by ``mutirao up --autoscale MIN:MAX``.

Enough workers for what is queued and running, within MIN..MAX: up at once when a task has
waited ``up_after`` seconds (or below MIN), down one worker at a time, and only after
``cooldown`` seconds without a change (a burst that ends is not a reason to stop workers
the next burst needs). The worker stopped drains: it finishes or hands back its attempts.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Load:
    """What the cluster view says at one moment."""

    pending: int
    active: int
    """Tasks assigned or running."""
    oldest: float
    """Seconds the oldest pending task has waited (0: none pending)."""


@dataclass
class Autoscaler:
    low: int
    high: int
    slots: int
    """Slots per worker."""
    up_after: float = 1.0
    cooldown: float = 10.0
    _changed: float = -math.inf

    def wanted(self, workers: int, load: Load, now: float) -> int:
        """How many workers to run now, given ``workers`` running."""
        need = math.ceil((load.pending + load.active) / self.slots)
        target = min(self.high, max(self.low, need))
        if target > workers and (workers < self.low or load.oldest >= self.up_after):
            self._changed = now
            return target
        if target < workers and now - self._changed >= self.cooldown:
            self._changed = now
            return workers - 1
        return workers


_RANGE = re.compile(r"(\d+):(\d+)")


def parse_range(text: str) -> tuple[int, int]:
    """``MIN:MAX`` (``0:8``); ValueError saying what is wrong."""
    match = _RANGE.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"--autoscale wants MIN:MAX, e.g. 1:8, not {text!r}")
    low, high = int(match[1]), int(match[2])
    if high < max(low, 1):
        raise ValueError(f"--autoscale {text}: MAX must be at least MIN and at least 1")
    return low, high
