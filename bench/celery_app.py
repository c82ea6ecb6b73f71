"""Celery's side of the peers' benchmarks: the app and its tasks, as Celery's docs lay them
out (a module the worker imports with ``-A``). The broker and result backend are the Redis
that ``bench/peers.py`` starts, named by ``BENCH_REDIS_URL``.

Runs only in ``.venv-peers``, beside ``bench/peers.py`` (``python -m celery -A celery_app``
from this directory).
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_REDIS_URL"], backend=os.environ["BENCH_REDIS_URL"])
app.conf.update(
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    # Results are read once by the benchmark; a day's expiry (the default) would only make
    # Redis's memory grow across workloads.
    result_expires=600,
)


@app.task
def noop(x: Any) -> Any:
    return x


@app.task
def sleepy(x: Any) -> Any:
    time.sleep(0.01)
    return x


@app.task(acks_late=True, reject_on_worker_lost=True)
def sleepy_late(x: Any) -> Any:
    """As ``sleepy``, acknowledged after it ran: a killed worker's task is delivered again."""
    time.sleep(0.01)
    return x


@app.task
def add(a: float, b: float) -> float:
    return a + b


@app.task
def total(values: list[float]) -> float:
    return sum(values)
