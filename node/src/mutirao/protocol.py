"""Every message that crosses a process boundary, defined once and shared by both sides.

Clients talk JSON over HTTP (``/v1/...``); workers keep one websocket to the orchestrator and
exchange batched messages on it. Decoding failures raise :class:`~mutirao.errors.ProtocolError`
(peer messages) or :class:`~mutirao.errors.ValidationError` naming the field (client input).
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any, Literal, NamedTuple, NewType, TypedDict, cast

import orjson

from mutirao.errors import MalformedError, ProtocolError, TooLargeError, ValidationError
from mutirao.settings import LimitSettings, TaskDefaults

TaskId = NewType("TaskId", str)
WorkerId = NewType("WorkerId", str)
Epoch = NewType("Epoch", int)

API_PREFIX = "/v1"
WORKER_WS_PATH = "/v1/workers/connect"
REPLICATION_WS_PATH = "/v1/replication"
HA_PATH = "/v1/ha"
WORKER_SWITCH_PATH = "/v1/orchestrator"
JOIN_TOKEN_HEADER = "X-Mutirao-Join-Token"
STALE_EPOCH_CLOSE = 4409
"""Websocket close code: the peer has seen a newer epoch than the sender's."""


class TaskState(StrEnum):
    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in _TERMINAL


_TERMINAL = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


class Outcome(StrEnum):
    """How one attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"
    """The worker died, disconnected or was replaced while the attempt ran."""
    CANCELLED = "cancelled"


# -- client submissions ---------------------------------------------------------------------


class TaskSpec(NamedTuple):
    """A validated task submission (a named tuple: immutable, and cheap to create one per
    task of a 1,000-task batch)."""

    type: str
    payload: Any = None
    priority: int = 0
    max_attempts: int = 3
    timeout: float = 300.0
    key: str | None = None


_SPEC_FIELDS = frozenset({"type", "payload", "priority", "max_attempts", "timeout", "key"})


def _int_field(obj: dict[str, Any], name: str, where: str, default: int, minimum: int) -> int:
    if name not in obj:
        return default
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer", field=where + name)
    if value < minimum:
        raise ValidationError(f"{name} must be >= {minimum}", field=where + name)
    return value


def parse_task_spec(obj: Any, where: str, defaults: TaskDefaults) -> TaskSpec:
    """Validate one task object; ``where`` prefixes field names in errors (``tasks[3].``)."""
    if not isinstance(obj, dict):
        raise ValidationError("a task must be a JSON object", field=where.rstrip(".") or "body")
    if not _SPEC_FIELDS.issuperset(obj):
        name = sorted(obj.keys() - _SPEC_FIELDS)[0]
        raise ValidationError(f"unknown field {name!r}", field=where + name)
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise ValidationError("type must be a non-empty string", field=where + "type")
    timeout = obj.get("timeout", defaults.timeout)
    if type(timeout) is not float and (isinstance(timeout, bool) or not isinstance(timeout, int)):
        raise ValidationError("timeout must be a number of seconds", field=where + "timeout")
    if not 0 < timeout < math.inf:
        raise ValidationError("timeout must be a positive number", field=where + "timeout")
    key = obj.get("key")
    if key is not None and (not isinstance(key, str) or not key or len(key) > 256):
        raise ValidationError("key must be a string of 1-256 characters", field=where + "key")
    return TaskSpec(
        kind,
        obj.get("payload"),
        _int_field(obj, "priority", where, defaults.priority, -(2**31)),
        _int_field(obj, "max_attempts", where, defaults.max_attempts, 1),
        float(timeout),
        key,
    )


def decode_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedError(f"request body is not valid JSON: {exc}", field="body") from None


def parse_submission(
    body: bytes, defaults: TaskDefaults, limits: LimitSettings
) -> tuple[list[TaskSpec], bool]:
    """Decode ``{...task...}`` or ``{"tasks": [...]}``; returns the specs and whether a batch."""
    doc = decode_json(body)
    if isinstance(doc, dict) and "tasks" in doc:
        unknown = doc.keys() - {"tasks"}
        if unknown:
            name = sorted(unknown)[0]
            raise ValidationError(f"unknown field {name!r} beside tasks", field=name)
        items = doc["tasks"]
        if not isinstance(items, list) or not items:
            raise ValidationError("tasks must be a non-empty list", field="tasks")
        if len(items) > limits.max_batch:
            raise TooLargeError(f"at most {limits.max_batch} tasks per request", field="tasks")
        specs = [parse_task_spec(item, f"tasks[{i}].", defaults) for i, item in enumerate(items)]
        batch = True
    else:
        specs = [parse_task_spec(doc, "", defaults)]
        batch = False
    # Only a body larger than the limit can hold an oversized payload: skip re-encoding otherwise.
    if len(body) > limits.max_payload_bytes:
        for i, spec in enumerate(specs):
            if len(orjson.dumps(spec.payload)) > limits.max_payload_bytes:
                where = f"tasks[{i}].payload" if batch else "payload"
                raise TooLargeError(
                    f"payload exceeds {limits.max_payload_bytes} bytes", field=where
                )
    return specs, batch


# -- views returned to clients --------------------------------------------------------------


class AttemptView(TypedDict):
    attempt: int
    worker: str
    assigned_at: float
    started_at: float | None
    ended_at: float | None
    outcome: str | None
    error: str | None


class TaskView(TypedDict):
    id: str
    type: str
    state: str
    owner: str
    priority: int
    max_attempts: int
    timeout: float
    key: str | None
    payload: Any
    created_at: float
    finished_at: float | None
    attempts: list[AttemptView]
    result: Any
    error: str | None


class WorkerView(TypedDict):
    id: str
    url: str
    state: str
    slots: int
    running: int
    load: float
    types: list[str]
    heartbeat_age: float


# -- the worker websocket -------------------------------------------------------------------
# An attempt is named by its task id and its attempt number, sent as a two-element list.

AttemptRef = tuple[str, int]


class HelloMsg(TypedDict):
    op: Literal["hello"]
    worker_id: str
    url: str
    slots: int
    types: list[str]
    running: list[AttemptRef]
    epoch: int
    """The newest epoch the worker has seen; an orchestrator behind it is deposed."""


class HeartbeatMsg(TypedDict):
    op: Literal["heartbeat"]
    running: int


class StartedMsg(TypedDict):
    op: Literal["started"]
    attempts: list[AttemptRef]


class ResultItem(TypedDict):
    task: str
    attempt: int
    ok: bool
    value: Any
    error: str | None
    started_at: float
    ended_at: float


class ResultsMsg(TypedDict):
    op: Literal["results"]
    epoch: int
    items: list[ResultItem]


WorkerMessage = HelloMsg | HeartbeatMsg | StartedMsg | ResultsMsg


class AssignItem(TypedDict):
    task: str
    attempt: int
    type: str
    payload: Any
    timeout: float


class WelcomeMsg(TypedDict):
    op: Literal["welcome"]
    epoch: int
    heartbeat_interval: float
    drop: list[AttemptRef]
    """Attempts the worker reported running that it must abandon."""


class AssignMsg(TypedDict):
    op: Literal["assign"]
    epoch: int
    items: list[AssignItem]


class CancelMsg(TypedDict):
    op: Literal["cancel"]
    epoch: int
    attempts: list[AttemptRef]


class AckMsg(TypedDict):
    op: Literal["ack"]
    attempts: list[AttemptRef]
    """Results now durably recorded (or rejected as stale): the worker may forget them."""


OrchestratorMessage = WelcomeMsg | AssignMsg | CancelMsg | AckMsg

# -- replication: a standby follows the active orchestrator's journal ------------------------


class FollowMsg(TypedDict):
    op: Literal["follow"]
    node: str
    url: str


class ReplicaAckMsg(TypedDict):
    op: Literal["ack"]
    lsn: int
    """Every record up to this log sequence number is durable on the standby."""


StandbyMessage = FollowMsg | ReplicaAckMsg


class AuthMaterial(TypedDict):
    token_secret: str
    join_token: str
    users: str
    """The users file's JSON text."""


