"""A publisher in its own interpreter, as an RQ job is: ``python -m tests.support.publisher
USER TOTAL`` publishes TOTAL ``chat.chunk`` events to USER with the worker side's
``publish_event``, a few ms apart, and prints their ids as a JSON list."""

from __future__ import annotations

import json
import sys
import time

import redis

from core import settings
from core.eventkinds import EventKind
from core.events import publish_event
from core.principal import Identity


def main(user: str, total: int) -> list[str]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    ids = []
    try:
        for i in range(total):
            ids.append(
                publish_event(client, EventKind.CHAT_CHUNK, {"index": i}, owner=Identity(user).key)[
                    0
                ]
            )
            time.sleep(0.003)
    finally:
        client.close()
    return ids


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
