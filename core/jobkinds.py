"""The job registry: every kind of background job, where it queues and how it runs.

A table of dotted paths in the spirit of uvicorn's config.py (``LOOP_SETUPS``,
``HTTP_PROTOCOLS``): the web process enqueues a kind by its target's dotted path
without importing ``jobs/``; the worker supervisor builds its process plan from it
and imports each target's module before the first job; /metrics lists its queues.
A new job kind is one entry in ``JOB_KINDS``. tests/test_jobkinds.py checks that every
target resolves to a callable.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from rq import Retry

from core import settings

# A finished job's result is only for inspection; a failed one is kept a week to look at.
RESULT_TTL_SECONDS: Final = 3600
FAILURE_TTL_SECONDS: Final = 7 * 86400


class WorkerKind(StrEnum):
    # The job is a coroutine; many run at once as tasks on the worker process's event
    # loop (jobs/worker/asyncworker.py): I/O-bound work such as streaming LLM replies.
    ASYNC = "async"
    # A work horse is forked per job (RQ's default): a crash or a leak dies with it.
    FORKING = "forking"


@dataclass(frozen=True, slots=True)
class JobKind:
    name: str
    queue: str
    # "package.module.function", called by RQ with the enqueued arguments.
    target: str
    timeout_seconds: int
    retries: int
    worker: WorkerKind
    # Worker processes the supervisor keeps running for this queue.
    processes: int
    # Seconds between RQ retries; the first `retries` of them are used.
    retry_intervals: tuple[int, ...] = (1, 5, 15)
    # ASYNC workers: jobs in flight at once per process, and a dotted path to an async
    # context manager opened once on the process's loop (what its jobs share).
    concurrency: int = 1
    lifespan: str | None = None

    def retry(self) -> Retry | None:
        """RQ's retry policy for this kind: ``retries`` more runs, spaced as configured."""
        if not self.retries:
            return None
        return Retry(max=self.retries, interval=list(self.retry_intervals[: self.retries]))

    @property
    def module(self) -> str:
        """The module to import before the first job: importing LangGraph and friends
        takes about a second, which the first job of a fresh process would wait."""
        return self.target.rpartition(".")[0]


CHAT: Final = JobKind(
    name="chat",
    queue=settings.CHAT_QUEUE,
    target="jobs.chat.job.run_chat",
    timeout_seconds=settings.CHAT_JOB_TIMEOUT_SECONDS,
    retries=settings.CHAT_JOB_RETRIES,
    worker=WorkerKind.ASYNC,
    processes=settings.WORKER_CHAT_PROCESSES,
    concurrency=settings.CHAT_WORKER_CONCURRENCY,
    lifespan="jobs.chat.runtime.open_runtime",
)
CSV_IMPORT: Final = JobKind(
    name="csv_import",
    queue=settings.UPLOAD_QUEUE,
    target="jobs.csvimport.job.import_upload",
    timeout_seconds=settings.UPLOAD_JOB_TIMEOUT_SECONDS,
    # Exactly-once import (jobs/csvimport/job.py), so retrying is safe; 3 retries
    # (1 + 5 + 15 s apart) ride out a PostgreSQL restart (tests/faults).
    retries=settings.UPLOAD_JOB_RETRIES,
    worker=WorkerKind.FORKING,
    processes=settings.WORKER_UPLOAD_PROCESSES,
)
JOB_KINDS: Final = (CHAT, CSV_IMPORT)


def chat_job_id(message_id: str) -> str:
    """A chat job's id is derived from its message: a duplicate enqueue (the web's, or
    the reconciler's after Redis lost the job, jobs/worker/reconciler.py) cannot make
    two replies."""
    return f"chat-{message_id}"


def queue_names() -> list[str]:
    """Every queue a job kind uses, once each, in registry order."""
    return list(dict.fromkeys(kind.queue for kind in JOB_KINDS))
