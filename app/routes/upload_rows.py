"""A completed upload read back: its typed rows (``/rows``, paged by the table's key) and its
rejected cells as a CSV file (``/errors``, streamed from a server-side cursor)."""

from __future__ import annotations

import codecs
import csv
import io
import uuid
from collections.abc import AsyncIterator

from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from app.errors import Conflict
from app.openapi import STRING, content, errors, json_body, operation, paging
from app.routes.upload_schemas import ROWS
from app.routes.uploads import JSONResponse, fetch_upload, page_param
from app.security.auth import authenticate
from core import settings
from core.columntypes import Storage
from core.statuses import UploadStatus

# OWASP "CSV Injection": a cell starting with one of these is run as a formula by
# spreadsheets; prefixing a single quote makes it text.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


@operation(
    "Imported rows, typed",
    {"200": json_body(ROWS)} | errors(400, 401, 404, 409),
    parameters=paging(),
)
async def get_rows(request: Request) -> Response:
    principal = await authenticate(request)
    pool: AsyncConnectionPool = request.app.state.pool
    row = await fetch_upload(pool, request.path_params["upload_id"], principal.tenant)
    limit = page_param(request, "limit", 100, 1, settings.UPLOAD_ROWS_PAGE_MAX)
    offset = page_param(request, "offset", 0, 0, 2**62)
    if row["status"] != UploadStatus.COMPLETED or not row["table_name"]:
        raise Conflict(
            "The upload has no rows until it is completed.",
            code="upload_not_completed",
            details={"status": row["status"]},
        )
    columns = row["result"]["columns"]
    query = sql.SQL("SELECT * FROM {} ORDER BY _row LIMIT %s OFFSET %s").format(
        sql.Identifier(row["table_name"])
    )
    async with pool.connection() as conn:
        cur = await conn.execute(query, (limit, offset))
        records = await cur.fetchall()
    names = [c["name"] for c in columns]
    wide = row["result"].get("storage") == Storage.JSONB  # too wide for columns
    return JSONResponse(
        {
            "upload_id": str(row["id"]),
            "columns": [{"name": c["name"], "type": c["type"]} for c in columns],
            "rows": [
                {n: r[1].get(n) for n in names} if wide else dict(zip(names, r[1:], strict=True))
                for r in records
            ],
            "limit": limit,
            "offset": offset,
            "total": row["result"]["rows_valid"],
        }
    )


def neutralise(cell: str) -> str:
    return "'" + cell if cell.startswith(_FORMULA_PREFIXES) else cell


@operation(
    "Rejected cells as CSV (row, column, value, error)",
    {"200": content("text/csv", STRING, "CSV")} | errors(401, 404),
)
async def get_errors(request: Request) -> Response:
    principal = await authenticate(request)
    pool: AsyncConnectionPool = request.app.state.pool
    row = await fetch_upload(pool, request.path_params["upload_id"], principal.tenant)
    upload_id = str(row["id"])

    async def body() -> AsyncIterator[bytes]:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")  # RFC 4180 line breaks
        writer.writerow(["row", "column", "value", "error"])
        # A UTF-8 BOM so spreadsheet programs read the file as UTF-8.
        yield codecs.BOM_UTF8 + buffer.getvalue().encode()
        async with pool.connection() as conn, conn.transaction():
            # A server-side cursor: the error list can be as long as the file.
            cur = conn.cursor(name=f"errors_{uuid.uuid4().hex}")
            await cur.execute(
                "SELECT row_number, column_name, value, error FROM upload_errors"
                " WHERE upload_id = %s ORDER BY row_number, ctid",
                (upload_id,),
            )
            while batch := await cur.fetchmany(1000):
                buffer.seek(0)
                buffer.truncate()
                for number, column, value, error in batch:
                    writer.writerow([number, neutralise(column), neutralise(value or ""), error])
                yield buffer.getvalue().encode()
            await cur.close()

    stem = row["filename"].rsplit(".", 1)[0] or "upload"
    ascii_stem = stem.encode("ascii", "ignore").decode().replace('"', "") or "upload"
    return StreamingResponse(
        body(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{ascii_stem}-errors.csv"'},
    )


routes = [
    Route("/uploads/{upload_id}/rows", get_rows, methods=["GET"]),
    Route("/uploads/{upload_id}/errors", get_errors, methods=["GET"]),
]
