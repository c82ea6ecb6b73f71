"""The OpenAPI 3.1 document served at ``/v1/openapi.json``."""

from __future__ import annotations

from typing import Any

from mutirao.auth import MIN_PASSWORD, ROLES
from mutirao.protocol import (
    MAX_AFTER,
    MAX_ATTEMPTS,
    MAX_PAYLOAD_DEPTH,
    MAX_TIME,
    MAX_TIMEOUT,
    TaskState,
)

_ERROR = {"$ref": "#/components/schemas/Error"}
_CLIENT_ERROR = {"$ref": "#/components/schemas/ClientError"}
_TASK = {"$ref": "#/components/schemas/Task"}


def _responses(ok: dict[str, Any], *codes: int) -> dict[str, Any]:
    out: dict[str, Any] = {"200": {"description": "OK", "content": {"application/json": ok}}}
    for code in codes:
        # A client error names what to fix; 421 (ask the leader) and 5xx are about the
        # cluster, not the request.
        schema = _CLIENT_ERROR if code < 500 and code != 421 else _ERROR
        out[str(code)] = {
            "description": "error",
            "content": {"application/json": {"schema": schema}},
        }
    return out


_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
_STATES = {"enum": [state.value for state in TaskState]}
# Query numbers are capped, not refused, above their maximum (a long wait ends early).
_WAIT = {"type": "number", "minimum": 0}
_LOCATION = {
    "Location": {
        "description": "single task: /v1/tasks/{id} of the task submitted",
        "schema": {"type": "string"},
    }
}

_NAME = [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}]
_USER = {"$ref": "#/components/schemas/User"}
_ROLE = {"enum": list(ROLES), "description": "admin: every task and the users; viewer: reads"}
_SESSION = {
    "type": "object",
    "required": ["token", "user", "role", "expires_at"],
    "properties": {
        "token": {"type": "string", "description": "the access token (Bearer)"},
        "refresh_token": {"type": "string", "description": "login only: POST /v1/refresh"},
        "user": {"type": "string"},
        "role": _ROLE,
        "admin": {"type": "boolean"},
        "expires_at": {"type": "number"},
        "refresh_expires_at": {"type": "number"},
    },
}


def _created(responses: dict[str, Any]) -> dict[str, Any]:
    """201 for what was created, 200 for what existed (a repeated idempotency key)."""
    responses["201"] = {**responses["200"], "description": "Created"}
    return responses


def _located(responses: dict[str, Any]) -> dict[str, Any]:
    """A single task's answer says where the task is (``Location``), from which clients
    (and the fuzz's stateful phase) reach its endpoints with a real id; a batch has none.
    Explicit OpenAPI links cannot be used: one expression must resolve in both shapes."""
    for code in ("200", "201"):
        responses[code] = {**responses[code], "headers": _LOCATION}
    return responses


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


