"""The CSV import job: stream an upload's chunks back from PostgreSQL, type-check every
cell, COPY the valid rows into a typed per-upload table, report progress and a profile.

Types come from the whole file: guessed from the first MiB and checked on every cell while
loading; when a cell does not fit, the load is rolled back (to a savepoint), one pass
decides the types from every value, and the file is loaded again (jobs.csvimport.inference).

Exactly once: the table, its rows, the rejected cells and ``status = 'completed'`` are
written in ONE transaction, so a run killed at any point (SIGKILL included) leaves
nothing visible, and a re-run starts from scratch; a run that finds the upload already
finished does nothing. An advisory lock held by that transaction serialises two runs of
one upload (RQ re-queueing an "abandoned" job whose worker is in fact still alive).

Two connections per run: ``load`` holds that long transaction; ``ctl`` (autocommit)
reads chunks, publishes status/progress into ``uploads`` and checks for a cancel
between batches (jobs.csvimport.upload), so the web sees progress while the rows
themselves stay invisible.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import psycopg
import redis
from psycopg.types.json import Jsonb
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from core import jobmetrics, settings
from core.collector import gen0_threshold
from core.columntypes import Storage
from core.eventclients import events_client_for
from core.eventkinds import EventKind
from core.principal import Identity
from core.redisdriver import driver_info
from core.statuses import UploadStatus
from jobs.csvimport import load as csvload
from jobs.csvimport import passthrough
from jobs.csvimport import table as csvtable
from jobs.csvimport.format import CsvFormat, detect_format, iter_rows
from jobs.csvimport.inference import decide
from jobs.csvimport.records import CsvFormatError, decode
from jobs.csvimport.tally import Misguessed, Tally
from jobs.csvimport.upload import ACTIVE, Cancelled, Upload

logger = logging.getLogger("herald.csv_import")

APP_NAME = "herald-csv-import"
IMPORT_GC_GEN0_THRESHOLD = 100_000
# Start at most this many bytes of the file into format detection (sniffing + inference).
SAMPLE_BYTES = 1024 * 1024


def table_name(upload_id: str) -> str:
    return "upload_rows_" + uuid.UUID(upload_id).hex


def lock_key(upload_id: str) -> int:
    # pg_advisory_xact_lock takes a signed 64-bit key; crc32 of the id is plenty apart.
    return 0x4845_0000_0000 + zlib.crc32(uuid.UUID(upload_id).bytes)


def load_table(
    upload: Upload,
    conn: psycopg.Connection[Any],
    table: str,
    fmt: CsvFormat,
    rows: Iterator[tuple[int, list[str]]],
) -> dict[str, Any]:
    """The Python path (jobs.csvimport.load): `rows` checked, COPYed, rejects recorded."""
    csvtable.create_table(conn, table, fmt.columns)
    load = csvload.load_wide if csvtable.is_wide(fmt.columns) else csvload.load_columns
    result = load(conn, table, fmt, rows, upload.upload_id, upload.after_batch)
    upload.settle()
    csvtable.index_rows(conn, table)
    return _with_layout(result, fmt)


def load_passthrough(
    upload: Upload,
    conn: psycopg.Connection[Any],
    table: str,
    fmt: CsvFormat,
    chunks: Iterator[bytes],
) -> dict[str, Any]:
    """PostgreSQL parses the file (jobs.csvimport.passthrough); raises Unsuitable."""
    csvtable.create_table(conn, table, fmt.columns, numbered=True)
    texts = decode(chunks, fmt.encoding)
    checker = passthrough.copy_checked(conn, table, fmt, texts, upload.after_batch)
    upload.settle()
    passthrough.settle_table(conn, table, fmt.columns, checker)
    csvtable.index_rows(conn, table)
    warnings = Tally(fmt.columns, fmt.delimiter).warnings(checker.rows, checker.rows)
    width = len(fmt.columns)
    result = csvtable.table_result(conn, table, fmt, warnings, checker.rows, 0, [0] * width)
    return _with_layout(result, fmt)


def _with_layout(result: dict[str, Any], fmt: CsvFormat) -> dict[str, Any]:
    """The result with how the file was read and how its rows are stored."""
    result["format"] = {"encoding": fmt.encoding, "delimiter": fmt.delimiter}
    result["storage"] = Storage.JSONB if csvtable.is_wide(fmt.columns) else Storage.COLUMNS
    return result


def load_upload(
    upload: Upload, conn: psycopg.Connection[Any], column_types: dict[str, str] | None
) -> Any:
    """Everything inside the one transaction; returns the result of API.md."""
    upload.set_status(UploadStatus.VALIDATING)
    chunks = upload.chunks()
    head: list[bytes] = []
    for chunk in chunks:
        head.append(chunk)
        if sum(map(len, head)) >= SAMPLE_BYTES:
            break
    sample = b"".join(head)
    is_final = upload.bytes_read >= upload.size
    fmt = detect_format(sample, column_types, is_final=is_final)
    upload.set_status(UploadStatus.PROCESSING)
    table = table_name(upload.upload_id)
    try:
        with conn.transaction():  # a savepoint: a misguess rolls back to here
            result = None
            if passthrough.eligible(fmt):
                try:
                    with conn.transaction():
                        file = itertools.chain(head, chunks)
                        result = load_passthrough(upload, conn, table, fmt, file)
                    logger.info("upload %s: parsed by PostgreSQL's COPY", upload.upload_id)
                except passthrough.Unsuitable as why:
                    logger.info("upload %s: the Python path loads it: %s", upload.upload_id, why)
                    head, chunks = [], upload.chunks()
                    upload.next_pass(1)
            if result is None:
                rows = iter_rows(itertools.chain(head, chunks), fmt)
                result = load_table(upload, conn, table, fmt, rows)
    except Misguessed as wrong:
        columns = wrong.columns
        if columns is None:
            upload.next_pass(2)
            rows = iter_rows(upload.chunks(), fmt)
            batches = csvload.fitted_batches(rows, len(fmt.columns), upload.after_batch)
            columns = decide(fmt.columns, fmt.delimiter, batches)
        logger.info("upload %s: types decided from the whole file", upload.upload_id)
        fmt = replace(fmt, columns=columns)
        upload.next_pass(1)
        result = load_table(upload, conn, table, fmt, iter_rows(upload.chunks(), fmt))
    cur = conn.execute(
        "UPDATE uploads SET status = %s, result = %s, table_name = %s,"
        " progress_percent = 100, rows_processed = %s, updated_at = now()"
        " WHERE id = %s AND status = %s RETURNING id",
        (
            UploadStatus.COMPLETED,
            Jsonb(result),
            table,
            upload.rows_processed,
            upload.upload_id,
            UploadStatus.PROCESSING,
        ),
    )
    if cur.fetchone() is None:
        raise Cancelled  # cancelled or deleted at the last moment: roll it all back
    conn.execute("DELETE FROM upload_chunks WHERE upload_id = %s", (upload.upload_id,))
    return result


def import_upload(upload_id: str) -> dict[str, Any] | None:
    """RQ job: import one upload. Returns its result, or None when there was nothing to do."""
    dsn = str(settings.DATABASE_URL)
    app_name = f"{APP_NAME} {upload_id}"[:63]  # NAMEDATALEN - 1
    with (
        redis.Redis.from_url(settings.REDIS_URL, driver_info=driver_info()) as client,
        events_client_for(client) as bus,
        # Named, so an operator can find (or end) an import in pg_stat_activity.
        psycopg.connect(dsn, autocommit=True, application_name=app_name) as ctl,
        psycopg.connect(dsn, application_name=app_name) as conn,
    ):
        found = ctl.execute(
            "SELECT tenant, user_id, status, size_bytes, column_types FROM uploads WHERE id = %s",
            (upload_id,),
        ).fetchone()
        if found is None or found[2] not in ACTIVE:
            return None
        owner = Identity.from_tenant(found[0], found[1])
        upload = Upload(upload_id, owner, found[3], ctl, client, bus)
        started = time.monotonic()
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
                # Each batch makes and drops a few container objects per row; at the
                # default threshold the collector ran thousands of times per million
                # rows (~12 % of the import). Nothing here builds cycles.
                with gen0_threshold(IMPORT_GC_GEN0_THRESHOLD):
                    result = load_upload(upload, conn, found[4])
        except psycopg.errors.LockNotAvailable:
            logger.warning("upload %s is being imported by another run; leaving it", upload_id)
            return None
        except Cancelled:
            ctl.execute("DELETE FROM upload_chunks WHERE upload_id = %s", (upload_id,))
            jobmetrics.record_job_metric(client, "herald_upload_imports_total", outcome="cancelled")
            return None
        except CsvFormatError as exc:
            upload.fail(exc.code, exc.message)
            return None
        except JobTimeoutException:
            limit = settings.UPLOAD_JOB_TIMEOUT_SECONDS
            upload.fail("timeout", f"The import took longer than {limit} seconds.")
            raise
        except psycopg.OperationalError:
            # PostgreSQL went away (restart, failover): nothing was committed, so leave the
            # status alone while RQ has a retry left; the re-run starts clean.
            job = get_current_job()
            if job is None or not job.retries_left:
                with contextlib.suppress(psycopg.Error):
                    upload.fail("database_unavailable", "PostgreSQL was unavailable.")
            raise
        except redis.RedisError:
            # Redis went away (restart, failover) under a progress event: nothing was
            # committed, so the upload stays unfinished for RQ's retry or, when Redis lost
            # the job, the reconciler's re-run (jobs/worker/reconciler.py); no "failed".
            raise
        except Exception:
            logger.exception("upload %s import crashed", upload_id)
            with contextlib.suppress(psycopg.Error):
                upload.fail("internal_error", "The import failed unexpectedly.")
            raise
        finally:
            upload.close()  # before the connections it reports on close
        upload.publish(
            EventKind.UPLOAD_PROGRESS, {"percent": 100, "rows_processed": upload.rows_processed}
        )
        upload.publish(EventKind.UPLOAD_STATUS, {"status": UploadStatus.COMPLETED})
        upload.publish(EventKind.UPLOAD_DONE, {"result": result})
        jobmetrics.record_job_metric(client, "herald_upload_imports_total", outcome="completed")
        jobmetrics.record_job_metric(client, "herald_upload_rows_total", result["rows_valid"])
        # Sum and count make a mean duration in PromQL (rate(sum) / rate(count)).
        jobmetrics.record_job_metric(
            client, "herald_upload_import_seconds_sum_total", time.monotonic() - started
        )
        jobmetrics.record_job_metric(client, "herald_upload_import_seconds_count_total")
        return dict(result)
