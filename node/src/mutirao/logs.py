"""Logging setup, done once by the CLI: stderr plus ``logs/<component>-<id>.log`` (rotating),
and the audit trail ``logs/audit-<component>-<id>.jsonl`` (see :mod:`mutirao.audit`).

Every line names the component and node; lines about a task carry ``task=`` and ``attempt=``
(passed as ``extra``), so ``grep <task id> logs/*`` follows one task across processes.
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
import time
from pathlib import Path

import orjson

from mutirao.audit import AuditFormatter, only_audit
from mutirao.settings import SettingsError

_CONTEXT = ("task", "attempt", "worker")


class _ContextFilter(logging.Filter):
    def __init__(self, component: str, node: str) -> None:
        super().__init__()
        self.component = component
        self.node = node

    def filter(self, record: logging.LogRecord) -> bool:
        record.component = self.component
        record.node = self.node
        parts = [f"{k}={getattr(record, k)}" for k in _CONTEXT if hasattr(record, k)]
        record.context = (" " + " ".join(parts)) if parts else ""
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, object] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "component": getattr(record, "component", ""),
            "node": getattr(record, "node", ""),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _CONTEXT:
            if hasattr(record, key):
                doc[key] = getattr(record, key)
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(component)s[%(node)s] "
            "%(message)s%(context)s",
            datefmt="%Y-%m-%dT%H:%M:%S",
        )
        self.converter = time.gmtime


def setup(
    component: str, node: str, *, level: str = "INFO", fmt: str = "text", directory: Path | None
) -> None:
    """Route all ``mutirao`` logging to stderr and, if ``directory`` is set, a rotating file."""
    if not isinstance(logging.getLevelName(level.upper()), int):
        raise SettingsError(f"unknown log level {level!r}: use DEBUG, INFO, WARNING or ERROR")
    formatter: logging.Formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    context = _ContextFilter(component, node)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if directory is not None:
        directory.mkdir(parents=True, exist_ok=True)
        handlers.append(
            logging.handlers.RotatingFileHandler(
                directory / f"{component}-{node}.log", maxBytes=20 * 2**20, backupCount=5
            )
        )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(context)
        root.addHandler(handler)
    if directory is not None:
        trail = logging.handlers.RotatingFileHandler(
            directory / f"audit-{component}-{node}.jsonl", maxBytes=20 * 2**20, backupCount=5
        )
        trail.setFormatter(AuditFormatter())
        trail.addFilter(context)
        trail.addFilter(only_audit)
        root.addHandler(trail)
    root.setLevel(level.upper())
    # aiohttp logs every request at INFO; that is noise next to task lifecycle lines.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
