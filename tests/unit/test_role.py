"""The acknowledgement rule, on a controlled monotonic clock: no socket, no sleep.

A node may acknowledge only while its lease cannot have lapsed; the first thing it does
after a pause past the deadline is step down, all at once (see :mod:`mutirao.ha.role`).
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mutirao.errors import NotLeaderError
from mutirao.ha.lease import Lease, Tenure
from mutirao.ha.replication import Hub
from mutirao.ha.role import Role, Roles
from mutirao.ha.witness import Witness
from tests.unit.test_metrics import Clock
from tests.unit.test_replication_hub import replica

DURATION = 5.0
MARGIN = 1.0


def leading(clock: Clock, *, shared_record: bool = True) -> Roles:
    roles = Roles("a", Hub(), shared_record=shared_record, monotonic=clock)
    lease = Lease("a", "http://a.test", 2, 0.0, DURATION, ("a", "b"))
    roles.lead(Tenure(lease, clock(), renew_interval=1.0, margin=MARGIN), lease.url)
    return roles


def test_acknowledges_until_the_deadline_then_steps_down_at_once() -> None:
    clock = Clock(100.0)
    roles = leading(clock)
    clock.now = 100.0 + DURATION - MARGIN - 0.001
    assert roles.acknowledgeable()
    clock.now = 100.0 + DURATION - MARGIN
    assert not roles.acknowledgeable()
    assert roles.role is Role.STANDBY
    assert roles.deposed.is_set()
    assert "may have lapsed" in roles.deposed_reason
    assert roles.tenure is None


async def test_after_a_pause_the_first_request_is_refused_and_waiters_fail() -> None:
    """A pause (SIGSTOP) moves the monotonic clock past the deadline with nothing run in
    between: the first check refuses (421, no leader named as it is unknown), and what
    waited on the standby fails instead of being acknowledged later."""
    clock = Clock(100.0)
    roles = leading(clock)
    roles.hub.subscribe(replica("b")[0])
    waiting = roles.hub.wait(1)
    clock.now += 30.0  # paused
    with pytest.raises(NotLeaderError) as refused:
        roles.require_active()
    assert refused.value.status == 421
    assert refused.value.to_json()["leader"] is None
    assert waiting.done()
    assert isinstance(waiting.exception(), ConnectionError)
    # Renewing later cannot bring it back: a new tenure is a new acquisition.
    assert not roles.acknowledgeable()


def test_a_renewal_counts_from_when_it_was_asked() -> None:
    clock = Clock(100.0)
    roles = leading(clock)
    assert roles.tenure is not None
    tenure = roles.tenure
    clock.now = 103.0
    tenure.renewed(tenure.lease, asked_at=101.0)  # sent at 101, answered at 103
    clock.now = 101.0 + DURATION - MARGIN - 0.01
    assert roles.acknowledgeable()
    clock.now = 101.0 + DURATION - MARGIN
    assert not roles.acknowledgeable()


def test_peer_lease_a_silent_eligible_standby_bounds_the_holder() -> None:
    """With no shared record, a standby told it is in sync may take over once it heard no
    beat for a lease duration: the holder stops counting from the last beat it knows
    reached it, however often it 'renews' on its own."""
    clock = Clock(100.0)
    roles = leading(clock, shared_record=False)
    assert roles.tenure is not None
    roles.hub.witness.sent("b", 100.0, eligible=True)
    roles.hub.witness.confirmed("b", 100.0, eligible=True)
    for now in (101.0, 102.0, 103.0, 103.9):
        clock.now = now
        roles.tenure.renewed(roles.tenure.lease, asked_at=now)  # peer renewals go on alone
        assert roles.acknowledgeable()
    clock.now = 100.0 + DURATION - MARGIN
    assert not roles.acknowledgeable()
    assert "standby b" in roles.deposed_reason


def test_peer_lease_a_standby_gone_or_out_of_sync_no_longer_bounds() -> None:
    clock = Clock(100.0)
    roles = leading(clock, shared_record=False)
    witness = roles.hub.witness
    witness.sent("b", 100.0, eligible=True)
    witness.sent("c", 100.0, eligible=True)
    witness.down("b")  # its port refused us: its process is gone
    witness.confirmed("c", 100.5, eligible=False)  # resynchronising: not eligible
    clock.now = 103.9
    assert roles.tenure is not None
    roles.tenure.renewed(roles.tenure.lease, asked_at=103.9)
    clock.now = 104.5
    assert roles.acknowledgeable()


def test_witness_counts_unconfirmed_eligible_beats_from_when_they_were_sent() -> None:
    witness = Witness()
    witness.sent("b", 1.0, eligible=False)
    assert witness.oldest() is None  # never told it is in sync: it cannot take over
    witness.sent("b", 2.0, eligible=True)
    witness.sent("b", 3.0, eligible=True)
    assert witness.oldest() == ("b", 2.0)
    witness.confirmed("b", 1.0, eligible=False)  # the first beat arrived: 2.0 may still
    assert witness.oldest() == ("b", 2.0)
    witness.confirmed("b", 3.0, eligible=True)
    assert witness.oldest() == ("b", 3.0)
    witness.confirmed("b", 2.5, eligible=False)  # stale echo: ignored
    assert witness.oldest() == ("b", 3.0)


@given(
    beats=st.lists(
        st.tuples(st.floats(0.01, 5.0), st.booleans(), st.booleans()), min_size=1, max_size=30
    )
)
def test_witness_never_bounds_later_than_the_standbys_own_view(
    beats: list[tuple[float, bool, bool]],
) -> None:
    """Model: beats sent in order, each delivered or lost; the standby is eligible iff the
    last beat it received said so, and its view counts from that beat's send time. Acks
    echo the newest received beat, in order. Whenever the standby is eligible, the
    witness's bound is no later than the beat its view counts from."""
    witness = Witness()
    now = 0.0
    received: tuple[float, bool] | None = None
    for gap, synced, delivered in beats:
        now += gap
        witness.sent("b", now, synced)
        if delivered:
            received = (now, synced)
            witness.confirmed("b", now, synced)
        if received is not None and received[1]:
            oldest = witness.oldest()
            assert oldest is not None
            assert oldest[1] <= received[0]


async def test_step_down_is_idempotent_and_remembers_the_newest_epoch() -> None:
    clock = Clock(100.0)
    roles = leading(clock)
    roles.step_down("a worker has seen epoch 7", 7)
    roles.step_down("again", 5)
    assert roles.seen_epoch == 7
    assert roles.deposed_reason == "a worker has seen epoch 7"
    await asyncio.wait_for(roles.deposed.wait(), 1)
