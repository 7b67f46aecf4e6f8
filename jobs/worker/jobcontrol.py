"""Why the worker cancelled a job, readable inside the job: the contract between
``AsyncWorker`` and the jobs it runs.

A job's task is cancelled for one of three reasons. The job sees ``asyncio.CancelledError``
either way and asks ``cancel_reason()`` which, to decide what to store before it ends (a
stopped reply is kept, marked cancelled; a handed-back one is left for the next worker).
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass
from typing import Any

STOP = "STOP"  # stopped on request (rq stop-job): RQ marks it STOPPED, never retried
HANDBACK = "HANDBACK"  # the worker is shutting down; the job is put back on its queue
TIMEOUT = "TIMEOUT"  # the job ran past its timeout: it ends as JobTimeoutException


@dataclass
class Control:
    """One running job's cancel reason, set by the worker before it cancels the task."""

    reason: str | None = None


# Set in each job's own task: the object is shared with every task the job spawns.
_control: contextvars.ContextVar[Control | None] = contextvars.ContextVar(
    "herald_job_control", default=None
)


def cancel_reason() -> str | None:
    """Inside a job whose task was cancelled: ``STOP``, ``HANDBACK``, ``TIMEOUT``, or None
    (not cancelled by the worker, or not running on an ``AsyncWorker``)."""
    control = _control.get()
    return control.reason if control is not None else None


def bind(control: Control) -> None:
    """Make `control` what `cancel_reason` reads in the current task and the tasks it
    spawns (each asyncio task runs in a copy of its creator's context: no reset needed)."""
    _control.set(control)


def expire(control: Control, task: asyncio.Task[Any]) -> None:
    """The job's timer: cancel its task as timed out, unless it is being cancelled already."""
    if control.reason is None:
        control.reason = TIMEOUT
        task.cancel(TIMEOUT)
