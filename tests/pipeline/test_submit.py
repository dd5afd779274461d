"""Submission to a real two-node Ray cluster started by this module, driven through the CLI.

The cluster: a head (2 CPUs, dashboard on 127.0.0.1) and a second node (1 CPU plus a custom
resource ``gpu_like: 1``), each a ``ray start --block`` process of its own, in its own process
group, with its own ``--temp-dir`` and explicit free ports. Teardown never runs ``ray stop``
(which would kill every Ray on the machine, including the session's in-process Ray used by other
tests): it sends SIGTERM to the two ``ray start`` processes (they shut down the processes they
started), then SIGKILL to whatever is left in their two process groups.

The cluster runs with Ray's token authentication, as Ray ≥ 2.61 does by default: every node gets
``RAY_AUTH_MODE=token`` and the token file (``RAY_AUTH_TOKEN_PATH``, in the cluster's temp dir, not
``~/.ray``); the tests reach it as a user would, with ``RAY_AUTH_TOKEN_PATH`` set while the module runs.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from pipeline import submit as cluster
from pipeline.cli import main

START_TIMEOUT = 60
# Ray's own log-tailing client (tail_job_logs) trips an aiohttp deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Cluster:
    url: str  # dashboard / Job Submission API
    gcs_port: int
    temp_dir: str
    token_file: str  # the cluster's auth token (RAY_AUTH_TOKEN_PATH)


def _node_ports() -> list[str]:
    """Every port a node opens, chosen free: two nodes on one machine must not collide."""
    args = []
    for flag in ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
                 "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"):  # fmt: skip
        args += [flag, str(_free_port())]
    return args


def _wait(what: str, ready, procs, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: `ray start` exited with {p.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout} s")
        time.sleep(0.25)


def _alive_nodes(url: str, token_file: str) -> list[dict]:
    request = urllib.request.Request(
        f"{url}/nodes?view=summary", headers={"Authorization": f"Bearer {Path(token_file).read_text()}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            return [n for n in json.load(r)["data"]["summary"] if n["raylet"]["state"] == "ALIVE"]
    except Exception:
        return []


@pytest.fixture(scope="module")
def ray_cluster():
    temp_dir = tempfile.mkdtemp(prefix="dr-ray-", dir="/tmp")  # short: Ray's unix socket paths must stay < 108 bytes
    bin_dir = str(Path(sys.executable).parent)
    token_file = os.path.join(temp_dir, "auth_token")
    Path(token_file).write_text(secrets.token_hex(16))
    env = dict(
        os.environ,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=token_file,
        RAY_USAGE_STATS_ENABLED="0",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # no draining wait on SIGTERM at teardown
    )
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN", None)  # it would win over the file
    saved_env = {k: os.environ.pop(k, None) for k in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "DARKROOM_PYTHON")}
    gcs_port, dashboard_port = _free_port(), _free_port()
    url = f"http://127.0.0.1:{dashboard_port}"
    ray = os.path.join(bin_dir, "ray")
    common = ["--node-ip-address", "127.0.0.1", "--temp-dir", temp_dir, "--block", "--disable-usage-stats"]
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> None:
        log = open(os.path.join(temp_dir, f"{name}.log"), "wb")
        procs.append(subprocess.Popen([ray, "start", *args, *common, *_node_ports()], env=env, stdout=log,
                                      stderr=subprocess.STDOUT, start_new_session=True))  # fmt: skip

    try:
        start("head", ["--head", "--port", str(gcs_port), "--num-cpus", "2", "--dashboard-host", "127.0.0.1",
                       "--dashboard-port", str(dashboard_port),
                       "--ray-client-server-port", str(_free_port())])  # fmt: skip
        _wait("head GCS", lambda: _port_open(gcs_port), procs)
        start(
            "gpu-like-node",
            ["--address", f"127.0.0.1:{gcs_port}", "--num-cpus", "1", "--resources", json.dumps({"gpu_like": 1})],
        )
        os.environ["RAY_AUTH_TOKEN_PATH"] = token_file  # the tests' CLI calls and clients send the token
        # `python` on this head's PATH need not be this virtualenv's: submissions name it (`submit --python`)
        os.environ["DARKROOM_PYTHON"] = sys.executable
        _wait("two alive nodes", lambda: len(_alive_nodes(url, token_file)) == 2, procs)
        yield Cluster(url=url, gcs_port=gcs_port, temp_dir=temp_dir, token_file=token_file)
    finally:
        for k, v in saved_env.items():
            os.environ.pop(k, None)
            if v is not None:
                os.environ[k] = v
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        for p in procs:  # the groups we started: workers and agents that outlived their `ray start`
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp_dir, ignore_errors=True)


def make_images(root: Path, n: int, size=(16, 12)) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(root / f"img-{i:03d}.png")


def write_job(path: Path, input_dir: Path, output_dir: Path, name: str, **resources) -> Path:
    job = {
        "name": name,
        "input": {"uri": str(input_dir)},
        "output": {"uri": str(output_dir), "format": "png"},
        "steps": [{"model": "bicubic", "params": {"scale": 2}}],
        # one shard task at a time: fewer worker processes to start (each imports torch) on a small machine
        "resources": {"actors": 1, "batch_size": 4, "shard_size": 2, "max_inflight_shards": 1, **resources},
    }
    path.write_text(json.dumps(job))  # JSON is YAML
    return path


def cli(*args: str, env: dict | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def wait_for(submission_id: str, url: str, statuses: set[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        state = cluster.status(submission_id, url)
        if state.status in statuses:
            return state.status
        assert not state.terminal, (
            f"{submission_id} ended {state.status}: {state.message}\n{''.join(cluster.logs(submission_id, url))}"
        )
        assert time.monotonic() < deadline, f"{submission_id} still {state.status} after {timeout} s"
        time.sleep(0.5)


def test_submit_runs_the_job_on_the_cluster_and_reports_it(ray_cluster, tmp_path):
    url = ray_cluster.url
    make_images(tmp_path / "in", 5)
    # The job file lives outside the project, so it travels in a staged copy of the project;
    # its output.uri is overridden through the run arguments after `--`.
    job = write_job(tmp_path / "job.yaml", tmp_path / "in", tmp_path / "not-used", "submitted")
    out = tmp_path / "out"

    result = cli("submit", str(job), "--address", url, "--", "--output", str(out))
    assert result.exit_code == 0, result.output
    submission_id = result.stdout.strip()
    assert submission_id.startswith("darkroom-submitted-"), result.output
    assert wait_for(submission_id, url, {"SUCCEEDED"}, timeout=60) == "SUCCEEDED"

    status = cli("status", submission_id, "--address", url)
    assert status.exit_code == 0 and status.output.startswith(f"{submission_id}: SUCCEEDED (exit 0)"), status.output
    logs = cli("logs", submission_id, "--address", url)
    assert logs.exit_code == 0 and "5 ok" in logs.output and f"manifest: {out}/manifest/" in logs.output, logs.output
    followed = cli("logs", submission_id, "--address", url, "--follow")  # on an ended job: everything, then it returns
    assert followed.exit_code == 0 and "5 ok" in followed.output, followed.output
    listed = cli("jobs", "--address", url)
    [line] = [ln for ln in listed.output.splitlines() if ln.startswith(submission_id)]
    assert line.split()[1:4] == ["submitted", "SUCCEEDED", "0"], listed.output

    info = cluster.client(url).get_job_info(submission_id)
    assert (
        info.entrypoint == f"{shlex.quote(sys.executable)} -m pipeline.entry run {cluster.STAGED_JOBS_DIR}/job.yaml "
        f"--log-format plain --output {shlex.quote(str(out))}"
    )
    token = Path(ray_cluster.token_file).read_text()
    assert token not in repr(info) and token not in logs.output  # not in the entrypoint, runtime_env or metadata
    assert not [p for p in out.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]  # nor run records
    rows = duckdb.sql(
        "SELECT input_uri, status, width_in, height_in, width_out, height_out FROM "
        f"read_parquet('{out}/manifest/**/*.parquet')"
    ).fetchall()
    assert sorted(Path(r[0]).name for r in rows) == [f"img-{i:03d}.png" for i in range(5)]
    assert all(r[1] == "ok" and (r[4], r[5]) == (2 * r[2], 2 * r[3]) == (32, 24) for r in rows), rows
    assert not (tmp_path / "not-used").exists()


PLACEMENT = """
import json
import numpy as np, ray
from ray.util.state import list_actors
from models import default_registry
from pipeline.execute import ModelActor
from pipeline.job import Resources

