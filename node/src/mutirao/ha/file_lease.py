"""The ``file`` lease backend: one machine, a shared directory, ``fcntl`` locks.

``lease.json`` holds the lease record; ``lease.lock`` serialises read-modify-write of it;
each node holds an exclusive lock on ``<node>.alive`` for as long as its process lives. The
OS drops that lock the instant the process dies, so a standby sees a SIGKILLed holder at its
next poll instead of waiting for the lease to expire; a hung holder (SIGSTOP) keeps its lock
and is replaced only when the lease expires.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import orjson

from mutirao.ha.lease import Lease, may_take, next_lease, renewed


class FileLease:
    shared_record = True
    """The record is shared: once it says a standby is out of sync, that standby cannot
    take over, so the active may go on without it at once."""

    def __init__(self, directory: Path, node: str, duration: float) -> None:
        self.directory = directory
        self.node = node
        self.duration = duration
        directory.mkdir(parents=True, exist_ok=True)
        self._record = directory / "lease.json"
        self._mutex = directory / "lease.lock"
        self._alive: IO[bytes] | None = (directory / f"{node}.alive").open("ab")
        try:
            # Under the mutex: another node probing whether we live (``_holder_alive``)
            # holds our alive lock for an instant, and must not be mistaken for a twin.
            with self._locked():
                fcntl.flock(self._alive.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._alive.close()
            raise RuntimeError(
                f"another live process already runs as node {node!r} on {directory}"
            ) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._mutex.open("ab") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _read(self) -> Lease | None:
        try:
            doc = orjson.loads(self._record.read_bytes())
        except FileNotFoundError:
            return None
        except orjson.JSONDecodeError:
            return None  # a torn record: treat the lease as free, epochs still grow
        return Lease(**{**doc, "synced": tuple(doc.get("synced", ()))})

    def _write(self, lease: Lease) -> None:
        tmp = self._record.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            fh.write(orjson.dumps(lease.__dict__))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(self._record)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _holder_alive(self, holder: str) -> bool:
        path = self.directory / f"{holder}.alive"
        if not path.exists():
            return False
        with path.open("ab") as fh:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            return False

    def _acquire(self, url: str, now: float, epoch_floor: int) -> Lease | None:
        with self._locked():
            current = self._read()
            alive = None if current is None else self._holder_alive(current.holder)
            if not may_take(current, self.node, now, alive):
                return None
            lease = next_lease(
                current, self.node, url, now, duration=self.duration, epoch_floor=epoch_floor
            )
            self._write(lease)
            return lease

    def _renew(self, lease: Lease, now: float, synced: Sequence[str]) -> Lease | None:
        with self._locked():
            current = self._read()
            if current is None or current.holder != self.node or current.epoch != lease.epoch:
                return None
            fresh = renewed(current, now, synced)
            self._write(fresh)
            return fresh

    def _release(self, lease: Lease) -> None:
        with self._locked():
            current = self._read()
            if current is not None and (current.holder, current.epoch) == (
                self.node,
                lease.epoch,
            ):
                self._write(
                    Lease(current.holder, current.url, current.epoch, 0.0, 0.0, current.synced)
                )

    async def read(self) -> Lease | None:
        return await asyncio.to_thread(self._read)

    async def acquire(self, node: str, url: str, now: float, epoch_floor: int) -> Lease | None:
        assert node == self.node
        return await asyncio.to_thread(self._acquire, url, now, epoch_floor)

    async def renew(self, lease: Lease, now: float, synced: Sequence[str]) -> Lease | None:
        return await asyncio.to_thread(self._renew, lease, now, synced)

    async def release(self, lease: Lease) -> None:
        await asyncio.to_thread(self._release, lease)

    def observe(self, lease: Lease) -> None:
        """The shared record is the truth here; nothing to learn from the stream."""

    async def close(self) -> None:
        if self._alive is not None:
            self._alive.close()
            self._alive = None
