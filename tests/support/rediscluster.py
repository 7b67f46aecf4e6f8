"""A real Redis Cluster on loopback ports, from the system's ``redis-server`` (>= 7.0 for
sharded pub/sub), formed with ``redis-cli --cluster create``, for tests and benchmarks.

Each node runs in a temp dir without persistence; ``stop`` kills every node it started
and removes the dir. A node's cluster bus listens on its port + 10000 (Redis cluster
tutorial), so ports are picked with both free.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import redis

from tests.support.procs import wait_until

MIN_VERSION = (7, 0)


def redis_binaries() -> tuple[str, str] | None:
    """``(redis-server, redis-cli)`` of at least MIN_VERSION, or None."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        return None
    out = subprocess.run([server, "--version"], capture_output=True, text=True, check=False)
    found = re.search(r"v=(\d+)\.(\d+)", out.stdout)
    if found is None or (int(found[1]), int(found[2])) < MIN_VERSION:
        return None
    return server, cli


def skip_reason() -> str:
    return "needs redis-server and redis-cli >= 7.0 on PATH (sharded pub/sub)"


def _port_pair_free(port: int) -> bool:
    for candidate in (port, port + 10000):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


def free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + 10000 < 65536 and port not in ports and _port_pair_free(port):
            ports.append(port)
    return ports


