"""The pass-through load: PostgreSQL's own COPY ... (FORMAT csv) parses the file straight into
the typed table, while this process reads the same text with Python's `csv` only to confirm,
column by column, that PostgreSQL reads every cell exactly as the Python path would.

It applies when every cell is in its column's plain form (`batch.all_plain`: digits without
a leading zero, short exact decimals, ISO dates, true/false, ...), every row has the header's
width, and no text cell holds a quote or is all whitespace (where PostgreSQL's CSV reading
and Python's part ways: a quote inside an unquoted field, "" and "  " that Python reads as
NULL); in a block of plain rows (`plainrows`) a quote doubled inside a quoted cell is fine.
Anything else raises `Unsuitable` and the caller rolls back to its savepoint and loads the
file through the Python path (jobs.csvimport.load), which rejects rows, re-decides
misguessed types and raises the format errors as before; a PostgreSQL error on the COPY does
the same. The two processes overlap: PostgreSQL parses, types and stores one block while this
one checks the next, or past the plain lines the same one (docs/csv.md, "PostgreSQL parses
well-formed files").
"""

from __future__ import annotations

import csv
import io
import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final

import psycopg
from psycopg import sql

from core import settings
from core.columntypes import ColumnType
from jobs.csvimport import plainrows
from jobs.csvimport.batch import all_plain
from jobs.csvimport.celltypes import ColumnSpec
from jobs.csvimport.columntypes import BOOL_PLAIN, DATED, DAY_MONTH_ORDERS
from jobs.csvimport.format import CsvFormat
from jobs.csvimport.load import BATCH_MAX_CHARS, BATCH_SLICE_ROWS
from jobs.csvimport.records import QUOTECHAR, CsvFormatError, line_blocks, split_lines
from jobs.csvimport.table import is_wide

# "\." alone on a line ends COPY's input even inside quotes (PostgreSQL docs, COPY); any
# line starting with it sends the file the Python way.
_END_MARKER: Final = re.compile(r"(?:^|[\r\n])\\\.")


class Unsuitable(Exception):
    """The file needs the Python path; the message says why (logged)."""


def eligible(fmt: CsvFormat) -> bool:
    """Can this format's columns take the pass-through at all? (Cells are checked later.)"""
    return (
        len(fmt.columns) >= 2  # one column: a blank line would be a NULL row to COPY
        and fmt.quotechar == QUOTECHAR
        and not is_wide(fmt.columns)
        and all(_column_eligible(c) for c in fmt.columns)
        and len(_date_orders(fmt.columns)) <= 1  # one DateStyle for the whole COPY
    )


def _column_eligible(col: ColumnSpec) -> bool:
    if col.type in (ColumnType.INT, ColumnType.FLOAT):
        return not col.decimal_comma and col.thousands_sep is None
    if col.type in DATED:
        return col.date_format in (None, "%Y-%m-%d") or col.date_format in DAY_MONTH_ORDERS
    return True  # text, bool


def _date_orders(columns: list[ColumnSpec]) -> set[str]:
    """The DateStyle field orders (MDY, DMY) the date and date-time columns need."""
    return {
        DAY_MONTH_ORDERS[c.date_format].order
        for c in columns
        if c.type in DATED and c.date_format in DAY_MONTH_ORDERS
    }


class Checker:
    """Checks the rows Python's `csv` reads, batch by batch, against what COPY stores."""

    def __init__(self, columns: list[ColumnSpec]) -> None:
        self.columns = columns
        self.width = len(columns)
        self.rows = 0
        # Text columns with an empty cell: "" (quoted) is '' to COPY but NULL here.
        self.empty_text: set[int] = set()
        self.many: set[int] = set()  # typed columns with many distinct values per batch

    def check(self, fields: Sequence[list[str]]) -> None:
        if set(map(len, fields)) != {self.width}:
            raise Unsuitable("a row does not have the header's width")
        for j, (cells, col) in enumerate(zip(zip(*fields, strict=True), self.columns, strict=True)):
            self._check_column(j, cells, col)
        self.rows += len(fields)

    def _check_column(self, j: int, cells: Sequence[str], col: ColumnSpec) -> None:
        if col.type == ColumnType.TEXT:
            if '"' in "".join(cells) or any(map(str.isspace, cells)):
                raise Unsuitable(f"column {col.name!r}: a quote or an all-whitespace cell")
            if col.undecided and any(cells):
                # Typed from its values by the Python path (tally.Tally.settle).
                raise Unsuitable(f"column {col.name!r}: values after the first MiB only")
            if "" in cells:
                self.empty_text.add(j)
            return
        if "" in cells:
            cells = [c for c in cells if c]  # unquoted empty: NULL to both
            if not cells:
                return
        if col.type == ColumnType.BOOL:
            ok = set(cells) <= BOOL_PLAIN.keys()
        elif j in self.many:
            ok = all_plain(cells, col)
        else:
            # A column of few distinct values (dates, codes) is checked once per value; one
            # that has many in a batch is checked cell by cell from then on.
            values = set(cells)
            if 4 * len(values) >= len(cells):
                self.many.add(j)
            ok = all_plain(list(values), col)
        if not ok:
            raise Unsuitable(f"column {col.name!r}: a cell not in its plain form")


