"""Schedules: the ticks (cron through croniter, in a time zone, and ``every``), property
tests of their edge cases, and the engine firing them once per tick, catching up after
downtime as ``catch_up`` says, with ``overlap``; every scenario replayed from its records."""

from __future__ import annotations

import datetime
import zoneinfo
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mutirao.errors import ValidationError
from mutirao.orchestrator.schedules import Schedule, ScheduleSpec, checked, fires, tick_key
from mutirao.protocol import TaskState
from tests.unit.test_engine import Harness, replay

LISBON = zoneinfo.ZoneInfo("Europe/Lisbon")
NEW_YORK = zoneinfo.ZoneInfo("America/New_York")
TASK = {"type": "echo", "payload": "tick", "priority": 0, "max_attempts": 3, "timeout": 300.0}


def at(zone: zoneinfo.ZoneInfo, *when: int) -> float:
    return datetime.datetime(*when, tzinfo=zone).timestamp()  # type: ignore[misc]


def schedule(**fields: Any) -> Schedule:
    fields.setdefault("created_at", 0.0)
    return Schedule("nightly", "alice", TASK, **fields)


def test_every_ticks_on_multiples_of_its_period() -> None:
    s = schedule(every=5.0, created_at=12.0)
    assert s.next_tick(12.0) == 15.0
    assert s.next_tick(15.0) == 20.0
    assert tick_key("nightly", 15.0) == "nightly@1970-01-01T00:00:15Z"
    assert tick_key("fast", 15.25) == "fast@1970-01-01T00:00:15.250Z"


def test_cron_in_a_time_zone_across_dst_and_month_ends() -> None:
    # 01:30 does not exist in Lisbon on 2026-03-29 (01:00 -> 02:00): it fires at 02:00.
    s = schedule(cron="30 1 * * *", timezone="Europe/Lisbon")
    assert s.next_tick(at(LISBON, 2026, 3, 28, 12)) == at(LISBON, 2026, 3, 29, 2, 0)
    assert s.next_tick(at(LISBON, 2026, 3, 29, 12)) == at(LISBON, 2026, 3, 30, 1, 30)
    # The last day of each month: 30, 31 and February 28.
    month_end = schedule(cron="0 12 L * *", timezone="America/New_York")
    assert month_end.next_tick(at(NEW_YORK, 2027, 2, 1)) == at(NEW_YORK, 2027, 2, 28, 12)
    assert month_end.next_tick(at(NEW_YORK, 2027, 4, 1)) == at(NEW_YORK, 2027, 4, 30, 12)
    # The 31st skips the months without one.
    thirty_first = schedule(cron="0 0 31 * *", timezone="UTC")
    april = datetime.datetime(2027, 4, 1, tzinfo=datetime.UTC).timestamp()
    assert (
        thirty_first.next_tick(april)
        == datetime.datetime(2027, 5, 31, tzinfo=datetime.UTC).timestamp()
    )


@settings(max_examples=200, deadline=None)
@given(
    minute=st.integers(0, 59),
    hour=st.integers(0, 23),
    start=st.floats(1.7e9, 1.9e9),
    zone=st.sampled_from(["UTC", "Europe/Lisbon", "America/New_York", "Australia/Sydney"]),
)
def test_cron_ticks_move_forward_at_the_wall_clock_time_asked(
    minute: int, hour: int, start: float, zone: str
) -> None:
    """Whatever the zone and start: the next tick is later, within a day and an hour (a
    DST change), at the minute asked, and at the hour asked unless DST skipped it."""
    s = schedule(cron=f"{minute} {hour} * * *", timezone=zone)
    tick = s.next_tick(start)
    assert start < tick <= start + 25 * 3600
    local = datetime.datetime.fromtimestamp(tick, zoneinfo.ZoneInfo(zone))
    assert local.minute == minute or (local.minute == 0 and local.hour == hour + 1)
    assert local.hour in (hour, (hour + 1) % 24)
    assert s.next_tick(tick) > tick


