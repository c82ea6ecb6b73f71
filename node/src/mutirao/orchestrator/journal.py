"""Durable state: an append-only, checksummed, group-committed journal plus checkpoints.

Records are appended as lines ``<crc32 hex> <json>\\n`` to numbered segment files. One writer
task writes and fsyncs whatever accumulated while the previous fsync ran (group commit), so
under load many submissions share one fsync; :meth:`Journal.commit` returns once its records
are on disk. A checkpoint is a snapshot written atomically (temp file, fsync, rename) that
names the first segment *not* included in it; older segments are then deleted (compaction).
Recovery loads the checkpoint and replays the later segments; a torn or corrupt record is
skipped with a warning.

A segment's space is reserved ahead (``fallocate``), so a write lands in space the file
already has and its fsync flushes the data alone, no size or block metadata: ~0.1 ms less
per fsync on ext4 here, twice on the critical path of a submission waited for. A segment
closed cleanly is cut back to its records; one left by a crash ends in zeros, which
recovery reads as the end of the segment.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from mutirao.orchestrator import checkpoint
from mutirao.private import FILE_MODE, open_private, private_dir

log = logging.getLogger(__name__)

_SEGMENT_GLOB = "journal-*.log"
RESERVE = 16 << 20
"""Bytes of a segment reserved at a time, ahead of its writes."""


def _segment_path(directory: Path, number: int) -> Path:
    return directory / f"journal-{number:08d}.log"


def _segment_number(path: Path) -> int:
    return int(path.stem.split("-", 1)[1])


def encode_record(record: dict[str, Any]) -> bytes:
    body = orjson.dumps(record)
    return b"%08x %b\n" % (zlib.crc32(body), body)


def _decode_line(line: bytes) -> dict[str, Any] | None:
    if not line.endswith(b"\n") or len(line) < 10 or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        record = orjson.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


@dataclass
class Recovered:
    snapshot: bytes | None
    """The checkpoint's state, as JSON (decoded by whoever knows its shape)."""
    records: list[dict[str, Any]]
    skipped: int
    next_segment: int


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def recover(directory: Path) -> Recovered:
    """Read the newest usable checkpoint and every later segment (blocking; call before
    serving). Raises :class:`~mutirao.orchestrator.checkpoint.RecoveryError`."""
    private_dir(directory)
    segments = sorted(directory.glob(_SEGMENT_GLOB), key=_segment_number)
    checkpoints = [directory / checkpoint.CHECKPOINT_NAME, directory / checkpoint.PREVIOUS_NAME]
    for path in [*segments, *filter(Path.exists, checkpoints)]:
        os.chmod(path, FILE_MODE)  # written by a version that made them world-readable
    loaded = checkpoint.load(directory, _segment_number(segments[0]) if segments else None)
    snapshot, first = loaded.snapshot, loaded.segment
    records: list[dict[str, Any]] = []
    skipped = 0
    for path in segments:
        if _segment_number(path) < first:
            continue
        for number, line in enumerate(_lines(path), 1):
            if not line.strip(b"\0"):
                break  # the reserved, never written end of a segment left by a crash
            record = _decode_line(line)
            if record is None:
                skipped += 1
                log.warning("skipping torn or corrupt journal record %s:%d", path.name, number)
                continue
            records.append(record)
    last = max((_segment_number(p) for p in segments), default=first - 1)
    return Recovered(snapshot, records, skipped, max(last + 1, first, 1))


def set_aside(directory: Path) -> Path:
    """Move the checkpoints and journal segments into a new ``damaged-<time>`` folder of
    ``directory`` (kept for a look, never deleted); returns it."""
    aside = directory / time.strftime("damaged-%Y%m%dT%H%M%S")
    private_dir(aside)
    names = [checkpoint.CHECKPOINT_NAME, checkpoint.PREVIOUS_NAME]
    for path in [*directory.glob(_SEGMENT_GLOB), *(directory / name for name in names)]:
        if path.exists():
            path.replace(aside / path.name)
    _fsync_dir(directory)
    return aside


def _lines(path: Path) -> Iterator[bytes]:
    with path.open("rb") as fh:
        yield from fh


