"""The Procfile's ``worker``: a small supervisor of RQ worker processes.

Chat jobs run on their own ``SimpleWorker`` processes, so they never wait behind a
long CSV import, and without a fork per job (forking costs milliseconds before the
first token; README "Workers" has the figures). Imports run on forking ``Worker``s:
a crash or a leak in one import dies with its work horse.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import sys
import time
from types import FrameType

import redis
from rq import SimpleWorker, Worker

from app import settings
from app.logs import configure_logging

logger = logging.getLogger("herald.worker")


def run_worker(queues: list[str], simple: bool) -> None:
    configure_logging()
    connection = redis.Redis.from_url(settings.REDIS_URL)
    worker_class = SimpleWorker if simple else Worker
    worker = worker_class(queues, connection=connection)
    worker.work(with_scheduler=True, logging_level=settings.LOG_LEVEL)


def _spawn(queues: list[str], simple: bool) -> multiprocessing.Process:
    proc = multiprocessing.Process(target=run_worker, args=(queues, simple), daemon=False)
    proc.start()
    return proc


def main() -> int:
    configure_logging()
    plan = [([settings.CHAT_QUEUE], True)] * settings.WORKER_CHAT_PROCESSES + [
        ([settings.UPLOAD_QUEUE], False)
    ] * settings.WORKER_UPLOAD_PROCESSES
    procs = [(_spawn(q, simple), q, simple) for q, simple in plan]
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        # RQ's warm shutdown: each worker finishes its current job, then exits.
        for proc, _, _ in procs:
            if proc.is_alive() and proc.pid is not None:
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not stopping:
        for i, (proc, queues, simple) in enumerate(procs):
            if not proc.is_alive() and not stopping:
                logger.warning("worker for %s exited (%s); restarting", queues, proc.exitcode)
                procs[i] = (_spawn(queues, simple), queues, simple)
        time.sleep(1)
    for proc, _, _ in procs:
        proc.join(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
