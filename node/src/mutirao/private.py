"""Files that hold secrets, password hashes, payloads or results: readable by their owner only.

Journal segments, checkpoints, the users file and the secrets are created 0600 on every node
(standbys included), in a data dir made 0700, whatever the process umask.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> None:
    """Create ``path`` if needed and make it the owner's only."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    os.chmod(path, DIR_MODE)


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """``os.open`` with the owner-only mode, also on a file that existed before."""
    fd = os.open(path, flags, FILE_MODE)
    os.fchmod(fd, FILE_MODE)
    return fd


def write_private(path: Path, parts: Iterable[bytes]) -> None:
    """Replace ``path`` atomically with ``parts``, fsynced, owner-only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with os.fdopen(open_private(tmp), "wb") as fh:
        fh.writelines(parts)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)