_QUANTITY = {
    "anyOf": [
        {"type": "number", "minimum": 0, "maximum": 2.0**80},
        {
            "type": "string",
            "pattern": r"^(\d+(\.\d+)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E|m)?$",
            "maxLength": 40,
        },
    ],
    "description": "a number, or a Kubernetes quantity: 500m, 4Gi, 2k",
}
_TYPE_PARAM = [{"name": "type", "in": "path", "required": True, "schema": {"type": "string"}}]
_USER_PARAM = [
    {
        "name": "user",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": "^([A-Za-z0-9._-]{1,64}|[*])$"},
        "description": "a user name, or * for everyone without a quota of their own",
    }
]
_COUNT = {"type": "integer", "minimum": 1, "maximum": 10**9}
_LIMIT_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "anyOf": [{"required": ["rate"]}, {"required": ["concurrency"]}],
    "dependentRequired": {"burst": ["rate"]},
    "properties": {
        "rate": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1e6,
            "description": "starts per second on average, cluster-wide",
        },
        "burst": {**_COUNT, "description": "most starts in any one second [ceil(rate)]"},
        "concurrency": {**_COUNT, "description": "most of the type assigned or running"},
    },
}
_LIMIT = {
    "type": "object",
    "required": ["type", "rate", "burst", "concurrency"],
    "properties": {
        "type": {"type": "string"},
        "rate": {"type": ["number", "null"]},
        "burst": {"type": ["integer", "null"]},
        "concurrency": {"type": ["integer", "null"]},
    },
}
_QUOTA_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "weight": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": 1e6,
            "default": 1,
            "description": "share of dispatches when users compete",
        },
        "max_running": {**_COUNT, "description": "most tasks assigned or running at once"},
        "max_pending": {
            **_COUNT,
            "description": "most tasks waiting to run; a submission past it gets 429",
        },
    },
}
_QUOTA = {
    "type": "object",
    "required": ["user", "weight", "max_running", "max_pending"],
    "properties": {
        "user": {"type": "string"},
        "weight": {"type": "number"},
        "max_running": {"type": ["integer", "null"]},
        "max_pending": {"type": ["integer", "null"]},
    },
}

_TASK_SPEC = {
    "type": "object",
    "required": ["type"],
    "additionalProperties": False,
    "properties": {
        "type": {"type": "string", "minLength": 1, "description": "handler name"},
        "payload": {
            "$ref": "#/components/schemas/JsonValue",
            "description": (
                "any JSON value passed to the handler: integers within 64 bits, nested at "
                f"most {MAX_PAYLOAD_DEPTH} arrays or objects deep"
            ),
        },
        "priority": {
            "type": "integer",
            "minimum": -(2**31),
            "maximum": 2**31 - 1,
            "default": 0,
            "description": "higher runs first",
        },
        "max_attempts": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_ATTEMPTS,
            "default": 3,
        },
        "timeout": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": MAX_TIMEOUT,
            "default": 300,
        },
        "key": {
            "type": ["string", "null"],
            "minLength": 1,
            "maxLength": 256,
            "description": "idempotency key",
        },
        "after": {
            "type": ["array", "null"],
            "items": {"type": "string", "minLength": 1, "maxLength": 256},
            "maxItems": MAX_AFTER,
            "description": (
                "tasks that must succeed first: task ids of yours, or #N (item N, from 0, "
                'of the same batch); {"$result": ref} inputs in the payload count too. '
                "The task is `waiting` until then; see docs/workflows.md"
            ),
        },
        "retry": {
            "type": ["object", "null"],
            "additionalProperties": False,
            "description": (
                "backoff between attempts: attempt n+1 starts no sooner than min(max_delay, "
                "delay * backoff^(n-1)) s (+/- jitter) after attempt n ended; lost workers' "
                "attempts retry at once. Default: the cluster's tasks.retry_* settings"
            ),
            "properties": {
                "delay": {"type": "number", "minimum": 0, "maximum": MAX_TIMEOUT},
                "backoff": {"type": "number", "minimum": 1, "maximum": 100},
                "max_delay": {"type": "number", "minimum": 0, "maximum": MAX_TIMEOUT},
                "jitter": {"type": "number", "minimum": 0, "maximum": 1},
            },
        },
        "not_before": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": MAX_TIME,
            "description": "unix time before which the task does not start (`scheduled`)",
        },
        "keep_result": {
            "type": ["number", "null"],
            "minimum": 0,
            "maximum": MAX_TIMEOUT,
            "description": "seconds the finished task is kept (default: tasks.retention)",
        },
        "queue": {
            "type": "string",
            "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$",
            "default": "default",
            "description": "only workers serving this queue (--queues) take the task",
        },
        "resources": {
            "type": ["object", "null"],
            "maxProperties": 32,
            "propertyNames": {"pattern": "^[a-z][a-z0-9_./-]{0,62}$"},
            "additionalProperties": _QUANTITY,
            "description": (
                'what the task takes while it runs, e.g. {"cpu": 2, "memory": "4Gi", '
                '"gpu": 1} (one cpu unless it says otherwise); it goes only to a worker '
                "with that much free, and waits (pending, with a pending_reason) until then"
            ),
        },
        "trace": {
            "type": ["string", "null"],
            "pattern": "^00-(?!0{32})[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": "the caller's W3C traceparent: the task's trace (with tracing on) "
            "goes on from that span; mutirao.Client sends the current one",
        },
        "on_failure": {
            "enum": ["cancel", "run"],
            "default": "cancel",
            "description": (
                "a dependency that fails or is cancelled cancels this task (cancel), or "
                "it runs anyway and such inputs become {$error, id, state} (run)"
            ),
        },
    },
}

