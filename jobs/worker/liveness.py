"""Which RQ workers are alive, told within ``WORKER_LIVENESS_SECONDS`` of a machine's death.

RQ's own signs of life are slow to lapse: a worker key lives ``worker_ttl`` + 60 s (480 s
by default), a forking worker's execution heartbeat ``job_monitoring_interval`` + 60 s,
and a ``SimpleWorker`` sends none while it runs a job (rq/worker/base.py
``get_heartbeat_ttl``, ``maintain_heartbeats``). So each supervisor vouches for its own
live worker processes: a key per worker with a short TTL, renewed from its main loop
while the process is alive. When the whole machine dies, the keys lapse together.

Workers not started by a supervisor (``rq worker`` by hand, a test's burst worker) have
no such key; they are judged by RQ's own worker key instead.

A chat worker (``AsyncWorker``) also says which jobs it runs, in a set with the same TTL
renewed as often: when Redis loses its data, RQ's record of a reply in progress goes
with it, and the reconciler would otherwise enqueue that reply again while it streams.
"""

from __future__ import annotations

from collections.abc import Iterable

import redis
from rq import Worker
from rq.utils import as_text

from core import settings


def alive_key(worker_name: str) -> str:
    return f"{settings.REDIS_PREFIX}:worker:alive:{worker_name}"


def supervised_key() -> str:
    """The set of every worker name a supervisor has vouched for (dead ones included,
    until the reconciler has reaped them)."""
    return f"{settings.REDIS_PREFIX}:worker:supervised"


def vouch(connection: redis.Redis, worker_names: Iterable[str]) -> None:
    """Renew the liveness of these (running) workers: one round trip."""
    names = list(worker_names)
    if not names:
        return
    ttl_ms = max(1, int(settings.WORKER_LIVENESS_SECONDS * 1000))
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.set(alive_key(name), 1, px=ttl_ms)
        # Re-added every time, so a Redis that lost its data learns them again.
        pipe.sadd(supervised_key(), *names)
        pipe.execute()


def running_key(worker_name: str) -> str:
    return f"{settings.REDIS_PREFIX}:worker:running:{worker_name}"


def running_index_key() -> str:
    """The names of the workers that keep a running set (so readers need no SCAN)."""
    return f"{settings.REDIS_PREFIX}:worker:running"


def vouch_running(
    connection: redis.Redis, worker_name: str, job_ids: Iterable[str], ttl_seconds: float
) -> None:
    """The jobs a worker runs now, replacing what it said before, lapsing with the worker
    (one round trip). Rewritten whole each time, so a Redis that lost its data (and with
    it RQ's record of these jobs) learns them again and the reconciler leaves them alone."""
    key, ids = running_key(worker_name), list(job_ids)
    with connection.pipeline(transaction=True) as pipe:
        pipe.delete(key)
        if ids:
            pipe.sadd(key, *ids)
            pipe.pexpire(key, max(1, int(ttl_seconds * 1000)))
        pipe.sadd(running_index_key(), worker_name)
        pipe.execute()


def withdraw(connection: redis.Redis, worker_name: str) -> None:
    """Forget a worker that stopped, or is known dead (its jobs were reaped): not alive,
    running nothing."""
    with connection.pipeline(transaction=False) as pipe:
        pipe.delete(alive_key(worker_name), running_key(worker_name))
        pipe.srem(supervised_key(), worker_name)
        pipe.srem(running_index_key(), worker_name)
        pipe.execute()


def running_job_ids(connection: redis.Redis) -> set[str]:
    """Every job a live worker says it is running (two round trips). Names whose set is
    gone (the worker died, or is idle and will add itself again) leave the index."""
    names = [as_text(n) for n in connection.smembers(running_index_key())]
    if not names:
        return set()
    with connection.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.smembers(running_key(name))
        sets = pipe.execute()
    gone = [name for name, members in zip(names, sets, strict=True) if not members]
    if gone:
        connection.srem(running_index_key(), *gone)
    return {as_text(m) for members in sets for m in members}


def is_alive(connection: redis.Redis, worker_name: str) -> bool:
    """A supervised worker is alive while its supervisor vouches for it; any other
    worker while RQ's own worker key exists."""
    if connection.exists(alive_key(worker_name)):
        return True
    if connection.sismember(supervised_key(), worker_name):
        return False
    return bool(connection.exists(Worker.redis_worker_namespace_prefix + worker_name))
