"""The processes a dead worker leaves behind: RQ's scheduler, a work horse.

A worker forks RQ's scheduler (``Worker.work(with_scheduler=True)``, rq/scheduler.py) and,
for forking kinds, a work horse per job. A warm stop ends both (``stop_scheduler``; the
worker waits for its horse), but a SIGKILL or the OOM killer ends the worker alone. Its
children then run on under init: the scheduler heartbeating and holding its queues'
scheduler lock for ever, so the worker that replaces the dead one never gets the lock,
and one more such process is left after every crash.

On Linux the supervisor is a child subreaper (prctl(2), ``PR_SET_CHILD_SUBREAPER``): the
orphans of its workers become its own children. After a worker's death it stops every
child it did not start: SIGTERM first, so RQ's scheduler releases its locks and the new
worker's scheduler takes over at once; SIGKILL for what is still running after
``WORKER_ORPHAN_GRACE_SECONDS``; then it reaps them. Elsewhere (a macOS laptop) the
orphans are left to the process manager, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterable

# <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Adopt the orphans of this process's descendants; False where the OS cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def children() -> set[int]:
    """This process's children, from every thread's /proc list (proc(5))."""
    found: set[int] = set()
    with contextlib.suppress(OSError):
        for tid in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{tid}/children") as f:
                found.update(int(pid) for pid in f.read().split())
    return found


def stop_adopted(started: Iterable[int], grace: float) -> list[int]:
    """Stop and reap this process's children that are not in ``started``; returns them."""
    adopted = sorted(children() - set(started))
    for pid in adopted:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    running = {pid for pid in adopted if not _reaped(pid)}
    while running and time.monotonic() < deadline:
        time.sleep(0.02)
        running = {pid for pid in running if not _reaped(pid)}
    for pid in running:  # still there after the grace
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return adopted


def _reaped(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not ours (any more): someone else reaped it
        return True
    return done == pid
