"""The web process as the Procfile runs it, under hostile connections (issue 11, items
3 and 4): spoofed X-Forwarded-For chains, huge and slow headers, slow bodies, and a
flood of half-sent requests, while SSE streams stay open.

Raw sockets, because an HTTP client library would not send these requests.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from app.dev.embedded import free_port
from app.proxy import forwarded_client, forwarded_scheme
from core import events
from core.principal import Identity
from tests.support.asgi import token
from tests.support.procs import Proc, process_env, read_procfile, start, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

WEB = read_procfile()["web"]
# A test waits at most this long for the server to act; the bounds under test are 1 s.
PATIENCE_SECONDS = 15


@contextlib.contextmanager
def web(name: str, **env: str) -> Iterator[tuple[Proc, int]]:
    port = free_port()
    proc = start(name, WEB, process_env(PORT=str(port), LOG_LEVEL="INFO", **env))
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}")
        yield proc, port
    finally:
        proc.stop()


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_SECONDS)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {marker!r}: {data!r}"
        data += chunk
    return data


def status_and_body(raw: bytes) -> tuple[int, dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its children (the Procfile line runs in bash)."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        status = Path(f"/proc/{current}/status").read_text()
        total += next(
            int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS")
        )
        for task in Path(f"/proc/{current}/task").iterdir():
            pids += [int(p) for p in (task / "children").read_text().split()]
    return total


# --- Item 3: the client address comes from the trusted hops only -----------------------


@pytest.mark.parametrize(
    ("chain", "hops", "client"),
    [
        (["203.0.113.7"], 1, "203.0.113.7"),
        (["198.51.100.1, 203.0.113.7"], 1, "203.0.113.7"),  # the client wrote the left one
        (["198.51.100.1", "203.0.113.7"], 1, "203.0.113.7"),  # two header lines are one list
        (["1.1.1.1, 198.51.100.1, 203.0.113.7, 10.0.0.2"], 2, "203.0.113.7"),  # CDN + router
        (["203.0.113.7"], 2, "203.0.113.7"),  # shorter than the hops: all added by proxies
        (["2001:db8::1"], 1, "2001:db8::1"),
        (["198.51.100.1, not-an-address"], 1, None),
        ([" , "], 1, None),
        ([], 1, None),
        (["203.0.113.7"], 0, None),  # no proxy: the header means nothing
    ],
)
def test_forwarded_client_takes_the_trusted_entry(
    chain: list[str], hops: int, client: str | None
) -> None:
    assert forwarded_client(chain, hops) == client


def test_forwarded_scheme() -> None:
    assert forwarded_scheme(["https"]) == "https"
    assert forwarded_scheme(["http, https"]) == "https"
    assert forwarded_scheme(["gopher"]) is None
    assert forwarded_scheme([]) is None


def test_spoofed_forwarded_for_chains() -> None:
    forged = token("victim", ttl=60)[:-4] + "AAAA"
    with web("conn-proxy", AUTH_FAILURE_LIMIT="5/minute") as (proc, port):
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

            def attempt(chain: str, bearer: str = forged) -> int:
                headers = {"authorization": f"Bearer {bearer}", "x-forwarded-for": chain}
                return client.get("/uploads", headers=headers).status_code

            # A fresh fake address per request, but the router's entry is the real one.
            rotating = [attempt(f"198.51.100.{i}, 203.0.113.7") for i in range(8)]
            # Failures sent "from" a victim's address block the sender, not the victim.
            framing = [attempt("192.0.2.55, 203.0.113.8") for _ in range(6)]
            victim = attempt("192.0.2.55", token("victim", ttl=60))
        log = proc.log()
    assert rotating == [401] * 5 + [429] * 3
    assert framing == [401] * 5 + [429]
    assert victim == 200
    blocked = [json.loads(line) for line in log.splitlines() if "address blocked" in line]
    assert sorted(b["address"] for b in blocked) == ["203.0.113.7", "203.0.113.8"]


# --- Item 4: header size, header and body time, half-sent requests ---------------------


def test_huge_headers_are_refused_without_buffering_them() -> None:
    with web("conn-headers") as (proc, port):
        before = rss_bytes(proc.popen.pid)
        answers = []
        for _ in range(4):
            with connect(port) as sock:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: ")
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    for _ in range(16):  # 16 MiB, unless the server hangs up first
                        sock.sendall(b"a" * (1024 * 1024))
                answers.append(read_until_closed(sock))
        grown = rss_bytes(proc.popen.pid) - before
        # A normal request still works.
        ok = httpx.get(f"http://127.0.0.1:{port}/healthz", headers={"x-fine": "a" * 8000})
    for raw in answers:
        assert status_and_body(raw) == (
            431,
            {
                "error": {
                    "code": "headers_too_large",
                    "message": "The request headers are too large.",
                }
            },
        )
    assert grown < 16 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"
    assert ok.status_code == 200


def drip(sock: socket.socket, piece: bytes) -> bytes:
    """Send ``piece`` every 0.2 s until the server answers or hangs up; its answer."""
    deadline = time.monotonic() + PATIENCE_SECONDS
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        while time.monotonic() < deadline:
            sock.sendall(piece)
            time.sleep(0.2)
            sock.setblocking(False)
            try:
                sock.recv(1, socket.MSG_PEEK)  # data or EOF: the server acted
                break
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
    return read_until_closed(sock)


def test_slow_header_drip_is_cut() -> None:
    with (
        web("conn-header-drip", HTTP_HEADER_TIMEOUT_SECONDS="1") as (_proc, port),
        connect(port) as sock,
    ):
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        raw = drip(sock, b"X-Drip: a\r\n")
    assert status_and_body(raw)[0] == 408


def test_slow_body_drip_is_cut_and_leaves_nothing() -> None:
    user, org = "dripper", "org-drip"
    headers = (
        f"POST /uploads?filename=d.csv HTTP/1.1\r\nHost: t\r\n"
        f"Authorization: Bearer {token(user, org=org)}\r\n"
        "Content-Type: text/csv\r\nContent-Length: 100000\r\n\r\n"
    )
    env = {"HTTP_BODY_TIMEOUT_SECONDS": "1", "HTTP_BODY_MIN_BYTES_PER_SECOND": "500"}
    with web("conn-body-drip", **env) as (_proc, port):
        with connect(port) as sock:
            sock.sendall(headers.encode() + b"a,b\n")
            raw = drip(sock, b"1")  # 5 bytes a second: far under the minimum rate
        listed = httpx.get(
            f"http://127.0.0.1:{port}/uploads",
            headers={"authorization": f"Bearer {token(user, org=org)}"},
        )
    assert status_and_body(raw)[0] == 408
    assert listed.json() == {"uploads": []}


def test_half_sent_requests_are_capped_while_streams_stay_open(
    redis_client: redis.Redis,
) -> None:
    env = {"HTTP_MAX_PENDING_REQUESTS": "3", "HTTP_HEADER_TIMEOUT_SECONDS": "60"}
    users = [f"streamer-{i}" for i in range(4)]  # more streams than the cap
    with web("conn-pending", **env) as (_proc, port), contextlib.ExitStack() as stack:
        streams = []
        for user in users:
            sock = stack.enter_context(connect(port))
            sock.sendall(f"GET /events?token={token(user)} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            read_until(sock, b": connected")
            streams.append(sock)
        for _ in range(3):  # the cap: three connections still sending their headers
            stack.enter_context(connect(port)).sendall(b"GET /healthz HTTP/1.1\r\nHo")
        time.sleep(0.5)  # let the server take them in before the next one
        with connect(port) as extra:
            refused = read_until_closed(extra)
        # The streams were not counted and still deliver.
        for user, sock in zip(users, streams, strict=True):
            [event_id] = events.publish_event(
                redis_client, "chat.chunk", {"index": 0}, owner=Identity(user).key
            )
            read_until(sock, f"id: {event_id}".encode())
    status, body = status_and_body(refused)
    assert status == 503
    assert body["error"]["code"] == "service_unavailable"  # type: ignore[index]
