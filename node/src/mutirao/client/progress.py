"""A one-line progress bar on stderr (redrawn in place on a terminal, sparse lines otherwise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = max(total, 1)
        self.label = label
        self.stream = stream or sys.stderr
        self.done = 0
        self._started = time.monotonic()
        self._last_draw = 0.0
        self._tty = self.stream.isatty()

    def update(self, done: int) -> None:
        self.done = done
        now = time.monotonic()
        if done < self.total and now - self._last_draw < (0.1 if self._tty else 2.0):
            return
        self._last_draw = now
        width = 30
        filled = int(width * done / self.total)
        rate = done / max(now - self._started, 1e-9)
        line = (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{done}/{self.total} ({rate:,.0f}/s)"
        )
        if self._tty:
            self.stream.write("\r" + line + ("\n" if done >= self.total else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
