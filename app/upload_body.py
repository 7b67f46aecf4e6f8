"""Receive an upload's bytes into ``upload_chunks`` while they stream in.

Two body forms (API.md "CSV uploads"): a raw ``text/csv`` body with ``?filename=``, or
``multipart/form-data`` with a ``file`` field (and optionally ``columns``). Multipart is
parsed with python-multipart's push parser straight from ``request.stream()``, so unlike
``request.form()`` nothing is spooled to local disk, which another machine could not read.
The size limit is enforced as bytes arrive; on any refusal the partial upload is deleted
(its chunks go with it, ``ON DELETE CASCADE``), so nothing is left behind.
"""

from __future__ import annotations

import codecs
import os
import re
import uuid
from dataclasses import dataclass

import anyio
from psycopg_pool import AsyncConnectionPool
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import Request

from app.errors import (
    BadRequest,
    HeraldError,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from app.security.auth import Principal
from core import settings
from core.statuses import UploadStatus

RAW_TYPES = frozenset({"text/csv", "application/csv", "text/plain", "text/tab-separated-values"})
# Form fields other than the file are tiny (`columns`); refuse anything larger than this.
_FIELD_MAX_BYTES = 64 * 1024
# Multipart framing (boundaries, part headers) on top of the file itself.
_MULTIPART_SLACK = 64 * 1024
_SNIFF_BYTES = 8192
# Control characters, and the Unicode bidi controls (Unicode's Bidi_Control property:
# ALM, LRM, RLM, LRE..RLO, LRI..PDI), which make "invoice\u202etxt.exe" display as
# "invoiceexe.txt" (CVE-2021-42574, "Trojan Source").
_UNSAFE_NAME = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


@dataclass(slots=True)
class UploadBody:
    upload_id: str
    size: int
    columns: str | None  # the raw `columns` form field, if one was sent


def too_large() -> PayloadTooLarge:
    return PayloadTooLarge(
        f"The file is larger than {settings.UPLOAD_MAX_BYTES} bytes.",
        code="upload_too_large",
        details={"max_bytes": settings.UPLOAD_MAX_BYTES},
    )


def clean_filename(raw: str | None) -> str:
    name = os.path.basename((raw or "").replace("\\", "/"))
    name = _UNSAFE_NAME.sub("", name).strip()[:255]
    return name or "upload.csv"


def looks_binary(head: bytes) -> bool:
    # UTF-16 text has NUL bytes by nature; its BOM says so (the worker decodes it).
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    return b"\x00" in head[:_SNIFF_BYTES]


class ChunkWriter:
    """Cuts the incoming bytes into ``UPLOAD_CHUNK_BYTES`` rows of ``upload_chunks``."""

    def __init__(self, pool: AsyncConnectionPool, upload_id: str) -> None:
        self.pool = pool
        self.upload_id = upload_id
        self.size = 0
        self.seq = 0
        self.buffer = bytearray()
        self.checked = False

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > settings.UPLOAD_MAX_BYTES:
            raise too_large()
        self.buffer += data
        if not self.checked and len(self.buffer) >= _SNIFF_BYTES:
            self.check_text()
        while len(self.buffer) >= settings.UPLOAD_CHUNK_BYTES:
            await self.flush(settings.UPLOAD_CHUNK_BYTES)

    def check_text(self) -> None:
        self.checked = True
        if looks_binary(bytes(self.buffer[:_SNIFF_BYTES])):
            raise UnsupportedMediaType(
                "The file is not text (it contains NUL bytes); upload a CSV file.",
                details={"reason": "not_text"},
            )

    async def flush(self, size: int) -> None:
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        # A connection per chunk, not per upload: a slow client must not hold a pool slot.
        # Each chunk also marks the upload as still arriving: the reconciler deletes one
        # idle for UPLOAD_RECEIVE_TIMEOUT_SECONDS (its web process died mid-body).
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "WITH upload AS (UPDATE uploads SET updated_at = now()"
                " WHERE id = %s AND status = 'receiving' RETURNING id)"
                " INSERT INTO upload_chunks (upload_id, seq, data)"
                " SELECT id, %s, %b FROM upload",
                (self.upload_id, self.seq, data),
            )
        if cur.rowcount != 1:
            raise RequestTimeout(
                f"The upload was dropped after {settings.UPLOAD_RECEIVE_TIMEOUT_SECONDS:g} s"
                " without data.",
                code="upload_timeout",
            )
        self.seq += 1

    async def finish(self) -> None:
        if not self.checked:
            self.check_text()
        if self.size == 0 or (self.seq == 0 and not self.buffer.strip()):
            raise BadRequest("The file is empty.", code="empty_file")
        if self.buffer:
            await self.flush(len(self.buffer))
        async with self.pool.connection() as conn:
            await conn.execute(
                "UPDATE uploads SET size_bytes = %s WHERE id = %s", (self.size, self.upload_id)
            )


