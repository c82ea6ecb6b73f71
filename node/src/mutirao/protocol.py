"""Every message that crosses a process boundary, defined once and shared by both sides.

Clients talk JSON over HTTP (``/v1/...``); workers keep one websocket to the orchestrator and
exchange batched messages on it. Decoding failures raise :class:`~mutirao.errors.ProtocolError`
(peer messages) or :class:`~mutirao.errors.ValidationError` naming the field (client input).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Any, Literal, NewType, NotRequired, TypedDict, cast

import msgspec
import orjson

from mutirao import dependencies
from mutirao.errors import (
    MalformedError,
    ProtocolError,
    TooLargeError,
    UnstorableError,
    ValidationError,
)
from mutirao.settings import LimitSettings, TaskDefaults

TaskId = NewType("TaskId", str)
WorkerId = NewType("WorkerId", str)
Epoch = NewType("Epoch", int)

API_PREFIX = "/v1"
WORKER_WS_PATH = "/v1/workers/connect"
SESSION_PATH = "/v1/session"
REPLICATION_WS_PATH = "/v1/replication"
HA_PATH = "/v1/ha"
WORKER_SWITCH_PATH = "/v1/orchestrator"
JOIN_TOKEN_HEADER = "X-Mutirao-Join-Token"
PEER_TOKEN_HEADER = "X-Mutirao-Peer-Token"
STALE_EPOCH_CLOSE = 4409
"""Websocket close code: the peer has seen a newer epoch than the sender's."""


class TaskState(StrEnum):
    WAITING = "waiting"
    """Submitted with dependencies (``after``) not all settled yet."""
    SCHEDULED = "scheduled"
    """Not to start before a time: ``not_before``, or a retry's backoff."""
    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})
"""The states a task never leaves (``state in TERMINAL_STATES`` saves a property call per
task where whole batches are checked)."""


class Outcome(StrEnum):
    """How one attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"
    """The worker died, disconnected or was replaced while the attempt ran."""
    CANCELLED = "cancelled"
    RELEASED = "released"
    """Handed back unfinished by a draining worker: requeued at once, not counted as one
    of the task's ``max_attempts``."""


# -- client submissions ---------------------------------------------------------------------


_Priority = Annotated[int, msgspec.Meta(ge=-(2**31), lt=2**31)]
MAX_ATTEMPTS = 100
"""Most attempts a task may ask for."""
MAX_TIMEOUT = 7 * 24 * 3600.0
"""Longest time limit an attempt may ask for, in seconds (a week)."""
MAX_PAYLOAD_DEPTH = 254
"""Deepest nesting of arrays and objects in a payload (what the journal's encoder takes)."""
MAX_AFTER = 10_000
"""Most dependencies one task may name (a fan-in of a whole batch)."""
_Attempts = Annotated[int, msgspec.Meta(ge=1, le=MAX_ATTEMPTS)]
_Timeout = Annotated[float, msgspec.Meta(gt=0, le=MAX_TIMEOUT)]
_Ref = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_Seconds = Annotated[float, msgspec.Meta(ge=0, le=MAX_TIMEOUT)]
_TRACEPARENT = r"^00-(?!0{32})[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$"
_Queue = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")]
MAX_TIME = 2.0**36
"""Latest ``not_before`` (unix seconds, about the year 4147)."""


class RetryPolicy(msgspec.Struct, forbid_unknown_fields=True):
    """How long a failed attempt's task waits before the next: attempt n+1 starts no
    sooner than ``min(max_delay, delay * backoff**(n-1))`` seconds, +/- the ``jitter``
    fraction, after attempt n ended. A lost worker's attempts are retried at once."""

    delay: _Seconds = 0.0
    backoff: Annotated[float, msgspec.Meta(ge=1, le=100)] = 2.0
    max_delay: _Seconds = 300.0
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.0

    def after(self, attempt: int, spread: float = 0.0) -> float:
        """Seconds before the attempt after ``attempt``; ``spread`` in [-1, 1] picks the
        jitter (chosen by the caller, so that it is recorded, not drawn on replay)."""
        base = min(self.max_delay, self.delay * self.backoff ** min(attempt - 1, 1000))
        return max(0.0, base * (1 + self.jitter * spread))


