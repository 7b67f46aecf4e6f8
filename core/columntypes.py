"""The column type names of CSV uploads (API.md "CSV uploads": the ``columns`` override and
``result.columns[].type``). What each type means to the importer lives in
``jobs.csvimport.columntypes``; the web side needs only the names."""

from __future__ import annotations

from enum import StrEnum


class ColumnType(StrEnum):
    INT = "int"
    FLOAT = "float"
    BOOL = "bool"
    DATE = "date"
    DATETIME = "datetime"
    TEXT = "text"
