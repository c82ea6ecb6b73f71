"""OpenTelemetry traces of tasks, off by default (``MUTIRAO_TRACING_EXPORTER``).

One trace per task, from its submission to its recorded end:

- ``task <type>``, the root, from ``created_at`` to ``finished_at``; its parent is the
  caller's span when the task carries a W3C ``traceparent`` (``"trace"`` on submission;
  :class:`mutirao.Client` sends the current one);
- ``queue wait``, from submission to the first assignment;
- ``attempt <n>``, one per attempt, from assignment to its end, with its worker, outcome
  and error (a lost attempt too: its worker was SIGKILLed);
- ``run <type>`` under its attempt, made by the worker around the handler, which runs in
  its context: a handler's own spans nest under it (on the worker's loop, in a thread, or
  in a slot process, which is sent the context with the call).

The leader emits the task, queue and attempt spans once the task's end is durable, with
their recorded times, so a trace is whole whatever process died on the way: a failover,
a worker killed mid-attempt. Their ids are derived from the task (id and attempt number),
so the worker parents its span to an attempt span it never saw, and a trace id comes from
the task id when the caller sent none.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

if TYPE_CHECKING:
    from mutirao.orchestrator.tasks import Task
    from mutirao.settings import TracingSettings

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
_NS = 1_000_000_000


def _derived(bits: int, *parts: object) -> int:
    digest = hashlib.blake2b("\0".join(map(str, parts)).encode(), digest_size=bits // 8)
    return int.from_bytes(digest.digest()) or 1


@dataclass(frozen=True)
class TaskTrace:
    """Where a task's spans go: its trace, and the caller's span (the root's parent)."""

    task_id: str
    trace_id: int
    caller: int | None

    @classmethod
    def of(cls, task_id: str, traceparent: str | None) -> TaskTrace:
        found = _TRACEPARENT.fullmatch(traceparent or "")
        if found is None:
            return cls(task_id, _derived(128, task_id), None)
        return cls(task_id, int(found[1], 16), int(found[2], 16))

    @property
    def root(self) -> int:
        return _derived(64, self.task_id, "task")

    def attempt(self, n: int) -> int:
        return _derived(64, self.task_id, "attempt", n)

    def context(self, span_id: int | None) -> otel_context.Context:
        """A context whose current span is ``span_id`` of this trace (None: none)."""
        if span_id is None:
            return otel_context.Context()
        parent = SpanContext(
            self.trace_id, span_id, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED)
        )
        return trace.set_span_in_context(NonRecordingSpan(parent))


class _Chosen(RandomIdGenerator):
    """The ids chosen for the next span started (a task's derived ones), else random."""

    def __init__(self) -> None:
        self.next: int | None = None
        self.trace: int | None = None
        """The trace of the next span without a parent (a task's root, no caller)."""

    def generate_span_id(self) -> int:
        chosen, self.next = self.next, None
        return chosen if chosen is not None else super().generate_span_id()

    def generate_trace_id(self) -> int:
        chosen, self.trace = self.trace, None
        return chosen if chosen is not None else super().generate_trace_id()


class Tracing:
    """A tracer of task spans, over a provider exporting to ``exporter``."""

    def __init__(self, service: str, exporter: SpanExporter, *, batch: bool = True) -> None:
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor

        self._ids = _Chosen()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": service}), id_generator=self._ids
        )
        processor = BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("mutirao")

    def _span(
        self,
        name: str,
        span_id: int,
        parent: otel_context.Context,
        *,
        start: float,
        end: float,
        attributes: dict[str, Any],
    ) -> None:
        self._ids.next = span_id
        span = self.tracer.start_span(
            name, context=parent, kind=SpanKind.INTERNAL, start_time=int(start * _NS),
            attributes=attributes,
        )  # fmt: skip
        span.end(end_time=int(end * _NS))

    def finished(self, tasks: Iterable[Task]) -> None:
        """Emit the spans of tasks whose end is durable (on the leader)."""
        for task in tasks:
            self._task(task)

    def _task(self, task: Task) -> None:
        where = TaskTrace.of(task.id, task.trace)
        end = task.finished_at or task.created_at
        base = {"mutirao.task": task.id, "mutirao.type": task.type, "mutirao.owner": task.owner}
        root = where.context(where.root)
        state = {"mutirao.state": str(task.state), "mutirao.error": task.error or ""}
        self._ids.trace = where.trace_id  # taken if the root has no parent (no caller)
        self._span(
            f"task {task.type}",
            where.root,
            where.context(where.caller),
            start=task.created_at,
            end=end,
            attributes={**base, **state},
        )
        self._ids.trace = None
        if task.attempts:
            queued = _derived(64, task.id, "queue")
            first = task.attempts[0].assigned_at
            self._span(
                "queue wait", queued, root, start=task.created_at, end=first, attributes=base
            )
        for a in task.attempts:
            attributes = {
                **base,
                "mutirao.attempt": a.n,
                "mutirao.worker": a.worker,
                "mutirao.outcome": str(a.outcome or ""),
                "mutirao.error": a.error or "",
            }
            self._span(
                f"attempt {a.n}",
                where.attempt(a.n),
                root,
                start=a.assigned_at,
                end=a.ended_at or end,
                attributes=attributes,
            )

    @contextlib.asynccontextmanager
    async def handler(
        self, task_id: str, attempt: int, task_type: str, traceparent: str | None
    ) -> AsyncIterator[None]:
        """``run <type>`` around a handler on the worker, the current span while it runs."""
        where = TaskTrace.of(task_id, traceparent)
        attributes: dict[str, str | int] = {"mutirao.task": task_id, "mutirao.attempt": attempt}
        with self.tracer.start_as_current_span(
            f"run {task_type}", context=where.context(where.attempt(attempt)),
            attributes=attributes,
        ):  # fmt: skip
            yield

    def shutdown(self) -> None:
        self.provider.shutdown()


def current_traceparent() -> str | None:
    """The current span as a W3C traceparent, or None (no span): what a submission carries
    from its caller, and a slot process gets from its worker."""
    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        return None
    return f"00-{span.trace_id:032x}-{span.span_id:016x}-{int(span.trace_flags):02x}"


def from_settings(settings: TracingSettings, service: str) -> Tracing | None:
    """The process' tracing, or None when it is off (the default)."""
    if not settings.exporter:
        return None
    if settings.exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporter: SpanExporter = OTLPSpanExporter(endpoint=settings.endpoint or None)
    elif settings.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        exporter = ConsoleSpanExporter()
    else:
        raise ValueError(f"tracing.exporter must be otlp or console, not {settings.exporter!r}")
    return Tracing(service, exporter)
