"""``scripts/start`` (``python -m app.dev``) as a developer uses it (issue 10): embedded
servers, Ctrl-C mid-reply and start again (item 3), a banner that is printed once the
stack is ready and can be pasted (item 4), arguments checked before anything starts.
Ctrl-C is SIGINT to the whole foreground process group, as a terminal sends it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.dev.embedded import free_port
from app.dev.start import dev_environment
from core import settings
from tests.support.asgi import token
from tests.support.procs import Proc, process_env, start, wait_ready

pytestmark = pytest.mark.e2e

USER = "ctrl-c-user"


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: pgserver, run as root, hands the data directory to its
    # own system user, which cannot enter pytest's private (0700) temp root.
    path = Path(tempfile.mkdtemp(prefix="herald-dev-state-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def dev_env(state: Path, port: int) -> dict[str, str]:
    env = process_env(
        HERALD_STATE_DIR=str(state),
        PORT=str(port),
        DEMO_WORD_DELAY_SECONDS="0.2",  # a reply takes several seconds: time to interrupt
        WORKER_CHAT_PROCESSES="1",  # so the second message waits in the queue
        WORKER_UPLOAD_PROCESSES="0",
        LOG_LEVEL="INFO",
    )
    for name in ("REDIS_URL", "DATABASE_URL"):  # embedded servers, as on a fresh clone
        env.pop(name, None)
    return env


def start_dev(name: str, state: Path, port: int) -> Proc:
    proc = start(name, [sys.executable, "-m", "app.dev"], dev_env(state, port))
    wait_ready(proc, f"http://127.0.0.1:{port}", timeout=180)
    return proc


def wait_exit(proc: Proc, timeout: float = 120) -> int:
    code = proc.popen.wait(timeout=timeout)
    return code


def first_chunk(client: httpx.Client, message_id: str) -> None:
    with client.stream("GET", "/events", timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: ") and json.loads(line[6:]).get("message_id") == message_id:
                return


def test_issue10_ctrl_c_mid_reply_then_restart_answers_every_message(state_dir: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    headers = {"authorization": f"Bearer {token(USER)}"}
    first = start_dev("issue10-dev-first", state_dir, port)
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            responses = [
                client.post(
                    "/chat/messages",
                    json={"message": f"Please tell me a short story about lighthouse number {i}."},
                )
                for i in range(2)
            ]
            # The dev stack's roomier limit (item 5), not production's 50/hour.
            assert responses[0].headers["ratelimit-limit"] == "1000"
            posted = [r.json() for r in responses]
            first_chunk(client, posted[0]["message_id"])
        first.signal(signal.SIGINT)  # Ctrl-C, mid-reply
        assert wait_exit(first) == 0, first.log()
    finally:
        first.stop()
    log = first.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-6000:]
    # The banner came once the stack was ready, and its curl line works pasted as is.
    assert log.index("Application startup complete") < log.index("Herald is ready")
    curl = re.search(r"curl -N -H 'Authorization: Bearer ([\w.-]+)' (\S+)/events", log)
    assert curl is not None, log[-3000:]
    assert curl.group(2) == base
    assert "Stopping" in log
    if os.geteuid() == 0:  # said before pgserver acts (issue 10 item 8)
        assert log.index("system user 'pgserver'") < log.index("Herald is")
    # The embedded PostgreSQL is built without LZ4: migration 004 keeps pglz there, and says so.
    assert "applied migration 004_chunk_compression" in log
    assert "migration notice: upload_chunks keeps pglz" in log, log[-6000:]
    # The dev Redis appends to a file under the state directory (issue 10 item 7).
    assert any(p.name.startswith("appendonly") for p in (state_dir / "redis").iterdir())

    second = start_dev("issue10-dev-second", state_dir, port)
    try:
        pasted = {"authorization": f"Bearer {curl.group(1)}"}
        assert httpx.get(f"{base}/chat/conversations", headers=pasted).status_code == 200
        with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
            deadline = time.monotonic() + 120  # a hang guard, not a speed check
            statuses: dict[str, str] = {}
            while time.monotonic() < deadline:
                statuses = {}
                for accepted in posted:
                    url = f"/chat/conversations/{accepted['conversation_id']}/messages"
                    messages = client.get(url).json()["messages"]
                    statuses[accepted["message_id"]] = messages[0]["status"]
                if "queued" not in statuses.values():
                    break
                time.sleep(0.5)
        # The reply in flight was finished by the warm shutdown; the one waiting in the
        # queue is answered after the restart (or, at worst, failed with a reason).
        assert statuses[posted[0]["message_id"]] == "answered", statuses
        assert statuses[posted[1]["message_id"]] in ("answered", "failed"), statuses
        second.signal(signal.SIGTERM)
        assert wait_exit(second) == 0, second.log()
    finally:
        second.stop()
    assert "Traceback" not in second.log_path.read_text(errors="replace")


def run_dev(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.dev", *args],
        env=process_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_issue10_start_documents_port_and_refuses_unknown_arguments() -> None:
    usage = run_dev("--help")
    assert usage.returncode == 0
    assert "PORT" in usage.stdout
    assert "--port" in usage.stdout
    refused = run_dev("--prot", "9000")
    assert refused.returncode == 2
    assert "unrecognized arguments: --prot 9000" in refused.stderr


def test_issue10_busy_port_fails_before_the_banner() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = run_dev(PORT=str(port))
        by_flag = run_dev("--port", str(port))
    for result in (done, by_flag):
        assert result.returncode == 1
        assert f"port {port} is already in use" in result.stderr
        assert "token" not in (result.stdout + result.stderr).lower()
        assert "Traceback" not in result.stderr


def test_issue10_dev_limits_are_roomier_unless_set() -> None:
    env = dev_environment({})
    assert env["UPLOAD_RATE_LIMIT"] == "1000/hour"
    assert env["CHAT_RATE_LIMIT"] == "1000/hour"
    assert dev_environment({"UPLOAD_RATE_LIMIT": "5/minute"})["UPLOAD_RATE_LIMIT"] == "5/minute"
    # Production defaults are untouched (the test run sets none of these).
    assert (settings.UPLOAD_RATE_LIMIT, settings.CHAT_RATE_LIMIT) == ("20/hour", "50/hour")
    assert settings.SSE_MAX_CONNECTIONS_PER_USER == 5