class _Segment:
    """The segment being appended to, its space reserved ahead of the writes."""

    def __init__(self, path: Path, reserve: int) -> None:
        # Never an existing file: writes start at offset 0 (a recovered journal always
        # goes on in a new segment).
        self.fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        self.offset = 0
        self.reserved = 0
        self.reserve = reserve

    def write(self, data: bytes) -> None:
        """Append ``data``; on an error nothing counts as written, and writing the same
        bytes again (a retry) overwrites whatever part of them reached the file."""
        end = self.offset + len(data)
        if end > self.reserved and self.reserve:
            try:
                os.posix_fallocate(self.fd, 0, end + self.reserve)
                self.reserved = end + self.reserve
            except OSError as exc:
                if exc.errno != errno.ENOSPC:  # a filesystem without it: plain appends
                    log.warning("cannot reserve journal space (%s); appending without", exc)
                    self.reserve = 0
                # Out of space: no room ahead, but what fits may still be written.
        start = self.offset
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(self.fd, view, self.offset)
                self.offset += written
                view = view[written:]
        except OSError:
            self.offset = start
            raise

    def sync(self) -> None:
        os.fsync(self.fd)

    def close(self) -> None:
        """Cut the segment back to its records, then close it."""
        os.ftruncate(self.fd, self.offset)
        os.close(self.fd)


@dataclass
class _Group:
    data: list[bytes] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    rotate_to: int | None = None
    written: bool = False
    """Its data reached the file (a retry after a failed fsync must not write it twice)."""


