"""Every ready-to-run job file in jobs/, and every job the docs show, is valid against the shipped
registry and against the JSON schema that `darkroom schema` prints."""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml
from click.testing import CliRunner

from models import default_registry
from pipeline.cli import main
from pipeline.job import Job, load_job, parse_job

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))


def test_there_are_job_files():
    assert {"demo.yaml", "generate-digits.yaml", "nightly-restore.yaml"} <= {p.name for p in JOBS}


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_file_is_valid(path):
    job = load_job(path, default_registry())
    assert job.name and job.output.uri


# ---- the JSON schema (`darkroom schema`, for editors) accepts every job the docs show ----

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


# What a fragment (e.g. only `resources:`) is completed with before it is checked.
BASE_JOB = {"name": "doc", "input": {"uri": "in/"}, "output": {"uri": "out/"}, "steps": [{"model": "identity"}]}


def _doc_jobs() -> list[tuple[str, dict, bool]]:
    """Fenced ```yaml blocks of README.md and docs/*.md that are jobs or parts of one (every top-level
    key a job field): (where, the job, whether the block is a whole job), fragments completed from BASE_JOB."""
    found = []
    for doc in DOCS:
        for i, block in enumerate(re.findall(r"^```ya?ml\n(.*?)^```", doc.read_text(), flags=re.M | re.S)):
            data = yaml.safe_load(block)
            if isinstance(data, dict) and data and data.keys() <= Job.model_fields.keys():
                whole = {"name", "output"} <= data.keys()
                if not whole and "generate" in data:
                    base = {k: v for k, v in BASE_JOB.items() if k not in ("input", "steps")}
                else:
                    base = BASE_JOB
                found.append((f"{doc.relative_to(REPO)}#{i}", data if whole else base | data, whole))
    return found


DOC_JOBS = _doc_jobs()


@pytest.fixture(scope="module")
def schema_validator():
    shown = CliRunner().invoke(main, ["schema"])
    assert shown.exit_code == 0, shown.output
    schema = json.loads(shown.output)
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_docs_show_jobs():
    assert sum(whole for *_, whole in DOC_JOBS) >= 2 and len(DOC_JOBS) >= 5


@pytest.mark.parametrize(
    "where, data, whole",
    [(p.name, yaml.safe_load(p.read_text()), True) for p in JOBS] + DOC_JOBS,
    ids=[p.name for p in JOBS] + [w for w, *_ in DOC_JOBS],
)
def test_schema_accepts_shipped_and_documented_jobs(schema_validator, where, data, whole):
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in schema_validator.iter_errors(data)]
    assert errors == []
    if whole:  # fragments may elide values (e.g. a sha256 written "…")
        parse_job(data, default_registry(), where)  # and darkroom itself accepts them


@pytest.mark.parametrize(
    "actors, valid",
    [(1, True), (3, True), ({"min": 1, "max": 4}, True), (0, False), ("2", False), ({"min": 1, "nax": 2}, False)],
)
def test_schema_actors_is_a_number_or_a_range(schema_validator, actors, valid):
    job = {"name": "j", "input": {"uri": "in/"}, "output": {"uri": "out/"}, "steps": [{"model": "identity"}]}
    assert schema_validator.is_valid(job | {"resources": {"actors": actors}}) is valid
    step = job["steps"][0] | {"resources": {"actors": actors}}
    assert schema_validator.is_valid(job | {"steps": [step]}) is valid


def _node_types() -> dict[str, dict]:
    """name → {CPU, GPU, max_workers} of every node type the example can land on: cluster.yaml's
    available_node_types and the KubeRay RayCluster's groups (Ray takes CPUs/GPUs from the limits)."""
    import yaml

    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load((root / "cluster.yaml").read_text())
    types = {
        f"cluster.yaml:{name}": {**t["resources"], "max_workers": t.get("max_workers", 1)}
        for name, t in config["available_node_types"].items()
    }
    docs = yaml.safe_load_all((root / "deploy" / "kuberay" / "raycluster.yaml").read_text())
    [cluster] = [d for d in docs if d and d["kind"] == "RayCluster"]
    head = cluster["spec"]["headGroupSpec"]
    groups = [("head", head, 1)] + [(g["groupName"], g, g["maxReplicas"]) for g in cluster["spec"]["workerGroupSpecs"]]
    for name, group, most in groups:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpus = float(group["rayStartParams"].get("num-cpus", limits["cpu"]))
        types[f"kuberay:{name}"] = {"CPU": cpus, "GPU": float(limits.get("nvidia.com/gpu", 0)), "max_workers": most}
    return types


def test_nightly_example_fits_the_node_types_it_runs_on():
    """docs/cluster.md's worked sizing: on every node type that can host the model actors, a node
    full of them still has room for a shard task, and the node types can hold all the actors."""
    job = load_job(Path(__file__).resolve().parents[1] / "jobs" / "nightly-restore.yaml", default_registry())
    res = job.resources
    pools = [s.resources or res for s in job.steps]
    types = _node_types()
    for pool in pools:
        hosts = {}
        for name, node in types.items():
            by_gpu = int(node.get("GPU", 0) // pool.gpus_per_actor) if pool.gpus_per_actor else 10**6
            by_cpu = int(node.get("CPU", 0) // pool.cpus_per_actor)
            per_node = min(by_gpu, by_cpu)
            if per_node >= 1:
                hosts[name] = per_node
                left = node["CPU"] - per_node * pool.cpus_per_actor
                assert left >= res.cpus_per_task, f"{name}: {per_node} actors leave {left} CPUs, no shard task fits"
        assert hosts, "no node type can host the model actors"
        assert not any(name.endswith((":head", "kuberay:head")) for name in hosts)  # the head does no image work
        for prefix in ("cluster.yaml:", "kuberay:"):
            room = sum(n * types[name]["max_workers"] for name, n in hosts.items() if name.startswith(prefix))
            assert pool.actors.max <= room, f"{prefix} holds {room} actors, the job asks {pool.actors.max}"
