"""The OpenAPI schemas of ``/uploads`` (API.md "Uploads"; Herald's additions in docs/api.md),
their enums taken from core's vocabularies."""

from __future__ import annotations

from app.openapi import INTEGER, PROBLEM, STRING, TIME, Schema, enum, obj
from core.columntypes import ColumnType, Storage
from core.statuses import VISIBLE_UPLOAD_STATUSES

UPLOAD_ACCEPTED = Schema(
    "UploadAccepted",
    obj(
        ["upload_id", "job_id", "status"], {"upload_id": STRING, "job_id": STRING, "status": STRING}
    ),
)
_COLUMN_PROFILE = obj(
    ["name", "type", "nulls", "invalid", "distinct"],
    {
        "name": STRING,
        "type": enum(ColumnType),
        "nulls": INTEGER,
        "invalid": INTEGER,
        "distinct": INTEGER,
        "distinct_approximate": {"type": "boolean"},  # docs/api.md: Herald's additions
        "min": {},
        "max": {},
        "mean": {},  # a number, or an ISO date/time for date and datetime columns
        "top": {
            "type": "array",
            "items": obj(["value", "count"], {"value": {}, "count": INTEGER}),
        },
    },
)
UPLOAD_RESULT = Schema(
    "UploadResult",
    obj(
        ["rows_total", "rows_valid", "rows_invalid", "data_quality_score", "columns"],
        {
            "rows_total": INTEGER,
            "rows_valid": INTEGER,
            "rows_invalid": INTEGER,
            "data_quality_score": {"type": "number", "minimum": 0, "maximum": 100},
            "columns": {"type": "array", "items": _COLUMN_PROFILE},
            "format": obj(["encoding", "delimiter"], {"encoding": STRING, "delimiter": STRING}),
            "storage": enum(Storage),
            # Things a person should check about how the file was read (docs/csv.md).
            "warnings": {"type": "array", "items": PROBLEM},
        },
    ),
)
UPLOAD = Schema(
    "Upload",
    obj(
        ["upload_id", "filename", "status", "created_at", "progress"],
        {
            "upload_id": STRING,
            "filename": STRING,
            "status": enum(VISIBLE_UPLOAD_STATUSES),
            "created_at": TIME,
            "progress": obj(
                ["percent", "rows_processed"],
                {
                    "percent": {"type": "integer", "minimum": 0, "maximum": 100},
                    "rows_processed": {"type": "integer", "minimum": 0},
                },
            ),
            "result": {"oneOf": [UPLOAD_RESULT, {"type": "null"}]},
            "error": {
                "oneOf": [
                    obj(["code", "message"], {"code": STRING, "message": STRING}),
                    {"type": "null"},
                ]
            },
        },
    ),
)
UPLOAD_LIST = Schema(
    "UploadList", obj(["uploads"], {"uploads": {"type": "array", "items": UPLOAD}})
)
ROWS = Schema(
    "Rows",
    obj(
        ["upload_id", "columns", "rows", "limit", "offset", "total"],
        {
            "upload_id": STRING,
            "columns": {
                "type": "array",
                "items": obj(["name", "type"], {"name": STRING, "type": enum(ColumnType)}),
            },
            "rows": {"type": "array", "items": {"type": "object"}},
            "limit": INTEGER,
            "offset": INTEGER,
            "total": INTEGER,
        },
    ),
)
