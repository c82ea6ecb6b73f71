"""Login throttling on a controlled clock: who gets locked out, for how long, and what
clears it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mutirao.orchestrator.throttle import LoginThrottle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _throttle(clock: Clock, **kw: float) -> LoginThrottle:
    return LoginThrottle(clock=clock, **kw)  # type: ignore[arg-type]


def test_a_user_may_fail_a_few_times_then_waits_doubling_times() -> None:
    clock = Clock()
    throttle = _throttle(clock, free_per_user=5, free_per_address=100)
    for _ in range(5):
        assert throttle.wait("bob", "10.0.0.1") == (0.0, "user")
        throttle.failed("bob", "10.0.0.1")
    assert throttle.wait("bob", "10.0.0.1") == (0.0, "user")
    throttle.failed("bob", "10.0.0.1")  # the 6th failure locks for 1 s
    assert throttle.wait("bob", "10.0.0.2") == (1.0, "user"), "any address"
    clock.now += 1.0
    throttle.failed("bob", "10.0.0.1")
    assert throttle.wait("bob", "10.0.0.1") == (2.0, "user")
    clock.now += 2.0
    throttle.failed("bob", "10.0.0.1")
    assert throttle.wait("bob", "10.0.0.1") == (4.0, "user")
    assert throttle.wait("alice", "10.0.0.3") == (0.0, "user"), "others are not held"


def test_the_lock_is_capped_and_forgotten_after_a_quiet_while() -> None:
    clock = Clock()
    throttle = _throttle(clock, free_per_user=0, max_lock=300.0, forget=900.0)
    for _ in range(40):
        throttle.failed("bob", "a")
    assert throttle.wait("bob", "a")[0] == 300.0
    clock.now += 901.0
    assert throttle.wait("bob", "a") == (0.0, "user")
    throttle.failed("bob", "a")
    assert throttle.wait("bob", "a")[0] == 1.0, "counting starts afresh"


def test_a_success_clears_the_user_but_not_the_address() -> None:
    clock = Clock()
    throttle = _throttle(clock, free_per_user=2, free_per_address=3)
    for name in ("u1", "u2", "u3", "me"):
        throttle.failed(name, "10.0.0.9")
    throttle.succeeded("me")
    assert throttle.wait("me", "10.0.0.1") == (0.0, "user")
    assert throttle.wait("me", "10.0.0.9") == (1.0, "address"), "guessing from one address"


def test_made_up_names_cannot_grow_the_memory_past_its_capacity() -> None:
    clock = Clock()
    throttle = _throttle(clock, free_per_user=0, capacity=100)
    for i in range(1000):
        throttle.failed(f"user{i}", "a")
    assert len(throttle._users._keys) == 100
    assert throttle.wait("user999", "b")[0] > 0, "the newest are kept"


@given(st.lists(st.sampled_from(["fail", "ok", "tick"]), max_size=60))
def test_never_a_negative_wait_and_never_past_the_cap(steps: list[str]) -> None:
    clock = Clock()
    throttle = _throttle(clock, free_per_user=1, free_per_address=2, max_lock=8.0)
    for step in steps:
        if step == "fail":
            throttle.failed("bob", "a")
        elif step == "ok":
            throttle.succeeded("bob")
        else:
            clock.now += 1.5
        wait, _ = throttle.wait("bob", "a")
        assert 0.0 <= wait <= 8.0
