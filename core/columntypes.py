"""The names of CSV column types (API.md "CSV uploads": the `columns` field), and of the two
layouts an upload's table can have (`result.storage`, docs/api.md).

Names only: the web validates a client's `columns` against them and /openapi.json
lists them; how each type parses and profiles lives in jobs/csvimport.
"""

from __future__ import annotations

from enum import StrEnum


class ColumnType(StrEnum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATE = "date"
    DATETIME = "datetime"
    TEXT = "text"


class Storage(StrEnum):
    """How an upload's rows are stored: one column per field, or one jsonb column per row
    for files too wide for a heap tuple (jobs/csvimport/table.py)."""

    COLUMNS = "columns"
    JSONB = "jsonb"
