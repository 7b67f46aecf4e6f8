"""The CSV import job: stream an upload's chunks back from PostgreSQL, type-check every
cell, COPY the valid rows into a typed per-upload table, report progress and a profile.

Exactly once: the table, its rows, the rejected cells and ``status = 'completed'`` are
written in ONE transaction, so a run killed at any point (SIGKILL included) leaves
nothing visible, and a re-run starts from scratch; a run that finds the upload already
finished does nothing. An advisory lock held by that transaction serialises two runs of
one upload (RQ re-queueing an "abandoned" job whose worker is in fact still alive).

Two connections per run: ``load`` holds that long transaction; ``ctl`` (autocommit)
reads chunks, publishes status/progress into ``uploads`` and checks for a cancel
between batches, so the web sees progress while the rows themselves stay invisible.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import time
import uuid
import zlib
from collections.abc import Iterator
from operator import itemgetter
from typing import Any

import orjson
import psycopg
import redis
from psycopg import sql
from psycopg.types.json import Jsonb
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from app import events, metrics, settings
from jobs.csvbatch import ERROR_VALUE_MAX_CHARS, check_batch
from jobs.csvformat import CsvFormat, CsvFormatError, detect_format, fit_row, iter_rows
from jobs.csvprofile import ColumnProfile, profile_table
from jobs.csvtypes import ColumnSpec, parse_cell

logger = logging.getLogger("herald.csv_import")

APP_NAME = "herald-csv-import"
ACTIVE = ["queued", "validating", "processing"]
PG_TYPES = {
    "int": "bigint",
    "float": "double precision",
    "bool": "boolean",
    "date": "date",
    "datetime": "timestamptz",
    "text": "text",
}
# PostgreSQL allows 1600 columns per table (docs, Appendix K "Limits"); one is ``_row``.
PG_MAX_COLUMNS = 1599
# Bytes per value of the fixed-width types (docs, chapter 8); text counts as a TOAST pointer.
FIXED_BYTES = {"int": 8, "float": 8, "datetime": 8, "date": 4, "bool": 1}
# Above this estimated row size the "wide" layout (one jsonb column) is used.
WIDE_ROW_BYTES = 6000
# Start at most this many bytes of the file into format detection (sniffing + inference).
SAMPLE_BYTES = 1024 * 1024
# A batch is also cut after this many characters of cells, so wide rows stay bounded.
BATCH_MAX_CHARS = 8 * 1024 * 1024
# Rows read between two checks of BATCH_MAX_CHARS.
BATCH_SLICE_ROWS = 256
# Rejected cells held in memory before they are written (the rows COPY pauses for it).
ERRORS_PER_FLUSH = 10_000


class Cancelled(Exception):
    """The upload was cancelled or deleted while this run held it."""


def table_name(upload_id: str) -> str:
    return "upload_rows_" + uuid.UUID(upload_id).hex


def lock_key(upload_id: str) -> int:
    # pg_advisory_xact_lock takes a signed 64-bit key; crc32 of the id is plenty apart.
    return 0x4845_0000_0000 + zlib.crc32(uuid.UUID(upload_id).bytes)


class Run:
    """One attempt at one upload: its two connections, its events, its counters."""

    def __init__(
        self,
        upload_id: str,
        user_id: str,
        size: int,
        ctl: psycopg.Connection[Any],
        client: redis.Redis,
    ) -> None:
        self.upload_id = upload_id
        self.user_id = user_id
        self.size = max(size, 1)
        self.ctl = ctl
        self.redis = client
        self.bytes_read = 0
        self.rows_processed = 0
        self.last_progress = time.monotonic()
        self.last_check = float("-inf")

    def publish(self, event: str, data: dict[str, Any]) -> None:
        events.publish_event(
            self.redis,
            event,
            {"upload_id": self.upload_id, **data},
            user_id=self.user_id,
            upload_id=self.upload_id,
        )

    def set_status(self, status: str) -> None:
        cur = self.ctl.execute(
            "UPDATE uploads SET status = %s, updated_at = now()"
            " WHERE id = %s AND status = ANY(%s) RETURNING id",
            (status, self.upload_id, ACTIVE),
        )
        if cur.fetchone() is None:
            raise Cancelled
        self.publish("upload.status", {"status": status})

    def chunks(self) -> Iterator[bytes]:
        # One chunk per query, by primary key: never more than one chunk in memory, and
        # no cursor held open across the COPYs on the other connection.
        with self.ctl.cursor(binary=True) as cur:
            for seq in itertools.count():
                row = cur.execute(
                    "SELECT data FROM upload_chunks WHERE upload_id = %s AND seq = %s",
                    (self.upload_id, seq),
                ).fetchone()
                if row is None:
                    return
                self.bytes_read += len(row[0])
                yield row[0]

    def between_batches(self) -> None:
        now = time.monotonic()
        # A status query per batch cost ~1.5 ms, 5% of a fast import: cancel is looked for
        # every UPLOAD_CANCEL_CHECK_SECONDS instead, which is still prompt.
        if now - self.last_check >= settings.UPLOAD_CANCEL_CHECK_SECONDS:
            self.last_check = now
            row = self.ctl.execute("SELECT status FROM uploads WHERE id = %s", (self.upload_id,))
            status = row.fetchone()
            if status is None or status[0] not in ACTIVE:
                raise Cancelled
        interval = settings.UPLOAD_PROGRESS_INTERVAL_SECONDS
        if interval > 0 and now - self.last_progress >= interval:
            self.last_progress = now
            self.progress(min(99, self.bytes_read * 100 // self.size))

    def progress(self, percent: int) -> None:
        self.ctl.execute(
            "UPDATE uploads SET progress_percent = %s, rows_processed = %s WHERE id = %s",
            (percent, self.rows_processed, self.upload_id),
        )
        self.publish("upload.progress", {"percent": percent, "rows_processed": self.rows_processed})

    def fail(self, code: str, message: str) -> None:
        cur = self.ctl.execute(
            "UPDATE uploads SET status = 'failed', error = %s, updated_at = now()"
            " WHERE id = %s AND status = ANY(%s) RETURNING id",
            (Jsonb({"code": code, "message": message}), self.upload_id, ACTIVE),
        )
        if cur.fetchone() is None:
            return
        self.ctl.execute("DELETE FROM upload_chunks WHERE upload_id = %s", (self.upload_id,))
        self.publish("upload.status", {"status": "failed"})
        self.publish("upload.error", {"code": code, "message": message})
        metrics.record_job_metric(self.redis, "herald_upload_imports_total", outcome="failed")

    def load(self, conn: psycopg.Connection[Any], column_types: dict[str, str] | None) -> Any:
        """Everything inside the one transaction; returns the result of API.md."""
        self.set_status("validating")
        chunks = self.chunks()
        head: list[bytes] = []
        for chunk in chunks:
            head.append(chunk)
            if sum(map(len, head)) >= SAMPLE_BYTES:
                break
        sample = b"".join(head)
        is_final = self.bytes_read >= self.size
        fmt = detect_format(sample, column_types, is_final=is_final)
        self.set_status("processing")
        table = table_name(self.upload_id)
        create_table(conn, table, fmt.columns)
        rows = iter_rows(itertools.chain(head, chunks), fmt)
        if is_wide(fmt.columns):
            result = self.load_wide(conn, table, fmt, rows)
        else:
            result = self.load_columns(conn, table, fmt, rows)
        conn.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY (_row)").format(sql.Identifier(table)))
        result["format"] = {"encoding": fmt.encoding, "delimiter": fmt.delimiter}
        result["storage"] = "jsonb" if is_wide(fmt.columns) else "columns"
        result["warnings"] = fmt.warnings
        cur = conn.execute(
            "UPDATE uploads SET status = 'completed', result = %s, table_name = %s,"
            " progress_percent = 100, rows_processed = %s, updated_at = now()"
            " WHERE id = %s AND status = 'processing' RETURNING id",
            (Jsonb(result), table, self.rows_processed, self.upload_id),
        )
        if cur.fetchone() is None:
            raise Cancelled  # cancelled or deleted at the last moment: roll it all back
        conn.execute("DELETE FROM upload_chunks WHERE upload_id = %s", (self.upload_id,))
        return result

    def load_columns(
        self,
        conn: psycopg.Connection[Any],
        table: str,
        fmt: CsvFormat,
        rows: Iterator[tuple[int, list[str]]],
    ) -> dict[str, Any]:
        """One column per field: cells checked a column at a time and COPYed as CSV text
        that PostgreSQL types; the profiles are then aggregated by PostgreSQL."""
        columns = fmt.columns
        names = sql.SQL(", ").join(
            [sql.Identifier("_row"), *(sql.Identifier(c.sql_name) for c in columns)]
        )
        query = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(sql.Identifier(table), names)
        invalid_cells = [0] * len(columns)
        valid = invalid = 0
        # One COPY stays open across batches, so PostgreSQL parses and stores batch n while
        # this process checks batch n + 1 (two cores busy instead of taking turns); it is
        # closed only to write buffered rejected cells, which share the connection.
        try:
            with conn.cursor() as cur, contextlib.ExitStack() as open_copy:
                copy: psycopg.Copy | None = None
                pending: list[tuple[int, str, str, str]] = []
                while records := take_batch(rows):
                    text, good, errors, bad, per_column = check_batch(
                        records, columns, fmt.delimiter
                    )
                    if text:
                        if copy is None:
                            copy = open_copy.enter_context(cur.copy(query))
                        copy.write(text)
                    pending += errors
                    if len(pending) >= ERRORS_PER_FLUSH:
                        open_copy.close()
                        copy = None
                        flush_errors(cur, self.upload_id, pending)
                    invalid_cells = [a + b for a, b in zip(invalid_cells, per_column, strict=True)]
                    valid += good
                    invalid += bad
                    self.rows_processed = valid + invalid
                    self.between_batches()
                open_copy.close()
                flush_errors(cur, self.upload_id, pending)
        except (psycopg.errors.DataError, psycopg.errors.ProgramLimitExceeded) as exc:
            # e.g. a NUL character deep in the file (PostgreSQL text cannot hold one) or
            # a row wider than a heap page: the file cannot be stored as it is.
            raise CsvFormatError("unloadable_row", str(exc).splitlines()[0]) from exc
        profiles, loaded = profile_table(conn, table, columns, invalid_cells)
        assert loaded == valid, (loaded, valid)
        nulls = sum(p["nulls"] for p in profiles)
        return summarise(valid, invalid, profiles, valid * len(columns), nulls)

    def load_wide(
        self,
        conn: psycopg.Connection[Any],
        table: str,
        fmt: CsvFormat,
        rows: Iterator[tuple[int, list[str]]],
    ) -> dict[str, Any]:
        """The jsonb layout: cells typed one by one in Python and profiled as they go."""
        profiles = [ColumnProfile(col) for col in fmt.columns]
        valid = invalid = 0
        while True:
            batch, errors, bad = parse_batch(rows, fmt.columns, profiles, fmt.delimiter)
            if not batch and not errors:
                break
            copy_batch(conn, table, fmt.columns, batch, self.upload_id, errors)
            valid += len(batch)
            invalid += bad
            self.rows_processed = valid + invalid
            self.between_batches()
        cells = sum(p.count for p in profiles)
        nulls = sum(p.nulls for p in profiles)
        return summarise(valid, invalid, [p.to_dict() for p in profiles], cells, nulls)


def take_batch(rows: Iterator[tuple[int, list[str]]]) -> list[tuple[int, list[str]]]:
    """Up to UPLOAD_BATCH_ROWS rows, fewer when their cells pass BATCH_MAX_CHARS (counted
    per slice of rows, in C, rather than per row)."""
    batch: list[tuple[int, list[str]]] = []
    chars = 0
    while len(batch) < settings.UPLOAD_BATCH_ROWS and chars < BATCH_MAX_CHARS:
        step = min(BATCH_SLICE_ROWS, settings.UPLOAD_BATCH_ROWS - len(batch))
        part = list(itertools.islice(rows, step))
        batch += part
        chars += sum(map(len, itertools.chain.from_iterable(map(itemgetter(1), part))))
        if len(part) < step:
            break
    return batch


def flush_errors(
    cur: psycopg.Cursor[Any], upload_id: str, errors: list[tuple[int, str, str, str]]
) -> None:
    if errors:
        copy_errors(cur, upload_id, errors)
        errors.clear()


def copy_errors(
    cur: psycopg.Cursor[Any], upload_id: str, errors: list[tuple[int, str, str, str]]
) -> None:
    with cur.copy(
        "COPY upload_errors (upload_id, row_number, column_name, value, error) FROM STDIN"
    ) as copy:
        for number, column, value, error in errors:
            copy.write_row((upload_id, number, column, value, error))


def is_wide(columns: list[ColumnSpec]) -> bool:
    """Too wide for one row per heap tuple? Fixed-width values cannot be TOASTed, and a
    heap tuple holds at most ~8160 bytes (docs, "TOAST"); such files go into one jsonb
    column instead, which TOAST compresses and moves out of line as one value."""
    estimate = 24 + len(columns) // 8 + sum(FIXED_BYTES.get(c.type, 18) for c in columns)
    return len(columns) > PG_MAX_COLUMNS or estimate > WIDE_ROW_BYTES


def create_table(conn: psycopg.Connection[Any], table: str, columns: list[ColumnSpec]) -> None:
    defs: list[sql.Composable] = [sql.SQL("_row bigint NOT NULL")]
    if is_wide(columns):
        defs.append(sql.SQL("data jsonb NOT NULL"))
    else:
        defs += [
            sql.SQL("{} {}").format(sql.Identifier(c.sql_name), sql.SQL(PG_TYPES[c.type]))
            for c in columns
        ]
    query = sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(table), sql.SQL(", ").join(defs))
    conn.execute(query)


def parse_batch(
    rows: Iterator[tuple[int, list[str]]],
    columns: list[ColumnSpec],
    profiles: list[ColumnProfile],
    delimiter: str,
) -> tuple[list[tuple[Any, ...]], list[tuple[int, str, str, str]], int]:
    """Up to UPLOAD_BATCH_ROWS rows: (valid typed rows, rejected cells, rejected rows)."""
    width = len(columns)
    pairs = list(zip(columns, profiles, strict=True))
    batch: list[tuple[Any, ...]] = []
    errors: list[tuple[int, str, str, str]] = []
    bad_rows = 0
    chars = 0
    for number, fields in rows:
        fitted, reason = fit_row(fields, width)
        if fitted is None:
            # A ragged row is rejected whole: its cells can't be matched to columns.
            assert reason is not None
            errors.append((number, "", delimiter.join(fields)[:ERROR_VALUE_MAX_CHARS], reason))
            bad_rows += 1
        else:
            values: list[Any] = [number]
            ok = True
            for cell, (col, profile) in zip(fitted, pairs):  # noqa: B905 - fitted to width
                value, error = parse_cell(cell, col)
                profile.add(value, error)
                if error is not None:
                    ok = False
                    errors.append((number, col.name, cell[:ERROR_VALUE_MAX_CHARS], error))
                values.append(value)
            if ok:
                batch.append(tuple(values))
            else:
                bad_rows += 1
            chars += sum(map(len, fitted))
        if len(batch) + bad_rows >= settings.UPLOAD_BATCH_ROWS or chars >= BATCH_MAX_CHARS:
            break
    return batch, errors, bad_rows


def copy_batch(
    conn: psycopg.Connection[Any],
    table: str,
    columns: list[ColumnSpec],
    batch: list[tuple[Any, ...]],
    upload_id: str,
    errors: list[tuple[int, str, str, str]],
) -> None:
    if is_wide(columns):
        names: sql.Composable = sql.SQL("_row, data")
        keys = [c.name for c in columns]
        # orjson writes dates and datetimes as ISO 8601, as GET /rows returns them.
        batch = [(r[0], orjson.dumps(dict(zip(keys, r[1:], strict=True))).decode()) for r in batch]
    else:
        names = sql.SQL(", ").join(
            [sql.Identifier("_row"), *(sql.Identifier(c.sql_name) for c in columns)]
        )
    with conn.cursor() as cur:
        try:
            if batch:
                query = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table), names)
                with cur.copy(query) as copy:
                    for row in batch:
                        copy.write_row(row)
            if errors:
                copy_errors(cur, upload_id, errors)
        except (psycopg.errors.DataError, psycopg.errors.ProgramLimitExceeded) as exc:
            # e.g. a NUL character deep in the file (PostgreSQL text cannot hold one) or
            # a row wider than a heap page: the file cannot be stored as it is.
            raise CsvFormatError("unloadable_row", str(exc).splitlines()[0]) from exc


def summarise(
    valid: int, invalid: int, profiles: list[dict[str, Any]], cells: int, nulls: int
) -> dict[str, Any]:
    # Quality: 80% the share of rows that loaded, 20% the share of cells that are filled.
    total = valid + invalid
    validity = valid / total if total else 1.0
    completeness = 1 - nulls / cells if cells else 1.0
    return {
        "rows_total": total,
        "rows_valid": valid,
        "rows_invalid": invalid,
        "data_quality_score": round(100 * (0.8 * validity + 0.2 * completeness), 1),
        "columns": profiles,
    }


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Each batch makes and drops a few container objects per row (rows, tuples, lists);
    at CPython's gen-0 threshold of 700 the cyclic collector ran thousands of times per
    million rows, measured at ~12% of the import. Nothing here builds cycles."""
    old = gc.get_threshold()
    gc.set_threshold(100_000, old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)


