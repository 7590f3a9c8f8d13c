"""A three-node RabbitMQ cluster of the installed rabbitmq-server, on 127.0.0.1, for the
cluster scenarios; the pre-started broker on 5672 is left alone.

Each node has its own node name, ports (AMQP, management, distribution), configuration file
(the system's ``/etc/rabbitmq/rabbitmq.conf`` pins a listener on 5672), data, log and pid
files and plugins file, in a directory of its own that the ``rabbitmq`` user owns; the
Debian ``rabbitmq-server`` and ``rabbitmqctl`` scripts run as that user when started as
root. Nodes 2 and 3 join node 1. Starting and joining takes 30-60 s here.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.integration.helpers import free_port

HEARTBEAT = 5  # seconds: the URLs' heartbeat
# Seconds after which a node tells a silent peer down (Erlang's default 60 means 45-75 s).
# Until then a node that is paused or cut off still leads its queues as far as the others'
# metadata says, and a publish to one waits on it however its client connects: measured on
# 3.10.8, a publish through a live node 10 s into a pause had no answer 40 s later at the
# default, and was nacked 2 s later (then the new leader took them) at 10.
NET_TICKTIME = 10
START_TIMEOUT = 120  # seconds for a node to start, as rabbitmqctl await_startup waits


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
        return "rabbitmq-server is not installed (make services installs it)"
    if os.geteuid() != 0:
        return "starting RabbitMQ nodes as the rabbitmq user needs root"
    return None


@dataclass
class Node:
    index: int
    name: str  # sluiceway-<pid>-<index>@localhost
    amqp_port: int
    management_port: int
    dist_port: int
    home: Path

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/"

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    def env(self) -> dict[str, str]:
        return os.environ | {
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.home / "log"),
            "RABBITMQ_PID_FILE": str(self.home / "pid"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": f"-kernel net_ticktime {NET_TICKTIME}",
        }

    def pid(self) -> int | None:
        try:
            return int((self.home / "pid").read_text().strip())
        except (OSError, ValueError):
            return None


class RabbitCluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        self.nodes = [
            Node(i, f"sluiceway-{os.getpid()}-{i}@localhost", free_port(), free_port(),
                 free_port(), root / f"node{i}")
            for i in range(1, size + 1)
        ]  # fmt: skip

    @property
    def urls(self) -> str:
        """Every node, as ``SLUICEWAY_AMQP_URL`` takes them, with a 5 s heartbeat (60 s by
        default): a node that stops answering is left within seconds."""
        return ",".join(f"{node.url}?heartbeat={HEARTBEAT}" for node in self.nodes)

    def ctl(self, node: Node, *args: str, timeout: float = START_TIMEOUT) -> str:
        done = subprocess.run(["rabbitmqctl", "-n", node.name, *args], capture_output=True,
                              text=True, timeout=timeout, env=node.env())  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl -n {node.name} {' '.join(args)}: {done.stderr}")
        return done.stdout

    def _prepare(self, node: Node) -> None:
        for sub in ("mnesia", "log"):
            (node.home / sub).mkdir(parents=True, exist_ok=True)
        (node.home / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{node.amqp_port}\n"
            f"management.tcp.port = {node.management_port}\n"
            "management.tcp.ip = 127.0.0.1\n"
            # Counts sampled every second, not five: the operator's depth follows sooner.
            "collect_statistics_interval = 1000\n"
        )
        (node.home / "enabled_plugins").write_text("[rabbitmq_management].\n")
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(self.root)], check=True)

    def await_startup(self, node: Node) -> None:
        """Wait until the node runs RabbitMQ. ``await_startup`` fails at once while the VM is
        still booting and not yet known to epmd (seconds, on a loaded machine), so it is
        asked again until the node answers or START_TIMEOUT passes."""
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                self.ctl(node, "await_startup", timeout=max(deadline - time.monotonic(), 1))
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def start_node(self, node: Node) -> None:
        subprocess.run(["rabbitmq-server", "-detached"], env=node.env(), check=True,
                       capture_output=True, timeout=60)  # fmt: skip
        self.await_startup(node)

    def start(self) -> RabbitCluster:
        started = time.monotonic()
        for node in self.nodes:
            self._prepare(node)
        for node in self.nodes:
            subprocess.run(["rabbitmq-server", "-detached"], env=node.env(), check=True,
                           capture_output=True, timeout=60)  # fmt: skip
        for node in self.nodes:
            self.await_startup(node)
        first = self.nodes[0]
        for node in self.nodes[1:]:
            self.ctl(node, "stop_app")
            self.ctl(node, "join_cluster", first.name)
            self.ctl(node, "start_app")
        self.started_in = time.monotonic() - started
        return self

    def kill(self, node: Node) -> None:
        """SIGKILL the node's VM: a node lost, no goodbye to the others."""
        pid = node.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)

    def pause(self, node: Node) -> None:
        """SIGSTOP: the node's sockets stay open and say nothing; the others see it go."""
        pid = node.pid()
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)

    def resume(self, node: Node) -> None:
        pid = node.pid()
        assert pid is not None
        os.kill(pid, signal.SIGCONT)

    def restart(self, node: Node) -> None:
        """Stop the node cleanly, then start it again (a rolling upgrade's step)."""
        self.ctl(node, "stop")
        self.start_node(node)

    def leader(self, queue: str) -> Node:
        """The node that leads quorum queue ``queue``, as any live node's API says."""
        for node in self.nodes:
            try:
                response = httpx.get(
                    f"http://127.0.0.1:{node.management_port}/api/queues/%2F/{queue}",
                    auth=("guest", "guest"), timeout=5)  # fmt: skip
            except httpx.HTTPError:
                continue
            if response.status_code == 200:
                name = response.json().get("leader") or response.json().get("node")
                return next(n for n in self.nodes if n.name == name)
        raise RuntimeError(f"no node knows queue {queue}")

    def stop(self) -> None:
        for node in self.nodes:
            pid = node.pid()
            if pid is not None and _alive(pid):
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
        if not os.environ.get("SLUICEWAY_KEEP_CLUSTER"):
            shutil.rmtree(self.root, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (reaped late by init) counts as gone.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"
