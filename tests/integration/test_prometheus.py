"""The shipped dashboards against a real Prometheus scraping a real local cluster.

Prometheus and promtool come from Debian's ``prometheus`` package (``make prometheus``, which
``make test`` runs first). The test starts Prometheus on a loopback port with a generated
scrape config and a temporary storage dir, runs a workload (tasks that succeed, one that
fails, one whose worker crashes mid-task), then runs every PromQL expression of every shipped
dashboard through ``/api/v1/query``:

- every panel query must be valid (HTTP 200, status success) **and return data**: the
  workload (which ends with tasks running and two queued) and the zero-initialised counters
  make every one non-empty (a histogram quantile over no new observations is a NaN sample,
  which counts as data);
- annotation queries (``changes(epoch) > 0``: markers at takeovers) must be valid only, as
  no takeover happens here.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.integration.cluster import LocalCluster, Proc, eventually, free_port

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "manifests" / "grafana").glob("*.json"))
GRAFANA_VARIABLES = {"$__rate_interval": "30s", "$__range": "5m"}
"""What Grafana substitutes before a query reaches Prometheus (1 s scrapes here)."""


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} is not installed: run `make prometheus` (Debian's prometheus package; "
            "`make test` does it)",
            pytrace=False,
        )
    return path


def queries() -> Iterator[tuple[str, str, str, bool]]:
    """(dashboard, panel title, expr, must return data) for every query shipped."""
    for path in DASHBOARDS:
        doc = json.loads(path.read_text())
        for panel in doc["panels"]:
            for target in panel["targets"]:
                yield path.stem, panel["title"], target["expr"], True
        for annotation in doc["annotations"]["list"]:
            yield path.stem, f"annotation {annotation['name']}", annotation["expr"], False


def grafana(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def test_promtool_accepts_the_shipped_scrape_config() -> None:
    proc = subprocess.run(
        [binary("promtool"), "check", "config", str(ROOT / "docs" / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def _config(cluster: LocalCluster, workers: list[str]) -> dict[str, Any]:
    def hosts(urls: list[str]) -> list[str]:
        return [u.removeprefix("http://") for u in urls]

    return {
        "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
        "scrape_configs": [
            {"job_name": "orchestrator", "static_configs": [{"targets": hosts(cluster.urls)}]},
            {"job_name": "worker", "static_configs": [{"targets": hosts(workers)}]},
        ],
    }  # fmt: skip


def _scalar(body: Any) -> float | None:
    """The value of a one-sample answer, else None."""
    result = body.get("data", {}).get("result", []) if isinstance(body, dict) else []
    return float(result[0]["value"][1]) if len(result) == 1 else None


async def _query(http: aiohttp.ClientSession, base: str, expr: str) -> tuple[int, Any]:
    async with http.get(base + "/api/v1/query", params={"query": expr}) as resp:
        return resp.status, await resp.json()


async def test_every_dashboard_query_runs_against_a_real_prometheus(
    cluster: LocalCluster, tmp_path: Path
) -> None:
    prometheus, promtool = binary("prometheus"), binary("promtool")
    assert DASHBOARDS, "no dashboards in manifests/grafana/"
    cluster.start_orchestrator()
    await cluster.wait_ready()
    cluster.start_backup()
    for wid in ("W1", "W2", "W3"):
        # No prefetch: tasks beyond the slots stay queued, for the backlog panels.
        cluster.start_worker(wid, extra=("--prefetch", "0"))
    await cluster.wait_workers("W1", "W2", "W3")
    async with cluster.client() as client:
        worker_urls = [w["url"] for w in await client.workers()]
        config = tmp_path / "prometheus.yml"
        config.write_text(yaml.safe_dump(_config(cluster, worker_urls)))
        check = await asyncio.create_subprocess_exec(
            promtool, "check", "config", str(config), stdout=PIPE, stderr=STDOUT
        )
        out, _ = await check.communicate()
        assert check.returncode == 0, out.decode()
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = Proc(
            "prometheus",
            [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            tmp_path / "prometheus.out",
            {"PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        cluster.procs.append(server.start())  # SIGKILLed and reaped with the cluster

        # The workload: 20 successes, one failure for good, one worker killed mid-task,
        # and a schedule firing every second.
        await client.request(
            "POST",
            "/v1/schedules",
            {"name": "beat", "every": 1, "task": {"type": "sha256", "payload": "x"}},
        )
        ok = await client.submit_batch([{"type": "echo", "payload": i} for i in range(20)])
        bad = await client.submit("fail", "on purpose", max_attempts=1)
        crash = await client.submit("sleep", {"seconds": 0.2, "crash": True})
        views = await client.wait_many([t["id"] for t in [*ok, bad, crash]], timeout=30)
        assert [v["state"] for v in views] == ["succeeded"] * 20 + ["failed", "succeeded"]
        # Then more long tasks than the two live workers' 8 slots: some run, 2 stay queued.
        await client.submit_batch([{"type": "sleep", "payload": 120}] * 10)

    async with aiohttp.ClientSession() as http:

        async def scraped() -> bool:
            """Enough scrapes after the workload for rates over 30 s: the results counted,
            every live target scraped three times at least (rates need two samples)."""
            try:
                # The schedule's sha256 tasks go on completing: counted apart.
                query = 'sum(mutirao_tasks_completed_total{type!="sha256"})'
                _, done = await _query(http, base, query)
                _, live = await _query(
                    http, base, "count(count_over_time(up[30s]) >= 3 and up == 1)"
                )
            except aiohttp.ClientError:
                return False
            return _scalar(done) == 21 and (_scalar(live) or 0) >= 4  # 2 orchestrators, 2 workers

        await eventually(scraped, timeout=40, what="Prometheus to scrape the workload", every=0.5)

        problems = []
        checked = 0
        for dashboard, title, expr, needs_data in queries():
            status, body = await _query(http, base, grafana(expr))
            checked += 1
            if status != 200 or body.get("status") != "success":
                problems.append(f"{dashboard} / {title}: HTTP {status} {body}: {expr}")
            elif needs_data and not body["data"]["result"]:
                problems.append(f"{dashboard} / {title}: no data: {expr}")
    assert not problems, "\n".join(problems)
    assert checked >= 50, checked
