"""One run at a time per output: a lease object with heartbeat and expiry.

``<output>/_darkroom/lease.json`` names the run holding the output and when its lease
expires. A run takes the lease before planning, renews it every ``ttl/4`` seconds from a
background thread, and releases it (by expiring it) when done. Every change is a
compare-and-swap write (``storage.put_if``), so two runs racing for the lease cannot both
win, and a run whose lease was taken over learns it at its next heartbeat. Lease reads and
writes retry transient storage errors for ttl/4 (a write whose reply was lost is recognised as
landed by its bytes), so a short outage does not end a run. A lease whose
holder died expires after ``ttl`` seconds and is then taken over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from pipeline import layout, storage

DEFAULT_TTL = 120.0
log = logging.getLogger(__name__)


class LeaseHeld(RuntimeError):
    pass


class LeaseLost(RuntimeError):
    pass


@dataclass
class LeaseRecord:
    run_id: str
    owner: str  # host:pid:token — unique per acquisition
    expires_at: float  # seconds since the epoch
    heartbeat_at: float


def lease_uri(output_uri: str) -> str:
    return layout.lease_uri(output_uri)


def _holder_is_dead(record: LeaseRecord) -> bool:
    """A holder on this very host whose process is gone: its lease need not run out first."""
    host, pid, _ = record.owner.rsplit(":", 2)
    if host != socket.gethostname():
        return False  # another machine: only expiry tells
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


class Lease:
    """Use as a context manager around a run: ``with Lease(output, run_id, opts): ...``."""

    def __init__(self, output_uri: str, run_id: str, storage_options: dict | None = None, ttl: float = DEFAULT_TTL):
        self.uri = lease_uri(output_uri)
        self.output_uri = output_uri
        self.run_id = run_id
        self.storage_options = storage_options
        self.ttl = ttl
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._version: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: str | None = None

    def _budget(self) -> storage.RetryBudget:
        """How long one lease read or write retries transient errors: a quarter of the ttl, so a
        heartbeat that outlasts an outage of that length still lands well before expiry."""
        return storage.RetryBudget(self.ttl / 4)

    def _write(self, version: str | None, expires_at: float) -> str:
        now = time.time()
        record = LeaseRecord(self.run_id, self.owner, expires_at, now)
        data = json.dumps(asdict(record)).encode()
        return storage.put_if(self.uri, data, version, self.storage_options, self._budget())

    def acquire(self) -> None:
        for _ in range(5):  # a lost race re-reads the lease and decides again
            data, version = storage.read_versioned(self.uri, self.storage_options, self._budget())
            if data is not None:
                current = LeaseRecord(**json.loads(data))
                if current.expires_at > time.time() and current.owner != self.owner and not _holder_is_dead(current):
                    host, pid, _ = current.owner.rsplit(":", 2)
                    raise LeaseHeld(
                        f"output {self.output_uri} is in use by run {current.run_id} (host {host}, pid {pid}); "
                        f"its lease expires at {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(current.expires_at))} "
                        "UTC "
                        "unless renewed: wait for it to finish, or rerun after that time if it died"
                    )
            try:
                self._version = self._write(version, time.time() + self.ttl)
            except storage.PreconditionFailed:
                continue
            self._thread = threading.Thread(target=self._heartbeat, name="darkroom-lease", daemon=True)
            self._thread.start()
            return
        raise LeaseHeld(f"output {self.output_uri}: could not take the lease (too much contention)")

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            try:
                self._version = self._write(self._version, time.time() + self.ttl)
            except storage.PreconditionFailed:
                self.lost = f"the lease on {self.output_uri} was taken over by another run"
                return
            except Exception as exc:  # a storage hiccup: the next beat retries, expiry is ttl away
                log.warning("lease heartbeat failed (%s); retrying", exc)

    def rename(self, run_id: str) -> None:
        """Record which run holds the lease (known only after the resume decision)."""
        self.run_id = run_id
        try:
            self._version = self._write(self._version, time.time() + self.ttl)
        except storage.PreconditionFailed:
            self.lost = f"the lease on {self.output_uri} was taken over by another run"

    def check(self) -> None:
        """Raise LeaseLost if another run took the output over."""
        if self.lost:
            raise LeaseLost(self.lost)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self._version is not None and not self.lost:
            try:
                self._write(self._version, 0.0)  # expired: the next run takes it at once
            except storage.PreconditionFailed:
                pass
        self._version = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
