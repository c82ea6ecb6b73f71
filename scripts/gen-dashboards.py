#!/usr/bin/env python3
"""Write Mutirão's Grafana dashboards (``make dashboards``): the dashboards as code.

Three dashboards, each a JSON file, into ``charts/mutirao/dashboards/`` (the chart ships them
in a ConfigMap for the Grafana sidecar) and ``manifests/grafana/`` (to import by hand):

- ``mutirao-overview.json``: throughput, backlog, success and failure rates, latency;
- ``mutirao-workers.json``: load per worker, heartbeat age against the timeout, dead
  workers, redistributions;
- ``mutirao-orchestrators.json``: leader, epoch, takeovers, replication lag, degraded, journal.

Every query goes to the data source chosen in the ``datasource`` variable. Grafana's own
``$__rate_interval`` and ``$__range`` are the only other variables. ``docs/metrics.md``
describes each panel; tests/integration/test_prometheus.py runs every query against a real
Prometheus scraping a real local cluster. Standard library only.

    scripts/gen-dashboards.py                 # write both directories
    scripts/gen-dashboards.py --out DIR       # write into DIR only (the sync test)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUTPUTS = (ROOT / "charts" / "mutirao" / "dashboards", ROOT / "manifests" / "grafana")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
RATE = "$__rate_interval"
Panel = dict[str, Any]

# -- building blocks ---------------------------------------------------------------------------


def target(expr: str, legend: str = "", *, instant: bool = False) -> dict[str, Any]:
    return {
        "datasource": DATASOURCE,
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
    }


def _targets(targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)]


def timeseries(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    *,
    unit: str = "short",
    stack: bool = False,
    bars: bool = False,
    maximum: float | None = None,
    overrides: list[dict[str, Any]] | None = None,
) -> Panel:
    defaults: dict[str, Any] = {
        "unit": unit,
        "min": 0,
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "bars" if bars else "line",
            "lineWidth": 1,
            "fillOpacity": 80 if bars else 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
    }
    if maximum is not None:
        defaults["max"] = maximum
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": _targets(targets),
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(
    title: str,
    description: str,
    targets: list[dict[str, Any]],
    *,
    unit: str = "short",
    text: str = "auto",
    mappings: list[dict[str, Any]] | None = None,
    red_from: float | None = None,
) -> Panel:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if red_from is not None:
        steps.append({"color": "red", "value": red_from})
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": _targets(targets),
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "mappings": mappings or [],
                "thresholds": {"mode": "absolute", "steps": steps},
                "color": {"mode": "thresholds"},
            },
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "textMode": text,
        },
    }


def values(mapping: dict[int, tuple[str, str]]) -> list[dict[str, Any]]:
    """A value mapping: number -> (text, color)."""
    options = {
        str(k): {"text": text, "color": color, "index": i}
        for i, (k, (text, color)) in enumerate(mapping.items())
    }
    return [{"type": "value", "options": options}]


def dashed(series: str, color: str | None = "red", *, regex: bool = False) -> dict[str, Any]:
    """Draw the series named ``series`` (or matching it, with ``regex``) as a dashed line: a
    threshold from a metric, or one of a pair; ``color`` None keeps the series' own."""
    fixed = [{"id": "color", "value": {"mode": "fixed", "fixedColor": color}}] if color else []
    return {
        "matcher": {"id": "byRegexp" if regex else "byName", "options": series},
        "properties": [
            *fixed,
            {"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
            {"id": "custom.lineWidth", "value": 2},
            {"id": "custom.fillOpacity", "value": 0},
        ],
    }


def quantiles(metric: str, by: str = "") -> list[dict[str, Any]]:
    group = f"le, {by}" if by else "le"
    suffix = f" {{{{{by}}}}}" if by else ""
    return [
        target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket[{RATE}])))",
            f"p{round(q * 100)}{suffix}",
        )
        for q in (0.5, 0.95, 0.99)
    ]


def layout(rows: list[list[tuple[Panel, int]]], height: int = 8) -> list[Panel]:
    """Place rows of (panel, width) on Grafana's 24-column grid; ids in reading order."""
    panels: list[Panel] = []
    for y, row in enumerate(rows):
        assert sum(width for _, width in row) <= 24, [p["title"] for p, _ in row]
        x = 0
        for panel, width in row:
            h = 4 if panel["type"] == "stat" else height
            panels.append({**panel, "gridPos": {"x": x, "y": y * height, "w": width, "h": h}})
            x += width
    return [{**p, "id": i} for i, p in enumerate(panels, 1)]