class MultipartReader:
    """python-multipart's callbacks, collected so the async side can act on them."""

    def __init__(self, boundary: bytes) -> None:
        self.parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_part_data": self._data,
            },
        )
        self.events: list[tuple[str, bytes]] = []
        self._field = b""
        self._value = b""

    def feed(self, data: bytes) -> list[tuple[str, bytes]]:
        self.events.clear()
        self.parser.write(data)
        return self.events

    def _begin(self) -> None:
        self.events.append(("part", b""))

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._field.lower() == b"content-disposition":
            self.events.append(("disposition", self._value))
        self._field = self._value = b""

    def _data(self, data: bytes, start: int, end: int) -> None:
        self.events.append(("data", data[start:end]))


async def read_multipart(request: Request, writer: ChunkWriter, boundary: bytes) -> UploadBody:
    reader = MultipartReader(boundary)
    part: str | None = None
    filename: str | None = None
    seen_file = False
    fields: dict[str, bytearray] = {}
    field_bytes = 0
    body_bytes = 0
    async for piece in request.stream():
        # Every byte counts, not only the file's: framing, part headers and empty parts
        # cost parsing as much as data (a chunked body declares no length up front).
        body_bytes += len(piece)
        if body_bytes > settings.UPLOAD_MAX_BYTES + _MULTIPART_SLACK:
            raise too_large()
        for kind, data in reader.feed(piece):
            if kind == "part":
                part = None
            elif kind == "disposition":
                _, options = parse_options_header(data)
                part = options.get(b"name", b"").decode("utf-8", "replace")
                if part == "file":
                    if seen_file:
                        part = "file#ignored"  # only the first file part is the upload
                    else:
                        seen_file = True
                        raw_name = options.get(b"filename")
                        filename = raw_name.decode("utf-8", "replace") if raw_name else None
            elif part == "file":
                await writer.write(data)
            elif part is not None:
                value = fields.setdefault(part, bytearray())
                value += data
                field_bytes += len(data)
                # All fields together, not each: many small fields are as large as one.
                if field_bytes > _FIELD_MAX_BYTES:
                    raise BadRequest(f"The form field `{part}` is too large.")
    if not seen_file:
        raise BadRequest("A `file` field is required.", details={"field": "file"})
    await writer.finish()
    columns = fields.get("columns")
    await rename(writer, clean_filename(filename))
    return UploadBody(
        writer.upload_id, writer.size, columns.decode("utf-8", "replace") if columns else None
    )


async def rename(writer: ChunkWriter, filename: str) -> None:
    async with writer.pool.connection() as conn:
        await conn.execute(
            "UPDATE uploads SET filename = %s WHERE id = %s", (filename, writer.upload_id)
        )


async def read_upload(
    request: Request, principal: Principal, pool: AsyncConnectionPool
) -> UploadBody:
    """Store the request body as a new upload in status ``receiving``; return its id."""
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    media = content_type.decode("latin-1").lower()
    boundary = options.get(b"boundary")
    multipart = media == "multipart/form-data"
    if multipart and not boundary:
        raise BadRequest("The multipart body has no boundary.")
    if not multipart and media not in RAW_TYPES:
        raise UnsupportedMediaType(
            "Send multipart/form-data with a `file` field, or a text/csv body.",
            details={"accepted": ["multipart/form-data", *sorted(RAW_TYPES)]},
        )
    declared = request.headers.get("content-length", "")
    slack = _MULTIPART_SLACK if multipart else 0
    if declared.isdigit() and int(declared) > settings.UPLOAD_MAX_BYTES + slack:
        raise too_large()
    upload_id = str(uuid.uuid4())
    filename = clean_filename(request.query_params.get("filename"))
    async with pool.connection() as conn:
        await conn.execute(
            "INSERT INTO uploads (id, tenant, user_id, filename, content_type, status)"
            " VALUES (%s, %s, %s, %s, %s, %s)",
            (
                upload_id,
                principal.tenant,
                principal.user_id,
                filename,
                media,
                UploadStatus.RECEIVING,
            ),
        )
    writer = ChunkWriter(pool, upload_id)
    try:
        if multipart:
            assert boundary is not None
            return await read_multipart(request, writer, boundary)
        async for piece in request.stream():
            await writer.write(piece)
        await writer.finish()
        return UploadBody(upload_id, writer.size, None)
    except BaseException as exc:
        # Nothing left behind: the chunks go with the row (ON DELETE CASCADE). Shielded,
        # so a client that hung up (cancelling this task) still gets cleaned up after.
        with anyio.CancelScope(shield=True):
            async with pool.connection() as conn:
                await conn.execute("DELETE FROM uploads WHERE id = %s", (upload_id,))
        if isinstance(exc, HeraldError):
            raise
        if isinstance(exc, ValueError):  # python-multipart refuses a malformed body
            raise BadRequest("The multipart body is malformed.") from None
        raise
