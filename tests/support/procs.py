"""The one process harness of the tests and the benchmarks: web and worker processes
started as a process manager would, waited for until they answer, and stopped.

Output goes to a log file per process (a pipe nobody reads fills up and blocks the
child), quoted in the error when a process will not start. Each child leads its own
session, so a signal reaches a worker supervisor's work horses too, as on a dyno.
The private Redis and PostgreSQL servers that a test may stop and restart are in
tests/support/servers.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from app.dev.embedded import free_port
from app.dev.start import web_argv, worker_argv

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
VENV_BIN = ROOT / ".venv" / "bin"
STARTUP_SECONDS = 60

T = TypeVar("T")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def log(self) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal(self, signum: int) -> None:
        """``signum`` to the process and everything in its session."""
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as a process manager stops a process; SIGKILL after ``timeout``."""
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """SIGKILL to the whole session (a supervisor and its work horses): a crash."""
        self.signal(signal.SIGKILL)
        return self.popen.wait()

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.popen.pid}/status").read_text()
        line = next(x for x in status.splitlines() if x.startswith("VmRSS:"))
        return int(line.split()[1])


@dataclass
class Web(Proc):
    port: int

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def healthy(self) -> bool:
        try:
            return httpx.get(self.base + "/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    def metric(self, name: str) -> float:
        """One unlabelled sample from this process's /metrics."""
        text = httpx.get(self.base + "/metrics", timeout=5).text
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)


def process_env(**extra: str) -> dict[str, str]:
    """os.environ (conftest filled in Redis, PostgreSQL, secret), the venv's python first."""
    env = {**os.environ, **extra}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("LOG_LEVEL", "WARNING")
    return env


def _spawn(
    command: str | list[str], env: dict[str, str], log_path: Path, cwd: Path
) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    argv = ["bash", "-c", command] if isinstance(command, str) else command
    with log_path.open("wb") as log:
        return subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def start(
    name: str,
    command: str | list[str],
    env: dict[str, str],
    *,
    logdir: Path = ARTIFACTS,
    cwd: Path = ROOT,
) -> Proc:
    """Start ``command`` (a shell line through ``bash -c``, or an argv) in ``cwd``."""
    log_path = logdir / f"{name}.log"
    return Proc(name, _spawn(command, env, log_path, cwd), log_path)


def start_web(
    name: str,
    env: dict[str, str],
    *uvicorn_args: str,
    command: str | list[str] | None = None,
    port: int | None = None,
    ready: str = "/readyz",
    logdir: Path = ARTIFACTS,
    cwd: Path = ROOT,
) -> Web:
    """A web process on a free loopback port (``command``, else ``app.dev.start``'s
    uvicorn), returned once ``ready`` answers 200."""
    port = port or free_port()
    log_path = logdir / f"{name}.log"
    popen = _spawn(command or web_argv(port, *uvicorn_args), env, log_path, cwd)
    web = Web(name, popen, log_path, port)
    try:
        wait_ready(web, web.base, ready)
    except BaseException:
        web.stop()
        raise
    return web


def start_worker(
    name: str,
    env: dict[str, str],
    command: str | list[str] | None = None,
    *,
    logdir: Path = ARTIFACTS,
    cwd: Path = ROOT,
) -> Proc:
    """The Procfile's worker supervisor (``python -m jobs.worker``) unless ``command``."""
    return start(name, command or worker_argv(), env, logdir=logdir, cwd=cwd)


def wait_ready(
    proc: Proc, base: str, path: str = "/readyz", timeout: float = STARTUP_SECONDS
) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5) as client:
        while True:
            try:
                if client.get(base + path).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if proc.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} did not become ready:\n{proc.log()}")
            time.sleep(0.05)


def children(pid: int) -> list[int]:
    """A process's children, from every one of its threads' /proc lists (proc(5));
    empty once it is gone."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found += [int(p) for p in (task / "children").read_text().split()]
    return found


def wait_until(predicate: Callable[[], T], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def read_procfile(path: Path | None = None) -> dict[str, str]:
    """Procfile lines ``name: command`` (Heroku: "The Procfile"), comments skipped."""
    lines = (path or ROOT / "Procfile").read_text().splitlines()
    procs = {}
    for line in lines:
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line)
        if match and not line.lstrip().startswith("#"):
            procs[match.group(1)] = match.group(2).strip()
    return procs


def stop_all(procs: list[Any]) -> None:
    """Stop every process, last started first."""
    for proc in reversed(procs):
        proc.stop()