class LocalCluster:
    def __init__(self, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 1000) -> None:
        binaries = redis_binaries()
        if binaries is None:
            raise RuntimeError(skip_reason())
        self.server, self.cli = binaries
        self.primaries = primaries
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.ports = free_ports(primaries * (1 + replicas))
        self.dir = Path(tempfile.mkdtemp(prefix="herald-cluster-"))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def node_url(self, port: int) -> str:
        return f"redis://127.0.0.1:{port}/0"

    def start(self) -> LocalCluster:
        try:
            for port in self.ports:
                self._start_node(port)
            for port in self.ports:
                wait_until(lambda p=port: self._ping(p), 30, f"redis-server on {port}")
            if self.replicas == 0:
                self._form_primaries()
            else:
                self._create_with_cli()
            wait_until(self.healthy, 60, "the cluster to settle")
        except BaseException:
            self.stop()
            raise
        return self

    def _form_primaries(self) -> None:
        """Slots split evenly, then MEET (redis-cli --cluster create wants >= 3 primaries;
        benchmarks also need 1 and 2)."""
        step = 16384 // self.primaries
        for i, port in enumerate(self.ports):
            first, last = i * step, 16383 if i == self.primaries - 1 else (i + 1) * step - 1
            client = redis.Redis(port=port)
            try:
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
                for other in self.ports:
                    if other != port:
                        client.execute_command("CLUSTER", "MEET", "127.0.0.1", other)
            finally:
                client.close()

    def _create_with_cli(self) -> None:
        subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *[f"127.0.0.1:{port}" for port in self.ports],
                "--cluster-replicas",
                str(self.replicas),
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )

    def _start_node(self, port: int) -> None:
        workdir = self.dir / str(port)
        workdir.mkdir()
        log = (workdir / "redis.log").open("wb")
        self.procs[port] = subprocess.Popen(
            [
                self.server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(self.node_timeout_ms),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--maxclients",
                "10000",
                # Replicas sync at once (the default waits 5 s for more replicas): one
                # that never synced is too stale to be promoted (cluster-replica-validity-factor).
                "--repl-diskless-sync-delay",
                "0",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def _ping(self, port: int) -> bool:
        client = redis.Redis(port=port, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    def cluster_info(self, port: int) -> dict[str, str]:
        client = self._admin(port)
        try:
            raw = str(client.execute_command("CLUSTER", "INFO"))
        finally:
            client.close()
        return dict(line.split(":", 1) for line in raw.splitlines() if ":" in line)

    @staticmethod
    def _admin(port: int) -> redis.Redis:
        # Time-outs on every admin call: a node that stops answering fails the wait that
        # asked, with its own message, instead of blocking the test until pytest-timeout.
        return redis.Redis(
            port=port, socket_connect_timeout=1, socket_timeout=5, decode_responses=True
        )

    def alive(self) -> list[int]:
        return [port for port, proc in self.procs.items() if proc.poll() is None]

    def healthy(self) -> bool:
        """Every live node says the cluster is ok, and knows every node that is alive."""
        try:
            for port in self.alive():
                info = self.cluster_info(port)
                if info.get("cluster_state") != "ok":
                    return False
                if int(info.get("cluster_known_nodes", 0)) < len(self.ports):
                    return False
            return all(self._replicas_online(port) for port in self.primary_ports())
        except redis.RedisError:
            return False

    def _replicas_online(self, port: int) -> bool:
        client = self._admin(port)
        try:
            info = client.info("replication")
        finally:
            client.close()
        states = [info[f"slave{i}"]["state"] for i in range(int(info.get("connected_slaves", 0)))]
        return states.count("online") == self.replicas

    def primary_ports(self) -> list[int]:
        """The live primaries, from the first live node's view (CLUSTER SHARDS)."""
        client = self._admin(self.alive()[0])
        try:
            slots = client.execute_command("CLUSTER", "SLOTS")
        finally:
            client.close()
        return sorted({int(entry[2][1]) for entry in slots})

    def owner_of(self, key: str) -> int:
        slot = redis.crc.key_slot(key.encode())
        client = self._admin(self.alive()[0])
        try:
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if int(start) <= slot <= int(end):
                    return int(primary[1])
        finally:
            client.close()
        raise LookupError(f"slot {slot} has no owner")

    def replica_of(self, primary: int, timeout: float = 5.0) -> int:
        # A replica can be online on its primary before the node asked has learned its
        # role by gossip (CLUSTER SLOTS is that node's view), so the answer is awaited.
        def listed() -> int:
            client = self._admin(self.alive()[0])
            try:
                for _, _, owner, *replicas in client.execute_command("CLUSTER", "SLOTS"):
                    if int(owner[1]) == primary and replicas:
                        return int(replicas[0][1])
            finally:
                client.close()
            return 0

        return wait_until(listed, timeout, f"a replica of {primary} in CLUSTER SLOTS")

    def hold_back(self, primary: int, replica: int) -> None:
        """Stop ``replica`` (SIGSTOP) and cut its replication link, so writes made on
        ``primary`` from now on never reach it (data already in flight would, from its
        socket buffer), until ``resume``."""
        self.procs[replica].send_signal(signal.SIGSTOP)
        client = self._admin(primary)
        try:
            client.execute_command("CLIENT", "KILL", "TYPE", "replica")
        finally:
            client.close()

    def resume(self, port: int) -> None:
        self.procs[port].send_signal(signal.SIGCONT)

    def kill(self, port: int) -> None:
        """SIGKILL one node: a crash, no chance to hand anything over."""
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def wait_owner_changed(
        self, key: str, old: int, timeout: float = 60, takeover_after: float = 20
    ) -> int:
        """Until a live node owns ``key``'s slot instead of ``old`` and the cluster is ok.
        Redis's own election promotes the replica within ~2 s here (node timeout 1 s); if
        none has after ``takeover_after`` s, the replica is promoted as an operator would,
        by CLUSTER FAILOVER TAKEOVER (Redis docs, "CLUSTER FAILOVER"), which skips the vote."""

        def promoted() -> int:
            with contextlib.suppress(redis.RedisError, LookupError):
                owner = self.owner_of(key)
                if owner != old and self.settled():
                    return owner
            return 0

        what = f"a new owner for {key!r}"
        with contextlib.suppress(TimeoutError):
            return wait_until(promoted, takeover_after, what)
        with contextlib.suppress(redis.RedisError, TimeoutError):
            client = self._admin(self.replica_of(old))
            try:
                client.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
            finally:
                client.close()
        return wait_until(promoted, max(timeout - takeover_after, 1), what + " after TAKEOVER")

    def settled(self) -> bool:
        """Every live node says the cluster is ok (a dead one may still be listed)."""
        try:
            return all(
                self.cluster_info(port).get("cluster_state") == "ok" for port in self.alive()
            )
        except redis.RedisError:
            return False

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # a paused node would not die of SIGKILL's wait
                proc.kill()
            proc.wait()
        self.procs.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
