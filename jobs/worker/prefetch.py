"""Take several queued jobs in three Redis round trips, for a worker with free slots.

RQ's work loop dequeues one job per iteration: a suspension check, BLMOVE, HGETALL, the
execution record, the job's started state and the worker's state: six or seven round
trips per job, on the main thread. A worker that runs hundreds of jobs at once (the
``AsyncWorker``) spends its start-up burst there (docs/benchmarks.md). ``take_jobs``
does what ``Queue.dequeue_any`` + ``prepare_execution`` + ``prepare_job_execution`` do
for one job, for up to ``limit`` jobs:

1. LMOVE each id from the queue to its intermediate list (RQ's reliable dequeue, so a
   crash between steps leaves the id where the supervisor looks for it);
2. HGETALL each job (``Job.fetch_many``);
3. one MULTI/EXEC: each job's ``Execution`` in the StartedJobRegistry, its started
   state and heartbeat, PERSIST, LREM from the intermediate list, the worker's state.

The records written are RQ's own, so ``rq info``, the registries and the supervisor's
reaping see each job exactly as after RQ's own dequeue.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.utils import now
from rq.worker import BaseWorker, WorkerStatus


@dataclass(frozen=True)
class Taken:
    """A job moved out of its queue and marked started by this worker."""

    job: Job
    queue: Queue
    execution: Execution


def take_jobs(worker: BaseWorker, queues: list[Queue], limit: int) -> list[Taken]:
    """Move up to ``limit`` jobs from ``queues`` (in order, without blocking) to this
    worker's started registry. An empty list means every queue was empty."""
    connection: Redis = worker.connection
    moved: list[tuple[Queue, str]] = []
    for queue in queues:
        want = limit - len(moved)
        if want <= 0:
            break
        with connection.pipeline(transaction=False) as pipe:
            for _ in range(want):
                pipe.lmove(queue.key, queue.intermediate_queue_key)
            ids = [i for i in pipe.execute() if i is not None]
        moved.extend((queue, i.decode() if isinstance(i, bytes) else str(i)) for i in ids)
    if not moved:
        return []

    jobs = Job.fetch_many(
        [job_id for _, job_id in moved], connection=connection, serializer=worker.serializer
    )
    taken: list[Taken] = []
    started = now()
    with connection.pipeline() as pipe:
        for (queue, job_id), job in zip(moved, jobs, strict=True):
            # A job deleted while queued leaves only its id: RQ skips it the same way.
            pipe.lrem(queue.intermediate_queue_key, 1, job_id)
            if job is None:
                continue
            ttl = worker.get_heartbeat_ttl(job)
            execution = Execution.create(job, ttl, pipeline=pipe, worker_name=worker.name)
            worker.executions[execution.id] = execution
            job.heartbeat(started, ttl, pipeline=pipe)
            job.prepare_for_execution(worker.name, pipeline=pipe)
            pipe.persist(job.key)
            job.redis_server_version = worker.get_redis_server_version()  # type: ignore[no-untyped-call]
            taken.append(Taken(job, queue, execution))
        if taken:
            worker.set_state(WorkerStatus.BUSY, pipeline=pipe)
            worker.heartbeat(max(worker.get_heartbeat_ttl(t.job) for t in taken), pipeline=pipe)
        pipe.execute()
    return taken