def _body(blocks: Iterator[str], delimiter: str) -> Iterator[str]:
    """The text after the header line; Unsuitable if the header record is not exactly the
    first line (a quoted line break in it) or a line starts with COPY's end marker."""
    first = next(blocks, "")
    header = io.StringIO(first, newline="").readline()
    parsed = list(csv.reader([header], delimiter=delimiter, quotechar=QUOTECHAR))
    if len(parsed) != 1 or not parsed[0] or any("\n" in f or "\r" in f for f in parsed[0]):
        raise Unsuitable("the header is not one line")
    for block in itertools.chain([first[len(header) :]], blocks):
        if "\\." in block and _END_MARKER.search(block):
            raise Unsuitable("a line starts with \\.")
        yield block


def _plain_lines(lines: plainrows.BlockMatcher | None, text: str, data: bytes) -> bool:
    """Is the block `text` (`data` its UTF-8 bytes) whole plain rows, one per line?"""
    limit = settings.UPLOAD_MAX_FIELD_BYTES
    return lines is not None and plainrows.lines_within(text, limit) and bool(lines(data))


def _skip_plain_blocks(
    blocks: Iterator[str],
    fmt: CsvFormat,
    lines: plainrows.BlockMatcher | None,
    checker: Checker,
    after_batch: Callable[[int], None],
) -> Iterator[str]:
    """Count the leading blocks of plain rows (`plainrows`); yield the first other block and
    every block after it, for `csv` and the Checker. A record a block leaves open (a quoted
    line break in it) is checked with the next block."""
    records = plainrows.block_matcher(fmt.columns, fmt.delimiter, multiline=True)
    limit = settings.UPLOAD_MAX_FIELD_BYTES
    carry = ""
    for block in blocks:
        text, carry = carry + block, ""
        data = text.encode()  # RE2 reads UTF-8 bytes, as COPY does
        if _plain_lines(lines, text, data):
            checker.rows += plainrows.rows_in(data)
        elif (taken := _plain_records(records, text, limit)) is not None:
            rows, carry = taken
            checker.rows += rows
        else:
            yield text
            yield from blocks
            return
        after_batch(checker.rows)
    if carry:
        yield carry  # a quoted field still open at the end of the file: `csv` decides


def _plain_records(
    records: plainrows.BlockMatcher | None, text: str, limit: int
) -> tuple[int, str] | None:
    """(rows, the open record left over) when `text`'s whole records are plain rows with
    line breaks inside quoted text; None otherwise."""
    if records is None or '"' not in text:
        return None
    end, rows, longest = plainrows.whole_records(text)
    head, tail = text[:end], text[end:]
    # A field is no longer than its record: within the csv field limit, as `csv` would have
    # it. The open record is bounded too, so the carry is.
    if longest > limit or len(tail) > limit or (head and not records(head.encode())):
        return None
    return rows, tail


class Sent:
    """The blocks of text written to COPY, counted (to bound a batch by the text read for it)."""

    def __init__(self, copy: psycopg.Copy) -> None:
        self.copy = copy
        self.chars = 0

    def __call__(self, blocks: Iterable[str]) -> Iterator[str]:
        for block in blocks:
            self.copy.write(block.encode())  # PostgreSQL parses it while this process does
            self.chars += len(block)
            yield block


def batches(rows: Iterator[list[str]], sent: Sent) -> Iterator[list[list[str]]]:
    """Up to UPLOAD_BATCH_ROWS rows, fewer once BATCH_MAX_CHARS of text were read for them.
    Rows are taken in slices doubling from one (like `load.take_batch`, without its count of
    every row's characters, ~1 µs a row)."""
    limit = settings.UPLOAD_BATCH_ROWS
    while True:
        start = sent.chars
        batch: list[list[str]] = []
        step = 1
        while len(batch) < limit and sent.chars - start < BATCH_MAX_CHARS:
            n = min(step, limit - len(batch))
            part = list(itertools.islice(rows, n))
            batch += part
            if len(part) < n:
                if batch:
                    yield batch
                return
            step = min(2 * step, BATCH_SLICE_ROWS)
        yield batch