class SnapshotMsg(TypedDict):
    op: Literal["snapshot"]
    epoch: int
    lsn: int
    state: dict[str, Any]
    auth: AuthMaterial


class RecordsMsg(TypedDict):
    op: Literal["records"]
    lsn: int
    records: list[dict[str, Any]]


class BeatMsg(TypedDict):
    op: Literal["beat"]
    node: str
    url: str
    epoch: int
    lsn: int
    synced: bool
    """Whether the active counts this standby as holding every acknowledged record."""


LeaderMessage = SnapshotMsg | RecordsMsg | BeatMsg


class HaView(TypedDict):
    """``GET /v1/ha``: who this orchestrator is and whom it follows."""

    node: str
    url: str
    role: str
    epoch: int
    leader: str | None
    lsn: int


_STANDBY_KEYS: dict[str, tuple[str, ...]] = {"follow": ("node", "url"), "ack": ("lsn",)}
_LEADER_KEYS: dict[str, tuple[str, ...]] = {
    "snapshot": ("epoch", "lsn", "state", "auth"),
    "records": ("lsn", "records"),
    "beat": ("node", "url", "epoch", "lsn", "synced"),
}

_WORKER_KEYS: dict[str, tuple[str, ...]] = {
    "hello": ("worker_id", "url", "slots", "types", "running", "epoch"),
    "heartbeat": ("running",),
    "started": ("attempts",),
    "results": ("epoch", "items"),
}
_ORCHESTRATOR_KEYS: dict[str, tuple[str, ...]] = {
    "welcome": ("epoch", "heartbeat_interval", "drop"),
    "assign": ("epoch", "items"),
    "cancel": ("epoch", "attempts"),
    "ack": ("attempts",),
}


def encode(
    message: WorkerMessage | OrchestratorMessage | StandbyMessage | LeaderMessage,
) -> bytes:
    return orjson.dumps(message)


def _decode(data: bytes | str, keys: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"message is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("message is not a JSON object")
    op = doc.get("op")
    required = keys.get(op) if isinstance(op, str) else None
    if required is None:
        raise ProtocolError(f"unknown message op {op!r}")
    missing = [k for k in required if k not in doc]
    if missing:
        raise ProtocolError(f"{doc['op']} message lacks {', '.join(missing)}")
    return doc


def decode_worker_message(data: bytes | str) -> WorkerMessage:
    return cast(WorkerMessage, _decode(data, _WORKER_KEYS))


def decode_orchestrator_message(data: bytes | str) -> OrchestratorMessage:
    return cast(OrchestratorMessage, _decode(data, _ORCHESTRATOR_KEYS))


def decode_standby_message(data: bytes | str) -> StandbyMessage:
    return cast(StandbyMessage, _decode(data, _STANDBY_KEYS))


def decode_leader_message(data: bytes | str) -> LeaderMessage:
    return cast(LeaderMessage, _decode(data, _LEADER_KEYS))