def dashboard(uid: str, title: str, description: str, panels: list[Panel]) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["mutirao"],
        "editable": True,
        "graphTooltip": 1,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "links": [
            {
                "type": "dashboards",
                "title": "Mutirão",
                "tags": ["mutirao"],
                "asDropdown": True,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "annotations": {
            "list": [
                {
                    "name": "Takeovers",
                    "datasource": DATASOURCE,
                    "enable": True,
                    "iconColor": "orange",
                    "expr": "max(changes(mutirao_orchestrator_epoch[1m])) > 0",
                    "titleFormat": "Takeover: the epoch changed",
                    "step": "30s",
                }
            ]
        },
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Data source",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                    "refresh": 1,
                    "regex": "",
                    "options": [],
                }
            ]
        },
        "panels": panels,
    }


# -- the dashboards ----------------------------------------------------------------------------


def overview() -> dict[str, Any]:
    finished = (
        f"sum(rate(mutirao_tasks_completed_total[{RATE}]))"
        f" + sum(rate(mutirao_tasks_failed_total[{RATE}]))"
    )
    rows = [
        [
            (stat("Pending tasks", "Tasks waiting for a worker.",
                  [target('sum(mutirao_tasks{state="pending"})')]), 6),
            (stat("Running tasks", "Tasks assigned to a worker or running.",
                  [target('sum(mutirao_tasks{state=~"assigned|running"})')]), 6),
            (stat("Oldest pending task", "Age of the oldest task still in the queue: a "
                  "growing value means the backlog is not moving.",
                  [target("max(mutirao_queue_oldest_age_seconds)")], unit="s", red_from=60), 6),
            (stat("Workers alive", "Workers heard from within the heartbeat timeout.",
                  [target('sum(mutirao_workers{state="alive"})')]), 6),
        ],
        [
            (timeseries("Throughput", "Tasks submitted and finished (succeeded or failed "
                        "for good) per second.", [
                target(f"sum(rate(mutirao_tasks_submitted_total[{RATE}]))", "submitted"),
                target(finished, "finished"),
            ], unit="ops"), 12),
            (timeseries("Backlog", "Pending tasks, the queue that workers have not taken "
                        "yet: all of them, and by priority.", [
                target('sum(mutirao_tasks{state="pending"})', "all pending"),
                target("sum by (priority) (mutirao_queue_depth)", "priority {{priority}}"),
            ], overrides=[dashed("all pending", "orange")]), 12),
        ],
        [
            (timeseries("Outcomes", "Per second: tasks that succeeded, failed for good, were "
                        "retried (an attempt failed or its worker was lost) or cancelled.", [
                target(f"sum(rate(mutirao_tasks_completed_total[{RATE}]))", "succeeded"),
                target(f"sum(rate(mutirao_tasks_failed_total[{RATE}]))", "failed"),
                target(f"sum(rate(mutirao_tasks_retried_total[{RATE}]))", "retried"),
                target(f"sum(rate(mutirao_tasks_cancelled_total[{RATE}]))", "cancelled"),
            ], unit="ops"), 12),
            (timeseries("Success rate", "Share of finished tasks that succeeded; failures "
                        "count only once a task is out of attempts.", [
                target(f"sum(rate(mutirao_tasks_completed_total[{RATE}])) / ({finished})",
                       "success rate"),
            ], unit="percentunit", maximum=1), 12),
        ],
        [
            (timeseries("Queue wait", "Percentiles of the time from submission to the first "
                        "assignment.", quantiles("mutirao_task_queue_wait_seconds"),
                        unit="s"), 12),
            (timeseries("Run duration", "Percentiles of the time attempts ran on a worker, "
                        "all types.", quantiles("mutirao_task_run_duration_seconds"),
                        unit="s"), 12),
        ],
        [
            (timeseries("Tasks by state", "Every task the active orchestrator holds, by "
                        "state.", [target("sum by (state) (mutirao_tasks)", "{{state}}")]), 12),
            (timeseries("Run duration p95 by type", "95th percentile of attempt run time, "
                        "per task type.", [target(
                f"histogram_quantile(0.95, sum by (le, type) "
                f"(rate(mutirao_task_run_duration_seconds_bucket[{RATE}])))", "{{type}}")],
                unit="s"), 12),
        ],
        [
            (timeseries("Queues", "Pending (solid) and running (dashed) tasks by queue: what "
                        "each queue's workers have to do, and what the chart's autoscalers "
                        "scale on.", [
                target("sum by (queue) (mutirao_queue_pending)", "{{queue}} pending"),
                target("sum by (queue) (mutirao_queue_running)", "{{queue}} running"),
            ], overrides=[dashed(".* running", None, regex=True)]), 12),
            (timeseries("Attempts taken back", "Per second, by cause: attempts of dead "
                        "workers, of restarted ones, and those draining workers handed back "
                        "unfinished (they cost no attempt).", [target(
                f"sum by (cause) (rate(mutirao_tasks_redistributed_total[{RATE}]))",
                "{{cause}}")], unit="ops"), 12),
        ],
        [
            (timeseries("Waiting tasks", "Tasks waiting for their dependencies (after, "
                        "$result inputs) to settle: they are not in the queue yet.", [
                target('sum(mutirao_tasks{state="waiting"})', "waiting"),
            ]), 12),
            (timeseries("Dependency cancellations", "Per second, by type: waiting tasks "
                        "cancelled because a dependency failed, was cancelled or lacked an "
                        "input.", [target(
                f"sum by (type) (rate(mutirao_tasks_dependency_cancelled_total[{RATE}]))",
                "{{type}}")], unit="ops"), 12),
        ],
        [
            (timeseries("Schedule fires and misses", "Per second, by schedule: tasks its "
                        "ticks submitted, and ticks that submitted nothing (missed while down, "
                        "skipped by overlap, refused).", [
                target(f"sum by (schedule) (rate(mutirao_schedule_fires_total[{RATE}]))",
                       "{{schedule}} fires"),
                target(f"sum by (schedule) (rate(mutirao_schedule_misses_total[{RATE}]))",
                       "{{schedule}} misses"),
            ], unit="ops"), 12),
            (timeseries("Schedule lag", "Percentiles of the time from a schedule's tick to "
                        "its fire.", quantiles("mutirao_schedule_lag_seconds"), unit="s"), 12),
        ],
    ]  # fmt: skip
    return dashboard(
        "mutirao-overview",
        "Mutirão / Overview",
        "Throughput, backlog, outcomes and latency of the whole cluster.",
        layout(rows),
    )


