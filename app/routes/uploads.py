"""``/uploads``: receive a CSV into PostgreSQL as it streams in, queue its import, read back.

The body is never held whole: raw ``text/csv`` bodies come from ``request.stream()`` and
multipart bodies go through python-multipart's push parser, and either way bytes are cut
into ``UPLOAD_CHUNK_BYTES`` rows of ``upload_chunks`` as they arrive, so any worker on any
machine can stream the file back. The import itself is the
``CSV_IMPORT`` job kind (core/jobkinds.py).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import anyio
import orjson
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.errors import BadRequest, Conflict, Forbidden, NotFound
from app.ids import parse_id
from app.openapi import (
    STRING,
    errors,
    json_body,
    obj,
    operation,
    paging,
    query,
)
from app.routes.upload_schemas import UPLOAD, UPLOAD_ACCEPTED, UPLOAD_LIST
from app.security import ratelimit
from app.security.auth import Principal, authenticate
from app.upload_body import UploadBody, read_upload
from core import events, jobkinds, settings
from core.columntypes import ColumnType
from core.eventkinds import EventKind
from core.principal import Identity
from core.statuses import ACTIVE_UPLOAD_STATUSES, UploadStatus
from core.timestamps import rfc3339

_TYPES = sorted(t.value for t in ColumnType)
_UPLOAD_FIELDS = "id, filename, status, created_at, progress_percent, rows_processed, result, error"


class JSONResponse(Response):
    """orjson, with a row's datetimes in RFC 3339 UTC like every other time stamp."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=_datetime, option=orjson.OPT_PASSTHROUGH_DATETIME)


def _datetime(value: object) -> str:
    # orjson hands over date, time and datetime with OPT_PASSTHROUGH_DATETIME.
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return rfc3339(value)
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def parse_columns(raw: str | None) -> dict[str, str] | None:
    if raw is None or not raw.strip():
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadRequest("`columns` must be a JSON object.", details={"field": "columns"}) from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v in _TYPES for k, v in value.items()
    ):
        raise BadRequest(
            "`columns` must map column names to one of: " + ", ".join(_TYPES) + ".",
            details={"field": "columns", "types": _TYPES},
        )
    return value


@operation(
    "Upload a CSV file (multipart `file` field, or a raw text/csv body)",
    {"202": json_body(UPLOAD_ACCEPTED, "Accepted")} | errors(400, 401, 413, 415, 429, 503),
    parameters=[query("filename", STRING), query("columns", STRING)],
    body={
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": obj(
                    ["file"],
                    {"file": {"type": "string", "format": "binary"}, "columns": STRING},
                )
            },
            "text/csv": {"schema": {"type": "string", "format": "binary"}},
        },
    },
)
async def create_upload(request: Request) -> Response:
    principal = await authenticate(request)
    limit_headers = await ratelimit.hit(
        request, "upload", settings.UPLOAD_RATE_LIMIT, principal.key
    )
    query_columns = parse_columns(request.query_params.get("columns"))
    pool: AsyncConnectionPool = request.app.state.pool
    body: UploadBody = await read_upload(request, principal, pool)
    upload_id = body.upload_id
    try:
        columns = query_columns if body.columns is None else parse_columns(body.columns)
        async with pool.connection() as conn:
            await conn.execute(
                "UPDATE uploads SET status = %s, job_id = %s, column_types = %s,"
                " updated_at = now() WHERE id = %s",
                (
                    UploadStatus.QUEUED,
                    upload_id,
                    orjson.dumps(columns).decode() if columns else None,
                    upload_id,
                ),
            )
        await events.apublish_event(
            request.app.state.events,
            EventKind.UPLOAD_STATUS,
            {"upload_id": upload_id, "status": UploadStatus.QUEUED},
            owner=principal.key,
            upload_id=upload_id,
        )
        # The job id is the upload id, so cancel can reach the job by it.
        await request.app.state.jobs.enqueue(jobkinds.CSV_IMPORT, upload_id, job_id=upload_id)
    except BaseException:
        # Refused after all (bad `columns` field, Redis down): keep nothing of it.
        with anyio.CancelScope(shield=True):
            async with pool.connection() as conn:
                await conn.execute("DELETE FROM uploads WHERE id = %s", (upload_id,))
        raise
    return JSONResponse(
        {"upload_id": upload_id, "job_id": upload_id, "status": UploadStatus.QUEUED},
        status_code=202,
        headers=limit_headers,
    )


def render_upload(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "upload_id": str(row["id"]),
        "filename": row["filename"],
        "status": row["status"],
        "created_at": rfc3339(row["created_at"]),
        "progress": {"percent": row["progress_percent"], "rows_processed": row["rows_processed"]},
        "result": row["result"],
        "error": row["error"],
    }


async def fetch_upload(pool: AsyncConnectionPool, upload_id: str, tenant: str) -> dict[str, Any]:
    """The tenant's upload or 404 (also for malformed ids and other tenants' uploads)."""
    if parse_id(upload_id) is None:
        raise NotFound("No such upload.")
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_UPLOAD_FIELDS}, table_name, user_id, tenant FROM uploads"  # noqa: S608 - constant  # nosec
            " WHERE id = %s AND tenant = %s AND status <> %s",
            (upload_id, tenant, UploadStatus.RECEIVING),
        )
        row = await cur.fetchone()
    if row is None:
        raise NotFound("No such upload.")
    return row