ray.init()
# darkroom's model actor asking for a resource only one node type has, as gpus_per_actor does for GPU workers
actor = ModelActor.options(num_cpus=0, resources={"gpu_like": 1}).remote(
    default_registry(), [{"model": "bicubic", "params": {"scale": 2}}], Resources(), False
)
[result] = ray.get(actor.infer.remote([np.zeros((3, 4, 3), np.uint8)]))
[placed] = list_actors(filters=[("class_name", "=", "ModelActor"), ("state", "=", "ALIVE")])
head = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"])
gpu_like = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("gpu_like")]
print("PLACEMENT " + json.dumps({"driver": ray.get_runtime_context().get_node_id(), "head": head,
      "gpu_like_nodes": gpu_like, "actor": placed.node_id, "output": list(result.pixels.shape)}))
"""


def test_custom_resource_places_darkrooms_model_actor_on_the_node_that_has_it(ray_cluster):
    """A ModelActor asking for a resource only one node type has lands there, like model actors on GPU workers."""
    sdk = cluster.client(ray_cluster.url)
    submission_id = sdk.submit_job(
        entrypoint=f"{shlex.quote(sys.executable)} -c {shlex.quote(PLACEMENT)}",
        runtime_env={"working_dir": str(cluster.project_root()), "excludes": list(cluster.EXCLUDES)},
    )
    assert wait_for(submission_id, ray_cluster.url, {"SUCCEEDED"}, timeout=90) == "SUCCEEDED"
    [line] = [ln for ln in sdk.get_job_logs(submission_id).splitlines() if ln.startswith("PLACEMENT ")]
    seen = json.loads(line.removeprefix("PLACEMENT "))
    assert seen["driver"] == seen["head"]  # job entrypoints run on the head node
    assert len(seen["gpu_like_nodes"]) == 1 and seen["gpu_like_nodes"][0] != seen["head"]
    assert seen["actor"] == seen["gpu_like_nodes"][0]
    assert seen["output"] == [6, 8, 3]  # the actor ran its model there: bicubic ×2 of a 3×4 RGB image


def test_a_python_without_darkroom_fails_the_job_with_one_line(ray_cluster, tmp_path):
    """`submit --python` names the head's interpreter; one without darkroom's packages is named, with the fix."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = str(tmp_path / "bare" / "bin" / "python")
    make_images(tmp_path / "in", 1)
    job = write_job(tmp_path / "job.yaml", tmp_path / "in", tmp_path / "out", "bare")
    result = cli("submit", str(job), "--address", ray_cluster.url, "--python", bare, "--wait")
    assert result.exit_code == 1, result.output
    assert f"error: {bare} lacks darkroom's dependencies (no module click, ray, torch," in result.output
    assert "darkroom submit --python" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_stop_ends_a_running_job_as_stopped(ray_cluster, tmp_path):
    url = ray_cluster.url
    make_images(tmp_path / "in", 60)
    out = tmp_path / "out"
    # one image per shard, one shard at a time: long enough to be stopped halfway
    job = write_job(tmp_path / "slow.yaml", tmp_path / "in", out, "slow", shard_size=1, max_inflight_shards=1)
    result = cli("submit", str(job), "--address", url)
    assert result.exit_code == 0, result.output
    submission_id = result.stdout.strip()
    wait_for(submission_id, url, {"RUNNING"}, timeout=45)
    deadline = time.monotonic() + 60
    while not list(out.glob("manifest/*/*.parquet")):  # the run is committing shards
        assert cluster.status(submission_id, url).status == "RUNNING" and time.monotonic() < deadline
        time.sleep(0.2)

    stopped = cli("stop", submission_id, "--address", url)
    assert stopped.exit_code == 0 and stopped.output.strip() == f"stopping {submission_id}", stopped.output
    assert wait_for(submission_id, url, {"STOPPED"}, timeout=30) == "STOPPED"
    again = cli("stop", submission_id, "--address", url)
    assert again.exit_code == 0 and f"{submission_id} is not running (STOPPED)" in again.output
    status = cli("status", submission_id, "--address", url)
    assert status.output.startswith(f"{submission_id}: STOPPED"), status.output
    # A stop is quiet: the job's log ends without a traceback or an actor's death notice.
    logs = cli("logs", submission_id, "--address", url)
    assert logs.exit_code == 0 and logs.output.strip(), logs.output
    for noise in ("Traceback", "ActorDiedError"):
        assert noise not in logs.output, logs.output[-4000:]
    # committed shards stay committed and the run stays open: a later `darkroom run` resumes the rest
    assert 1 <= len(list(out.glob("manifest/*/*.parquet"))) < 60
    [record] = [json.loads(p.read_text()) for p in out.glob("_darkroom/runs/*/run.json")]
    # Ray's job stop sends SIGTERM, then SIGKILL after 3 s: the driver waits in short slices, so it
    # records the run `stopped` well within that.
    assert record["status"] == "stopped", record["status"]
    # Submitting the same job again resumes that run (the stopped driver's lease is taken over)
    # and finishes it: every input exactly once, all under the same run id.
    resumed = cli("submit", str(job), "--address", url, "--wait")
    assert resumed.exit_code == 0, resumed.output
    rows = duckdb.sql(
        f"SELECT run_id, count(*), count(DISTINCT input_uri) FROM read_parquet('{out}/manifest/**/*.parquet') GROUP "
        "BY run_id"
    ).fetchall()
    assert rows == [(record["run_id"], 60, 60)]


