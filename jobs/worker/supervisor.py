"""The Procfile's ``worker``: a small supervisor of RQ worker processes.

Chat jobs run on their own ``ChatWorker`` processes (a ``SimpleWorker`` with fewer
Redis round trips), so they never wait behind a long CSV import, and without a fork
per job (forking costs milliseconds before the first token; README "Chat: figures").
Imports run on forking ``Worker``s: a crash or a leak in one import dies with its work
horse.

A worker that dies mid-job (SIGKILL, OOM) leaves its job in RQ's StartedJobRegistry,
where RQ itself only notices it once the execution's heartbeat lapses (job monitoring
interval + 60 s) *and* a worker runs registry maintenance (every 10 minutes by default;
rq/worker/base.py ``should_run_maintenance_tasks``). So the supervisor, which sees the
death at once, expires that worker's executions and runs RQ's own
``StartedJobRegistry.cleanup()``: the job is retried (or failed) within a second or
two, with RQ's retry count and failure callbacks. For a crash of the whole machine, the
supervisor vouches for its live workers in Redis (jobs/worker/liveness.py) and runs a
reconciler process (jobs/worker/reconciler.py): the leading reconciler of another machine
hands a dead machine's jobs back to RQ once its keys lapse, and enqueues again any work
PostgreSQL records as unfinished that Redis lost.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import logging
import multiprocessing
import signal
import socket
import time
import uuid
from types import FrameType

import redis
from redis.client import Pipeline
from rq import Queue, SimpleWorker, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.executions import Execution
from rq.utils import now

from core import redispolicy, settings
from core.logs import configure_logging
from jobs.worker import liveness
from jobs.worker.reconciler import run_reconciler

logger = logging.getLogger("herald.worker")


# Imported before the first job, not by it: importing LangGraph and friends takes
# about a second, which the first chat of every fresh process would otherwise wait.
_JOB_MODULES = {settings.CHAT_QUEUE: "jobs.chat.job", settings.UPLOAD_QUEUE: "jobs.csvimport.job"}


class ChatWorker(SimpleWorker):
    """``SimpleWorker`` with fewer Redis round trips around each job.

    rq 3.0 sends the worker heartbeat as three separate commands (HSET, EXPIRE, EXPIRE)
    and sends it, with ``set_state(IDLE)``, twice between the end of one job and the
    next BLMOVE, and once more between dequeue and the job's start (rq/worker/base.py
    ``work``, ``dequeue_job_and_maintain_ttl``). Measured with ``bench_chat.py --hops``:
    ~3 ms from a reply's end until the worker listens again, which a chat sent right
    after the previous one waits for. Here that heartbeat is one pipelined round trip,
    and is skipped when a heartbeat with the same default TTL (``worker_ttl`` + 60 s,
    480 s) went out under ``_HEARTBEAT_GAP`` ago: the worker key cannot lapse meanwhile.
    A heartbeat with another TTL (RQ sends the job's own, shorter one on a pipeline at
    job start) voids the skip, so the next default one is always sent before a long
    BLMOVE. Setting the state the worker already has is skipped too.
    """

    _HEARTBEAT_GAP = dt.timedelta(seconds=1)
    _default_beat_at: dt.datetime | None = None

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        if pipeline is not None:
            super().heartbeat(timeout, pipeline=pipeline)
            self._default_beat_at = now() if timeout is None else None
            return
        last = self._default_beat_at
        if timeout is None and last is not None and now() - last < self._HEARTBEAT_GAP:
            return
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipeline=pipe)
            pipe.execute()
        self._default_beat_at = now() if timeout is None else None

    def set_state(self, state: str, pipeline: Pipeline | None = None) -> None:
        if pipeline is None and state == self._state:
            return
        super().set_state(state, pipeline=pipeline)


def run_worker(queues: list[str], simple: bool, name: str | None = None) -> None:
    configure_logging()
    for queue in queues:
        if queue in _JOB_MODULES:
            importlib.import_module(_JOB_MODULES[queue])
    connection = redis.Redis.from_url(settings.REDIS_URL)
    worker_class = ChatWorker if simple else Worker
    worker = worker_class(
        queues,
        connection=connection,
        name=name,
        maintenance_interval=settings.WORKER_MAINTENANCE_SECONDS,
    )
    worker.work(with_scheduler=True, logging_level=settings.LOG_LEVEL)


def reap_abandoned(connection: redis.Redis, worker_name: str, queues: list[str]) -> list[str]:
    """Retry (or fail) the jobs a dead worker was running; returns their ids.

    Only executions owned by ``worker_name`` are touched: their registry score is set
    to 0, i.e. "expired", and RQ's cleanup does the rest exactly as it would later.
    """
    reaped: list[str] = []
    for name in queues:
        registry = Queue(name, connection=connection).started_job_registry
        expire: dict[str, float] = {}
        for member in connection.zrange(registry.key, 0, -1):
            key = member.decode() if isinstance(member, bytes) else str(member)
            execution = Execution.from_composite_key(key, connection)
            try:
                execution.refresh()  # type: ignore[no-untyped-call]
            except (ValueError, KeyError):
                # Its hash already lapsed: RQ's own cleanup will find it expired.
                logger.info("execution %s has no record; left to RQ's cleanup", key)
                continue
            if execution.worker_name == worker_name:
                expire[key] = 0
                reaped.append(execution.job_id)
        if expire:
            connection.zadd(registry.key, expire, xx=True)
            registry.cleanup(timestamp=1)
            # A retry with an interval lands in the ScheduledJobRegistry, which only a
            # worker holding the queue's scheduler lock enqueues; the dead worker may have
            # held it (it lapses after 61 s). A crash is no transient error to back off
            # from, so run the retry now.
            scheduled = Queue(name, connection=connection).scheduled_job_registry
            for job_id in reaped:
                if connection.zscore(scheduled.key, job_id) is not None:
                    with contextlib.suppress(InvalidJobOperation, NoSuchJobError):
                        scheduled.requeue(job_id)
    # Drop the dead worker from RQ's registry (Worker.all() would list it for a while).
    worker = Worker.find_by_key(Worker.redis_worker_namespace_prefix + worker_name, connection)
    if worker is not None:
        worker.register_death()  # type: ignore[no-untyped-call]
    return reaped


def _worker_name() -> str:
    return f"{socket.gethostname()}.{uuid.uuid4().hex[:8]}"


def _spawn(queues: list[str], simple: bool) -> tuple[multiprocessing.Process, str]:
    name = _worker_name()
    proc = multiprocessing.Process(target=run_worker, args=(queues, simple, name), daemon=False)
    proc.start()
    return proc, name


def main() -> int:
    configure_logging()
    plan = [([settings.CHAT_QUEUE], True)] * settings.WORKER_CHAT_PROCESSES + [
        ([settings.UPLOAD_QUEUE], False)
    ] * settings.WORKER_UPLOAD_PROCESSES
    procs = [(*_spawn(q, simple), q, simple) for q, simple in plan]
    # One reconciler per machine; a Redis lock makes one of them lead (jobs/worker/reconciler.py).
    reconciler = _spawn_reconciler()
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        # RQ's warm shutdown: each worker finishes its current job, then exits.
        for proc in [p for p, _, _, _ in procs] + [reconciler]:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    connection = redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=2
    )
    vouched = 0.0
    try:
        redispolicy.log_assessment(redispolicy.check(connection))
    except (redis.exceptions.RedisError, OSError) as exc:
        logger.warning("could not check Redis's eviction policy: %s", exc)
    try:
        while not stopping:
            for i, (proc, name, queues, simple) in enumerate(procs):
                if not proc.is_alive() and not stopping:
                    logger.warning("worker for %s exited (%s); restarting", queues, proc.exitcode)
                    _reap_quietly(connection, name, queues)
                    procs[i] = (*_spawn(queues, simple), queues, simple)
                    vouched = 0.0
            if not reconciler.is_alive() and not stopping:
                logger.warning("reconciler exited (%s); restarting", reconciler.exitcode)
                reconciler = _spawn_reconciler()
            vouched = _vouch(connection, procs, vouched)
            time.sleep(0.5)
        # Vouch on while the workers finish their jobs, or the reconciler of another
        # machine would take them for dead.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(p.is_alive() for p, _, _, _ in procs):
            vouched = _vouch(connection, procs, vouched)
            time.sleep(0.2)
        reconciler.join(timeout=5)
    finally:
        connection.close()
    return 0


def _spawn_reconciler() -> multiprocessing.Process:
    proc = multiprocessing.Process(target=run_reconciler, args=(reap_abandoned,), daemon=False)
    proc.start()
    return proc


def _vouch(
    connection: redis.Redis,
    procs: list[tuple[multiprocessing.Process, str, list[str], bool]],
    last: float,
) -> float:
    """Renew the liveness keys of the live workers every third of their TTL; returns when
    it last did."""
    if time.monotonic() - last < settings.WORKER_LIVENESS_SECONDS / 3:
        return last
    try:
        liveness.vouch(connection, [name for proc, name, _, _ in procs if proc.is_alive()])
    except (redis.exceptions.RedisError, OSError) as exc:
        logger.warning("could not renew worker liveness: %s", exc)
        return last
    return time.monotonic()


def _reap_quietly(connection: redis.Redis, name: str, queues: list[str]) -> None:
    try:
        reaped = reap_abandoned(connection, name, queues)
    except (redis.exceptions.RedisError, OSError) as exc:
        # Redis down: RQ's periodic maintenance picks the job up later instead.
        logger.warning("could not reap jobs of dead worker %s: %s", name, exc)
        return
    if reaped:
        logger.warning("worker %s died mid-job; re-queued or failed %s", name, reaped)
