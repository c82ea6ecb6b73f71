"""The journal: record encoding, recovery of torn/corrupt lines, group commit, checkpoints."""

from __future__ import annotations

import asyncio
import logging
import threading
import zlib
from pathlib import Path
from typing import Any

import orjson
import pytest

from mutirao.orchestrator.checkpoint import CHECKPOINT_NAME, PREVIOUS_NAME, RecoveryError
from mutirao.orchestrator.journal import (
    Journal,
    Recovered,
    encode_record,
    recover,
)

Records = list[dict[str, Any]]


def segment(directory: Path, number: int) -> Path:
    return directory / f"journal-{number:08d}.log"


def records(count: int, start: int = 0) -> Records:
    return [{"e": "submit", "i": i, "text": f"record {i} ✓"} for i in range(start, start + count)]


def listing(directory: Path, pattern: str = "*") -> list[str]:
    return sorted(p.name for p in directory.glob(pattern))


def write_segment(directory: Path, number: int, data: bytes) -> None:
    segment(directory, number).write_bytes(data)


def test_encode_record_is_crc_space_json_newline() -> None:
    record = {"e": "types", "types": ["echo"]}
    line = encode_record(record)
    body = orjson.dumps(record)
    assert line == b"%08x " % zlib.crc32(body) + body + b"\n"


def test_encode_then_recover_round_trip(tmp_path: Path) -> None:
    first, second = records(3), records(2, start=3)
    write_segment(tmp_path, 1, b"".join(encode_record(r) for r in first))
    write_segment(tmp_path, 2, b"".join(encode_record(r) for r in second))
    recovered = recover(tmp_path)
    assert recovered.snapshot is None
    assert recovered.records == first + second
    assert recovered.skipped == 0
    assert recovered.next_segment == 3


def test_segments_are_replayed_in_numeric_order(tmp_path: Path) -> None:
    write_segment(tmp_path, 10, encode_record({"i": 10}))
    write_segment(tmp_path, 9, encode_record({"i": 9}))
    write_segment(tmp_path, 100, encode_record({"i": 100}))
    recovered = recover(tmp_path)
    assert recovered.records == [{"i": 9}, {"i": 10}, {"i": 100}]
    assert recovered.next_segment == 101


def test_recover_of_an_empty_or_missing_directory(tmp_path: Path) -> None:
    directory = tmp_path / "does" / "not" / "exist"
    recovered = recover(directory)
    assert directory.is_dir()
    assert (recovered.snapshot, recovered.records, recovered.skipped) == (None, [], 0)
    assert recovered.next_segment == 1


def test_a_torn_last_line_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = records(2)
    torn = encode_record({"e": "finish", "items": ["x" * 50]})[:-20]  # crashed mid-write
    write_segment(tmp_path, 1, b"".join(encode_record(r) for r in good) + torn)
    with caplog.at_level(logging.WARNING, logger="mutirao.orchestrator.journal"):
        recovered = recover(tmp_path)
    assert recovered.records == good
    assert recovered.skipped == 1
    assert "torn or corrupt" in caplog.text
    assert "journal-00000001.log:3" in caplog.text


def test_a_complete_line_without_its_newline_is_still_torn(tmp_path: Path) -> None:
    write_segment(tmp_path, 1, encode_record({"i": 1}) + encode_record({"i": 2})[:-1])
    recovered = recover(tmp_path)
    assert recovered.records == [{"i": 1}]
    assert recovered.skipped == 1