def test_nightly_wrapper_submits_waits_and_exits_3_on_error_rows(ray_cluster, tmp_path):
    """deploy/cron/darkroom-nightly.sh in cluster mode: `darkroom submit --wait` ends with the job's exit code."""
    make_images(tmp_path / "in", 2)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    job = write_job(tmp_path / "nightly.yaml", tmp_path / "in", tmp_path / "out", "nightly")
    notify = tmp_path / "notify.sh"
    notify.write_text(f'#!/bin/sh\necho "$1 $2" >> {tmp_path}/notified\n')
    notify.chmod(0o755)
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        DARKROOM_HOME=str(root), DARKROOM_JOB=str(job), DARKROOM_BIN=str(Path(sys.executable).parent / "darkroom"),
        DARKROOM_SUBMIT_ADDRESS=ray_cluster.url, DARKROOM_NOTIFY=str(notify), DARKROOM_LOCK=str(tmp_path / "lock"),
    )  # fmt: skip
    result = subprocess.run(
        [str(root / "deploy/cron/darkroom-nightly.sh")], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "2 ok" in result.stdout and "1 error" in result.stdout  # the job's own output, followed live
    assert "finished with error rows (exit 3)" in result.stdout
    assert "FAILED" in result.stderr and "exit code 3" in result.stderr
    assert (tmp_path / "notified").read_text() == f"3 darkroom nightly ({job}): finished, some images are error rows\n"
    [submission_id] = [ln for ln in result.stdout.splitlines() if ln.startswith("darkroom-nightly-")]
    assert cluster.status(submission_id, ray_cluster.url).exit_code == 3


def test_errors_are_one_line_and_exit_1(ray_cluster, tmp_path):
    closed = _free_port()
    for args in (
        ["status", "x", "--address", f"http://127.0.0.1:{closed}"],
        ["jobs", "--address", f"127.0.0.1:{closed}"],
    ):
        result = cli(*args)
        assert result.exit_code == 1, result.output
        assert result.output.count("\n") == 1 and result.output.startswith(
            "error: cannot reach the Ray cluster at http://127.0.0.1:"
        )
        assert "Traceback" not in result.output
    for args in (
        ["status", "raysubmit_nope"],
        ["logs", "raysubmit_nope"],
        ["logs", "raysubmit_nope", "--follow"],
        ["stop", "raysubmit_nope"],
    ):
        result = cli(*args, "--address", ray_cluster.url)
        assert result.exit_code == 1, result.output
        assert (
            result.output.count("\n") == 1 and "raysubmit_nope" in result.output and "does not exist" in result.output
        ), result.output

    job = write_job(tmp_path / "job.yaml", tmp_path, tmp_path / "out", "x")
    no_address = cli("submit", str(job), env={"RAY_ADDRESS": None, "RAY_API_SERVER_ADDRESS": None})
    assert no_address.exit_code == 1
    assert no_address.output == "error: no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS\n"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninput: {uri: /in}\noutput: {uri: /o}\nsteps: [{model: nope}]\n")
    refused = cli("submit", str(bad), "--address", ray_cluster.url)
    assert refused.exit_code == 2 and "unknown model 'nope'" in refused.output
    # an explicit --address wins over $RAY_ADDRESS (Ray's own client would do the reverse)
    assert cli("jobs", "--address", ray_cluster.url, env={"RAY_ADDRESS": f"http://127.0.0.1:{closed}"}).exit_code == 0


def test_the_token_is_taken_from_where_ray_keeps_it_and_its_absence_is_one_line(ray_cluster, tmp_path):
    """Fresh `darkroom` processes (Ray caches a token per process) with and without the cluster's token."""
    token = Path(ray_cluster.token_file).read_text()
    bare = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HOME": str(tmp_path)}

    def darkroom(*args: str, **env: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "pipeline.cli", *args, "--address", ray_cluster.url]
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(cmd, env=bare | env, cwd=root, capture_output=True, text=True, timeout=120)

    for args in (["jobs"], ["status", "raysubmit_x"]):
        missing = darkroom(*args)  # no RAY_AUTH_TOKEN(_PATH), no ~/.ray/auth_token under this HOME
        assert missing.returncode == 1, missing.stderr
        assert missing.stderr == (
            f"error: the Ray cluster at {ray_cluster.url} requires a token: set RAY_AUTH_MODE=token and "
            "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) — see docs/cluster.md\n"
        ), missing.stderr
    wrong = darkroom("jobs", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="not-the-token")
    assert wrong.returncode == 1 and wrong.stderr.count("\n") == 1 and "refused the token" in wrong.stderr
    assert "not-the-token" not in wrong.stderr
    unreadable = darkroom("jobs", RAY_AUTH_TOKEN_PATH=str(tmp_path / "nope"))
    assert unreadable.returncode == 1 and "cannot read the Ray token file" in unreadable.stderr
    assert darkroom("jobs", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token).returncode == 0
    assert darkroom("jobs", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=ray_cluster.token_file).returncode == 0
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text(token + "\n")  # where `ray get-auth-token --generate` writes
    found = darkroom("jobs")
    assert found.returncode == 0 and token not in found.stdout + found.stderr, found.stderr


def test_what_travels_with_a_submission(tmp_path):
    """No cluster needed: which directory is uploaded and how the job file is named in it."""
    root = cluster.project_root()
    assert (root / "pyproject.toml").is_file() and (root / "pipeline" / "submit.py").is_file()
    assert cluster.package(root / "jobs" / "demo.yaml", root, tmp_path) == (root, "jobs/demo.yaml")

    project = tmp_path / "project"  # a small project tree with everything a checkout may hold
    for rel in ("pyproject.toml", "pipeline/cli.py", "pipeline/__pycache__/cli.cpython-311.pyc", "models/a.py",
                "jobs/j.yaml", ".venv/bin/python", ".git/HEAD", "out/demo/x.png", "out/job.yaml"):  # fmt: skip
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(rel)
    assert cluster.package(project / "jobs" / "j.yaml", project, tmp_path / "s0") == (project, "jobs/j.yaml")

    outside = write_job(tmp_path / "mine.yaml", tmp_path / "in", tmp_path / "out", "mine")
    staged, rel = cluster.package(outside, project, tmp_path / "s1")
    assert rel == ".darkroom-submitted/mine.yaml" and (staged / rel).read_text() == outside.read_text()
    files = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
    assert files == [".darkroom-submitted/mine.yaml", "jobs/j.yaml", "models/a.py", "pipeline/cli.py", "pyproject.toml"]

    # a job file inside an excluded directory would not be uploaded with the project: it is staged too
    staged, rel = cluster.package(project / "out" / "job.yaml", project, tmp_path / "s2")
    assert rel == ".darkroom-submitted/job.yaml" and (staged / rel).read_text() == "out/job.yaml"