OnFailure = Literal["cancel", "run"]


class TaskSpec(msgspec.Struct, forbid_unknown_fields=True):
    """A task submission, validated as it is decoded (msgspec does it in C: a 1,000-task
    batch costs ~0.4 µs per task instead of ~3.5 µs for the same checks in Python). The
    defaults here are the settings' defaults; :class:`SubmissionParser` applies others."""

    type: Annotated[str, msgspec.Meta(min_length=1)]
    payload: Any = None
    priority: _Priority = 0
    max_attempts: _Attempts = 3
    timeout: _Timeout = 300.0
    key: Annotated[str, msgspec.Meta(min_length=1, max_length=256)] | None = None
    after: Annotated[list[_Ref], msgspec.Meta(max_length=MAX_AFTER)] | None = None
    """Tasks (ids, or ``#N``: item N of the same batch) that must succeed first; the
    parser adds the ``{"$result": ref}`` inputs of the payload (see :mod:`.dependencies`)."""
    on_failure: OnFailure = "cancel"
    """What a failed, cancelled dependency does to this task: cancel it, or run it anyway
    (a cleanup step), its inputs from such dependencies then naming their error."""
    retry: RetryPolicy | None = None
    """Backoff between attempts (default: the cluster's ``tasks.retry_*`` settings)."""
    not_before: Annotated[float, msgspec.Meta(ge=0, le=MAX_TIME)] | None = None
    """Unix time before which the task does not start (it is ``scheduled`` until then)."""
    keep_result: _Seconds | None = None
    """Seconds the finished task is kept, instead of the cluster's ``tasks.retention``."""
    queue: _Queue = "default"
    """Only workers that serve this queue (``--queues``) take the task."""
    resources: Annotated[dict[str, float | str], msgspec.Meta(max_length=32)] | None = None
    """What the task takes while it runs, e.g. ``{"cpu": 2, "memory": "4Gi", "gpu": 1}``
    (one cpu unless it says otherwise): it goes only where that much is free."""
    trace: Annotated[str, msgspec.Meta(pattern=_TRACEPARENT)] | None = None
    """The caller's W3C ``traceparent``: the task's trace goes on from that span."""


class _Envelope(msgspec.Struct):
    """Just enough to tell a batch from a single task without validating anything."""

    tasks: msgspec.Raw = msgspec.Raw()


class SubmissionParser:
    """Decodes ``{...task...}`` or ``{"tasks": [...]}`` with the configured defaults."""

    def __init__(self, defaults: TaskDefaults, limits: LimitSettings) -> None:
        self.limits = limits
        # The same fields with the configured defaults (a subclass keeps the field order).
        spec = msgspec.defstruct(
            "TaskSpec",
            [
                ("priority", _Priority, defaults.priority),
                ("max_attempts", _Attempts, defaults.max_attempts),
                ("timeout", _Timeout, defaults.timeout),
            ],
            bases=(TaskSpec,),
        )
        batch = msgspec.defstruct(
            "Batch",
            [("tasks", Annotated[list[spec], msgspec.Meta(min_length=1)])],  # type: ignore[valid-type]
            forbid_unknown_fields=True,
        )
        self._envelope = msgspec.json.Decoder(_Envelope)
        self._single = msgspec.json.Decoder(spec)
        self._batch = msgspec.json.Decoder(batch)

    def parse(self, body: bytes) -> tuple[list[TaskSpec], bool]:
        """The specs and whether the body was a batch; errors name the offending field."""
        try:
            batch = len(self._envelope.decode(body).tasks) > 0
            if batch:
                specs = cast(list[TaskSpec], self._batch.decode(body).tasks)  # type: ignore[attr-defined]
            else:
                specs = [cast(TaskSpec, self._single.decode(body))]
        except msgspec.ValidationError as exc:
            exact = _integral_floats(body)
            if exact is None:
                raise invalid(exc) from None
            return self.parse(exact)
        except msgspec.DecodeError as exc:
            raise MalformedError(f"request body is not valid JSON: {exc}", field="body") from None
        except RecursionError:
            raise UnstorableError(_too_deep("body"), field="body") from None
        limits = self.limits
        if len(specs) > limits.max_batch:
            raise TooLargeError(f"at most {limits.max_batch} tasks per request", field="tasks")
        _check_payloads(specs, batch, limits.max_payload_bytes)
        # Payloads are walked for inputs only when the body may hold one (a payload may
        # spell "$result" with an escape), so plain submissions pay a substring search.
        if b'$result"' in body or b"\\u0024" in body:
            _add_inputs(specs, batch)
        return specs, batch


