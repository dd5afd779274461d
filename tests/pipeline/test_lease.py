import json
import threading
import time

import pytest

from pipeline import storage
from pipeline.lease import Lease, LeaseHeld, lease_uri


@pytest.fixture(params=["local", "s3"])
def output_uri(request, tmp_path):
    if request.param == "local":
        return str(tmp_path / "out")
    bucket = request.getfixturevalue("s3_bucket")
    return f"s3://{bucket}/out"


def test_put_if_is_compare_and_swap(output_uri):
    uri = storage.join(output_uri, "obj")
    v1 = storage.put_if(uri, b"one", None)
    with pytest.raises(storage.PreconditionFailed):
        storage.put_if(uri, b"again", None)
    v2 = storage.put_if(uri, b"two", v1)
    with pytest.raises(storage.PreconditionFailed):
        storage.put_if(uri, b"stale", v1)
    assert storage.read_versioned(uri) == (b"two", v2)


def test_second_run_on_same_output_refuses(output_uri):
    with Lease(output_uri, "run-a"):
        with pytest.raises(LeaseHeld, match="in use by run run-a"):
            Lease(output_uri, "run-b").acquire()
    with Lease(output_uri, "run-b"):  # released: the next run gets it at once
        pass


def test_only_one_of_many_concurrent_acquirers_wins(output_uri):
    winners, losers = [], []
    barrier = threading.Barrier(6)

    def contend(i):
        lease = Lease(output_uri, f"run-{i}")
        barrier.wait()
        try:
            lease.acquire()
            winners.append(lease)
        except LeaseHeld:
            losers.append(i)

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(losers) == 5
    winners[0].release()


def test_stale_lease_of_a_dead_run_is_taken_over(output_uri):
    dead = Lease(output_uri, "dead", ttl=0.5)
    dead.acquire()
    dead._stop.set()  # the process "dies": no more heartbeats, no release
    dead._thread.join()
    with pytest.raises(LeaseHeld):
        Lease(output_uri, "early").acquire()
    time.sleep(0.6)
    with Lease(output_uri, "next"):
        record = json.loads(storage.read_bytes(lease_uri(output_uri)))
        assert record["run_id"] == "next"


def test_heartbeat_renews_and_detects_takeover(output_uri):
    lease = Lease(output_uri, "beating", ttl=0.4)
    lease.acquire()
    first = json.loads(storage.read_bytes(lease_uri(output_uri)))["expires_at"]
    time.sleep(0.35)
    assert json.loads(storage.read_bytes(lease_uri(output_uri)))["expires_at"] > first
    lease.check()
    # Someone overwrites the lease behind its back: the next heartbeat notices.
    storage.write_atomic(
        lease_uri(output_uri),
        json.dumps(
            {"run_id": "intruder", "owner": "h:1:x", "expires_at": time.time() + 60, "heartbeat_at": 0}
        ).encode(),
    )
    time.sleep(0.3)
    with pytest.raises(Exception, match="taken over"):
        lease.check()
    lease.release()


def test_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(output_uri):
    import subprocess
    import sys

    # A real process takes the lease and is SIGKILLed: no heartbeat stop, no release.
    code = (
        "from pipeline.lease import Lease; import os, signal; "
        f"Lease({output_uri!r}, 'killed').acquire(); os.kill(os.getpid(), signal.SIGKILL)"
    )
    subprocess.run([sys.executable, "-c", code], check=False, timeout=60)
    record = json.loads(storage.read_bytes(lease_uri(output_uri)))
    assert record["run_id"] == "killed" and record["expires_at"] > time.time()
    with Lease(output_uri, "after-crash"):
        pass
