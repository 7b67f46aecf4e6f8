"""How an upload's CSV is written: dialect, header and column types detected from a prefix
sample (``detect_format``), and the rows read that way (``iter_rows``). Bytes into records is
`records`; cell reading lives in `celltypes`, type inference in `inference`, statistics in
`profile`.
"""

from __future__ import annotations

import codecs
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from core import settings
from core.columntypes import ColumnType
from jobs.csvimport.batch import fit_row
from jobs.csvimport.celltypes import ColumnSpec
from jobs.csvimport.header import clean_header
from jobs.csvimport.inference import ColumnGuess, infer_column
from jobs.csvimport.records import (
    QUOTECHAR,
    CsvFormatError,
    decode,
    detect_encoding,
    read_records,
    split_lines,
)

__all__ = ["ColumnSpec", "CsvFormat", "clean_header", "detect_format", "iter_rows"]

DELIMITERS: Final = (",", "\t", ";", "|")  # order breaks ties in sniffing


@dataclass(frozen=True)
class CsvFormat:
    encoding: str
    delimiter: str
    quotechar: str
    has_header: bool
    columns: list[ColumnSpec]
    # Things a person should check about how the file was read (e.g. a short header), each
    # {"code", "message", "details"}: the shape of API.md's errors.
    warnings: list[dict[str, Any]] = field(default_factory=list)


def warning(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details}


def iter_rows(chunks: Iterable[bytes], fmt: CsvFormat) -> Iterator[tuple[int, list[str]]]:
    """Yield (1-based data row number, fields), header excluded, blank lines skipped.

    Rows are yielded as parsed; use `fit_row` to report ragged ones."""
    records = read_records(split_lines(decode(chunks, fmt.encoding)), fmt.delimiter)
    if fmt.has_header:
        next(records, None)
    yield from enumerate(records, start=1)


# --- dialect -------------------------------------------------------------------------------


def _sample_records(text: str, delimiter: str, is_final: bool) -> list[list[str]]:
    records = list(read_records(split_lines([text]), delimiter))
    if not is_final and records:
        records.pop()  # the sample may end inside the last record
    return records


def _sniff(text: str, is_final: bool) -> tuple[str, list[list[str]]]:
    """Pick the delimiter whose parse gives the most consistent field count (>= 2) across
    records, parsing with quotes respected so embedded delimiters/newlines don't count."""
    best: tuple[tuple[float, int, int], str, list[list[str]]] | None = None
    by_header: tuple[tuple[float, int, int], str, list[list[str]]] | None = None
    fallback: list[list[str]] | None = None
    for rank, d in enumerate(DELIMITERS):
        if d != "," and d not in text:
            continue  # one field per record: no candidate (a parse of 1 MiB is ~10 ms)
        records = _sample_records(text, d, is_final)
        if d == ",":
            fallback = records
        if not records:
            continue
        width, hits = Counter(len(r) for r in records).most_common(1)[0]
        if width < 2:
            # Mostly one field per record, e.g. rows of empty cells broken up by bare CRs
            # (which are line breaks, as for csv.reader with newline=''). Still a candidate
            # when the first record (the header) splits: score it by rows of header width.
            head = len(records[0])
            if head >= 2:
                share = sum(1 for r in records if len(r) == head) / len(records)
                score = (share, head, -rank)
                if by_header is None or score > by_header[0]:
                    by_header = (score, d, records)
            continue
        score = (hits / len(records), width, -rank)
        if best is None or score > best[0]:
            best = (score, d, records)
    best = best or by_header
    if best is None:  # single-column file: every delimiter yields one field per record
        return ",", fallback or []
    return best[1], best[2]


# --- entry point ---------------------------------------------------------------------------