def _check_payloads(specs: list[TaskSpec], batch: bool, most: int) -> None:
    """What the journal will encode, checked now: a payload it cannot take (an integer beyond
    64 bits, nesting too deep) or too large is this request's error, not the journal's.
    Encoded all at once first (one call for a batch): within the limit together, each is;
    only otherwise one by one, to name the payload at fault."""
    try:
        if len(orjson.dumps([spec.payload for spec in specs])) <= most:
            return
    except orjson.JSONEncodeError:
        pass
    for i, spec in enumerate(specs):
        try:
            size = len(orjson.dumps(spec.payload))
        except orjson.JSONEncodeError as exc:
            where = _payload_field(i, batch)
            problem = _too_deep(where) if "Recursion" in str(exc) else f"{where}: {exc}"
            raise UnstorableError(problem, field=where) from None
        if size > most:
            raise TooLargeError(f"payload exceeds {most} bytes", field=_payload_field(i, batch))


def _add_inputs(specs: list[TaskSpec], batch: bool) -> None:
    """The refs of each payload's ``{"$result": ref}`` inputs are dependencies too."""
    for i, spec in enumerate(specs):
        refs = dependencies.input_refs(spec.payload, _payload_field(i, batch))
        if refs:
            spec.after = list(dict.fromkeys([*(spec.after or ()), *refs]))


_INTEGER_FIELDS = ("priority", "max_attempts")


