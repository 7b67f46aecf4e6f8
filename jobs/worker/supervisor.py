"""The Procfile's ``worker``: a small supervisor of RQ worker processes.

Its process plan comes from the job registry (core/jobkinds.py): each job kind gets
its own processes on its own queue. ``ASYNC`` kinds (chat) run on ``AsyncWorker``
processes: many jobs at once on one event loop, without a fork per job, and never
behind a long CSV import. ``FORKING`` kinds (imports) run on forking ``Worker``s: a
crash or a leak in one import dies with its work horse.

A worker that dies mid-job (SIGKILL, OOM) leaves its job in RQ's StartedJobRegistry,
where RQ itself only notices it once the execution's heartbeat lapses (job monitoring
interval + 60 s) *and* a worker runs registry maintenance (every 10 minutes by default;
rq/worker/base.py ``should_run_maintenance_tasks``). So the supervisor, which sees the
death at once, expires that worker's executions and runs RQ's own
``StartedJobRegistry.cleanup()``: the job is retried (or failed) within a second or
two, with RQ's retry count and failure callbacks; what the dead worker left running
(RQ's scheduler, a work horse) is stopped before its replacement starts
(jobs/worker/orphans.py). For a crash of the whole machine, the
supervisor vouches for its live workers in Redis (jobs/worker/liveness.py) and runs a
reconciler process (jobs/worker/reconciler.py): the leading reconciler of another machine
hands a dead machine's jobs back to RQ once its keys lapse, and enqueues again any work
PostgreSQL records as unfinished that Redis lost.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import signal
import socket
import time
import uuid
from dataclasses import dataclass
from types import FrameType

import redis
from rq import Queue, Worker
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.executions import Execution

from core import redispolicy, settings
from core.jobkinds import JOB_KINDS, JobKind, WorkerKind
from core.logs import configure_logging
from core.redisdriver import driver_info
from jobs.worker import liveness, orphans
from jobs.worker.asyncworker import AsyncWorker
from jobs.worker.reconciler import run_reconciler

logger = logging.getLogger("herald.worker")


def run_worker(kind: JobKind, name: str | None = None) -> None:
    # The supervisor relays every stop request as SIGTERM. A terminal's Ctrl-C reaches
    # this process directly too; until RQ installs its own handlers (Worker.work) it
    # would raise KeyboardInterrupt in the middle of an import, with a traceback.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging()
    # Imported before the first job, not by it (JobKind.module).
    importlib.import_module(kind.module)
    connection = redis.Redis.from_url(settings.REDIS_URL, driver_info=driver_info())
    worker: Worker | AsyncWorker
    if kind.worker is WorkerKind.ASYNC:
        lifespan_module, _, lifespan_name = (kind.lifespan or "").rpartition(".")
        worker = AsyncWorker(
            [kind.queue],
            connection=connection,
            name=name,
            maintenance_interval=settings.WORKER_MAINTENANCE_SECONDS,
            concurrency=kind.concurrency,
            dequeue_batch=settings.CHAT_WORKER_DEQUEUE_BATCH,
            grace_seconds=settings.CHAT_WORKER_GRACE_SECONDS,
            loop_lag_tick=settings.WORKER_LOOP_LAG_TICK_SECONDS,
            loop_lag_window=settings.WORKER_LOOP_LAG_REPORT_SECONDS,
            gc_gen0_threshold=settings.GC_GEN0_THRESHOLD,
            # Rewritten (every third of it) well within the reconciler's two looks.
            running_ttl=min(
                settings.WORKER_LIVENESS_SECONDS, 1.5 * settings.RECONCILE_INTERVAL_SECONDS
            ),
            lifespan=(
                getattr(importlib.import_module(lifespan_module), lifespan_name)
                if kind.lifespan
                else None
            ),
        )
    else:
        worker = Worker(
            [kind.queue],
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


@dataclass(slots=True)
class WorkerProcess:
    """One supervised RQ worker: the job kind it serves, its process, its RQ name."""

    kind: JobKind
    process: multiprocessing.Process
    name: str

    @classmethod
    def spawn(cls, kind: JobKind) -> WorkerProcess:
        name = _worker_name()
        process = multiprocessing.Process(target=run_worker, args=(kind, name), daemon=False)
        process.start()
        return cls(kind, process, name)


def process_plan() -> list[JobKind]:
    """One entry per worker process to run: each job kind, ``processes`` times."""
    return [kind for kind in JOB_KINDS for _ in range(kind.processes)]


def main() -> int:
    configure_logging()
    # Before any worker starts: their orphans become ours (jobs/worker/orphans.py).
    adopts = orphans.become_subreaper()
    workers = [WorkerProcess.spawn(kind) for kind in process_plan()]
    # One reconciler per machine; a Redis lock makes one of them lead (jobs/worker/reconciler.py).
    reconciler = _spawn_reconciler()
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        # RQ's warm shutdown: each worker finishes its current job, then exits.
        for process in [w.process for w in workers] + [reconciler]:
            if process.is_alive() and process.pid is not None:
                process.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    connection = redis.Redis.from_url(
        settings.REDIS_URL, socket_connect_timeout=1, socket_timeout=2, driver_info=driver_info()
    )
    vouched = 0.0
    try:
        redispolicy.log_assessment(redispolicy.check(connection))
    except (redis.exceptions.RedisError, OSError) as exc:
        logger.warning("could not check Redis's eviction policy: %s", exc)
    try:
        while not stopping:
            for i, worker in enumerate(workers):
                if not worker.process.is_alive() and not stopping:
                    logger.warning(
                        "worker for %s exited (%s); restarting",
                        worker.kind.queue,
                        worker.process.exitcode,
                    )
                    _reap_quietly(connection, worker.name, [worker.kind.queue])
                    if adopts:
                        _stop_orphans(workers, reconciler, worker.name)
                    workers[i] = WorkerProcess.spawn(worker.kind)
                    vouched = 0.0
            if not reconciler.is_alive() and not stopping:
                logger.warning("reconciler exited (%s); restarting", reconciler.exitcode)
                reconciler = _spawn_reconciler()
            vouched = _vouch(connection, workers, vouched)
            time.sleep(0.5)
        # Vouch on while the workers finish their jobs, or the reconciler of another
        # machine would take them for dead.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(w.process.is_alive() for w in workers):
            vouched = _vouch(connection, workers, vouched)
            time.sleep(0.2)
        reconciler.join(timeout=5)
    finally:
        connection.close()
    return 0


def rescue_dequeued(connection: redis.Redis, queues: list[str], settle: float = 0.5) -> list[str]:
    """Put back jobs left in RQ's intermediate queue by a worker that died between its
    BLMOVE and the StartedJobRegistry; returns their ids.

    A dead worker's blocked BLMOVE can still be served by Redis until it notices the
    closed socket, so a job re-queued at that moment lands in the intermediate list with
    no live worker behind it; RQ itself only finds it at its next maintenance (minutes).
    A live worker moves a job from that list to the registry within milliseconds, so a
    job still there, unregistered, after ``settle`` seconds is stuck.
    """
    suspects = {
        name: set(Queue(name, connection=connection).intermediate_queue.get_job_ids())
        for name in queues
    }
    if not any(suspects.values()):
        return []
    time.sleep(settle)
    rescued: list[str] = []
    for name, job_ids in suspects.items():
        queue = Queue(name, connection=connection)
        still = set(queue.intermediate_queue.get_job_ids())
        for job_id in sorted(job_ids & still):
            if job_id in queue.started_job_registry:
                continue
            with connection.pipeline() as pipe:
                pipe.lrem(queue.intermediate_queue_key, 1, job_id)
                pipe.lpush(queue.key, job_id)
                pipe.execute()
            rescued.append(job_id)
    return rescued


def _stop_orphans(
    workers: list[WorkerProcess], reconciler: multiprocessing.Process, dead: str
) -> None:
    started = [w.process.pid for w in workers] + [reconciler.pid]
    left = orphans.stop_adopted(
        [pid for pid in started if pid is not None], settings.WORKER_ORPHAN_GRACE_SECONDS
    )
    if left:
        logger.warning("stopped %s, left running by dead worker %s", left, dead)


def _spawn_reconciler() -> multiprocessing.Process:
    proc = multiprocessing.Process(target=run_reconciler, args=(reap_abandoned,), daemon=False)
    proc.start()
    return proc


def _vouch(connection: redis.Redis, workers: list[WorkerProcess], last: float) -> float:
    """Renew the liveness keys of the live workers every third of their TTL; returns when
    it last did."""
    if time.monotonic() - last < settings.WORKER_LIVENESS_SECONDS / 3:
        return last
    try:
        liveness.vouch(connection, [w.name for w in workers if w.process.is_alive()])
    except (redis.exceptions.RedisError, OSError) as exc:
        logger.warning("could not renew worker liveness: %s", exc)
        return last
    return time.monotonic()


def _reap_quietly(connection: redis.Redis, name: str, queues: list[str]) -> None:
    try:
        reaped = reap_abandoned(connection, name, queues)
        rescued = rescue_dequeued(connection, queues)
        if rescued:
            logger.warning("re-queued %s left mid-dequeue by dead worker %s", rescued, name)
    except (redis.exceptions.RedisError, OSError) as exc:
        # Redis down: RQ's periodic maintenance picks the job up later instead.
        logger.warning("could not reap jobs of dead worker %s: %s", name, exc)
        return
    if reaped:
        logger.warning("worker %s died mid-job; re-queued or failed %s", name, reaped)