def detect_format(
    sample: bytes,
    column_types: dict[str, str] | None = None,
    *,
    is_final: bool,
    has_header: bool = True,
) -> CsvFormat:
    """Detect encoding, delimiter, header and column types from the first bytes of a file
    (`is_final`: the sample is the whole file). `column_types` maps a column's name (display,
    sql_name or raw header) to a `ColumnType` and overrides inference for it."""
    if not sample.strip():
        raise CsvFormatError("empty", "the file is empty")
    encoding = detect_encoding(sample, is_final=is_final)
    try:
        decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
        text = decoder.decode(sample, final=is_final)
    except UnicodeDecodeError as exc:  # pragma: no cover - detect_encoding decoded it already
        raise CsvFormatError("decode_error", str(exc)) from exc
    delimiter, records = _sniff(text, is_final)
    if not records:
        raise CsvFormatError(
            "header_too_large", "no complete first row within the sample; the header is too long"
        )
    warnings: list[dict[str, Any]] = []
    if has_header:
        raw_header, data = records[0], records[1:]
    else:
        raw_header, data = [""] * len(records[0]), records
    width = len(raw_header)
    if data:
        common, hits = Counter(len(r) for r in data).most_common(1)[0]
        if common > width and hits >= 0.95 * len(data):
            # The header is shorter than (nearly) every data row, e.g. a pandas index column
            # written with an empty name dropped: keep all data by naming the extra columns.
            warnings.append(_short_header(raw_header, data, common))
            raw_header = raw_header + [""] * (common - width)
            width = common
        elif common < width and hits >= 0.5 * len(data):
            warnings.append(
                warning(
                    "header_longer_than_rows",
                    f"The header has {width} fields but most rows have {common}; rows of"
                    f" {common} fields cannot be matched to the columns and are rejected.",
                    header_fields=width,
                    row_fields=common,
                )
            )
    if width > settings.UPLOAD_MAX_COLUMNS:
        raise CsvFormatError(
            "too_many_columns", f"{width} columns; at most {settings.UPLOAD_MAX_COLUMNS} allowed"
        )
    named = clean_header(raw_header)
    forced = _resolve_overrides(column_types or {}, raw_header, named)
    sample_rows = [r for r in data[: settings.UPLOAD_SAMPLE_ROWS] if len(r) >= width]
    sample_rows = [f for f in (fit_row(r, width)[0] for r in sample_rows) if f is not None]
    columns = []
    for i, (name, sql_name) in enumerate(named):
        values = [r[i] for r in sample_rows]
        undecided = False
        if i in forced:
            inferred = infer_column(values, delimiter, forced[i])
        else:
            guess = ColumnGuess(delimiter)
            guess.feed(values, last=True)
            inferred = guess.best()
            # Nothing to go by: load as text and decide from the values while loading.
            undecided = not guess.present and not is_final
        columns.append(
            ColumnSpec(
                name=name,
                sql_name=sql_name,
                type=inferred.type,
                date_format=inferred.date_format,
                decimal_comma=inferred.decimal_comma,
                thousands_sep=inferred.thousands_sep,
                forced=i in forced,
                undecided=undecided,
            )
        )
    return CsvFormat(encoding, delimiter, QUOTECHAR, has_header, columns, warnings)


def _short_header(raw: list[str], data: list[list[str]], common: int) -> dict[str, Any]:
    width = len(raw)
    first = next(r for r in data if len(r) == common)
    shown = ", ".join(f"{h.strip() or '(blank)'}={v!r}" for h, v in zip(raw, first, strict=False))
    return warning(
        "header_shorter_than_rows",
        f"The header has {width} fields but the rows have {common}: the {width} names were"
        f" given to the first {width} columns and the other {common - width} named"
        f" column_{width + 1}...; check that they line up (first row: {shown}).",
        header_fields=width,
        row_fields=common,
    )


def _resolve_overrides(
    column_types: dict[str, str], raw: list[str], named: list[tuple[str, str]]
) -> dict[int, ColumnType]:
    index: dict[str, int] = {}
    for i, (name, sql_name) in enumerate(named):
        for key in (raw[i].strip(), name, sql_name):
            index.setdefault(key, i)
    forced: dict[int, ColumnType] = {}
    unknown_cols = [c for c in column_types if c not in index]
    bad_types = {c: t for c, t in column_types.items() if t not in set(ColumnType)}
    if unknown_cols or bad_types:
        parts = []
        if unknown_cols:
            parts.append(f"unknown columns {sorted(unknown_cols)}")
        if bad_types:
            parts.append(f"unknown types {bad_types}; use one of {[t.value for t in ColumnType]}")
        raise CsvFormatError("invalid_columns", "; ".join(parts))
    for c, t in column_types.items():
        forced[index[c]] = ColumnType(t)
    return forced
