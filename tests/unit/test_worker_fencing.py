"""The worker's side of fencing: orders from an epoch older than one it has seen are
refused (and the connection closed by the caller), newer ones are obeyed."""

from __future__ import annotations

from mutirao.protocol import AssignMsg, CancelMsg
from mutirao.registry import Registry
from mutirao.settings import Settings
from mutirao.worker.node import WorkerNode


def _node() -> WorkerNode:
    registry = Registry()

    async def echo(payload: object) -> object:
        return payload

    registry.register("echo", echo)
    settings = Settings()
    settings.worker.id = "w1"
    return WorkerNode(settings, registry, "token")


def _assign(epoch: int, task: str) -> AssignMsg:
    return {"op": "assign", "epoch": epoch, "items": [(task, 1, "echo", None, 5.0)]}


async def test_orders_from_an_older_epoch_are_refused() -> None:
    node = _node()
    node.epoch = 2
    assert node._on_message(_assign(1, "stale")) is False
    assert ("stale", 1) not in node.runner.running
    cancel: CancelMsg = {"op": "cancel", "epoch": 1, "attempts": [("t", 1)]}
    assert node._on_message(cancel) is False
    assert node._on_message(_assign(2, "current")) is True
    assert ("current", 1) in node.runner.running
    await node.runner.close()


async def test_a_newer_epoch_is_adopted_and_older_ones_refused_from_then_on() -> None:
    node = _node()
    node.epoch = 1
    assert node._on_message(_assign(3, "newer")) is True
    assert node.epoch == 3
    assert node._on_message(_assign(2, "older")) is False
    assert await node.switch("http://old", 2) is False
    assert await node.switch("http://new", 3) is True
    assert node.preferred == "http://new"
    await node.runner.close()
