"""Built-in task types for demos, tests and smoke checks."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from typing import Any

from mutirao.registry import task


def _field(payload: Any, name: str) -> Any:
    return payload[name] if isinstance(payload, dict) and name in payload else payload


@task("echo")
async def echo(payload: Any) -> Any:
    """Return the payload unchanged (a no-op for benchmarks)."""
    return payload


@task("sleep")
async def sleep(payload: Any) -> dict[str, float]:
    """Sleep ``payload`` or ``payload["seconds"]`` seconds."""
    seconds = float(_field(payload, "seconds") or 0)
    await asyncio.sleep(seconds)
    return {"slept": seconds}


@task("sum")
async def total(payload: Any) -> float:
    """Sum a list of numbers (or ``payload["numbers"]``)."""
    numbers = _field(payload, "numbers")
    if not isinstance(numbers, list):
        raise TypeError("sum expects a list of numbers")
    return sum(numbers)


@task("sha256")
def sha256(payload: Any) -> str:
    """Hex SHA-256 of a string (or ``payload["data"]``), computed off the event loop."""
    data = _field(payload, "data")
    if not isinstance(data, str):
        raise TypeError("sha256 expects a string")
    return hashlib.sha256(data.encode()).hexdigest()


@task("wordcount")
def wordcount(payload: Any) -> dict[str, int]:
    """Count the words of a text (or ``payload["text"]``)."""
    text = _field(payload, "text")
    if not isinstance(text, str):
        raise TypeError("wordcount expects a string")
    return dict(Counter(text.lower().split()))


@task("fail")
async def fail(payload: Any) -> None:
    """Always fail, with ``payload["message"]`` as the error if given."""
    raise RuntimeError(_field(payload, "message") or "failed on purpose")
