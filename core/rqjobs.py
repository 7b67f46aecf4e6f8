"""How Herald's RQ jobs are named and kept, for the web (which enqueues them) and the
worker side (which enqueues a stranded chat again, jobs/chat/recovery.py) alike."""

from __future__ import annotations

from rq import Retry

RUN_CHAT = "jobs.chat.job.run_chat"
# A finished job's result is only for inspection; a failed one is kept a week to look at.
RESULT_TTL_SECONDS = 3600
FAILURE_TTL_SECONDS = 7 * 86400


def chat_job_id(message_id: str) -> str:
    """Derived from the message: a duplicate enqueue cannot make two replies."""
    return f"chat-{message_id}"


def retry_policy(retries: int) -> Retry | None:
    return Retry(max=retries, interval=[1, 5, 15][:retries]) if retries else None
