"""Prometheus plumbing shared by every Mutirão process: a registry of the process's own
(never the global default), the ``/metrics`` response, and the histogram buckets.

What each process exports lives beside it: :mod:`mutirao.orchestrator.metrics` and
:mod:`mutirao.worker.metrics`. Names, types, labels and meanings are listed in
``docs/metrics.md``; every name starts with ``mutirao_`` and carries its unit.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily

from mutirao import __version__

# Queue waits and runs last from milliseconds to an hour (the default task timeout is 300 s).
DURATION_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
)  # fmt: skip
FSYNC_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip


def new_registry(component: str) -> CollectorRegistry:
    """A registry of this process only, with process metrics (``process_*``: CPU, memory,
    open files) and ``mutirao_build_info{version, component}``."""
    # No ``*_created`` series: Prometheus' text format would store each as one more series.
    disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in 0.26
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    Info("mutirao_build", "Version and component of this process.", registry=registry).info(
        {"version": __version__, "component": component}
    )
    return registry


def respond(registry: CollectorRegistry, request: web.Request) -> web.Response:
    """``GET /metrics``: the text format, or OpenMetrics when the scraper asks for it."""
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    response = web.Response(body=encoder(registry), headers={"Content-Type": content_type})
    response.enable_compression()
    return response


def gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    """An empty gauge family for a collector to fill at scrape time."""
    return GaugeMetricFamily(name, doc, labels=labels)


def observe_many(histogram: Histogram, amounts: Sequence[float]) -> None:
    """``histogram.observe`` of each amount, for a whole batch at once: one increment per
    bucket touched plus one of the sum, instead of a bucket scan and two locked increments
    per amount (the engine reports up to 1,000 tasks per journal record). ``histogram`` is
    a child (``.labels(...)``) or an unlabelled histogram; relies on prometheus_client's
    internals (``_upper_bounds``, ``_buckets``, ``_sum``), pinned in requirements.txt and
    tested in ``tests/unit/test_metrics.py``. Amounts are durations: a negative one (the
    clocks of two machines disagree) counts as 0."""
    if len(amounts) <= 1:
        for amount in amounts:
            histogram.observe(max(0.0, amount))
        return
    # Sorted (in C), the amounts up to each bound are found by bisection: a step per
    # bucket rather than per amount. Bucket i counts amounts in (bound[i-1], bound[i]].
    ordered = sorted(amounts)
    if ordered[0] < 0.0:
        ordered = [max(0.0, amount) for amount in ordered]
    histogram._sum.inc(sum(ordered))
    counted, total = 0, len(ordered)
    for bucket, bound in enumerate(histogram._upper_bounds):
        upto = bisect_right(ordered, bound)
        if upto > counted:
            histogram._buckets[bucket].inc(upto - counted)
            counted = upto
            if counted == total:
                return
