"""The worker supervisor (``python -m jobs.worker``) run as a process manager runs it:
what a SIGKILLed worker leaves behind is stopped (jobs/worker/orphans.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import redis
from rq import Queue, Worker

from tests.support.procs import children, process_env, start_worker, stop_all, wait_until

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="a child subreaper is Linux only"
)


def running(pid: int) -> bool:
    """Alive and not a zombie waiting to be reaped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_a_killed_workers_scheduler_is_stopped_and_its_replacement_schedules(
    redis_client: redis.Redis,
) -> None:
    """A SIGKILLed worker's RQ scheduler used to run on under init, holding the queue's
    scheduler lock for ever, so the replacement worker never ran one."""
    queue = Queue(f"supervised-{uuid.uuid4().hex[:8]}", connection=redis_client)
    env = process_env(
        CHAT_QUEUE=queue.name,
        WORKER_CHAT_PROCESSES="1",
        WORKER_UPLOAD_PROCESSES="0",
        LLM_PROVIDER="demo",
    )
    supervisor = start_worker("supervisor-orphans", env)

    def worker_and_scheduler() -> tuple[int, int] | None:
        for worker in Worker.all(queue=queue):
            pid = int(worker.pid or 0)
            kids = [k for k in children(pid) if running(k)] if running(pid) else []
            if kids:
                return pid, kids[0]
        return None

    try:
        worker, scheduler = wait_until(worker_and_scheduler, 60, "a worker and its scheduler")
        os.kill(worker, signal.SIGKILL)
        wait_until(lambda: not running(scheduler), 15, "the dead worker's scheduler to stop")
        # SIGTERM let it release the scheduler lock, so the new worker took it at once
        # (a lock left to lapse would hold its scheduler back 61 s).
        replacement = wait_until(
            lambda: (found := worker_and_scheduler()) and found[0] != worker and found,
            30,
            "a new worker running the scheduler",
        )
        assert replacement[1] != scheduler
        assert "left running by dead worker" in supervisor.log()
    finally:
        stop_all([supervisor])


_ORPHAN_SCRIPT = """
import os, signal, sys, time
from jobs.worker import orphans
assert orphans.become_subreaper()
r, w = os.pipe()
child = os.fork()
if child == 0:  # a worker that forks a stubborn child, then dies
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # Its pid only once SIGTERM is ignored: sent earlier, it would simply die.
        os.write(w, str(os.getpid()).encode())
        time.sleep(60)
        os._exit(0)
    os._exit(0)
os.waitpid(child, 0)
grandchild = int(os.read(r, 32))
started = time.monotonic()
stopped = orphans.stop_adopted([], grace=0.3)
took = time.monotonic() - started
gone = not os.path.exists(f"/proc/{grandchild}")
print(stopped == [grandchild], gone, 0.3 <= took < 5)
"""


def test_an_orphan_that_ignores_sigterm_is_killed_after_the_grace_and_reaped() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _ORPHAN_SCRIPT],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=Path(__file__).resolve().parents[1],
        env=process_env(),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True"]
