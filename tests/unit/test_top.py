"""``mutirao top``'s screen, from fixed samples (no cluster, no clock)."""

from __future__ import annotations

from typing import Any

from mutirao.client.top import Sample, Throughput, Top
from mutirao.protocol import WorkerView


def _worker(wid: str, running: int, slots: int, age: float, state: str = "alive") -> WorkerView:
    return {
        "id": wid,
        "url": f"http://{wid}",
        "state": state,
        "slots": slots,
        "running": running,
        "load": running / slots,
        "types": ["echo", "sleep"],
        "heartbeat_age": age,
    }


def _cluster(succeeded: int) -> dict[str, Any]:
    return {
        "node": "o1",
        "url": "http://o1:7000",
        "epoch": 3,
        "standbys": [{"node": "o2", "url": "http://o2:7001", "synced": True, "lag": 0}],
        "tasks": {"pending": 5, "running": 3, "succeeded": succeeded, "failed": 1},
        "queue": {"sleep": 4, "echo": 1},
    }


def test_a_screen_shows_leader_tasks_queue_and_each_worker() -> None:
    workers = [_worker("W1", 3, 4, 0.2), _worker("W2", 0, 4, 7.5, "dead")]
    top = Top("http://o1:7000", 2.0)
    first = top.render(Sample(100.0, workers, _cluster(10)))
    assert "every 2s (Ctrl-C quits)" in first
    assert "leader: o1 at http://o1:7000, epoch 3; standbys: o2 (in sync, lag 0)" in first
    assert "tasks: pending 5  running 3  succeeded 10  failed 1\n" in first  # no rate yet
    assert "queue: 5 pending (echo 1, sleep 4)" in first
    lines = first.splitlines()
    assert lines[-3].split() == ["WORKER", "STATE", "RUNNING", "LOAD", "HEARTBEAT", "TYPES"]
    assert lines[-2].split() == ["W1", "alive", "3/4", "[########..]", "75%", "0.2s", "echo,sleep"]
    assert lines[-1].split()[:5] == ["W2", "dead", "0/4", "[..........]", "0%"]
    assert "7.5s" in lines[-1]
    second = top.render(Sample(102.0, workers, _cluster(30)))
    assert "| 10.0 finished/s" in second  # (30 + 1) - (10 + 1) tasks in 2 s


def test_once_has_no_interval_and_no_workers_say_so() -> None:
    screen = Top("http://o1:7000", None).render(Sample(0.0, [], _cluster(0)))
    assert "Ctrl-C" not in screen
    assert screen.endswith("no workers registered")


def test_throughput_ignores_a_counter_that_went_backwards() -> None:
    rate = Throughput()
    assert rate.update(0.0, 100) is None
    assert rate.update(1.0, 150) == 50.0
    assert rate.update(2.0, 10) == 50.0  # a new leader with fewer tasks: keep the last rate
