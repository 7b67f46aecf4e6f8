"""The OpenAPI 3.1 description of every JSON endpoint (API.md "Conventions")."""

from __future__ import annotations

import functools
from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}
_BEARER: list[dict[str, list[str]]] = [{"bearer": []}, {"cookie": []}]
_SSE_AUTH: list[dict[str, list[str]]] = [{"bearer": []}, {"cookie": []}, {"query": []}]


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _json(_ERROR, "Error") for s in statuses}


def _op(
    summary: str,
    responses: dict[str, Any],
    *,
    security: list[dict[str, list[str]]] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": responses}
    if security is not None:
        op["security"] = security
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = body
    return op


def _path_id(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


_OBJ = {"type": "object"}
_STATUS = {"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}
_STR = {"type": "string"}
_TIME = {"type": "string", "format": "date-time"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: list[str], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties}


def _list_schemas() -> dict[str, Any]:
    """What the list and result endpoints return (app/routes/chat.py, app/routes/uploads.py)."""
    column = _object(
        ["name", "type", "nulls", "invalid", "distinct"],
        {
            "name": _STR,
            "type": {"enum": ["int", "float", "bool", "date", "datetime", "text"]},
            "nulls": {"type": "integer"},
            "invalid": {"type": "integer"},
            "distinct": {"type": "integer"},
            "min": {},
            "max": {},
            "mean": {},  # a number, or an ISO date/time for date and datetime columns
            "top": {
                "type": "array",
                "items": _object(["value", "count"], {"value": {}, "count": {"type": "integer"}}),
            },
        },
    )
    return {
        "ConversationList": _object(
            ["conversations"],
            {
                "conversations": {
                    "type": "array",
                    "items": _object(
                        ["conversation_id", "title", "created_at", "updated_at"],
                        {
                            "conversation_id": _STR,
                            "title": _STR,
                            "created_at": _TIME,
                            "updated_at": _TIME,
                        },
                    ),
                }
            },
        ),
        "MessageList": _object(
            ["conversation_id", "messages"],
            {
                "conversation_id": _STR,
                "messages": {
                    "type": "array",
                    "items": _object(
                        ["message_id", "role", "text", "status", "created_at"],
                        {
                            "message_id": _STR,
                            "role": {"enum": ["user", "assistant"]},
                            "text": _STR,
                            "status": _STR,
                            "created_at": _TIME,
                            "model": _STR,
                            "error_code": _STR,
                        },
                    ),
                },
            },
        ),
        "UploadList": _object(["uploads"], {"uploads": {"type": "array", "items": _ref("Upload")}}),
        "UploadResult": _object(
            ["rows_total", "rows_valid", "rows_invalid", "data_quality_score", "columns"],
            {
                "rows_total": {"type": "integer"},
                "rows_valid": {"type": "integer"},
                "rows_invalid": {"type": "integer"},
                "data_quality_score": {"type": "number", "minimum": 0, "maximum": 100},
                "columns": {"type": "array", "items": column},
            },
        ),
        "Rows": _object(
            ["upload_id", "columns", "rows", "limit", "offset", "total"],
            {
                "upload_id": _STR,
                "columns": {
                    "type": "array",
                    "items": _object(["name", "type"], {"name": _STR, "type": _STR}),
                },
                "rows": {"type": "array", "items": _OBJ},
                "limit": {"type": "integer"},
                "offset": {"type": "integer"},
                "total": {"type": "integer"},
            },
        ),
    }


_SSE = {
    "description": "An event stream",
    "content": {"text/event-stream": {"schema": {"type": "string"}}},
}


@functools.cache
def openapi_document() -> dict[str, Any]:
    uid = [_path_id("upload_id")]
    paths: dict[str, Any] = {
        "/chat/messages": {
            "post": _op(
                "Send a chat message; the reply streams on /events",
                {"202": _json({"$ref": "#/components/schemas/ChatAccepted"}, "Accepted")}
                | _errors(400, 401, 404, 413, 422, 429, 503),
                security=_BEARER,
                body={
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/ChatMessage"}}
                    },
                },
            )
        },
        "/chat/conversations": {
            "get": _op(
                "The caller's conversations, newest first",
                {"200": _json(_ref("ConversationList"))} | _errors(401),
                security=_BEARER,
            )
        },
        "/chat/conversations/{conversation_id}/messages": {
            "get": _op(
                "A conversation's messages in order",
                {"200": _json(_ref("MessageList"))} | _errors(401, 404),
                security=_BEARER,
                parameters=[_path_id("conversation_id")],
            )
        },
        "/uploads": {
            "get": _op(
                "The tenant's uploads, newest first",
                {"200": _json(_ref("UploadList"))} | _errors(400, 401),
                security=_BEARER,
                parameters=[
                    _query("limit", {"type": "integer", "minimum": 1}),
                    _query("offset", {"type": "integer", "minimum": 0}),
                ],
            ),
            "post": _op(
                "Upload a CSV file (multipart `file` field, or a raw text/csv body)",
                {"202": _json({"$ref": "#/components/schemas/UploadAccepted"}, "Accepted")}
                | _errors(400, 401, 413, 415, 429, 503),
                security=_BEARER,
                parameters=[
                    _query("filename", {"type": "string"}),
                    _query("columns", {"type": "string"}),
                ],
                body={
                    "required": True,
                    "content": {
                        "multipart/form-data": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "file": {"type": "string", "format": "binary"},
                                    "columns": {"type": "string"},
                                },
                                "required": ["file"],
                            }
                        },
                        "text/csv": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
            ),
        },
        "/uploads/{upload_id}": {
            "get": _op(
                "One upload",
                {"200": _json({"$ref": "#/components/schemas/Upload"})} | _errors(401, 404),
                security=_BEARER,
                parameters=uid,
            ),
            "delete": _op(
                "Delete an upload and its rows",
                {"204": {"description": "Deleted"}} | _errors(401, 403, 404),
                security=_BEARER,
                parameters=uid,
            ),
        },
        "/uploads/{upload_id}/rows": {
            "get": _op(
                "Imported rows, typed",
                {"200": _json(_ref("Rows"))} | _errors(400, 401, 404, 409),
                security=_BEARER,
                parameters=[
                    *uid,
                    _query("limit", {"type": "integer", "minimum": 1}),
                    _query("offset", {"type": "integer", "minimum": 0}),
                ],
            )
        },
        "/uploads/{upload_id}/errors": {
            "get": _op(
                "Rejected cells as CSV (row, column, value, error)",
                {
                    "200": {
                        "description": "CSV",
                        "content": {"text/csv": {"schema": {"type": "string"}}},
                    }
                }
                | _errors(401, 404),
                security=_BEARER,
                parameters=uid,
            )
        },
        "/uploads/{upload_id}/cancel": {
            "post": _op(
                "Cancel an upload's job",
                {"200": _json({"$ref": "#/components/schemas/Upload"})}
                | _errors(401, 403, 404, 409),
                security=_BEARER,
                parameters=uid,
            )
        },
        "/events": {
            "get": _op(
                "The caller's event stream (SSE)",
                {"200": _SSE} | _errors(401, 429),
                security=_SSE_AUTH,
            )
        },
        "/uploads/{upload_id}/events": {
            "get": _op(
                "One upload's event stream (SSE)",
                {"200": _SSE} | _errors(401, 404, 429),
                security=_SSE_AUTH,
                parameters=uid,
            )
        },
        "/healthz": {"get": _op("Liveness", {"200": _json(_STATUS)}, security=[])},
        "/readyz": {
            "get": _op(
                "Readiness of Redis and PostgreSQL",
                {"200": _json(_STATUS)} | _errors(503),
                security=[],
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics (a bearer METRICS_TOKEN when one is configured)",
                {
                    "200": {
                        "description": "Prometheus text",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                }
                | _errors(401),
                security=[],
            )
        },
    }
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string"},
                        "message": {"type": "string"},
                        "details": {"type": "object"},
                    },
                }
            },
        },
        "ChatMessage": {
            "type": "object",
            "required": ["message"],
            "properties": {
                "message": {"type": "string", "minLength": 1},
                "conversation_id": {"type": "string"},
            },
        },
        "ChatAccepted": {
            "type": "object",
            "required": ["conversation_id", "message_id", "job_id"],
            "properties": {
                k: {"type": "string"} for k in ("conversation_id", "message_id", "job_id")
            },
        },
        "UploadAccepted": {
            "type": "object",
            "required": ["upload_id", "job_id", "status"],
            "properties": {
                "upload_id": {"type": "string"},
                "job_id": {"type": "string"},
                "status": {"type": "string"},
            },
        },
        "Upload": {
            "type": "object",
            "required": ["upload_id", "filename", "status", "created_at", "progress"],
            "properties": {
                "upload_id": {"type": "string"},
                "filename": {"type": "string"},
                "status": {
                    "enum": [
                        "queued",
                        "validating",
                        "processing",
                        "completed",
                        "failed",
                        "cancelled",
                    ]
                },
                "created_at": {"type": "string", "format": "date-time"},
                "progress": {
                    "type": "object",
                    "required": ["percent", "rows_processed"],
                    "properties": {
                        "percent": {"type": "integer", "minimum": 0, "maximum": 100},
                        "rows_processed": {"type": "integer", "minimum": 0},
                    },
                },
                "result": {"oneOf": [_ref("UploadResult"), {"type": "null"}]},
                "error": {
                    "oneOf": [
                        _object(["code", "message"], {"code": _STR, "message": _STR}),
                        {"type": "null"},
                    ]
                },
            },
        },
    }
    schemas |= _list_schemas()
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Herald",
            "version": "0.1.0",
            "description": "See API.md for the SSE contract.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": "herald_token"},
                "query": {"type": "apiKey", "in": "query", "name": "token"},
            },
        },
    }