_SCHEDULE_SPEC = {
    "type": "object",
    "required": ["name", "task"],
    "additionalProperties": False,
    "oneOf": [{"required": ["cron"]}, {"required": ["every"]}],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$"},
        "task": {"$ref": "#/components/schemas/TaskSpec"},
        "cron": {"type": "string", "description": "cron expression, in `timezone`"},
        "every": {"type": "number", "minimum": 0.5, "maximum": 366 * 86400},
        "timezone": {"type": "string", "default": "UTC", "description": "IANA name"},
        "overlap": {"enum": ["allow", "skip", "replace"], "default": "allow"},
        "catch_up": {"enum": ["none", "last", "all"], "default": "none"},
    },
}
_SCHEDULE = {
    "type": "object",
    "required": ["name", "owner", "task", "paused", "fires", "misses"],
    "properties": {
        "name": {"type": "string"},
        "owner": {"type": "string"},
        "task": {"type": "object"},
        "paused": {"type": "boolean"},
        "last_tick": {"type": ["number", "null"]},
        "next_tick": {"type": ["number", "null"]},
        "fires": {"type": "integer"},
        "misses": {"type": "integer"},
    },
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Mutirão orchestrator API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "message"],
                "properties": {
                    "error": {"type": "string"},
                    "message": {"type": "string"},
                    "field": {"type": "string"},
                },
            },
            "ClientError": {
                "allOf": [{"$ref": "#/components/schemas/Error"}, {"required": ["field"]}],
                "description": "a 4xx: `field` names the field, header or part at fault",
            },
            "JsonValue": {
                "description": "any JSON value whose integers fit in 64 bits",
                "anyOf": [
                    {"type": ["null", "boolean", "string"]},
                    {"type": "integer", "minimum": -(2**63), "maximum": 2**64 - 1},
                    {"type": "number", "not": {"type": "integer"}},
                    {"type": "array", "items": {"$ref": "#/components/schemas/JsonValue"}},
                    {
                        "type": "object",
                        "additionalProperties": {"$ref": "#/components/schemas/JsonValue"},
                    },
                ],
            },
            "TaskSpec": _TASK_SPEC,
            "ScheduleSpec": _SCHEDULE_SPEC,
            "User": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "role": _ROLE,
                    "admin": {"type": "boolean"},
                },
            },
            "Task": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "type": {"type": "string"},
                    "state": _STATES,
                    "owner": {"type": "string"},
                    "attempts": {"type": "array", "items": {"type": "object"}},
                    "result": {},
                    "error": {"type": ["string", "null"]},
                    "after": {"type": "array", "items": {"type": "string"}},
                    "on_failure": {"enum": ["cancel", "run"]},
                    "not_before": {"type": ["number", "null"]},
                    "queue": {"type": "string"},
                    "resources": {"type": "object"},
                    "pending_reason": {
                        "type": ["string", "null"],
                        "description": "why a pending task is not running yet",
                    },
                },
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/v1/login": {
            "post": {
                "summary": "Open a session: an access token (`token`, valid `auth.token_ttl`, "
                "15 min) and a `refresh_token` (valid `auth.refresh_ttl`, 12 h); failed "
                "logins are throttled per user name and per address (429 with Retry-After)",
                "security": [],
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["username", "password"],
                        "properties": {
                            "username": {"type": "string"},
                            "password": {"type": "string"},
                        },
                    }
                ),
                "responses": _responses({"schema": _SESSION}, 400, 401, 422, 429),
            }
        },
        "/v1/refresh": {
            "post": {
                "summary": "A new access token for the session of a refresh token",
                "security": [],
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["refresh_token"],
                        "properties": {"refresh_token": {"type": "string"}},
                    }
                ),
                "responses": _responses({"schema": _SESSION}, 400, 401, 422),
            }
        },
        "/v1/logout": {
            "post": {
                "summary": "End the session of the token this request carries (its access "
                "and refresh tokens)",
                "responses": _responses({"schema": {"type": "object"}}, 401, 422),
            }
        },
        "/v1/users": {
            "get": {
                "summary": "Every user and its role (admins)",
                "responses": _responses({"schema": {"type": "object"}}, 401, 403),
            },
            "post": {
                "summary": "Add a user (admins); journaled like a task",
                "requestBody": _body(
                    {
                        "type": "object",
                        "required": ["name", "password"],
                        "properties": {
                            "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
                            "password": {"type": "string", "minLength": MIN_PASSWORD},
                            "role": _ROLE,
                            "admin": {
                                "type": ["boolean", "null"],
                                "description": "shorthand for role (null: not given)",
                            },
                        },
                    }
                ),
                "responses": _created(_responses({"schema": _USER}, 400, 401, 403, 409, 422)),
            },
        },
        "/v1/users/{name}": {
            "get": {
                "summary": "One user (admins, or the user itself)",
                "parameters": _NAME,
                "responses": _responses({"schema": _USER}, 401, 403, 404),
            },
            "patch": {
                "summary": "A new password (signs the user out everywhere) or role (admins)",
                "parameters": _NAME,
                "requestBody": _body(
                    {
                        "type": "object",
                        "minProperties": 1,
                        "properties": {
                            "password": {"type": "string", "minLength": MIN_PASSWORD},
                            "role": _ROLE,
                        },
                    }
                ),
                "responses": _responses({"schema": _USER}, 400, 401, 403, 404, 409, 422),
            },
            "delete": {
                "summary": "Remove a user (admins); its tokens stop working",
                "parameters": _NAME,
                "responses": _responses({"schema": {"type": "object"}}, 401, 403, 404, 409),
            },
        },
        "/v1/users/{name}/revoke": {
            "post": {
                "summary": "Revoke every login token of the user issued until now",
                "parameters": _NAME,
                "responses": _responses({"schema": {"type": "object"}}, 401, 403, 404),
            }
        },
        "/v1/schedules": {
            "get": {
                "summary": "Schedules (yours; an admin's: all)",
                "responses": _responses({"schema": {"type": "object"}}, 401),
            },
            "post": {
                "summary": "Add a schedule: its task is submitted at each tick, once, with "
                "the key NAME@<tick in ISO 8601 UTC>",
                "requestBody": _body({"$ref": "#/components/schemas/ScheduleSpec"}),
                "responses": _created(
                    _responses({"schema": _SCHEDULE}, 400, 401, 403, 409, 413, 422, 503, 507)
                ),
            },
        },
        "/v1/schedules/{name}": {
            "get": {
                "summary": "One schedule, with its last and next tick",
                "parameters": _NAME,
                "responses": _responses({"schema": _SCHEDULE}, 401, 404),
            },
            "delete": {
                "summary": "Remove a schedule",
                "parameters": _NAME,
                "responses": _responses({"schema": _SCHEDULE}, 401, 403, 404, 503, 507),
            },
        },
        "/v1/schedules/{name}/pause": {
            "post": {
                "summary": "Pause a schedule: no tick fires until it is resumed",
                "parameters": _NAME,
                "responses": _responses({"schema": _SCHEDULE}, 401, 403, 404, 503, 507),
            }
        },
        "/v1/schedules/{name}/resume": {
            "post": {
                "summary": "Resume a schedule from now (ticks while paused are not caught up)",
                "parameters": _NAME,
                "responses": _responses({"schema": _SCHEDULE}, 401, 403, 404, 503, 507),
            }
        },
        "/v1/limits": {
            "get": {
                "summary": "Rate limits and concurrency caps by task type",
                "responses": _responses({"schema": {"type": "object"}}, 401),
            }
        },
        "/v1/limits/{type}": {
            "get": {
                "summary": "The limit of one task type",
                "parameters": _TYPE_PARAM,
                "responses": _responses({"schema": _LIMIT}, 401, 404),
            },
            "put": {
                "summary": "Limit a task type (admins): starts per second, exact across the "
                "cluster, and how many may run at once; journaled like a task",
                "parameters": _TYPE_PARAM,
                "requestBody": _body(_LIMIT_SPEC),
                "responses": _responses({"schema": _LIMIT}, 400, 401, 403, 413, 422, 503, 507),
            },
            "delete": {
                "summary": "Lift a task type's limit (admins)",
                "parameters": _TYPE_PARAM,
                "responses": _responses({"schema": _LIMIT}, 401, 403, 404, 503, 507),
            },
        },
        "/v1/quotas": {
            "get": {
                "summary": "Fair-share weights and quotas (yours and *; an admin's: all)",
                "responses": _responses({"schema": {"type": "object"}}, 401),
            }
        },
        "/v1/quotas/{user}": {
            "get": {
                "summary": "One user's weight and quotas",
                "parameters": _USER_PARAM,
                "responses": _responses({"schema": _QUOTA}, 401, 403, 404, 422),
            },
            "put": {
                "summary": "Set a user's weight and quotas (admins); journaled like a task",
                "parameters": _USER_PARAM,
                "requestBody": _body(_QUOTA_SPEC),
                "responses": _responses({"schema": _QUOTA}, 400, 401, 403, 413, 422, 503, 507),
            },
            "delete": {
                "summary": "Remove a user's quota (admins)",
                "parameters": _USER_PARAM,
                "responses": _responses({"schema": _QUOTA}, 401, 403, 404, 422, 503, 507),
            },
        },
        "/v1/ha": {
            "get": {
                "summary": "This orchestrator's role, epoch, leader and LSN (no login)",
                "security": [],
                "responses": _responses({"schema": {"type": "object"}}),
            }
        },
        "/v1/tasks": {
            "post": {
                "summary": 'Submit one task, or a batch as {"tasks": [...]}',
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "description": "single task: answer once it finished (seconds)",
                        "schema": _WAIT,
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    {"$ref": "#/components/schemas/TaskSpec"},
                                    {
                                        "type": "object",
                                        "required": ["tasks"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "tasks": {
                                                "type": "array",
                                                "minItems": 1,
                                                "items": {"$ref": "#/components/schemas/TaskSpec"},
                                            }
                                        },
                                    },
                                ]
                            }
                        }
                    },
                },
                "operationId": "submitTasks",
                "responses": _located(
                    _created(_responses({"schema": _TASK}, 400, 401, 413, 422, 429, 503, 507))
                ),
            },
            "get": {
                "summary": "List your tasks, newest first",
                "parameters": [
                    {"name": "state", "in": "query", "schema": _STATES},
                    {
                        "name": "limit",
                        "in": "query",
                        "description": "at most this many tasks (capped at 10,000)",
                        "schema": {"type": "integer", "minimum": 1},
                    },
                    {"name": "type", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "owner",
                        "in": "query",
                        "description": "admins: one user's tasks",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "q",
                        "in": "query",
                        "description": "tasks whose id starts with, or key contains, this",
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "after",
                        "in": "query",
                        "description": "the tasks older than a page's last: its `next`",
                        "schema": {"type": "integer", "minimum": 0},
                    },
                ],
                "responses": _responses(
                    {
                        "schema": {
                            "type": "object",
                            "required": ["tasks", "total", "next"],
                            "properties": {
                                "tasks": {"type": "array", "items": _TASK},
                                "total": {"type": "integer", "description": "how many match"},
                                "next": {
                                    "type": ["integer", "null"],
                                    "description": "the `after` of the next page (null: none)",
                                },
                            },
                        }
                    },
                    401,
                    422,
                ),
            },
        },
        "/v1/tasks/wait": {
            "post": {
                "summary": "Wait up to `wait` seconds for every task in `ids` to finish",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["ids"],
                                "properties": {
                                    "ids": {"type": "array", "items": {"type": "string"}},
                                    "wait": _WAIT,
                                    "view": {
                                        "enum": ["full", "brief"],
                                        "description": "brief: id, state, result, error only",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": _responses({"schema": {"type": "object"}}, 400, 401, 404, 413, 422),
            }
        },
        "/v1/session": {
            "get": {
                "summary": "Client session (websocket upgrade): one task per message",
                "description": (
                    "Send {ref, task, wait} (task as for POST /v1/tasks); each is answered"
                    " {ref, status, task} or {ref, status, error}, in any order. With"
                    " batch=1, a message may be an array of calls, and every message sent"
                    " back is an array of replies."
                ),
                "parameters": [{"name": "batch", "in": "query", "schema": {"type": "boolean"}}],
                "responses": _responses({}, 401, 421),
            }
        },
        "/v1/tasks/{id}": {
            "get": {
                "summary": "One task with its attempts",
                "operationId": "getTask",
                "parameters": _ID,
                "responses": _responses({"schema": _TASK}, 401, 404),
            }
        },
        "/v1/tasks/{id}/result": {
            "get": {
                "summary": "The task, after waiting up to `wait` seconds for it to finish",
                "operationId": "getTaskResult",
                "parameters": [*_ID, {"name": "wait", "in": "query", "schema": _WAIT}],
                "responses": _responses({"schema": _TASK}, 401, 404, 422),
            }
        },
        "/v1/tasks/{id}/cancel": {
            "post": {
                "summary": "Cancel a task that has not finished (409 once it has)",
                "operationId": "cancelTask",
                "parameters": _ID,
                "responses": _responses({"schema": _TASK}, 401, 404, 409, 507),
            }
        },
        "/v1/tasks/{id}/retry": {
            "post": {
                "summary": "Submit a failed or cancelled task's spec again, as a new task "
                "(409 for a task that did not end so)",
                "parameters": _ID,
                "responses": _located(
                    _created(_responses({"schema": _TASK}, 401, 403, 404, 409, 429, 503, 507))
                ),
            }
        },
        "/v1/events": {
            "get": {
                "summary": "Server-sent events every 0.5 s: the journal position (lsn), "
                "leader and epoch; for admins task counts and standbys (the dashboard's "
                "live updates)",
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "401": _responses({}, 401)["401"],
                },
            }
        },
        "/v1/workers": {
            "get": {
                "summary": "Workers with their URLs, load and heartbeat age (admins)",
                "responses": _responses({"schema": {"type": "object"}}, 401, 403),
            }
        },
        "/v1/cluster": {
            "get": {
                "summary": "Leader, epoch, task counts, queue depth and workers (admins)",
                "responses": _responses({"schema": {"type": "object"}}, 401, 403),
            }
        },
        "/healthz": {"get": {"security": [], "responses": _responses({})}},
        "/readyz": {"get": {"security": [], "responses": _responses({}, 503)}},
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics, active or standby (docs/metrics.md)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
    },
}
