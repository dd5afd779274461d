"""Fault-injecting proxies in front of the moto S3 server, a process killer, and a writer that dies mid-write.

``FaultProxy`` (HTTP) forwards every request to the real S3 API and, on a seeded share of object
requests, answers 503 SlowDown or drops the connection without answering — the storage
faults a long nightly run meets. ``OutageProxy`` (TCP) forwards bytes and, once a request
matching a trigger goes through it, resets every connection for a bounded window (an outage),
or holds the requests for one key unanswered (a stalled object). Clients (the driver and every
Ray worker) reach a proxy through the job's ``storage_options.client_kwargs.endpoint_url``.
"""

from __future__ import annotations

import http.client
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
)
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


class FaultProxy:
    """``before_put`` (if given) is called with each PUT's path before it is forwarded and may
    block (a slow store, or one held until a test says so); False drops the request unanswered."""

    def __init__(
        self, upstream: str, fault_rate: float, seed: int = 0, before_put: Callable[[str], bool] | None = None
    ):
        self.upstream = urlsplit(upstream)
        self.fault_rate = fault_rate
        self.before_put = before_put
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.requests = 0
        self.faults = {"503": 0, "reset": 0}
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _handle(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if proxy.before_put and self.command == "PUT" and not proxy.before_put(self.path):
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                fault = proxy._draw(self.command, self.path)
                if fault == "reset":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault == "503":
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(SLOW_DOWN)))
                    self.end_headers()
                    self.wfile.write(SLOW_DOWN)
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, self.path, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def _draw(self, method: str, path: str) -> str | None:
        with self.lock:
            self.requests += 1
            # Only object requests (bucket/key...), not bucket-level calls: faults hit the data path.
            if urlsplit(path).path.count("/") < 2 or self.rng.random() >= self.fault_rate:
                return None
            kind = "503" if self.rng.random() < 0.6 else "reset"
            self.faults[kind] += 1
            return kind

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()


class OutageProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` (http://host:port).

    ``outage_after``: bytes that start an outage when a request containing them goes through
    (e.g. ``b"GET /bucket/in/"``): from then on, for ``outage_seconds``, every connection (open
    ones and new ones) is reset. ``stall``: bytes that mark a request left unanswered (its
    connection held open, nothing sent back) until the proxy closes, at most ``stall_seconds``.
    ``lose_reply``: bytes that mark a request passed on once whose reply is then thrown away
    (the connection reset), as when a write lands but the network drops its answer.
    """

    def __init__(
        self,
        upstream: str,
        outage_after: bytes | None = None,
        outage_seconds: float = 0.0,
        stall: bytes | None = None,
        stall_seconds: float = 120.0,
        lose_reply: bytes | None = None,
    ):
        self.upstream = urlsplit(upstream)
        self.outage_after, self.outage_seconds = outage_after, outage_seconds
        self.stall, self.stall_seconds = stall, stall_seconds
        self.lose_reply = lose_reply
        self.lost_replies = 0
        self.down_from: float | None = None  # monotonic start of the outage
        self.dropped = 0  # connections reset during the outage
        self.stalled = 0  # requests left unanswered
        self.lock = threading.Lock()
        self.conns: set[socket.socket] = set()
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)  # so that the accept loop sees `closing`
        self.thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def down(self) -> bool:
        return self.down_from is not None and time.monotonic() < self.down_from + self.outage_seconds

    def _reset(self, sock: socket.socket) -> None:
        """Close with RST (SO_LINGER 0), as a crashed or restarting endpoint does."""
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while not self.closing.is_set():
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self.down():
                with self.lock:
                    self.dropped += 1
                self._reset(client)
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection((self.upstream.hostname, self.upstream.port))
        graceful = False
        losing = False
        with self.lock:
            self.conns.update((client, upstream))
        try:
            while not self.closing.is_set():
                if self.down():
                    with self.lock:
                        self.dropped += 1
                    return
                readable, _, _ = select.select([client, upstream], [], [], 0.1)
                for sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        # A side closed (moto closes after a 412): close the other gracefully, so
                        # the reply already forwarded is read, not thrown away by a reset.
                        client.shutdown(socket.SHUT_WR)
                        graceful = True
                        return
                    if sock is client:
                        if self.stall and self.stall in data:
                            with self.lock:
                                self.stalled += 1
                            self.closing.wait(self.stall_seconds)  # never answered while the test runs
                            return
                        if self.outage_after and self.outage_after in data and self.down_from is None:
                            self.down_from = time.monotonic()
                            return
                        upstream.sendall(data)
                        if self.lose_reply and self.lose_reply in data and not self.lost_replies:
                            self.lost_replies += 1
                            losing = True  # the request (and its body) goes on; the reply does not
                    elif losing and not data.startswith(b"HTTP/1.1 100 "):  # botocore's PUTs expect 100-continue
                        return
                    else:
                        client.sendall(data)
        except OSError:
            return
        finally:
            with self.lock:
                self.conns.difference_update((client, upstream))
            if graceful:
                client.close()
            else:
                self._reset(client)
            upstream.close()

    def __enter__(self) -> OutageProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.closing.set()
        self.listener.close()


def pids_of(marker: str) -> list[int]:
    """PIDs whose command line contains ``marker`` (Ray names worker processes ray::Class)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if marker.encode() in fh.read():
                    pids.append(int(entry))
        except OSError:
            continue
    return pids


def kill(pids: list[int]) -> int:
    killed = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed


def dead_writer_debris(target: Path) -> Path:
    """What a writer killed between writing and renaming leaves: run storage.write_atomic in a
    process that dies instead of renaming, and return the temporary file it left."""
    code = "import os, sys; from pipeline import storage; os.replace = lambda *a: os._exit(9); "
    code += "storage.write_atomic(sys.argv[1], b'half')"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    assert subprocess.run([sys.executable, "-c", code, str(target)], env=env).returncode == 9
    [left] = [p for p in target.parent.iterdir() if p.name.startswith(f".{target.name}.")]
    return left


def start_driver(job_path, env: dict) -> subprocess.Popen:
    """``darkroom run JOB --log-format plain`` as a process of its own (one a test can kill), with
    ``env``; stdout and stderr together on its stdout pipe."""
    code = "import sys; from pipeline.cli import main; sys.exit(main())"
    return subprocess.Popen(
        [sys.executable, "-c", code, "run", str(job_path), "--log-format", "plain"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
