"""A local multi-node Ray cluster for tests: ``ray start --block`` processes on 127.0.0.1, each node in
its own process group with its own free ports, under Ray's token authentication.

Nothing here runs ``ray stop`` (it would kill every Ray on the machine, the session's in-process
Ray included): ``Nodes.close`` sends SIGTERM to the ``ray start`` processes it started, then
SIGKILL to whatever is left in their groups; ``Nodes.kill`` SIGKILLs one node's whole group (its
raylet and its workers), as a lost machine would vanish.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def node_ports() -> list[str]:
    """Every port a node opens, chosen free: nodes on one machine must not collide."""
    args = []
    for flag in ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"):  # fmt: skip
        args += [flag, str(free_port())]
    return args


class Nodes:
    """A head and worker nodes; ``env``: what a client (a driver) needs to reach them."""

    def __init__(self, extra_env: dict | None = None):
        self.temp_dir = tempfile.mkdtemp(prefix="dr-ray-", dir="/tmp")  # Ray's socket paths must stay short
        self.token_file = os.path.join(self.temp_dir, "auth_token")
        Path(self.token_file).write_text(secrets.token_hex(16))
        self.gcs_port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}
        node_env = dict(
            os.environ,
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=self.token_file,
            RAY_USAGE_STATS_ENABLED="0",
            RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
            **(extra_env or {}),
        )
        for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):
            node_env.pop(k, None)
        self.node_env = node_env
        self.env = {**node_env, "RAY_ADDRESS": f"127.0.0.1:{self.gcs_port}"}

    def start(self, name: str, args: list[str]) -> None:
        ray = os.path.join(str(Path(sys.executable).parent), "ray")
        common = ["--node-ip-address", "127.0.0.1", "--temp-dir", self.temp_dir, "--block", "--disable-usage-stats"]
        log = open(os.path.join(self.temp_dir, f"{name}.log"), "wb")
        self.procs[name] = subprocess.Popen([ray, "start", *args, *common, *node_ports()], env=self.node_env,
                                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def start_head(self, cpus: float) -> None:
        self.start("head", ["--head", "--port", str(self.gcs_port), "--num-cpus", str(cpus), "--include-dashboard",
                            "false", "--ray-client-server-port", str(free_port())])  # fmt: skip
        self.wait("head GCS", lambda: port_open(self.gcs_port))

    def start_worker(self, name: str, cpus: float, resources: dict | None = None) -> None:
        args = ["--address", f"127.0.0.1:{self.gcs_port}", "--num-cpus", str(cpus)]
        self.start(name, args + (["--resources", json.dumps(resources)] if resources else []))

    def wait_for_cpus(self, cpus: float, timeout: float = 90) -> None:
        """Until the cluster's nodes have ``cpus`` CPUs in all (`ray status`): a worker's `ray start`
        returns before its raylet has joined, and a driver started then sees a smaller cluster."""
        ray = os.path.join(str(Path(sys.executable).parent), "ray")

        def ready() -> bool:
            status = subprocess.run(
                [ray, "status", "--address", f"127.0.0.1:{self.gcs_port}"], env=self.node_env, capture_output=True
            ).stdout.decode()
            total = re.search(r"/([0-9.]+) CPU", status)
            return total is not None and float(total.group(1)) >= cpus

        self.wait(f"{cpus:g} CPUs", ready, timeout)

    def wait(self, what: str, ready, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{what}: `ray start` of {name} exited with {p.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: not ready after {timeout} s")
            time.sleep(0.25)

    def group_of(self, pid: int) -> str | None:
        """The node whose session ``pid`` is in: each `ray start` runs in a session of its own, and
        Ray puts every worker process in a process group of its own inside it."""
        try:
            sid = os.getsid(pid)
        except ProcessLookupError:
            return None
        return next((name for name, p in self.procs.items() if p.pid == sid), None)

    def kill(self, name: str) -> None:
        """SIGKILL every process of node ``name`` (its `ray start`, raylet and workers) at once."""
        session = self.procs[name].pid
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.getsid(int(entry)) == session:
                        os.kill(int(entry), signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    continue

    def close(self) -> None:
        for p in reversed(self.procs.values()):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs.values():
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp_dir, ignore_errors=True)
