"""The client's workflow canvas (chain, group, chord) turned into the specs of one batch."""

from __future__ import annotations

import pytest

from mutirao import chain, chord, group, result_of, sig
from mutirao.client.canvas import Workflow, build


def test_a_chain_pipes_each_result_into_a_step_without_payload() -> None:
    a, b, c = sig("echo", 1), sig("echo"), sig("sum", [2, 3])
    specs, steps = build(chain(a, b, c))
    assert steps == [a, b, c]
    assert specs == [
        {"type": "echo", "payload": 1},
        {"type": "echo", "payload": {"$result": "#0"}, "after": ["#0"]},
        {"type": "sum", "payload": [2, 3], "after": ["#1"]},
    ]


def test_a_chord_gives_its_callback_the_list_of_the_group_results() -> None:
    left, first, second = sig("sum", [1, 2]), sig("echo", [3, 4]), sig("sum")
    callback = sig("sum", priority=5)
    specs, steps = build(chord(group(left, chain(first, second)), callback))
    assert steps == [left, first, second, callback]
    assert specs[2] == {"type": "sum", "payload": {"$result": "#1"}, "after": ["#1"]}
    assert specs[3] == {
        "type": "sum",
        "payload": [{"$result": "#0"}, {"$result": "#2"}],
        "priority": 5,
        "after": ["#0", "#2"],
    }


def test_results_of_any_step_anywhere_in_a_payload_and_extra_dependencies() -> None:
    words, setup = sig("wordcount", "a b a"), sig("echo", "ready")
    report = sig(
        "echo",
        {"counts": {"a": result_of(words, "a")}, "all": (result_of(words),)},
        after=[setup],
        on_failure="run",
    )
    specs, steps = build(group(words, report))
    assert steps == [words, setup, report]
    assert specs[1] == {"type": "echo", "payload": "ready"}, "an extra step waits for nothing"
    assert specs[2] == {
        "type": "echo",
        "payload": {"counts": {"a": {"$result": "#0", "path": "a"}}, "all": [{"$result": "#0"}]},
        "on_failure": "run",
        "after": ["#1"],
    }
    workflow = Workflow(steps, ["t1", "t2", "t3"])
    assert (workflow[report], workflow.last) == ("t3", "t3")
    with pytest.raises(KeyError):
        workflow[sig("echo")]
    with pytest.raises(ValueError, match="not in this workflow"):
        build(sig("echo", result_of(sig("elsewhere"))))
