"""The names of CSV column types (API.md "CSV uploads": the `columns` field).

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
