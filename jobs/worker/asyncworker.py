"""An RQ worker that runs many coroutine jobs at once on one asyncio event loop.

Streaming an LLM reply is I/O-bound: one process and one loop can carry hundreds of
them, where RQ's ``SimpleWorker`` carries one. ``AsyncWorker`` keeps everything RQ's own
tools see (``rq info``, rq-dashboard, the registries): RQ's work loop still dequeues on
the main thread, and every job goes through RQ's ``prepare_execution`` (an execution in
the StartedJobRegistry, owned by this worker) and RQ's own success/failure handling
(finished and failed registries, retries, callbacks, rate-limit slots). What differs:

- Dequeuing waits for a free slot first, so a full worker stops dequeuing and the next
  job goes to a worker with room. With several slots free it takes up to
  ``dequeue_batch`` jobs in three round trips (``jobs/worker/prefetch.py``) instead of
  RQ's six or seven per job.
- ``execute_job`` hands the job to the loop thread and returns at once.
- A job's timeout is a loop timer that cancels its own task (RQ's SIGALRM death penalty
  is per process); it ends that job only, as ``JobTimeoutException``
  (``cancel_reason()`` answers ``TIMEOUT`` inside the job).
- RQ's ``stop-job`` command (``rq.command.send_stop_job_command``) cancels the job's
  task (RQ marks the job STOPPED, never retried); the job may catch
  ``asyncio.CancelledError`` and ask ``cancel_reason()`` to store what it has.
- Warm shutdown (SIGTERM): stop dequeuing, let jobs finish until ``grace_seconds``, then
  cancel the rest (``cancel_reason()`` answers ``HANDBACK``) and put them back at the front of their
  queue (no retry is spent), so another worker resumes them.
- With ``running_ttl``, the ids of the jobs it runs are rewritten to Redis every third
  of it (jobs/worker/liveness.py): the reconciler's evidence that a job whose RQ record
  Redis lost is still running.
- A job function must be ``async def``. Other workers run the same function through
  RQ's plain ``asyncio.run`` (``rq.job.Job._execute``), so tests can use ``SimpleWorker``.

Per-owner fairness is RQ's own ``RateLimit`` (set at enqueue): jobs of one key beyond
its concurrency wait as ``rate_limited`` and are promoted when a slot frees.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import inspect
import logging
import sys
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import redis.exceptions
from redis.client import Pipeline
from rq import SimpleWorker
from rq.command import parse_payload
from rq.executions import Execution
from rq.job import Job, _current_job
from rq.queue import Queue
from rq.timeouts import JobTimeoutException, TimerDeathPenalty
from rq.utils import now

from core.collector import gen0_threshold
from jobs.worker.jobcontrol import HANDBACK, STOP, TIMEOUT, Control, bind, expire
from jobs.worker.liveness import vouch_running, withdraw
from jobs.worker.looplag import LagHistogram, probe_loop_lag
from jobs.worker.loopthread import Lifespan, LoopThread
from jobs.worker.prefetch import Taken, take_jobs

logger = logging.getLogger("herald.worker")


@dataclass
class _InFlight:
    job: Job
    queue: Queue
    execution: Execution
    future: Future[None]
    control: Control
    task: asyncio.Task[None] | None = None


class AsyncWorker(SimpleWorker):
    # Callbacks (success/failure) run in a thread of the loop's executor, where
    # SIGALRM-based penalties cannot be armed.
    death_penalty_class = TimerDeathPenalty

    # rq 3.0 sends the worker heartbeat as three commands (HSET, EXPIRE, EXPIRE), twice
    # between one job and the next dequeue; here it is one pipelined round trip, skipped
    # when a default-TTL heartbeat went out under ``_HEARTBEAT_GAP`` ago (the worker key
    # cannot lapse meanwhile). A heartbeat with another TTL voids the skip.
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

    def __init__(
        self,
        *args: Any,
        concurrency: int = 100,
        dequeue_batch: int = 20,
        grace_seconds: float = 20.0,
        lifespan: Lifespan | None = None,
        loop_lag_tick: float = 0.0,
        loop_lag_window: float = 10.0,
        gc_gen0_threshold: int = 0,
        running_ttl: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.concurrency = max(1, concurrency)
        self.dequeue_batch = max(1, dequeue_batch)
        self._taken: collections.deque[Taken] = collections.deque()  # each holds a slot
        self.grace_seconds = grace_seconds
        self._runner = LoopThread(lifespan, self._start_helpers)
        # The loop-lag probe (jobs/worker/looplag.py): off when the tick is 0.
        self.loop_lag_tick = loop_lag_tick
        self.loop_lag_window = loop_lag_window
        # Hundreds of jobs allocate fast on a large heap (core/collector.py); 0: CPython's.
        self.gc_gen0_threshold = gc_gen0_threshold
        # The set of jobs running here, renewed every third of this TTL (0: not kept), so
        # the reconciler knows them when Redis loses RQ's record (jobs/worker/liveness.py).
        self.running_ttl = running_ttl
        self._slots = threading.BoundedSemaphore(self.concurrency)
        self._inflight: dict[str, _InFlight] = {}
        self._inflight_lock = threading.Lock()
        # RQ's failure path reads one worker attribute (the stopped job id): one at a time.
        self._finish_lock = threading.Lock()
        self._stopped: set[str] = set()

    # --- the loop thread's helpers ---------------------------------------------------------
    def _start_helpers(self) -> list[asyncio.Task[None]]:
        return [t for t in (self._start_probe(), self._start_vouching()) if t is not None]

    def _start_probe(self) -> asyncio.Task[None] | None:
        if self.loop_lag_tick <= 0:
            return None
        labels = {"queue": ",".join(self.queue_names())}

        def report(samples: LagHistogram) -> None:
            samples.record(self.connection, labels)

        return asyncio.create_task(
            probe_loop_lag(self.loop_lag_tick, self.loop_lag_window, report),
            name="herald-loop-lag",
        )

    def _start_vouching(self) -> asyncio.Task[None] | None:
        if self.running_ttl <= 0:
            return None
        return asyncio.create_task(self._vouch_running(), name="herald-running-jobs")

    async def _vouch_running(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            with self._inflight_lock:
                ids = list(self._inflight)
            try:
                await loop.run_in_executor(
                    None, vouch_running, self.connection, self.name, ids, self.running_ttl
                )
            except (redis.exceptions.RedisError, OSError) as exc:
                logger.warning("could not record the jobs running here: %s", exc)
            await asyncio.sleep(self.running_ttl / 3)

    def work(self, *args: Any, **kwargs: Any) -> bool:
        with gen0_threshold(self.gc_gen0_threshold):
            self._runner.start()
            try:
                return bool(super().work(*args, **kwargs))
            finally:
                self._runner.stop()
                if self.running_ttl > 0:  # every job ended or was handed back
                    with contextlib.suppress(redis.exceptions.RedisError, OSError):
                        withdraw(self.connection, self.name)

    # --- taking jobs ----------------------------------------------------------------
    def check_for_suspension(self, burst: bool) -> None:
        if not self._taken:  # jobs already taken were taken after a check
            super().check_for_suspension(burst)

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        if not self._taken:
            self._take_batch()
        if self._taken:
            head = self._taken[0]
            return head.job, head.queue
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def _take_batch(self) -> None:
        """Wait for one free slot, then take as many queued jobs as there are free slots
        (up to ``dequeue_batch``) without blocking."""
        while not self._slots.acquire(timeout=5):
            self.heartbeat()  # a long wait for room must not let the worker key lapse
        held = 1
        while held < self.dequeue_batch and self._slots.acquire(blocking=False):
            held += 1
        taken: list[Taken] = []
        try:
            taken = take_jobs(self, self._ordered_queues, held)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            # RQ's own dequeue (next) waits for Redis with back-off; ids already moved
            # sit in the intermediate list, which the supervisor re-queues.
            logger.warning("batched dequeue failed; Redis unreachable", exc_info=True)
        finally:
            for _ in range(held - len(taken)):
                self._slots.release()
        self._taken.extend(taken)

    def execute_job(self, job: Job, queue: Queue) -> None:
        if self._taken and self._taken[0].job is job:
            execution = self._taken.popleft().execution  # prepared and holding a slot
        else:  # RQ's own blocking dequeue took it: a slot is free (checked just before)
            while not self._slots.acquire(timeout=5):
                self.heartbeat()
            try:
                execution = self.prepare_execution(job)
                self.prepare_job_execution(
                    job, remove_from_intermediate_queue=len(self.queues) == 1
                )
            except BaseException:
                self._slots.release()
                raise
        try:
            job.started_at = now()
            with self._inflight_lock:
                control = Control()
                future = self._runner.submit(self._perform(job, queue, execution, control))
                self._inflight[job.id] = _InFlight(job, queue, execution, future, control)
        except BaseException:
            self._slots.release()
            raise

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    async def _perform(
        self, job: Job, queue: Queue, execution: Execution, control: Control
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        with self._inflight_lock:
            entry = self._inflight.get(job.id)
            if entry is not None:
                entry.task = task
        bind(control)
        token = _current_job.set(job)  # what rq.get_current_job() reads
        loop = asyncio.get_running_loop()
        timeout = job.timeout or queue.DEFAULT_TIMEOUT
        timer = None
        if timeout and timeout > 0:
            timer = loop.call_later(timeout, expire, control, task)
        try:
            coro = job.func(*job.args, **job.kwargs)
            if not inspect.iscoroutine(coro):
                raise TypeError(f"{job.func_name} is not an async function")
            result = await coro
        except asyncio.CancelledError:
            if control.reason == HANDBACK:
                await loop.run_in_executor(None, self._hand_back, job, queue, execution)
                return
            exc_info = sys.exc_info()
            if control.reason == TIMEOUT:
                try:
                    raise JobTimeoutException(
                        f"Task exceeded maximum timeout value ({timeout} seconds)"
                    )
                except JobTimeoutException:
                    exc_info = sys.exc_info()
            await loop.run_in_executor(None, self._finish_failure, job, queue, execution, exc_info)
        except Exception:
            exc_info = sys.exc_info()
            await loop.run_in_executor(None, self._finish_failure, job, queue, execution, exc_info)
        else:
            await loop.run_in_executor(None, self._finish_success, job, queue, execution, result)
        finally:
            if timer is not None:
                timer.cancel()
            _current_job.reset(token)
            with self._inflight_lock:
                self._inflight.pop(job.id, None)
            self._slots.release()

    # --- RQ's bookkeeping (executor threads) ------------------------------------------
    def _finish_success(self, job: Job, queue: Queue, execution: Execution, result: Any) -> None:
        # Several at once: RQ's success path keeps no worker state in Python (its counts
        # are HINCRBYs), and its four or five round trips per job, one job at a time,
        # made the end of a burst wait in line.
        self._finalize_success(job, queue, execution, result)

    def _finish_failure(self, job: Job, queue: Queue, execution: Execution, exc_info: Any) -> None:
        with self._finish_lock:
            # RQ reads one "stopped job id" to mark a job STOPPED instead of FAILED.
            self._stopped_job_id = job.id if job.id in self._stopped else None
            self._stopped.discard(job.id)
            self._finalize_failure(job, queue, execution, exc_info)

    def _hand_back(self, job: Job, queue: Queue, execution: Execution) -> None:
        with self._finish_lock:
            # Two steps: RQ's enqueue runs commands of its own that a transaction would
            # hold back. Between them the job is in no registry for a moment; the
            # reconciler finds work PostgreSQL still expects (docs/design.md).
            with self.connection.pipeline() as pipe:
                self.cleanup_execution(job, pipeline=pipe, execution=execution)
                pipe.execute()
            queue.enqueue_job(job, at_front=True)
        logger.info("job %s handed back to %s at shutdown", job.id, queue.name)

    # --- stopping ---------------------------------------------------------------------
    def handle_payload(self, message: dict[str, Any]) -> None:
        payload = parse_payload(message)
        if payload.get("command") == "stop-job" and payload.get("job_id") in self._inflight:
            self.stop_job(str(payload["job_id"]))
            return
        super().handle_payload(message)  # type: ignore[no-untyped-call]

    def stop_job(self, job_id: str) -> bool:
        """Cancel one in-flight job's task; RQ then marks it STOPPED. Thread-safe."""
        with self._inflight_lock:
            entry = self._inflight.get(job_id)
        if entry is None:
            return False
        self._stopped.add(job_id)
        entry.control.reason = STOP
        self._runner.call_soon(_cancel, entry, STOP)
        return True

    def teardown(self) -> None:
        while self._taken:  # taken but not started when the loop stopped
            t = self._taken.popleft()
            self._hand_back(t.job, t.queue, t.execution)
            self._slots.release()
        self._drain()
        super().teardown()  # type: ignore[no-untyped-call]

    def _drain(self) -> None:
        """Warm shutdown: finish within the grace period, hand the rest back."""
        deadline = time.monotonic() + self.grace_seconds
        while self._inflight and time.monotonic() < deadline:
            time.sleep(0.05)
        with self._inflight_lock:
            left = list(self._inflight.values())
        if left:
            logger.warning("handing %d unfinished job(s) back to the queue", len(left))
            for entry in left:
                entry.control.reason = HANDBACK
                self._runner.call_soon(_cancel, entry, HANDBACK)
            for entry in left:
                with contextlib.suppress(Exception):
                    entry.future.result(timeout=10)


def _cancel(entry: _InFlight, message: str) -> None:
    if entry.task is not None:
        entry.task.cancel(message)
    else:  # handed to the loop but not started yet: its task exists a moment later
        asyncio.get_running_loop().call_later(0.01, _cancel, entry, message)
