"""The operator's Prometheus metrics, served at ``/metrics`` on their own port."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Info, generate_latest


class OperatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tasks_reconciled = Counter(
            "mutirao_operator_tasks_reconciled",
            "Task status updates written (submissions and progress).",
            registry=self.registry,
        )
        self.errors = Counter(
            "mutirao_operator_errors",
            "Failed calls to the orchestrators or the Kubernetes API, by operation.",
            ["operation"],
            registry=self.registry,
        )
        self.following = Info(
            "mutirao_operator_following",
            "The orchestrator URL the operator sends its requests to.",
            registry=self.registry,
        )

    def follow(self, url: str) -> None:
        self.following.info({"orchestrator": url})

    async def serve(self, host: str, port: int) -> web.AppRunner:
        """Serve ``/metrics``; the caller owns the runner (``await runner.cleanup()``)."""

        async def metrics(request: web.Request) -> web.Response:
            body = generate_latest(self.registry)
            response = web.Response(body=body)
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        return runner


def bound_port(runner: web.AppRunner) -> int:
    """The port a runner's first site listens on (useful with port 0)."""
    for address in runner.addresses:
        port: int = address[1]
        return port
    raise RuntimeError("the metrics server is not listening")
