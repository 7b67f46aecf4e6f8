"""Real web and worker processes for end-to-end tests, run as a process manager would.

Output goes to files under ``test-artifacts/`` (a pipe nobody reads fills up and
blocks the child), and is quoted in the failure message when a process will not start.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
VENV_BIN = ROOT / ".venv" / "bin"


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    _log: IO[bytes] = field(repr=False)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal(self, signum: int) -> None:
        # Each process leads its own group: the signal reaches bash's children too.
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signum)

    def stop(self, timeout: float = 30) -> int:
        self.signal(signal.SIGTERM)
        try:
            code = self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            code = self.popen.wait()
        self._log.close()
        return code


def process_env(**extra: str) -> dict[str, str]:
    """os.environ (conftest filled in Redis, PostgreSQL, secret), the venv's python first."""
    env = {**os.environ, **extra}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("LOG_LEVEL", "WARNING")
    return env


def start(name: str, command: str | list[str], env: dict[str, str]) -> Proc:
    """Start ``command`` (a shell line through ``bash -c``, or an argv) in the repo root."""
    ARTIFACTS.mkdir(exist_ok=True)
    log_path = ARTIFACTS / f"{name}.log"
    log = log_path.open("wb")
    argv = ["bash", "-c", command] if isinstance(command, str) else command
    popen = subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Proc(name, popen, log_path, log)


def wait_ready(proc: Proc, base: str, path: str = "/readyz", timeout: float = 60) -> None:
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
            time.sleep(0.1)


def read_procfile(path: Path | None = None) -> dict[str, str]:
    """Procfile lines ``name: command`` (Heroku: "The Procfile"), comments skipped."""
    lines = (path or ROOT / "Procfile").read_text().splitlines()
    procs = {}
    for line in lines:
        match = re.match(r"^([A-Za-z0-9_-]+):\s*(.+)$", line)
        if match and not line.lstrip().startswith("#"):
            procs[match.group(1)] = match.group(2).strip()
    return procs