def _copy_query(table: str, fmt: CsvFormat, numbered: bool) -> sql.Composed:
    """`numbered`: the data starts with `_row` (COPY writes given values into an identity
    column, as INSERT's OVERRIDING SYSTEM VALUE does: PostgreSQL docs, COPY)."""
    names = [sql.Identifier(c.sql_name) for c in fmt.columns]
    if numbered:
        names.insert(0, sql.Identifier("_row"))
    # FREEZE: the table was created in this subtransaction, so the rows can be written
    # frozen and the profile's scan need not set hint bits on (and rewrite) every page.
    return sql.SQL(
        "COPY {} ({}) FROM STDIN (FORMAT csv, DELIMITER {}, ENCODING 'UTF8', FREEZE)"
    ).format(sql.Identifier(table), sql.SQL(", ").join(names), sql.Literal(fmt.delimiter))


def _copy_plain_lines(
    copy: psycopg.Copy,
    blocks: Iterator[str],
    lines: plainrows.BlockMatcher | None,
    delimiter: str,
    checker: Checker,
    after_batch: Callable[[int], None],
) -> str | None:
    """COPY the leading blocks of plain lines (`plainrows`), each row numbered here; returns
    the first other block, or None at the end of the file."""
    for block in blocks:
        data = block.encode()  # RE2 reads UTF-8 bytes, as COPY does
        if not _plain_lines(lines, block, data):
            return block
        copy.write(plainrows.numbered(data, checker.rows + 1, delimiter))
        checker.rows += plainrows.rows_in(data)
        after_batch(checker.rows)
    return None


def copy_checked(
    conn: psycopg.Connection[Any],
    table: str,
    fmt: CsvFormat,
    texts: Iterable[str],
    after_batch: Callable[[int], None],
) -> Checker:
    """COPY the decoded file `texts` into `table` (created with `_row` an identity column)
    while checking it; returns the checker (rows read, text columns with empty cells).

    Two COPYs: the leading blocks of plain lines with `_row` written in; from the first
    other block on, the rest with `_row` numbered by PostgreSQL (measured: ~0.1 s per 1M
    rows more of its COPY, the core the import waits on), each block written before this
    process reads it with `csv` and the Checker."""
    checker = Checker(fmt.columns)
    for order in _date_orders(fmt.columns):
        # Month or day first as the column's cells are; output stays ISO. Local to the
        # transaction, and undone with the savepoint if the Python path takes over.
        conn.execute("SELECT set_config('datestyle', %s, true)", (f"ISO, {order}",))
    blocks = _body(line_blocks(texts), fmt.delimiter)
    lines = plainrows.block_matcher(fmt.columns, fmt.delimiter)  # one RE2 compile, both COPYs
    try:
        with conn.cursor() as cur:
            with cur.copy(_copy_query(table, fmt, numbered=True)) as copy:
                rest = _copy_plain_lines(copy, blocks, lines, fmt.delimiter, checker, after_batch)
            copied = cur.rowcount
            if rest is not None:
                conn.execute(
                    "SELECT setval(pg_get_serial_sequence(%s, '_row'), %s, false)",
                    (sql.Identifier(table).as_string(conn), checker.rows + 1),
                )
                with cur.copy(_copy_query(table, fmt, numbered=False)) as copy:
                    sent = Sent(copy)
                    body = sent(itertools.chain([rest], blocks))
                    body = _skip_plain_blocks(body, fmt, lines, checker, after_batch)
                    # The reader's rows go straight into slices: a generator step per row
                    # (as in records.read_records) cost ~0.3 s per 1M rows.
                    csv.field_size_limit(settings.UPLOAD_MAX_FIELD_BYTES)
                    reader = csv.reader(
                        split_lines(body), delimiter=fmt.delimiter, quotechar=QUOTECHAR
                    )
                    for batch in batches(filter(None, reader), sent):
                        checker.check(batch)
                        after_batch(checker.rows)
                copied += cur.rowcount
            if copied != checker.rows:  # e.g. blank lines, which csv skips
                raise Unsuitable(f"COPY read {copied} rows, csv {checker.rows}")
    except (CsvFormatError, csv.Error) as exc:
        # The Python path raises it again, with line numbers that count the header.
        raise Unsuitable(str(exc)) from exc
    except (psycopg.errors.DataError, psycopg.errors.ProgramLimitExceeded) as exc:
        raise Unsuitable(str(exc).splitlines()[0]) from exc
    return checker


def settle_table(
    conn: psycopg.Connection[Any], table: str, columns: list[ColumnSpec], checker: Checker
) -> None:
    """Make the table what the Python path leaves: `_row` a plain column, "" cells NULL."""
    ident = sql.Identifier(table)
    conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN _row DROP IDENTITY").format(ident))
    if not checker.empty_text:
        return
    names = [sql.Identifier(columns[j].sql_name) for j in sorted(checker.empty_text)]
    sets = sql.SQL(", ").join(sql.SQL("{0} = NULLIF({0}, '')").format(n) for n in names)
    where = sql.SQL(" OR ").join(sql.SQL("{} = ''").format(n) for n in names)
    conn.execute(sql.SQL("UPDATE {} SET {} WHERE {}").format(ident, sets, where))
