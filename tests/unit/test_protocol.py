"""Client submissions and worker messages: decoding and field-naming validation errors."""

from __future__ import annotations

import re

import pytest

from mutirao.errors import (
    MalformedError,
    MutiraoError,
    ProtocolError,
    TooLargeError,
    ValidationError,
)
from mutirao.protocol import (
    SubmissionParser,
    decode_orchestrator_message,
    decode_worker_message,
    encode,
)
from mutirao.settings import LimitSettings, TaskDefaults

DEFAULTS = TaskDefaults(max_attempts=4, timeout=60.0, priority=1)
LIMITS = LimitSettings(max_payload_bytes=100, max_batch=3)
PARSER = SubmissionParser(DEFAULTS, LIMITS)


def test_a_single_task_gets_the_defaults() -> None:
    specs, batch = PARSER.parse(b'{"type": "echo", "payload": {"x": [1, 2]}}')
    assert batch is False
    (spec,) = specs
    assert (spec.type, spec.payload, spec.priority, spec.max_attempts, spec.timeout, spec.key) == (
        "echo",
        {"x": [1, 2]},
        1,
        4,
        60.0,
        None,
    )


def test_a_batch_with_explicit_fields() -> None:
    body = (
        b'{"tasks": [{"type": "a", "priority": -5, "max_attempts": 1, "timeout": 2, "key": "k"},'
        b' {"type": "b", "timeout": 0.5}]}'
    )
    specs, batch = PARSER.parse(body)
    assert batch is True
    assert [(s.type, s.priority, s.max_attempts, s.timeout, s.key) for s in specs] == [
        ("a", -5, 1, 2.0, "k"),
        ("b", 1, 4, 0.5, None),
    ]
    assert isinstance(specs[0].timeout, float)


@pytest.mark.parametrize(
    ("body", "error", "field"),
    [
        (
            b'{"tasks": [{"type": "a"}, {"type": "a", "timeout": -1}]}',
            ValidationError,
            "tasks[1].timeout",
        ),
        (b'{"payload": 1}', ValidationError, "type"),
        (b'{"type": ""}', ValidationError, "type"),
        (b'{"type": 7}', ValidationError, "type"),
        (b'{"type": "a", "max_attempts": 0}', ValidationError, "max_attempts"),
        (b'{"type": "a", "max_attempts": true}', ValidationError, "max_attempts"),
        (b'{"type": "a", "max_attempts": 2.5}', ValidationError, "max_attempts"),
        (b'{"type": "a", "priority": "high"}', ValidationError, "priority"),
        (b'{"type": "a", "timeout": 0}', ValidationError, "timeout"),
        (b'{"type": "a", "timeout": "10"}', ValidationError, "timeout"),
        (b'{"type": "a", "timeout": 1e999}', ValidationError, "timeout"),  # no infinity
        (b'{"type": "a", "key": ""}', ValidationError, "key"),
        (b'{"type": "a", "key": 5}', ValidationError, "key"),
        (b'{"type": "a", "colour": "red"}', ValidationError, "colour"),
        (
            b'{"tasks": [{"type": "a"}, {"type": "a", "zzz": 1, "aaa": 2}]}',
            ValidationError,
            "tasks[1].zzz",  # the first one, in the document's order
        ),
        (b'{"tasks": [{"type": "a"}], "colour": "red"}', ValidationError, "colour"),
        (b'{"tasks": null}', ValidationError, "tasks"),
        (b'{"tasks": [{"type": "a"}, 3]}', ValidationError, "tasks[1]"),
        (b'{"tasks": []}', ValidationError, "tasks"),
        (b'{"tasks": {"type": "a"}}', ValidationError, "tasks"),
        (b"[1, 2]", ValidationError, "body"),
        (b"not json", MalformedError, "body"),
        (b'{"type": "a"', MalformedError, "body"),
        (b"", MalformedError, "body"),
        (
            b'{"tasks": [{"type": "a"}, {"type": "a"}, {"type": "a"}, {"type": "a"}]}',
            TooLargeError,
            "tasks",
        ),
    ],
)
def test_submission_errors_name_the_field(
    body: bytes, error: type[MutiraoError], field: str
) -> None:
    with pytest.raises(error) as info:
        PARSER.parse(body)
    assert type(info.value) is error
    assert info.value.field == field
    assert info.value.to_json()["field"] == field