def page_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise BadRequest(
            f"`{name}` must be an integer from {low} to {high}.",
            details={"field": name, "min": low, "max": high},
        )
    return value


@operation(
    "The tenant's uploads, newest first",
    {"200": json_body(UPLOAD_LIST)} | errors(400, 401),
    parameters=paging(),
)
async def list_uploads(request: Request) -> Response:
    principal = await authenticate(request)
    limit = page_param(request, "limit", 50, 1, settings.UPLOAD_ROWS_PAGE_MAX)
    offset = page_param(request, "offset", 0, 0, 2**62)
    pool: AsyncConnectionPool = request.app.state.pool
    async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(
            f"SELECT {_UPLOAD_FIELDS} FROM uploads"  # noqa: S608 - constant  # nosec
            " WHERE tenant = %s AND status <> %s"
            " ORDER BY created_at DESC, id LIMIT %s OFFSET %s",
            (principal.tenant, UploadStatus.RECEIVING, limit, offset),
        )
        rows = await cur.fetchall()
    return JSONResponse({"uploads": [render_upload(r) for r in rows]})


@operation("One upload", {"200": json_body(UPLOAD)} | errors(401, 404))
async def get_upload(request: Request) -> Response:
    principal = await authenticate(request)
    row = await fetch_upload(
        request.app.state.pool, request.path_params["upload_id"], principal.tenant
    )
    return JSONResponse(render_upload(row))


def check_may_change(principal: Principal, row: dict[str, Any]) -> None:
    """Cancel and delete: the uploader, or an admin of the org (docs/security.md).

    Every member sees the org's uploads (API.md), so a refusal is 403, not 404."""
    if principal.is_admin or row["user_id"] == principal.user_id:
        return
    raise Forbidden(
        "Only the member who uploaded this file, or an org admin, may cancel or delete it."
    )


async def mark_cancelled(request: Request, principal: Principal, upload_id: str) -> bool:
    """Flip an active upload to ``cancelled``; the job notices at its next batch."""
    async with request.app.state.pool.connection() as conn:
        cur = await conn.execute(
            "UPDATE uploads SET status = %s, updated_at = now()"
            " WHERE id = %s AND tenant = %s AND status = ANY(%s) RETURNING tenant, user_id",
            (UploadStatus.CANCELLED, upload_id, principal.tenant, list(ACTIVE_UPLOAD_STATUSES)),
        )
        found = await cur.fetchone()
    if found is None:
        return False
    await events.apublish_event(
        request.app.state.events,
        EventKind.UPLOAD_STATUS,
        {"upload_id": upload_id, "status": UploadStatus.CANCELLED},
        owner=Identity.from_tenant(found[0], found[1]).key,
        upload_id=upload_id,
    )
    return True


@operation("Cancel an upload's job", {"200": json_body(UPLOAD)} | errors(401, 403, 404, 409))
async def cancel_upload(request: Request) -> Response:
    principal = await authenticate(request)
    pool: AsyncConnectionPool = request.app.state.pool
    row = await fetch_upload(pool, request.path_params["upload_id"], principal.tenant)
    check_may_change(principal, row)
    upload_id = str(row["id"])
    if row["status"] != UploadStatus.CANCELLED and not await mark_cancelled(
        request, principal, upload_id
    ):
        refreshed = await fetch_upload(pool, upload_id, principal.tenant)
        raise Conflict(
            f"The upload is already {refreshed['status']}.",
            code="upload_finished",
            details={"status": refreshed["status"]},
        )
    return JSONResponse(render_upload(await fetch_upload(pool, upload_id, principal.tenant)))


@operation(
    "Delete an upload and its rows", {"204": {"description": "Deleted"}} | errors(401, 403, 404)
)
async def delete_upload(request: Request) -> Response:
    principal = await authenticate(request)
    pool: AsyncConnectionPool = request.app.state.pool
    row = await fetch_upload(pool, request.path_params["upload_id"], principal.tenant)
    check_may_change(principal, row)
    upload_id = str(row["id"])
    # Cancel first: a running import then rolls back at its next batch and lets go of
    # the row, instead of the DELETE below waiting for the whole import.
    if row["status"] in ACTIVE_UPLOAD_STATUSES:
        await mark_cancelled(request, principal, upload_id)
    async with pool.connection() as conn, conn.transaction():
        cur = await conn.execute(
            "DELETE FROM uploads WHERE id = %s RETURNING table_name", (upload_id,)
        )
        deleted = await cur.fetchone()
        if deleted is not None and deleted[0]:
            await conn.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(deleted[0]))
            )
    await request.app.state.events.delete(events.upload_stream(upload_id))
    return Response(status_code=204)


routes = [
    Route("/uploads", create_upload, methods=["POST"]),
    Route("/uploads", list_uploads, methods=["GET"]),
    Route("/uploads/{upload_id}", get_upload, methods=["GET"]),
    Route("/uploads/{upload_id}", delete_upload, methods=["DELETE"]),
    Route("/uploads/{upload_id}/cancel", cancel_upload, methods=["POST"]),
]