def import_upload(upload_id: str) -> dict[str, Any] | None:
    """RQ job: import one upload. Returns its result, or None when there was nothing to do."""
    dsn = str(settings.DATABASE_URL)
    app_name = f"{APP_NAME} {upload_id}"[:63]  # NAMEDATALEN - 1
    with (
        redis.Redis.from_url(settings.REDIS_URL) as client,
        # Named, so an operator can find (or end) an import in pg_stat_activity.
        psycopg.connect(dsn, autocommit=True, application_name=app_name) as ctl,
        psycopg.connect(dsn, application_name=app_name) as conn,
    ):
        found = ctl.execute(
            "SELECT user_id, status, size_bytes, column_types FROM uploads WHERE id = %s",
            (upload_id,),
        ).fetchone()
        if found is None or found[1] not in ACTIVE:
            return None
        run = Run(upload_id, found[0], found[2], ctl, client)
        try:
            with conn.transaction():
                conn.execute("SET LOCAL TIME ZONE 'UTC'")  # naive datetimes are UTC
                conn.execute(
                    "SELECT set_config('lock_timeout', %s, true)",
                    (f"{int(settings.UPLOAD_LOCK_WAIT_SECONDS * 1000)}ms",),
                )
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key(upload_id),))
                conn.execute("SELECT set_config('lock_timeout', '0', true)")
                again = conn.execute("SELECT status FROM uploads WHERE id = %s", (upload_id,))
                status = again.fetchone()
                if status is None or status[0] not in ACTIVE:
                    return None  # another run finished it while this one waited
                with fewer_collections():
                    result = run.load(conn, found[3])
        except psycopg.errors.LockNotAvailable:
            logger.warning("upload %s is being imported by another run; leaving it", upload_id)
            return None
        except Cancelled:
            ctl.execute("DELETE FROM upload_chunks WHERE upload_id = %s", (upload_id,))
            metrics.record_job_metric(client, "herald_upload_imports_total", outcome="cancelled")
            return None
        except CsvFormatError as exc:
            run.fail(exc.code, exc.message)
            return None
        except JobTimeoutException:
            limit = settings.UPLOAD_JOB_TIMEOUT_SECONDS
            run.fail("timeout", f"The import took longer than {limit} seconds.")
            raise
        except psycopg.OperationalError:
            # PostgreSQL went away (restart, failover): nothing was committed, so leave the
            # status alone while RQ has a retry left; the re-run starts clean.
            job = get_current_job()
            if job is None or not job.retries_left:
                with contextlib.suppress(psycopg.Error):
                    run.fail("database_unavailable", "PostgreSQL was unavailable.")
            raise
        except Exception:
            logger.exception("upload %s import crashed", upload_id)
            with contextlib.suppress(psycopg.Error):
                run.fail("internal_error", "The import failed unexpectedly.")
            raise
        run.publish("upload.progress", {"percent": 100, "rows_processed": run.rows_processed})
        run.publish("upload.status", {"status": "completed"})
        run.publish("upload.done", {"result": result})
        metrics.record_job_metric(client, "herald_upload_imports_total", outcome="completed")
        metrics.record_job_metric(client, "herald_upload_rows_total", result["rows_valid"])
        return dict(result)
