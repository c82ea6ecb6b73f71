"""A property-based fuzz of the whole HTTP API from its own OpenAPI document: Schemathesis
(the real CLI, pinned in requirements-dev.txt) against a real orchestrator and worker on
loopback, with every check it has (``--checks all``): no 5xx, every status and body as the
document says, schema-valid requests accepted and schema-invalid ones refused with 4xx,
405 with an ``Allow`` header, and the links from ``POST /v1/tasks`` followed with real ids
(the stateful phase). Any 4xx must also be JSON naming the field (checked on the server's
error path by tests/integration/test_api.py; Schemathesis checks the body's schema).

``make test`` runs a small example count with a fixed seed so a run is repeatable;
``MUTIRAO_FUZZ_EXAMPLES`` and ``MUTIRAO_FUZZ_SEED`` (empty: random) make it larger."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import aiohttp

from tests.integration.cluster import LocalCluster

EXAMPLES = os.environ.get("MUTIRAO_FUZZ_EXAMPLES", "12")
SEED = os.environ.get("MUTIRAO_FUZZ_SEED", "20261204")


async def _document(url: str) -> dict[str, object]:
    """The served document, narrowed where the cluster's state decides what is valid at
    run time. A task type need not be known (a type no worker runs is queued), so the
    generated types mostly make tasks that wait, pending, which the API must answer for as
    well as for those the worker runs."""
    async with aiohttp.ClientSession() as http, http.get(url + "/v1/openapi.json") as resp:
        doc: dict[str, object] = await resp.json()
    spec = doc["components"]["schemas"]["TaskSpec"]  # type: ignore[index]
    # Likewise the task ids a task may wait for (a generated one names no task: 400).
    spec["properties"]["after"]["maxItems"] = 0
    # And what JSON Schema cannot tell of a schedule: a valid cron expression, a known zone.
    schedule = doc["components"]["schemas"]["ScheduleSpec"]  # type: ignore[index]
    schedule["properties"]["cron"]["enum"] = ["*/5 * * * *", "0 3 * * 1-5"]
    schedule["properties"]["timezone"]["enum"] = ["UTC", "Europe/Lisbon"]
    return doc


async def test_the_whole_api_passes_every_schemathesis_check(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path, env_extra={"MUTIRAO_LIMITS_MAX_WAIT": "0.5"})
    try:
        await cluster.start("W1")
        admin = cluster.token()
        # Logging out ends the session of the token sent; the admin token above is minted
        # with the cluster's secret and cannot be (a 422 naming Authorization), so the
        # fuzzed logouts send a real session's token instead.
        await cluster.add_user("fuzz", "fuzz-password-1")
        async with cluster.client() as client:
            session_token = await client.login("fuzz", "fuzz-password-1")
        doc = tmp_path / "openapi.json"
        doc.write_text(json.dumps(await _document(cluster.url)))
        config = tmp_path / "schemathesis.toml"
        config.write_text(
            f'headers = {{ Authorization = "Bearer {admin}" }}\n'
            # Limits and quotas are cluster policy the fuzz would otherwise set on what it
            # uses itself (a max_pending of 1 for everyone, a rate of 1e-6 on echo): they go
            # to a type and a user the rest of the run does not use.
            "[parameters]\n"
            '"path.type" = "sleep"\n'
            '"path.user" = "nobody"\n'
            "[[operations]]\n"
            'include-path = "/v1/logout"\n'
            f'headers = {{ Authorization = "Bearer {session_token}" }}\n'
        )
        seed = ["--seed", SEED] if SEED else []
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file", str(config), "--no-color",
            "run", str(doc), "--url", cluster.url,
            "--checks", "all", "--max-examples", EXAMPLES, "--workers", "1",
            "--exclude-path", "/v1/session",  # a websocket, tested in test_api.py
            "--exclude-path", "/v1/events",  # a stream without end, test_dashboard.py's
            *seed,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=240)
        report = out.decode(errors="replace")
        assert proc.returncode == 0, report + cluster.dump_logs()
        assert "API Links:" in report, report
        assert " 0 covered" not in report, f"no link from POST /v1/tasks followed:\n{report}"
    finally:
        cluster.stop()