def test_integral_floats_are_integers_as_in_json_schema() -> None:
    """JSON Schema (and so the OpenAPI document) counts 3.0 as an integer; msgspec does not,
    so the parser takes them on its error path; 2.5 is still refused, naming the field."""
    specs, _ = PARSER.parse(b'{"tasks": [{"type": "a", "max_attempts": 3.0, "priority": -2.0}]}')
    assert [(s.max_attempts, s.priority) for s in specs] == [(3, -2)]
    assert isinstance(specs[0].max_attempts, int)
    with pytest.raises(ValidationError) as info:
        PARSER.parse(b'{"type": "a", "max_attempts": 2.5}')
    assert info.value.field == "max_attempts"
    with pytest.raises(ValidationError) as info:
        PARSER.parse(b'{"type": "a", "priority": 1e300}')
    assert info.value.field == "priority"


def test_a_key_longer_than_256_characters_is_rejected() -> None:
    PARSER.parse(b'{"type": "a", "key": "%b"}' % (b"k" * 256))
    with pytest.raises(ValidationError) as info:
        PARSER.parse(b'{"type": "a", "key": "%b"}' % (b"k" * 257))
    assert info.value.field == "key"


def test_a_payload_over_the_limit_is_too_large() -> None:
    big = b'{"type": "a", "payload": "%b"}' % (b"x" * 100)
    with pytest.raises(TooLargeError) as info:
        PARSER.parse(big)
    assert info.value.field == "payload"
    assert info.value.status == 413
    assert "100 bytes" in info.value.message

    # A body over the limit whose payloads all fit is fine.
    padded = b'{"type": "a", "payload": "%b"}' % (b"x" * 90) + b" " * 50
    assert len(padded) > LIMITS.max_payload_bytes
    PARSER.parse(padded)


def test_an_oversized_payload_in_a_batch_names_its_task() -> None:
    body = b'{"tasks": [{"type": "a", "payload": 1}, {"type": "a", "payload": "%b"}]}' % (
        b"y" * 200
    )
    with pytest.raises(TooLargeError) as info:
        PARSER.parse(body)
    assert info.value.field == "tasks[1].payload"


def test_error_statuses_and_json() -> None:
    with pytest.raises(ValidationError) as info:
        PARSER.parse(b'{"type": "a", "max_attempts": 0}')
    assert info.value.status == 422
    assert info.value.to_json() == {
        "error": "invalid",
        "message": "max_attempts: expected `int` >= 1",
        "field": "max_attempts",
    }
    with pytest.raises(MalformedError) as malformed:
        PARSER.parse(b"{")
    assert malformed.value.status == 400
    assert malformed.value.code == "malformed"


# -- worker messages ------------------------------------------------------------------------


def test_worker_messages_round_trip() -> None:
    hello = decode_worker_message(
        encode(
            {
                "op": "hello",
                "worker_id": "w1",
                "url": "http://w1:1",
                "slots": 2,
                "types": ["echo"],
                "running": [("t1", 1)],
                "epoch": 0,
            }
        )
    )
    assert hello["op"] == "hello"
    assert hello["running"] == [["t1", 1]]
    assert decode_worker_message('{"op": "heartbeat", "running": 0}') == {
        "op": "heartbeat",
        "running": 0,
    }
    ack = decode_orchestrator_message(encode({"op": "ack", "attempts": [("t1", 2)]}))
    assert ack == {"op": "ack", "attempts": [["t1", 2]]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"op": "explode"}', "unknown message op 'explode'"),
        (b'{"running": 1}', "unknown message op None"),
        (b'{"op": ["hello"]}', "unknown message op"),
        (b'{"op": {"a": 1}}', "unknown message op"),
        (b'{"op": "assign", "epoch": 1, "items": []}', "unknown message op 'assign'"),
        (
            b'{"op": "hello", "worker_id": "w1", "slots": 2}',
            "hello message lacks url, types, running",
        ),
        (b'{"op": "results", "items": []}', "results message lacks epoch"),
        (b"[1]", "not a JSON object"),
        (b"\xff\xfe", "not JSON"),
        (b"", "not JSON"),
    ],
)
def test_bad_worker_messages_are_protocol_errors(data: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=re.escape(message)):
        decode_worker_message(data)


def test_orchestrator_messages_are_checked_too() -> None:
    with pytest.raises(ProtocolError, match="welcome message lacks drop"):
        decode_orchestrator_message(b'{"op": "welcome", "epoch": 1, "heartbeat_interval": 1}')
    with pytest.raises(ProtocolError, match="unknown message op 'hello'"):
        decode_orchestrator_message(b'{"op": "hello"}')
