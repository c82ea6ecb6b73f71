"""The audit log: a JSON line for every login, logout, and user or cluster administration.

Entries go to the logger ``mutirao.audit``, so they show in the normal log as well;
:func:`mutirao.logs.setup` adds ``<log dir>/audit-<component>-<node>.jsonl`` holding only
them, one JSON object per line whatever the log format: ``time``, ``node``, ``event``,
``outcome`` and, when known, ``actor`` (who asked), ``target`` (the user or object acted
on), ``address`` (the client's) and ``reason``.
"""

from __future__ import annotations

import logging
import time

import orjson

log = logging.getLogger("mutirao.audit")


def audit(
    event: str,
    message: str,
    *,
    outcome: str = "ok",
    level: int = logging.INFO,
    **fields: str | None,
) -> None:
    """Record ``event`` (``login``, ``user.add``...), saying ``message`` in the log."""
    entry = {"event": event, "outcome": outcome}
    entry.update({k: v for k, v in fields.items() if v is not None})
    log.log(level, "%s", message, extra={"audit": entry})


class AuditFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        doc = {"time": f"{at}.{int(record.msecs):03d}Z", "node": getattr(record, "node", "")}
        doc.update(getattr(record, "audit", {}))
        return orjson.dumps(doc).decode()


def only_audit(record: logging.LogRecord) -> bool:
    return hasattr(record, "audit")
