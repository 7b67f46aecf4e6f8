"""Streaming CSV reading for uploads: encoding and dialect detection from a prefix sample,
header cleaning, and a row iterator over byte chunks whose memory use does not grow with file
size. Cell reading lives in `celltypes`, type inference in `inference`, statistics in `profile`.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
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

__all__ = [
    "ColumnSpec",
    "CsvFormat",
    "CsvFormatError",
    "clean_header",
    "detect_encoding",
    "detect_format",
    "iter_rows",
]

DELIMITERS: Final = (",", "\t", ";", "|")  # order breaks ties in sniffing
QUOTECHAR: Final = '"'
# A physical line (or the text since the last newline) longer than this aborts the read: a
# single-line 10 MB "CSV" must not be buffered whole. Several max-size fields may share a line.
MAX_LINE_CHARS: Final = 8 * settings.UPLOAD_MAX_FIELD_BYTES
# Share of C0 control bytes (other than \t \n \r \f \v, ESC) above which a sample is binary.
MAX_CONTROL_RATIO: Final = 0.01


class CsvFormatError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


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


# --- encoding ------------------------------------------------------------------------------

_TEXT_CONTROLS: Final = frozenset(b"\t\n\r\x0b\x0c\x1b")
# The other C0 bytes; counted by deleting them (bytes.translate), not a Python step per byte.
_CONTROLS: Final = bytes(b for b in range(0x20) if b not in _TEXT_CONTROLS)
# Single-byte Latin-script code pages charset-normalizer tends to pick for Western European
# text (it chose cp1250 for both the latin-1 and cp1252 fixtures); for these we apply the
# deterministic cp1252/latin-1 rule instead. Other scripts (Cyrillic, CJK, ...) are trusted.
_LATIN_SINGLE_BYTE: Final = frozenset(
    codecs.lookup(n).name
    for n in (
        "cp1250",
        "cp1252",
        "cp1257",
        "latin-1",
        "iso8859-2",
        "iso8859-15",
        "cp437",
        "cp850",
        "cp852",
        "cp775",
        "mac-roman",
        "mac-latin2",
    )
)
_CP1252_UNDEFINED: Final = frozenset(b"\x81\x8d\x8f\x90\x9d")


def detect_encoding(sample: bytes, *, is_final: bool) -> str:
    if sample.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"  # the decoder consumes the BOM and picks the byte order from it
    controls = len(sample) - len(sample.translate(None, _CONTROLS))
    if b"\x00" in sample or controls > MAX_CONTROL_RATIO * max(len(sample), 1):
        raise CsvFormatError("not_text", "the file looks binary (NUL or control bytes), not CSV")
    try:
        # Incremental and final=is_final so a sample cut inside a multibyte character is still
        # UTF-8: the decoder just holds the incomplete tail.
        codecs.getincrementaldecoder("utf-8")().decode(sample, final=is_final)
        return "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(sample).best()
    guess = codecs.lookup(best.encoding).name if best is not None else None
    if guess is not None and guess not in _LATIN_SINGLE_BYTE:
        return guess
    # Western fallback: cp1252 is a superset of latin-1's printable range and puts curly quotes,
    # dashes and the euro sign in 0x80-0x9F, where latin-1 has C1 control codes that no real
    # text contains (WHATWG Encoding even maps the "latin1" label to windows-1252).
    c1 = {b for b in sample if 0x80 <= b <= 0x9F}
    if c1 and not c1 & _CP1252_UNDEFINED:
        return "cp1252"
    return "latin-1"


# --- line splitting and parsing ------------------------------------------------------------


def line_blocks(texts: Iterable[str]) -> Iterator[str]:
    """Regroup decoded text into blocks that end at a line break, so lines never straddle
    two blocks. A trailing "\r" is held back: its "\n" may start the next piece."""
    tail = ""
    for piece in texts:
        text = tail + piece if tail else piece
        stop = len(text) - 1 if text.endswith("\r") else len(text)
        cut = max(text.rfind("\n", 0, stop), text.rfind("\r", 0, stop)) + 1
        if cut:
            yield text[:cut]
        tail = text[cut:]
        if len(tail) > MAX_LINE_CHARS:
            raise CsvFormatError(
                "line_too_long",
                f"a line is longer than {MAX_LINE_CHARS} characters without a line break",
            )
    if tail:
        yield tail


def split_lines(texts: Iterable[str]) -> Iterator[str]:
    """Split decoded text into lines ending in \r\n, \r or \n (kept), like a file opened
    with newline='' which the csv docs require so quoted newlines survive; io.StringIO with
    newline='' splits exactly there, in C. str.splitlines is not usable: it also splits on
    \x0b, \x0c, \x1c-\x1e, \x85, U+2028 and U+2029."""
    return itertools.chain.from_iterable(
        io.StringIO(block, newline="") for block in line_blocks(texts)
    )


def decode(chunks: Iterable[bytes], encoding: str) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    try:
        for chunk in chunks:
            text = decoder.decode(chunk)
            offset += len(chunk)
            if text:
                yield text
        tail = decoder.decode(b"", final=True)
    except UnicodeDecodeError as exc:
        raise CsvFormatError(
            "decode_error",
            f"bytes near offset {offset + exc.start} are not valid {encoding} "
            "(the encoding was detected from the start of the file)",
        ) from exc
    if tail:
        yield tail


def _records(lines: Iterable[str], delimiter: str) -> Iterator[list[str]]:
    # RFC 4180 quoting (doubled quotes inside quoted fields); strict=False so a stray quote in
    # an unquoted field is data, as spreadsheets write it. csv.field_size_limit is process
    # global: raise it to the configured cap, which also bounds a field with an unclosed quote.
    csv.field_size_limit(settings.UPLOAD_MAX_FIELD_BYTES)
    reader = csv.reader(lines, delimiter=delimiter, quotechar=QUOTECHAR, doublequote=True)
    # Blank lines carry no row (csv yields [] for them). Rows are taken in slices, in C: a
    # Python step per row here cost ~0.15 s per million rows.
    rows = filter(None, reader)
    try:
        while part := list(itertools.islice(rows, 1024)):
            yield from part
    except csv.Error as exc:
        code = "field_too_large" if "field larger" in str(exc) else "malformed_csv"
        raise CsvFormatError(code, f"line {reader.line_num}: {exc}") from exc


def iter_rows(chunks: Iterable[bytes], fmt: CsvFormat) -> Iterator[tuple[int, list[str]]]:
    """Yield (1-based data row number, fields), header excluded, blank lines skipped.

    Rows are yielded as parsed; use `fit_row` to report ragged ones."""
    records = _records(split_lines(decode(chunks, fmt.encoding)), fmt.delimiter)
    if fmt.has_header:
        next(records, None)
    yield from enumerate(records, start=1)


# --- dialect -------------------------------------------------------------------------------


def _sample_records(text: str, delimiter: str, is_final: bool) -> list[list[str]]:
    records = list(_records(split_lines([text]), delimiter))
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
