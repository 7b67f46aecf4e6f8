"""A loopback TCP relay whose open connections can be frozen.

``freeze()`` stops every connection open at that moment from passing bytes, in both
directions, without closing anything: what a client sees when a path dies without a
reset (a NAT or load balancer dropping an idle flow, a laptop waking on another
network). Connections made afterwards relay normally.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType


class FreezableProxy:
    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        # Closing a socket does not wake a thread blocked in accept() (Linux): poll.
        self._listener.settimeout(0.2)
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._frozen: list[threading.Event] = []
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept)

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self._target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            frozen = threading.Event()
            with self._lock:
                self._sockets += [client, upstream]
                self._frozen.append(frozen)
            self._spawn(self._pump, client, upstream, frozen)
            self._spawn(self._pump, upstream, client, frozen)

    def _pump(self, src: socket.socket, dst: socket.socket, frozen: threading.Event) -> None:
        try:
            while True:
                data = src.recv(65536)
                if frozen.is_set():
                    # Nothing more gets through, not even the end of the connection.
                    self._closing.wait()
                    return
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def freeze(self) -> int:
        """Freeze every connection open now; returns how many there were."""
        with self._lock:
            for frozen in self._frozen:
                frozen.set()
            return len(self._frozen)

    def close(self) -> None:
        self._closing.set()
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in threads:
            thread.join(timeout=5)

    def __enter__(self) -> FreezableProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