class Journal:
    """The writer side; recovery is :func:`recover`."""

    def __init__(
        self,
        directory: Path,
        segment: int,
        *,
        fsync: bool = True,
        on_write: Callable[[float], None] | None = None,
        inline_below: float = 0.001,
        reserve: int = RESERVE,
    ) -> None:
        self.directory = directory
        self.fsync = fsync
        self.on_write = on_write
        """Called (in the writer thread) with the seconds each group took to write and fsync."""
        self.segment = segment
        self.records_since_checkpoint = 0
        self.bytes_since_checkpoint = 0
        self.checkpoint_bytes = 0
        """Size of the last checkpoint this process wrote (0: none yet)."""
        self.reserve = reserve
        self._file = _Segment(_segment_path(directory, segment), reserve)
        self._queue: list[_Group] = []
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closed = False
        self._writing = False
        self.last_fsync_seconds = math.inf
        """How long the last group took to write and fsync; unknown at first."""
        self.no_space = False
        """Set while the disk is full: writes are refused, the stuck group is retried."""
        self.retry_interval = 0.5
        """Seconds between two tries to write a group while the disk is full."""
        self.inline_below = inline_below
        """Write a group on the event loop itself while the last one took less than this:
        a fast disk's fsync (~0.2 ms) is cheaper than handing it to a thread and back (two
        thread switches and GIL hand-overs, ~0.3 ms on the critical path of every submission
        and result), and under load groups grow so that it stays a few percent of the time.
        A slow disk's fsync runs in a thread, so the loop keeps working meanwhile."""

    async def __aenter__(self) -> Journal:
        self._writer = asyncio.create_task(self._write_loop(), name="journal-writer")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        self._wakeup.set()
        if self._writer is not None:
            await self._writer
        self._file.close()

    def _open_group(self) -> _Group:
        if not self._queue or self._queue[-1].rotate_to is not None:
            self._queue.append(_Group())
        return self._queue[-1]

    def append(self, records: list[dict[str, Any]]) -> asyncio.Future[None]:
        """Queue records in order; the future resolves once they are durable."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_exception(RuntimeError("journal is closed"))
            return future
        if not records and not self._queue and not self._writing:
            future.set_result(None)  # nothing to write and nothing earlier still in flight
            return future
        try:
            data = [encode_record(r) for r in records]
        except TypeError as exc:  # orjson.JSONEncodeError: a bug upstream, not the disk's
            log.error("refusing records the journal cannot encode (%s): their command fails", exc)
            future.set_exception(ValueError(f"record cannot be journaled: {exc}"))
            return future
        group = self._open_group()
        group.data.extend(data)
        group.waiters.append(future)
        self.records_since_checkpoint += len(records)
        self.bytes_since_checkpoint += sum(map(len, data))
        self._wakeup.set()
        return future

    def rotate(self) -> asyncio.Future[None]:
        """Start a new segment; resolves when everything before it is durable."""
        group = self._open_group()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        group.waiters.append(future)
        self.segment += 1
        group.rotate_to = self.segment
        self.records_since_checkpoint = 0
        self.bytes_since_checkpoint = 0
        self._wakeup.set()
        return future

    def outgrown(self, min_records: int) -> bool:
        """Whether the journal grew enough since the last checkpoint for another: at least
        ``min_records`` records, and half as many bytes as that checkpoint took. Writing a
        checkpoint costs in proportion to the whole state (~1 s for a million tasks), so
        this keeps its share of the work per task the same however many tasks are held,
        while a restart replays at most half a checkpoint's worth of records after it."""
        return (
            self.records_since_checkpoint >= min_records
            and 2 * self.bytes_since_checkpoint >= self.checkpoint_bytes
        )

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            # One more loop iteration before blocking on an inline fsync: the links then
            # write the orders queued along with these records first (a worker starts on
            # them meanwhile), and records from that iteration join this group.
            await asyncio.sleep(0)
            self._wakeup.clear()
            while self._queue:
                group = self._queue.pop(0)
                self._writing = True
                try:
                    failure = await self._write_durably(group)
                finally:
                    self._writing = False
                for waiter in group.waiters:
                    if waiter.done():
                        continue
                    if failure is None:
                        waiter.set_result(None)
                    else:
                        waiter.set_exception(failure)
            if self._closed:
                return

    async def _write_durably(self, group: _Group) -> OSError | None:
        """Write ``group``; while the disk is full, again every ``retry_interval``: its
        records are applied in memory and their writers wait (etcd's NOSPACE alarm).
        Returns the error that failed it, if any."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self.last_fsync_seconds < self.inline_below:
                    self._write_group(group)
                else:
                    await loop.run_in_executor(None, self._write_group, group)
            except OSError as exc:
                if exc.errno == errno.ENOSPC and not self._closed:
                    self._out_of_space(exc)
                    await asyncio.sleep(self.retry_interval)
                    continue
                log.critical("journal write failed: %s", exc)
                return exc
            if self.no_space:
                self.no_space = False
                log.warning("journal: space is available again; writes resume")
            return None

    def _out_of_space(self, exc: OSError) -> None:
        if not self.no_space:
            self.no_space = True
            log.error(
                "journal: no space left on device (%s): new writes are refused (507) and "
                "what was accepted waits until space frees; reads go on",
                self.directory,
            )

    def _write_group(self, group: _Group) -> None:
        started = time.monotonic()
        if group.data:
            if not group.written:
                self._file.write(b"".join(group.data))
                group.written = True
            if self.fsync:
                self._file.sync()
        if group.rotate_to is not None:
            self._file.close()
            self._file = _Segment(_segment_path(self.directory, group.rotate_to), self.reserve)
            if self.fsync:
                _fsync_dir(self.directory)
        self.last_fsync_seconds = time.monotonic() - started
        if group.data and self.on_write is not None:
            self.on_write(self.last_fsync_seconds)

    async def checkpoint(self, pieces: Iterable[bytes], *, fresh: bool = False) -> None:
        """Persist a snapshot and drop the segments it makes redundant.

        ``fresh``: the state does not follow from the journal before it (a standby installed
        a leader's snapshot), so the previous checkpoint and every older segment go: no
        fallback may replay this node's old history under the new state.

        ``pieces`` make up the snapshot's JSON; the loop runs between two of them, so a big
        snapshot does not stall it (a fuzzy snapshot: see ``TaskTable.snapshot_pieces``).
        The caller must create ``pieces`` and call this without awaiting in between: the
        journal rotates at once, and recovery replays every record from that rotation on.
        """
        rotated = self.rotate()
        first = self.segment
        parts = []
        for piece in pieces:
            parts.append(piece)
            await asyncio.sleep(0)
        await rotated
        await asyncio.get_running_loop().run_in_executor(
            None, self._write_checkpoint, parts, first, fresh
        )

    def _write_checkpoint(self, parts: list[bytes], first: int, fresh: bool) -> None:
        checkpoint.write(self.directory, parts, first)
        self.checkpoint_bytes = sum(map(len, parts))
        previous = self.directory / checkpoint.PREVIOUS_NAME
        if fresh:
            previous.unlink(missing_ok=True)
        _fsync_dir(self.directory)
        # Kept from the previous checkpoint on: recovery falls back to it if this one is
        # ever found damaged.
        keep = first if fresh else checkpoint.segment_of(previous)
        if keep is not None:
            for path in self.directory.glob(_SEGMENT_GLOB):
                if _segment_number(path) < keep:
                    path.unlink()
        log.info("checkpoint written; journal kept from segment %d", keep or 1)
