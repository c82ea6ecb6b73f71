"""Checkpoints: the state at a journal rotation, and the one before it as a fallback.

A checkpoint is ``{"version": 2, "segment": N, "crc": C, "state": {...}}``: recovery loads
``state`` and replays the journal from segment N on; ``crc`` (CRC-32 of the state's bytes)
tells a damaged file from a good one. Writing a checkpoint keeps the previous one
(``state_checkpoint.prev.json``) and every segment from its N on, so when the newest is
damaged recovery falls back to the previous one plus a longer replay, saying so in one
line; it never starts from a partial state.
"""

from __future__ import annotations

import logging
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import msgspec

from mutirao.errors import MutiraoError
from mutirao.private import open_private

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "state_checkpoint.json"
PREVIOUS_NAME = "state_checkpoint.prev.json"
_HEADER = re.compile(rb'\{"version":\d+,"segment":(\d+)')


class RecoveryError(MutiraoError):
    """The data dir cannot be recovered without losing acknowledged state."""


class _Checkpoint(msgspec.Struct):
    version: int
    segment: int
    state: msgspec.Raw
    """Left undecoded here: only its span is found."""
    crc: int | None = None
    """Absent in version 1 files, which are taken as they are."""


@dataclass
class Loaded:
    snapshot: bytes | None
    """The state as JSON; None: no checkpoint, replay the journal from its start."""
    segment: int
    """The first journal segment to replay."""


def _read(path: Path) -> Loaded:
    """The checkpoint in ``path``; ValueError saying what is wrong with it."""
    try:
        doc = msgspec.json.decode(path.read_bytes(), type=_Checkpoint)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ValueError(str(exc)) from None
    state = bytes(doc.state)
    if doc.crc is not None and zlib.crc32(state) != doc.crc:
        raise ValueError("its checksum does not match its content")
    return Loaded(state, doc.segment)


def load(directory: Path, first_segment: int | None) -> Loaded:
    """The newest usable checkpoint; ``first_segment`` is the oldest journal segment there
    (None: none), which a fallback needs to replay from. Raises RecoveryError."""
    current, previous = directory / CHECKPOINT_NAME, directory / PREVIOUS_NAME
    problems = []
    for path in (current, previous):
        if not path.exists():
            continue
        try:
            loaded = _read(path)
        except ValueError as exc:
            log.error("checkpoint %s is damaged (%s): trying an earlier state", path, exc)
            problems.append(f"{path.name} is damaged ({exc})")
            continue
        if path is previous or problems:
            _ensure_replayable(directory, loaded.segment, first_segment, problems)
            log.warning(
                "recovering from the previous checkpoint %s and the journal from segment %d",
                path,
                loaded.segment,
            )
        return loaded
    if problems:
        # No usable checkpoint: the whole journal, if none of it was compacted away.
        _ensure_replayable(directory, 1, first_segment, problems)
        log.warning("recovering from the whole journal, from segment 1")
    return Loaded(None, 1 if first_segment is None else first_segment)


def _ensure_replayable(
    directory: Path, segment: int, first_segment: int | None, problems: list[str]
) -> None:
    if first_segment is not None and first_segment > segment:
        raise RecoveryError(
            f"cannot recover {directory}: {'; '.join(problems)}, and the journal before "
            f"segment {first_segment} was compacted away. Restore the data dir from a backup, "
            "or move it aside and start this node as a standby to copy the leader's state"
        )


def segment_of(path: Path) -> int | None:
    """The segment a checkpoint file replays from, read from its first bytes (None when
    the file is missing or damaged)."""
    try:
        with path.open("rb") as fh:
            match = _HEADER.match(fh.read(64))
    except FileNotFoundError:
        return None
    return int(match[1]) if match else None


def write(directory: Path, parts: list[bytes], segment: int) -> None:
    """Write a checkpoint replaying from ``segment``, keeping the current one as previous."""
    target = directory / CHECKPOINT_NAME
    tmp = target.with_suffix(".tmp")
    crc = 0
    for part in parts:
        crc = zlib.crc32(part, crc)
    with os.fdopen(open_private(tmp), "wb") as fh:
        fh.write(b'{"version":2,"segment":%d,"crc":%d,"state":' % (segment, crc))
        fh.writelines(parts)
        fh.write(b"}")
        fh.flush()
        os.fsync(fh.fileno())
    if target.exists():
        target.replace(directory / PREVIOUS_NAME)
    tmp.replace(target)