def test_the_zeros_reserved_at_the_end_of_a_segment_end_it_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash leaves a segment's reserved, never written space (zeros) behind its records:
    the end of the segment, not a corrupt record. A record torn just before it still is."""
    good = records(3)
    body = b"".join(encode_record(r) for r in good)
    write_segment(tmp_path, 1, body + b"\0" * 4096)
    torn = encode_record({"i": 9})[:-5]
    write_segment(tmp_path, 2, body + torn + b"\0" * 4096)
    with caplog.at_level(logging.WARNING, logger="mutirao.orchestrator.journal"):
        recovered = recover(tmp_path)
    assert recovered.records == good + good
    assert recovered.skipped == 1
    assert caplog.text.count("torn or corrupt") == 1
    assert "journal-00000002.log:4" in caplog.text


async def test_segments_reserve_space_ahead_and_are_cut_back_on_close(tmp_path: Path) -> None:
    written = records(40)
    size = sum(len(encode_record(r)) for r in written)
    path = tmp_path / "journal-00000001.log"
    async with Journal(tmp_path, 1, reserve=256) as journal:
        for i in range(0, 40, 4):  # past several reservations
            await journal.append(written[i : i + 4])
        assert path.stat().st_size > size  # reserved ahead of the records
        rotated = journal.rotate()
        await rotated
        assert path.stat().st_size == size  # a segment left behind is cut back
        await journal.append(records(1, start=40))
    assert recover(tmp_path).records == [*written, *records(1, start=40)]
    assert (tmp_path / "journal-00000002.log").stat().st_size == len(
        encode_record(records(1, start=40)[0])
    )


def test_a_line_with_a_bad_crc_is_skipped_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    one, two, three = (encode_record(r) for r in records(3))
    flipped = two.replace(b"record 1", b"record 7")  # same length, same CRC field
    assert flipped != two
    garbage = b"not a journal line at all\n"
    not_object = b"%08x [1]\n" % zlib.crc32(b"[1]")
    write_segment(tmp_path, 1, one + flipped + three + garbage + not_object)
    with caplog.at_level(logging.WARNING, logger="mutirao.orchestrator.journal"):
        recovered = recover(tmp_path)
    assert recovered.records == [records(3)[0], records(3)[2]]
    assert recovered.skipped == 3
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage().rsplit(":", 1)[1] for r in warnings] == ["2", "4", "5"]


async def test_appended_records_are_durable_after_close(tmp_path: Path) -> None:
    async with Journal(tmp_path, 1) as journal:
        await journal.append(records(3))
        future = journal.append(records(2, start=3))
        await future
        assert journal.records_since_checkpoint == 5
    recovered = recover(tmp_path)
    assert recovered.records == records(5)
    assert recovered.skipped == 0
    assert recovered.next_segment == 2


async def test_concurrent_appends_are_group_committed_in_order(tmp_path: Path) -> None:
    async with Journal(tmp_path, 1, fsync=False) as journal:
        futures = [journal.append(records(1, start=i)) for i in range(200)]
        await asyncio.gather(*futures)
    assert recover(tmp_path).records == records(200)


@pytest.mark.parametrize(
    ("inline_below", "on_loop"), [(1.0, [False, True, True]), (0.0, [False] * 3)]
)
async def test_a_fast_disk_is_written_on_the_loop_a_slow_one_in_a_thread(
    tmp_path: Path, inline_below: float, on_loop: list[bool]
) -> None:
    """The first group goes to a thread (nothing measured yet); later ones stay on the loop
    while the last one took less than ``inline_below`` seconds."""
    loop_thread = threading.get_ident()
    where: list[bool] = []
    journal = Journal(
        tmp_path,
        1,
        inline_below=inline_below,
        on_write=lambda _: where.append(threading.get_ident() == loop_thread),
    )
    async with journal:
        for i in range(3):
            await journal.append(records(1, start=i))
    assert where == on_loop
    assert recover(tmp_path).records == records(3)


async def test_an_empty_append_is_a_barrier_for_earlier_records(tmp_path: Path) -> None:
    async with Journal(tmp_path, 1, fsync=False) as journal:
        idle = journal.append([])
        assert idle.done()  # nothing in flight: resolves at once
        done: list[str] = []
        first = journal.append(records(3))
        first.add_done_callback(lambda _: done.append("records"))
        barrier = journal.append([])
        assert not barrier.done()
        barrier.add_done_callback(lambda _: done.append("barrier"))
        await barrier
        assert first.done()
        assert done == ["records", "barrier"]
        assert journal.records_since_checkpoint == 3
    assert recover(tmp_path).records == records(3)


async def test_records_queued_before_close_are_written(tmp_path: Path) -> None:
    journal = Journal(tmp_path, 1)
    async with journal:
        future = journal.append(records(4))
    assert future.done()
    assert future.exception() is None
    assert recover(tmp_path).records == records(4)


async def test_append_after_close_fails(tmp_path: Path) -> None:
    async with Journal(tmp_path, 1) as journal:
        pass
    with pytest.raises(RuntimeError, match="journal is closed"):
        await journal.append(records(1))


async def test_a_new_journal_after_recovery_writes_a_new_segment(tmp_path: Path) -> None:
    torn = encode_record({"i": 99})[:5]
    write_segment(tmp_path, 1, encode_record({"i": 1}) + torn)
    recovered = recover(tmp_path)
    async with Journal(tmp_path, recovered.next_segment) as journal:
        await journal.append([{"i": 2}])
    # The torn tail stays where it was; the new record is not glued onto it.
    assert segment(tmp_path, 2).exists()
    again = recover(tmp_path)
    assert again.records == [{"i": 1}, {"i": 2}]
    assert again.skipped == 1


def pieces(doc: Any) -> list[bytes]:
    """A snapshot as the journal takes it: pieces of one JSON document."""
    encoded = orjson.dumps(doc)
    return [encoded[:1], encoded[1:]]


def state(recovered: Recovered) -> Any:
    assert recovered.snapshot is not None
    return orjson.loads(recovered.snapshot)


async def test_a_checkpoint_records_where_replay_starts_and_a_checksum(tmp_path: Path) -> None:
    async with Journal(tmp_path, 1) as journal:
        await journal.append(records(3))
        await journal.checkpoint(pieces({"tasks": ["snapshot of the first three"]}))
        assert journal.segment == 2
        assert journal.records_since_checkpoint == 0
        await journal.append(records(2, start=3))

    raw = (tmp_path / CHECKPOINT_NAME).read_bytes()
    state_bytes = orjson.dumps({"tasks": ["snapshot of the first three"]})
    assert orjson.loads(raw) == {
        "version": 2,
        "segment": 2,
        "crc": zlib.crc32(state_bytes),
        "state": {"tasks": ["snapshot of the first three"]},
    }
    # With no earlier checkpoint to fall back to, the first one keeps the whole journal.
    assert listing(tmp_path) == ["journal-00000001.log", "journal-00000002.log", CHECKPOINT_NAME]

    recovered = recover(tmp_path)
    assert state(recovered) == {"tasks": ["snapshot of the first three"]}
    assert recovered.records == records(2, start=3)
    assert recovered.next_segment == 3


async def test_the_next_checkpoint_waits_for_half_the_last_ones_bytes(tmp_path: Path) -> None:
    """Early checkpoints need ``min_records`` records and, once one was written, half its
    size in journal bytes: a big state is not re-encoded every few thousand records."""
    async with Journal(tmp_path, 1) as journal:
        assert not journal.outgrown(3)
        await journal.append(records(3))
        assert journal.outgrown(3), "no checkpoint yet: the record count alone decides"
        big = {"tasks": ["x" * 100] * 20}
        await journal.checkpoint(pieces(big))
        assert journal.checkpoint_bytes == len(orjson.dumps(big))
        await journal.append(records(3, start=3))
        assert not journal.outgrown(3), "3 small records are not half of that checkpoint"
        while 2 * journal.bytes_since_checkpoint < journal.checkpoint_bytes:
            await journal.append(records(1))
        assert journal.outgrown(3)
        assert not journal.outgrown(10**6)


async def _three_checkpoints(directory: Path) -> None:
    async with Journal(directory, 1) as journal:
        for n in range(3):
            await journal.append(records(1, start=n))
            await journal.checkpoint(pieces({"n": n + 1}))
        await journal.append(records(1, start=3))


async def test_a_checkpoint_keeps_the_segments_from_the_previous_one_on(tmp_path: Path) -> None:
    await _three_checkpoints(tmp_path)
    # Checkpoints 2 (previous, replays from segment 3) and 3 (replays from segment 4).
    assert listing(tmp_path, "journal-*.log") == ["journal-00000003.log", "journal-00000004.log"]
    recovered = recover(tmp_path)
    assert state(recovered) == {"n": 3}
    assert recovered.records == records(1, start=3)


async def test_a_damaged_checkpoint_falls_back_to_the_previous_one_plus_the_journal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await _three_checkpoints(tmp_path)
    current = tmp_path / CHECKPOINT_NAME
    current.write_bytes(current.read_bytes().replace(b'"n":3', b'"n":7'))  # a flipped byte
    recovered = recover(tmp_path)
    assert state(recovered) == {"n": 2}
    assert recovered.records == records(2, start=2)  # what the damaged one held, replayed
    damaged = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert damaged == [
        f"checkpoint {current} is damaged (its checksum does not match its content): "
        "trying an earlier state"
    ]


async def test_damaged_checkpoints_with_the_journal_compacted_refuse_to_start(
    tmp_path: Path,
) -> None:
    """Never a silent partial state: with both checkpoints damaged and the journal before
    them gone, recovery stops with one line saying why and what to do."""
    await _three_checkpoints(tmp_path)
    (tmp_path / CHECKPOINT_NAME).write_bytes(b'{"version":2,"segment":4,"crc":1,"sta')
    (tmp_path / PREVIOUS_NAME).write_bytes(b"\0" * 10)
    with pytest.raises(RecoveryError) as refused:
        recover(tmp_path)
    message = str(refused.value)
    assert "\n" not in message
    assert f"{CHECKPOINT_NAME} is damaged" in message
    assert f"{PREVIOUS_NAME} is damaged" in message
    assert "compacted away" in message


async def test_records_appended_right_after_the_checkpoint_call_land_after_it(
    tmp_path: Path,
) -> None:
    # checkpoint() rotates synchronously, so records appended while it is being written
    # belong to the next segment and are replayed on top of the snapshot.
    async with Journal(tmp_path, 1, fsync=False) as journal:
        earlier = journal.append(records(2))
        checkpoint = asyncio.create_task(journal.checkpoint(pieces({"upto": 2})))
        await asyncio.sleep(0)  # let checkpoint() take its turn and rotate
        assert journal.segment == 2
        later = journal.append(records(2, start=2))
        await asyncio.gather(earlier, checkpoint, later)
    recovered = recover(tmp_path)
    assert state(recovered) == {"upto": 2}
    assert recovered.records == records(2, start=2)


def test_a_checkpoint_without_later_segments_recovers_past_it(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINT_NAME).write_bytes(
        orjson.dumps({"version": 1, "segment": 5, "state": {"n": 0}})
    )
    write_segment(tmp_path, 4, encode_record({"old": True}))  # compaction interrupted
    recovered = recover(tmp_path)
    assert state(recovered) == {"n": 0}
    assert recovered.records == []
    assert recovered.next_segment == 5


async def test_a_record_it_cannot_encode_fails_only_its_own_append(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Defence behind the submission checks: one unencodable record (an integer beyond 64
    bits) fails its own append; the appends queued around it are written and resolve."""
    async with Journal(tmp_path, 1) as journal:
        before = journal.append([{"i": 1}])
        bad = journal.append([{"i": 2}, {"i": 10**30}])
        after = journal.append([{"i": 3}])
        await asyncio.gather(before, after)
        with pytest.raises(ValueError, match="cannot be journaled"):
            await bad
    assert [r["i"] for r in recover(tmp_path).records] == [1, 3]
    assert "cannot encode" in caplog.text


async def test_a_fresh_checkpoint_leaves_no_fallback_into_the_old_history(
    tmp_path: Path,
) -> None:
    """A standby that installed a leader's snapshot: replaying its older journal under an
    earlier checkpoint would rebuild a history it no longer follows, so none is kept."""
    await _three_checkpoints(tmp_path)
    async with Journal(tmp_path, 5) as journal:
        await journal.checkpoint(pieces({"from": "the leader"}), fresh=True)
    assert not (tmp_path / PREVIOUS_NAME).exists()
    assert listing(tmp_path, "journal-*.log") == ["journal-00000006.log"]
    assert state(recover(tmp_path)) == {"from": "the leader"}
    (tmp_path / CHECKPOINT_NAME).write_bytes(b"{}")
    with pytest.raises(RecoveryError):
        recover(tmp_path)
