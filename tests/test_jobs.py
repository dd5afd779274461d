"""Every ready-to-run job file in jobs/ is valid against the shipped registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from models import default_registry
from pipeline.job import load_job

JOBS = sorted((Path(__file__).resolve().parents[1] / "jobs").glob("*.yaml"))


def test_there_are_job_files():
    assert {"demo.yaml", "generate-digits.yaml", "nightly-restore.yaml"} <= {p.name for p in JOBS}


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_file_is_valid(path):
    job = load_job(path, default_registry())
    assert job.name and job.output.uri


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