def _integral_floats(body: bytes) -> bytes | None:
    """The body with ``3.0`` as ``3`` in the integer fields, or None if it has none: JSON
    Schema's integers include them (so the OpenAPI document does), msgspec's do not. Only
    on the error path, so well-formed submissions decode at full speed."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    specs = doc.get("tasks") if isinstance(doc, dict) and "tasks" in doc else [doc]
    items = specs if isinstance(specs, list) else []
    changed = [whole_numbers(spec, _INTEGER_FIELDS) for spec in items if isinstance(spec, dict)]
    return orjson.dumps(doc) if any(changed) else None


def whole_numbers(doc: dict[str, Any], names: Sequence[str]) -> bool:
    """``3.0`` as ``3`` in the fields ``names`` of ``doc`` (JSON Schema's integers take it,
    msgspec's do not); whether any changed."""
    changed = False
    for name in names:
        value = doc.get(name)
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            doc[name] = int(value)
            changed = True
    return changed


def _payload_field(index: int, batch: bool) -> str:
    return f"tasks[{index}].payload" if batch else "payload"


def _too_deep(where: str) -> str:
    return f"{where}: nested deeper than {MAX_PAYLOAD_DEPTH} arrays or objects"


_NAMED_FIELD = re.compile(r"Object (?:contains unknown|missing required) field `(.+)`")


def invalid(exc: msgspec.ValidationError) -> ValidationError:
    """msgspec's "Expected `int`, got `str` - at `$.tasks[1].priority`" as our error, naming
    the field ``tasks[1].priority`` (``body`` for the document itself)."""
    message, _, where = str(exc).partition(" - at `$")
    path = where.rstrip("`").lstrip(".")
    named = _NAMED_FIELD.fullmatch(message)
    if named is not None:
        path = f"{path}.{named[1]}" if path else named[1]
    path = path or "body"
    return ValidationError(f"{path}: {message[:1].lower()}{message[1:]}", field=path)


class SessionCall(msgspec.Struct, forbid_unknown_fields=True):
    """One submission on a client session (``GET /v1/session``)."""

    ref: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
    """Chosen by the client; the answer carries it back."""
    task: msgspec.Raw
    """A task as ``POST /v1/tasks`` takes it (validated by :class:`SubmissionParser`)."""
    wait: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    """As ``?wait=``: answer once the task finished, or after this many seconds."""


class SessionReply(TypedDict, total=False):
    ref: int | None
    status: int
    task: TaskView
    error: dict[str, Any]


def decode_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedError(f"request body is not valid JSON: {exc}", field="body") from None


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
    after: list[str]
    """The tasks this one waits for (ids), payload inputs included."""
    on_failure: str
    not_before: float | None
    """When a ``scheduled`` task may start (its ``not_before``, or its retry's backoff)."""
    queue: str
    resources: dict[str, float]
    pending_reason: str | None
    """Why a pending task is not running yet (no worker serves its queue, none has room
    for its resources, a rate limit...): None when it is just its turn that has not come."""


class TaskBrief(TypedDict):
    """What a client waiting for results needs: the ``brief`` view of ``/v1/tasks/wait``."""

    id: str
    state: str
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
    stuck: int
    """Slots held by a thread that outlived its attempt (counted busy)."""
    queues: list[str]
    """The queues whose tasks it takes."""
    resources: dict[str, float]
    """What it offers tasks (cpu: its slots, unless it declared otherwise)."""


class UserView(TypedDict):
    """A user as ``/v1/users`` shows it (never the password hash)."""

    name: str
    role: str
    admin: bool


# -- the worker websocket -------------------------------------------------------------------
# An attempt is named by its task id and its attempt number, sent as a two-element list.

AttemptRef = tuple[str, int]

WORKER_PROTOCOL = 2
"""The worker websocket's version, sent in the hello: 2 sends assign and result items as
arrays (1 sent objects). An orchestrator refuses a worker of another version with a reason,
rather than misreading its messages."""


class HelloMsg(TypedDict):
    op: Literal["hello"]
    protocol: int
    worker_id: str
    url: str
    slots: int
    types: list[str]
    running: list[AttemptRef]
    epoch: int
    """The newest epoch the worker has seen; an orchestrator behind it is deposed."""
    stuck: NotRequired[int]
    """Slots held by threads still running past their attempt (``--pool threads``): the
    orchestrator counts them busy. Also on heartbeats and results, whenever it changes."""
    queues: NotRequired[list[str]]
    """The queues whose tasks the worker takes (default: ``default``)."""
    resources: NotRequired[dict[str, float]]
    """What it offers tasks (default: as many ``cpu`` as slots)."""
    draining: NotRequired[bool]
    """It is stopping: it takes no new attempts (also after a reconnection)."""
    prefetch: NotRequired[int]
    """Attempts it takes beyond its slots, to start as soon as a slot frees (default 0)."""


class HeartbeatMsg(TypedDict):
    op: Literal["heartbeat"]
    running: int
    stuck: NotRequired[int]


class StartedMsg(TypedDict):
    op: Literal["started"]
    attempts: list[AttemptRef]


ResultItem = tuple[str, int, bool, Any, str | None, float, float]
"""How an attempt ended: ``[task, attempt, ok, value, error, started_at, ended_at]``.
Assign and result items are arrays rather than objects on the wire: one of each per task,
and an array costs a third of an object to decode."""


class ResultsMsg(TypedDict):
    op: Literal["results"]
    epoch: int
    items: list[ResultItem]
    stuck: NotRequired[int]
    retry: NotRequired[dict[str, float]]
    """Seconds before the next attempt, by task, where a handler raised ``mutirao.Retry``."""


class DrainMsg(TypedDict):
    """The worker is stopping (SIGTERM, a scale-down): assign it nothing more."""

    op: Literal["drain"]


class ReleaseMsg(TypedDict):
    """A worker hands back attempts: those a drain could not finish in time, or prefetched
    ones not started that the orchestrator revoked."""

    op: Literal["release"]
    attempts: list[AttemptRef]


WorkerMessage = HelloMsg | HeartbeatMsg | StartedMsg | ResultsMsg | DrainMsg | ReleaseMsg


AssignItem = tuple[str, int, str, Any, float] | tuple[str, int, str, Any, float, str]
"""An attempt to run: ``[task, attempt, type, payload, timeout]``, and the task's
``traceparent`` when it has one."""


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


class RevokeMsg(TypedDict):
    """Give back these prefetched attempts if they have not started (an idle worker can run
    them now): the worker answers ``release`` with those it had not started."""

    op: Literal["revoke"]
    epoch: int
    attempts: list[AttemptRef]


class AckMsg(TypedDict):
    op: Literal["ack"]
    attempts: list[AttemptRef]
    """Results now durably recorded (or rejected as stale): the worker may forget them."""


OrchestratorMessage = WelcomeMsg | AssignMsg | CancelMsg | RevokeMsg | AckMsg

# -- replication: a standby follows the active orchestrator's journal ------------------------


class FollowMsg(TypedDict):
    op: Literal["follow"]
    node: str
    url: str


class ReplicaAckMsg(TypedDict):
    op: Literal["ack"]
    lsn: int
    """Every record up to this log sequence number is durable on the standby."""
    beat: float
    """The ``sent`` of the newest beat received (0 before the first)."""
    eligible: bool
    """Whether that beat let this standby take over once the leader falls silent."""


StandbyMessage = FollowMsg | ReplicaAckMsg


class SnapshotMsg(TypedDict):
    op: Literal["snapshot"]
    epoch: int
    lsn: int
    state: dict[str, Any]
    """The whole state, tasks, users and secrets alike (see tasks.Snapshot)."""


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
    sent: float
    """The active's monotonic clock when it sent the beat, echoed in the standby's acks:
    the active then knows how long the standby's view of its lease holds (peer lease)."""


LeaderMessage = SnapshotMsg | RecordsMsg | BeatMsg


class HaView(TypedDict):
    """``GET /v1/ha``: who this orchestrator is and whom it follows."""

    node: str
    url: str
    role: str
    epoch: int
    leader: str | None
    lsn: int


_STANDBY_KEYS: dict[str, tuple[str, ...]] = {
    "follow": ("node", "url"),
    "ack": ("lsn", "beat", "eligible"),
}
_LEADER_KEYS: dict[str, tuple[str, ...]] = {
    "snapshot": ("epoch", "lsn", "state"),
    "records": ("lsn", "records"),
    "beat": ("node", "url", "epoch", "lsn", "synced", "sent"),
}

_WORKER_KEYS: dict[str, tuple[str, ...]] = {
    "hello": ("worker_id", "url", "slots", "types", "running", "epoch"),
    "heartbeat": ("running",),
    "started": ("attempts",),
    "results": ("epoch", "items"),
    "drain": (),
    "release": ("attempts",),
}
_ORCHESTRATOR_KEYS: dict[str, tuple[str, ...]] = {
    "welcome": ("epoch", "heartbeat_interval", "drop"),
    "assign": ("epoch", "items"),
    "cancel": ("epoch", "attempts"),
    "revoke": ("epoch", "attempts"),
    "ack": ("attempts",),
}


def encode(
    message: WorkerMessage | OrchestratorMessage | StandbyMessage | LeaderMessage | SessionReply,
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


def check_worker_protocol(hello: HelloMsg) -> None:
    """Refuse a worker speaking another version of the worker protocol, saying so."""
    version = hello.get("protocol", 1)
    if version != WORKER_PROTOCOL:
        raise ProtocolError(
            f"worker {hello['worker_id']} speaks worker protocol {version}, this orchestrator "
            f"{WORKER_PROTOCOL}: run the same Mutirão version on workers and orchestrators"
        )


def decode_orchestrator_message(data: bytes | str) -> OrchestratorMessage:
    return cast(OrchestratorMessage, _decode(data, _ORCHESTRATOR_KEYS))


def decode_standby_message(data: bytes | str) -> StandbyMessage:
    return cast(StandbyMessage, _decode(data, _STANDBY_KEYS))


def decode_leader_message(data: bytes | str) -> LeaderMessage:
    return cast(LeaderMessage, _decode(data, _LEADER_KEYS))
