"""The names a chat reply goes by, for the web (which enqueues it) and the workers (which
make it, or enqueue it again): both are derived from the user's message, so a second
enqueue or a re-run can never make a second reply."""

from __future__ import annotations

import uuid

_REPLY_NAMESPACE = uuid.UUID("5b8f1f5e-4d7a-4b8e-9a51-6f0c7a1d2e3b")


def chat_job_id(message_id: str) -> str:
    """The RQ job id of a message's reply."""
    return f"chat-{message_id}"


def reply_id(message_id: str) -> str:
    """The assistant row's id: derived from the user's message, so a retry reuses it."""
    return str(uuid.uuid5(_REPLY_NAMESPACE, message_id))
