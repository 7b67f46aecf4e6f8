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
between batches, so the web sees progress while the rows themselves stay invisible.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import uuid
import zlib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

import psycopg
import redis
from psycopg import sql
from psycopg.types.json import Jsonb
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from core import events, jobmetrics, settings
from core.collector import gen0_threshold
from core.columntypes import Storage
from core.eventclients import EventsClient, events_client_for
from core.eventkinds import EventKind
from core.principal import Identity
from core.redisdriver import driver_info
from core.statuses import ACTIVE_UPLOAD_STATUSES, UploadStatus
from jobs.csvimport import load as csvload
from jobs.csvimport import passthrough
from jobs.csvimport import table as csvtable
from jobs.csvimport.format import CsvFormat, CsvFormatError, decode, detect_format, iter_rows
from jobs.csvimport.inference import decide
from jobs.csvimport.tally import Misguessed, Tally

logger = logging.getLogger("herald.csv_import")

APP_NAME = "herald-csv-import"
IMPORT_GC_GEN0_THRESHOLD = 100_000
ACTIVE = list(ACTIVE_UPLOAD_STATUSES)
# Start at most this many bytes of the file into format detection (sniffing + inference).
SAMPLE_BYTES = 1024 * 1024


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
        owner: Identity,
        size: int,
        ctl: psycopg.Connection[Any],
        client: redis.Redis,
        bus: EventsClient,
    ) -> None:
        self.upload_id = upload_id
        self.owner = owner
        self.size = max(size, 1)
        self.ctl = ctl
        self.redis = client
        self.bus = bus  # the event bus's Redis (EVENTS_REDIS_URL)
        self.bytes_read = 0
        self.rows_processed = 0
        # Progress of the current pass over the file maps onto [floor, floor + span] percent,
        # so it keeps rising when a misguessed type makes the file be read again.
        self.floor = 0
        self.span = 100
        self.percent = 0
        self.last_progress = time.monotonic()
        self.last_check = float("-inf")
        # Progress is reported from a thread: an UPDATE and a Redis script took 1-10 ms on a
        # busy machine, during which the rows would wait. One report at a time, so their
        # order holds; `settle` waits for the last one before the final events.
        self.reporter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload-progress")
        self.pending: Future[None] | None = None

    def publish(self, event: EventKind, data: dict[str, Any]) -> None:
        events.publish_event(
            self.bus,
            event,
            {"upload_id": self.upload_id, **data},
            owner=self.owner.key,
            upload_id=self.upload_id,
        )

    def set_status(self, status: UploadStatus) -> None:
        cur = self.ctl.execute(
            "UPDATE uploads SET status = %s, updated_at = now()"
            " WHERE id = %s AND status = ANY(%s) RETURNING id",
            (status, self.upload_id, ACTIVE),
        )
        if cur.fetchone() is None:
            raise Cancelled
        self.publish(EventKind.UPLOAD_STATUS, {"status": status})

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

    def after_batch(self, rows_processed: int) -> None:
        self.rows_processed = rows_processed
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
            percent = min(99, self.floor + self.bytes_read * self.span // self.size)
            self.percent = percent
            self.settle()  # at the default interval the previous report is long done
            self.pending = self.reporter.submit(self.progress, percent, rows_processed)

    def next_pass(self, passes_left: int) -> None:
        """Start reading the file again; `passes_left` share what is left of the bar."""
        self.floor = self.percent
        self.span = (99 - self.floor) // passes_left
        self.bytes_read = 0

    def settle(self) -> None:
        if self.pending is not None:
            self.pending.result()  # a failed report fails the run, as it did inline

    def close(self) -> None:
        self.reporter.shutdown(wait=True)

    def progress(self, percent: int, rows_processed: int) -> None:
        # ctl is shared with the main thread: psycopg connections are thread-safe (each
        # statement holds the connection's lock); this uses its own cursor. The commit does
        # not wait for its WAL flush (PostgreSQL docs, "Asynchronous Commit"): that flush
        # takes every WAL record before it, the COPY's megabytes, 10-30 ms during which
        # ctl, which fetches the chunks, was held. A report lost in a crash is harmless.
        # One query string, so SET LOCAL shares the UPDATE's implicit transaction.
        self.ctl.execute(
            sql.SQL(
                "SET LOCAL synchronous_commit = off;"
                " UPDATE uploads SET progress_percent = {}, rows_processed = {} WHERE id = {}"
            ).format(sql.Literal(percent), sql.Literal(rows_processed), sql.Literal(self.upload_id))
        )
        self.publish(
            EventKind.UPLOAD_PROGRESS, {"percent": percent, "rows_processed": rows_processed}
        )

    def fail(self, code: str, message: str) -> None:
        self.close()  # no progress event after the error
        cur = self.ctl.execute(
            "UPDATE uploads SET status = %s, error = %s, updated_at = now()"
            " WHERE id = %s AND status = ANY(%s) RETURNING id",
            (
                UploadStatus.FAILED,
                Jsonb({"code": code, "message": message}),
                self.upload_id,
                ACTIVE,
            ),
        )
        if cur.fetchone() is None:
            return
        self.ctl.execute("DELETE FROM upload_chunks WHERE upload_id = %s", (self.upload_id,))
        self.publish(EventKind.UPLOAD_STATUS, {"status": UploadStatus.FAILED})
        self.publish(EventKind.UPLOAD_ERROR, {"code": code, "message": message})
        jobmetrics.record_job_metric(self.redis, "herald_upload_imports_total", outcome="failed")

    def load_table(
        self,
        conn: psycopg.Connection[Any],
        table: str,
        fmt: CsvFormat,
        rows: Iterator[tuple[int, list[str]]],
    ) -> dict[str, Any]:
        csvtable.create_table(conn, table, fmt.columns)
        load = csvload.load_wide if csvtable.is_wide(fmt.columns) else csvload.load_columns
        result = load(conn, table, fmt, rows, self.upload_id, self.after_batch)
        self.settle()
        csvtable.index_rows(conn, table)
        result["format"] = {"encoding": fmt.encoding, "delimiter": fmt.delimiter}
        result["storage"] = Storage.JSONB if csvtable.is_wide(fmt.columns) else Storage.COLUMNS
        return result

    def load_passthrough(
        self, conn: psycopg.Connection[Any], table: str, fmt: CsvFormat, chunks: Iterator[bytes]
    ) -> dict[str, Any]:
        """PostgreSQL parses the file (jobs.csvimport.passthrough); raises Unsuitable."""
        csvtable.create_table(conn, table, fmt.columns, numbered=True)
        texts = decode(chunks, fmt.encoding)
        checker = passthrough.copy_checked(conn, table, fmt, texts, self.after_batch)
        self.settle()
        passthrough.settle_table(conn, table, fmt.columns, checker)
        csvtable.index_rows(conn, table)
        warnings = Tally(fmt.columns, fmt.delimiter).warnings(checker.rows, checker.rows)
        width = len(fmt.columns)
        result = csvtable.table_result(conn, table, fmt, warnings, checker.rows, 0, [0] * width)
        result["format"] = {"encoding": fmt.encoding, "delimiter": fmt.delimiter}
        result["storage"] = Storage.COLUMNS
        return result

    def load(self, conn: psycopg.Connection[Any], column_types: dict[str, str] | None) -> Any:
        """Everything inside the one transaction; returns the result of API.md."""
        self.set_status(UploadStatus.VALIDATING)
        chunks = self.chunks()
        head: list[bytes] = []
        for chunk in chunks:
            head.append(chunk)
            if sum(map(len, head)) >= SAMPLE_BYTES:
                break
        sample = b"".join(head)
        is_final = self.bytes_read >= self.size
        fmt = detect_format(sample, column_types, is_final=is_final)
        self.set_status(UploadStatus.PROCESSING)
        table = table_name(self.upload_id)
        try:
            with conn.transaction():  # a savepoint: a misguess rolls back to here
                result = None
                if passthrough.eligible(fmt):
                    try:
                        with conn.transaction():
                            file = itertools.chain(head, chunks)
                            result = self.load_passthrough(conn, table, fmt, file)
                        logger.info("upload %s: parsed by PostgreSQL's COPY", self.upload_id)
                    except passthrough.Unsuitable as why:
                        logger.info("upload %s: the Python path loads it: %s", self.upload_id, why)
                        head, chunks = [], self.chunks()
                        self.next_pass(1)
                if result is None:
                    rows = iter_rows(itertools.chain(head, chunks), fmt)
                    result = self.load_table(conn, table, fmt, rows)
        except Misguessed as wrong:
            columns = wrong.columns
            if columns is None:
                self.next_pass(2)
                rows = iter_rows(self.chunks(), fmt)
                batches = csvload.fitted_batches(rows, len(fmt.columns), self.after_batch)
                columns = decide(fmt.columns, fmt.delimiter, batches)
            logger.info("upload %s: types decided from the whole file", self.upload_id)
            fmt = replace(fmt, columns=columns)
            self.next_pass(1)
            result = self.load_table(conn, table, fmt, iter_rows(self.chunks(), fmt))
        cur = conn.execute(
            "UPDATE uploads SET status = %s, result = %s, table_name = %s,"
            " progress_percent = 100, rows_processed = %s, updated_at = now()"
            " WHERE id = %s AND status = %s RETURNING id",
            (
                UploadStatus.COMPLETED,
                Jsonb(result),
                table,
                self.rows_processed,
                self.upload_id,
                UploadStatus.PROCESSING,
            ),
        )
        if cur.fetchone() is None:
            raise Cancelled  # cancelled or deleted at the last moment: roll it all back
        conn.execute("DELETE FROM upload_chunks WHERE upload_id = %s", (self.upload_id,))
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
        run = Run(upload_id, owner, found[3], ctl, client, bus)
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
                    result = run.load(conn, found[4])
        except psycopg.errors.LockNotAvailable:
            logger.warning("upload %s is being imported by another run; leaving it", upload_id)
            return None
        except Cancelled:
            ctl.execute("DELETE FROM upload_chunks WHERE upload_id = %s", (upload_id,))
            jobmetrics.record_job_metric(client, "herald_upload_imports_total", outcome="cancelled")
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
        except redis.RedisError:
            # Redis went away (restart, failover) under a progress event: nothing was
            # committed, so the upload stays unfinished for RQ's retry or, when Redis lost
            # the job, the reconciler's re-run (jobs/worker/reconciler.py); no "failed".
            raise
        except Exception:
            logger.exception("upload %s import crashed", upload_id)
            with contextlib.suppress(psycopg.Error):
                run.fail("internal_error", "The import failed unexpectedly.")
            raise
        finally:
            run.close()  # before the connections it reports on close
        run.publish(
            EventKind.UPLOAD_PROGRESS, {"percent": 100, "rows_processed": run.rows_processed}
        )
        run.publish(EventKind.UPLOAD_STATUS, {"status": UploadStatus.COMPLETED})
        run.publish(EventKind.UPLOAD_DONE, {"result": result})
        jobmetrics.record_job_metric(client, "herald_upload_imports_total", outcome="completed")
        jobmetrics.record_job_metric(client, "herald_upload_rows_total", result["rows_valid"])
        # Sum and count make a mean duration in PromQL (rate(sum) / rate(count)).
        jobmetrics.record_job_metric(
            client, "herald_upload_import_seconds_sum_total", time.monotonic() - started
        )
        jobmetrics.record_job_metric(client, "herald_upload_import_seconds_count_total")
        return dict(result)