def workers() -> dict[str, Any]:
    rows = [
        [
            (stat("Workers alive", "Workers heard from within the heartbeat timeout.",
                  [target('sum(mutirao_workers{state="alive"})')]), 6),
            (stat("Suspect workers", "Silent for more than two heartbeat intervals: given "
                  "no new tasks until heard from again.",
                  [target('sum(mutirao_workers{state="suspect"})')], red_from=1), 6),
            (stat("Dead workers", "Workers declared dead in the last 15 minutes.",
                  [target('sum(mutirao_workers{state="dead"})')], red_from=1), 6),
            (stat("Cluster load", "Running attempts over slots, all workers together.",
                  [target("sum(mutirao_worker_running_tasks) / sum(mutirao_worker_slots)")],
                  unit="percentunit"), 6),
        ],
        [
            (timeseries("Load per worker", "Running attempts / slots of each worker: the "
                        "scheduler gives the next task to the least loaded one.",
                        [target("max by (worker) (mutirao_worker_load_ratio)", "{{worker}}")],
                        unit="percentunit", maximum=1), 12),
            (timeseries("Heartbeat age", "Seconds since each worker was last heard from. A "
                        "worker whose line crosses the dashed timeout is declared dead and its "
                        "tasks go to other workers.", [
                target("max by (worker) (mutirao_worker_heartbeat_age_seconds)", "{{worker}}"),
                target("max(mutirao_heartbeat_timeout_seconds)", "heartbeat timeout"),
            ], unit="s", overrides=[dashed("heartbeat timeout")]), 12),
        ],
        [
            (timeseries("Running tasks per worker", "Attempts each worker holds, and the "
                        "slots of all workers together.", [
                target("max by (worker) (mutirao_worker_running_tasks)", "{{worker}}"),
                target("sum(mutirao_worker_slots)", "slots, all workers"),
            ], overrides=[dashed("slots, all workers", "blue")]), 12),
            (timeseries("Workers by state", "Alive, suspect, and dead within the last 15 "
                        "minutes.", [target("sum by (state) (mutirao_workers)", "{{state}}")],
                        stack=True), 12),
        ],
        [
            (timeseries("Workers declared dead", "Per interval, by cause: the connection "
                        "dropped (a crash, SIGKILL) or the heartbeats stopped (a hung process).",
                        [target("sum by (cause) (increase(mutirao_workers_declared_dead_total"
                                f"[{RATE}]))", "{{cause}}")], bars=True), 12),
            (timeseries("Tasks redistributed", "Attempts taken back from a dead worker (or "
                        "one that restarted without them) and queued again.",
                        [target("sum by (cause) (increase(mutirao_tasks_redistributed_total"
                                f"[{RATE}]))", "{{cause}}")], bars=True), 12),
        ],
        [
            (timeseries("Heartbeats", "Heartbeats the active orchestrator received, and the "
                        "ones workers could not send, per second.", [
                target(f"sum(rate(mutirao_heartbeats_received_total[{RATE}]))", "received"),
                target(f"sum(rate(mutirao_runner_heartbeat_send_failures_total[{RATE}]))",
                       "send failures"),
            ], unit="ops"), 12),
            (timeseries("Attempts executed by outcome", "As the worker processes count "
                        "them: succeeded, failed, timed out, cancelled.", [
                target("sum by (outcome) (rate(mutirao_runner_tasks_executed_total"
                       f"[{RATE}]))", "{{outcome}}"),
            ], unit="ops", stack=True), 12),
        ],
    ]  # fmt: skip
    return dashboard(
        "mutirao-workers",
        "Mutirão / Workers",
        "Load and heartbeat health of every worker: see a dying worker before users do.",
        layout(rows),
    )


