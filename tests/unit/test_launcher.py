"""``mutirao up``'s supervisor pieces that need no processes (the rest: test_cli.py)."""

from __future__ import annotations

import os
import time

import pytest

from mutirao.launcher import _next_exit


def test_without_waitid_the_supervisor_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS before Python 3.13 has no ``os.waitid``: the supervisor wakes every 50 ms and
    polls its children instead of failing."""
    monkeypatch.delattr(os, "waitid", raising=False)
    started = time.monotonic()
    assert _next_exit() is None
    assert time.monotonic() - started >= 0.04