@settings(max_examples=100, deadline=None)
@given(every=st.floats(0.5, 3600), start=st.floats(0, 1e9), gap=st.floats(0, 10_000))
def test_catch_up_fires_what_it_says_and_records_the_newest_tick(
    every: float, start: float, gap: float
) -> None:
    now = start + gap
    for mode in ("none", "last", "all"):
        s = schedule(every=every, last_tick=start, catch_up=mode)
        ticks, newest, missed = fires(s, now)
        passed = int(now // every) - int(start // every)
        if passed == 0:
            assert (ticks, newest) == ([], None)
            continue
        assert newest is not None
        assert newest <= now < newest + every
        assert all(start < t <= now for t in ticks)
        if mode == "last":
            assert ticks == [newest]
        if mode == "none":
            assert all(now - t <= 2.0 for t in ticks)
        if mode == "all" and passed <= 1000:
            assert len(ticks) == passed
        assert missed == passed - len(ticks) or passed > 1000


def test_a_spec_needs_one_of_cron_and_every_and_a_known_zone() -> None:
    def spec(**fields: Any) -> ScheduleSpec:
        return msgspec.convert({"name": "n", "task": msgspec.Raw(b"{}"), **fields}, ScheduleSpec)

    for fields, field in [
        ({}, "cron"),
        ({"cron": "* * * * *", "every": 5}, "cron"),
        ({"cron": "61 * * * *"}, "cron"),
        ({"every": 5, "timezone": "Mars/Olympus"}, "timezone"),
    ]:
        with pytest.raises(ValidationError) as err:
            checked(spec(**fields))
        assert err.value.field == field, fields
    checked(spec(cron="*/5 * * * *", timezone="Europe/Lisbon"))


# -- the engine fires them ------------------------------------------------------------------


def add(h: Harness, now: float, **fields: Any) -> None:
    s = Schedule(fields.pop("name", "every2"), "alice", TASK, now, **fields)
    h._keep(h.engine.record({"e": "schedule", "s": msgspec.to_builtins(s)}))


def fired(h: Harness) -> list[str]:
    return [t.key or "" for t in h.engine.table.tasks.values()]


@pytest.fixture
def h() -> Harness:
    harness = Harness()
    harness.hello("w1", 0.0, slots=8)
    return harness


def test_a_schedule_fires_once_per_tick_and_a_new_leader_does_not_fire_again(
    h: Harness,
) -> None:
    add(h, 0.5, every=2.0)
    for now in (1.0, 2.0, 2.1, 3.9, 4.0):
        h.heartbeat("w1", now)
        h.tick(now)
    assert fired(h) == ["every2@1970-01-01T00:00:02Z", "every2@1970-01-01T00:00:04Z"]
    s = h.engine.table.schedules["every2"]
    assert (s.last_tick, s.fires, s.misses) == (4.0, 2, 0)
    # A new leader from the journal: same state, and tick 4 is not fired again.
    fresh = replay(h.records)
    fresh.recovered(4.5)
    fresh.tick(4.5)
    assert sorted(t.key or "" for t in fresh.table.tasks.values()) == sorted(fired(h))
    fresh.tick(6.0)
    assert len(fresh.table.tasks) == 3


def test_after_downtime_catch_up_decides(h: Harness) -> None:
    add(h, 0.0, name="none", every=10.0)
    add(h, 0.0, name="last", every=10.0, catch_up="last")
    add(h, 0.0, name="all", every=10.0, catch_up="all")
    h.heartbeat("w1", 35.0)
    h.tick(35.0)  # ticks 10, 20, 30 came while nobody fired
    keys = fired(h)
    assert [k for k in keys if k.startswith("none@")] == []
    assert [k for k in keys if k.startswith("last@")] == ["last@1970-01-01T00:00:30Z"]
    assert len([k for k in keys if k.startswith("all@")]) == 3
    schedules = h.engine.table.schedules
    assert [schedules[n].misses for n in ("none", "last", "all")] == [3, 2, 0]


def test_overlap_skip_and_replace(h: Harness) -> None:
    slow = {**TASK, "type": "sleep"}
    h.hello("w2", 0.0, slots=8, types=["sleep"])
    for name, overlap in (("skip", "skip"), ("replace", "replace")):
        s = Schedule(name, "alice", slow, 0.0, every=1.0, overlap=overlap)
        h._keep(h.engine.record({"e": "schedule", "s": msgspec.to_builtins(s)}))
    for now in (1.0, 2.0):
        h.heartbeat("w1", now)
        h.heartbeat("w2", now)
        h.tick(now)
    tasks = list(h.engine.table.tasks.values())
    skipped = [t for t in tasks if (t.key or "").startswith("skip@")]
    replaced = [t for t in tasks if (t.key or "").startswith("replace@")]
    assert len(skipped) == 1, "the second tick found the first still running"
    assert h.engine.table.schedules["skip"].misses == 1
    assert [t.state for t in replaced] == [TaskState.CANCELLED, TaskState.ASSIGNED]