def orchestrators() -> dict[str, Any]:
    degraded = values({0: ("no", "green"), 1: ("DEGRADED", "red")})
    rows = [
        [
            (stat("Leader", "The orchestrator that leads now (its scrape instance).",
                  [target("max by (instance) (mutirao_orchestrator_leader) == 1",
                          "{{instance}}", instant=True)], text="name"), 6),
            (stat("Epoch", "Grows by one at every takeover; orders from older epochs are "
                  "refused.", [target("max(mutirao_orchestrator_epoch)")]), 6),
            (stat("Takeovers in range", "Times an orchestrator became the leader in the "
                  "selected time range.",
                  [target("sum(increase(mutirao_orchestrator_takeovers_total[$__range]))")],
                  red_from=1), 6),
            (stat("Degraded", "The leader runs without a standby in sync: if its disk is "
                  "lost, acknowledged tasks are lost with it.",
                  [target("max(mutirao_orchestrator_degraded)")], mappings=degraded,
                  red_from=1), 6),
        ],
        [
            (timeseries("Leader per orchestrator", "1 while an orchestrator leads, 0 while "
                        "it stands by.", [target("max by (instance) "
                                                 "(mutirao_orchestrator_leader)",
                                                 "{{instance}}")], maximum=1), 12),
            (timeseries("Takeovers", "Times each orchestrator took the lead, per interval.",
                        [target("sum by (instance) (increase("
                                f"mutirao_orchestrator_takeovers_total[{RATE}]))",
                                "{{instance}}")], bars=True), 12),
        ],
        [
            (timeseries("Replication lag", "Journal batches each standby has not "
                        "acknowledged yet (0 when in sync).",
                        [target("max by (standby) (mutirao_replication_lag_batches)",
                                "{{standby}}")]), 12),
            (timeseries("Standbys in sync", "Standbys the lease counts as holding every "
                        "acknowledged record (they may take over).",
                        [target("sum(mutirao_replication_standby_synced)", "in sync")]), 12),
        ],
        [
            (timeseries("Journal position", "Journal batches (LSN) each orchestrator holds: "
                        "a standby's line follows the leader's.",
                        [target("max by (instance) (mutirao_orchestrator_lsn)",
                                "{{instance}}")]), 12),
            (timeseries("Journal fsync latency", "Time to write and fsync one group commit "
                        "(many submissions share one).",
                        quantiles("mutirao_journal_fsync_duration_seconds", "instance"),
                        unit="s"), 12),
        ],
        [
            (timeseries("Epoch per orchestrator", "The epoch each orchestrator knows.",
                        [target("max by (instance) (mutirao_orchestrator_epoch)",
                                "{{instance}}")]), 12),
            (timeseries("Journal records since checkpoint", "Records a restart would replay "
                        "after the last checkpoint.",
                        [target("max by (instance) (mutirao_journal_records_since_checkpoint)",
                                "{{instance}}")]), 12),
        ],
    ]  # fmt: skip
    return dashboard(
        "mutirao-orchestrators",
        "Mutirão / Orchestrators",
        "Leader, epoch, takeovers, replication to the standbys and the journal.",
        layout(rows),
    )


DASHBOARDS = {
    "mutirao-overview.json": overview,
    "mutirao-workers.json": workers,
    "mutirao-orchestrators.json": orchestrators,
}


def render() -> dict[str, str]:
    return {
        name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, action="append", help="output directory")
    args = parser.parse_args()
    rendered = render()
    for directory in args.out or OUTPUTS:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in set(p.name for p in directory.glob("*.json")) - rendered.keys():
            (directory / stale).unlink()
        for name, text in rendered.items():
            (directory / name).write_text(text)
        print(f"gen-dashboards: wrote {len(rendered)} dashboards into {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
