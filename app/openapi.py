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
                | _errors(400, 401, 413, 422, 429, 503),
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
                {"200": _json(_OBJ)} | _errors(401),
                security=_BEARER,
            )
        },
        "/chat/conversations/{conversation_id}/messages": {
            "get": _op(
                "A conversation's messages in order",
                {"200": _json(_OBJ)} | _errors(401, 404),
                security=_BEARER,
                parameters=[_path_id("conversation_id")],
            )
        },
        "/uploads": {
            "get": _op(
                "The tenant's uploads, newest first",
                {"200": _json(_OBJ)} | _errors(401),
                security=_BEARER,
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
                {"204": {"description": "Deleted"}} | _errors(401, 404),
                security=_BEARER,
                parameters=uid,
            ),
        },
        "/uploads/{upload_id}/rows": {
            "get": _op(
                "Imported rows, typed",
                {"200": _json(_OBJ)} | _errors(400, 401, 404, 409),
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
                {"200": _json({"$ref": "#/components/schemas/Upload"})} | _errors(401, 404, 409),
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
        "/healthz": {"get": _op("Liveness", {"200": _json(_OBJ)}, security=[])},
        "/readyz": {
            "get": _op(
                "Readiness of Redis and PostgreSQL",
                {"200": _json(_OBJ)} | _errors(503),
                security=[],
            )
        },
        "/metrics": {
            "get": _op(
                "Prometheus metrics",
                {
                    "200": {
                        "description": "Prometheus text",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
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
                "progress": {"type": "object"},
                "result": {"type": ["object", "null"]},
                "error": {"type": ["object", "null"]},
            },
        },
    }
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
