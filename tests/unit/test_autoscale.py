"""The local autoscaler's policy (pure): up on waiting work, down slowly, within MIN..MAX."""

from __future__ import annotations

import pytest

from mutirao.autoscale import Autoscaler, Load, parse_range

IDLE = Load(pending=0, active=0, oldest=0.0)


def test_scales_up_at_once_when_tasks_wait_and_down_one_at_a_time() -> None:
    scaler = Autoscaler(low=1, high=5, slots=4, up_after=1.0, cooldown=10.0)
    assert scaler.wanted(1, Load(pending=30, active=4, oldest=0.2), now=0.0) == 1, "not yet"
    assert scaler.wanted(1, Load(pending=30, active=4, oldest=1.5), now=1.0) == 5, "capped"
    busy = Load(pending=0, active=20, oldest=0.0)
    assert scaler.wanted(5, busy, now=2.0) == 5
    # The work ends: one worker less per cool-down, never below MIN.
    assert scaler.wanted(5, IDLE, now=5.0) == 5, "cooling down"
    assert scaler.wanted(5, IDLE, now=11.0) == 4
    assert scaler.wanted(4, IDLE, now=12.0) == 4
    counts = [4]
    for now in range(21, 100, 10):
        counts.append(scaler.wanted(counts[-1], IDLE, now=float(now)))
    assert counts[-1] == 1
    assert counts == sorted(counts, reverse=True)


def test_from_zero_the_first_queued_task_starts_a_worker() -> None:
    scaler = Autoscaler(low=0, high=3, slots=2, up_after=0.5)
    assert scaler.wanted(0, IDLE, now=0.0) == 0
    assert scaler.wanted(0, Load(pending=1, active=0, oldest=0.6), now=1.0) == 1


def test_below_min_it_starts_workers_whatever_the_queue() -> None:
    assert Autoscaler(low=2, high=4, slots=4).wanted(0, IDLE, now=0.0) == 2


def test_the_range_is_checked() -> None:
    assert parse_range("0:8") == (0, 8)
    for bad in ("8", "3:1", "0:0", "a:b", "-1:2"):
        with pytest.raises(ValueError, match=r"MIN:MAX|MAX must be"):
            parse_range(bad)
