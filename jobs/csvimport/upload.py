"""One import attempt's view of its upload: the chunks it streams back from PostgreSQL, the
status and progress it writes into ``uploads``, the events it publishes and the cancel it
looks for between batches, all on the autocommit ``ctl`` connection, so the web sees them
while the rows themselves stay inside the load's transaction (jobs.csvimport.job)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import redis
from psycopg import sql
from psycopg.types.json import Jsonb

from core import events, jobmetrics, settings
from core.eventclients import EventsClient
from core.eventkinds import EventKind
from core.principal import Identity
from core.statuses import ACTIVE_UPLOAD_STATUSES, UploadStatus

ACTIVE = list(ACTIVE_UPLOAD_STATUSES)


class Cancelled(Exception):
    """The upload was cancelled or deleted while this run held it."""


class Upload:
    """One attempt at one upload: its control connection, its events, its counters."""

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
