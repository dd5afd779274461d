"""Deployment files: cluster.yaml against Ray's own schema, the KubeRay manifests, cron and systemd.

Kubernetes manifests are checked structurally here (kinds, apiVersions, required fields, how the
objects refer to each other); no API server or CRD schema is available offline. The nightly
wrapper script is run for real (with the real `darkroom` command) on its fast paths.
"""

from __future__ import annotations

import copy
import fcntl
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
NIGHTLY_JOB = "jobs/nightly-restore.yaml"
WRAPPER = DEPLOY / "cron" / "darkroom-nightly.sh"
AWS_SECRETS = re.compile(
    r"aws_access_key_id|aws_secret_access_key|aws_session_token|secretkey|\b(AKIA|ASIA)[0-9A-Z]{16}\b", re.I
)

API_VERSIONS = {
    "ServiceAccount": "v1",
    "Role": "rbac.authorization.k8s.io/v1",
    "RoleBinding": "rbac.authorization.k8s.io/v1",
    "CronJob": "batch/v1",
    "RayCluster": "ray.io/v1",
    "RayJob": "ray.io/v1",
    "RayCronJob": "ray.io/v1",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
}


# ---- cluster.yaml (Ray cluster launcher, AWS) ----


def _cluster_config() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_schema_as_written_and_after_defaults():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = _cluster_config()
    validate_config(config)
    validate_config(prepare_config(copy.deepcopy(config)))  # merged with Ray's AWS defaults, as `ray up` does


def test_rays_schema_check_is_strict():
    """The validation above means something: a misspelt key or a wrong type is refused."""
    import jsonschema
    from ray.autoscaler._private.util import validate_config

    typo = _cluster_config()
    typo["available_node_types"]["gpu_worker"]["min_worker"] = 0
    wrong_type = _cluster_config()
    wrong_type["available_node_types"]["gpu_worker"]["resources"]["GPU"] = "one"
    for bad in (typo, wrong_type):
        with pytest.raises(jsonschema.ValidationError):
            validate_config(bad)


def test_cluster_yaml_gpu_workers_autoscale_and_s3_comes_from_instance_profiles():
    config = _cluster_config()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and not head["node_config"]["InstanceType"].startswith(("g", "p"))
    gpu_types = {name: t for name, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "no node type advertises resources.GPU"
    for t in gpu_types.values():
        assert t["node_config"]["InstanceType"].startswith(("g5", "g6", "p"))
        assert 0 <= t["min_workers"] < t["max_workers"] <= config["max_workers"]
    for name, t in types.items():
        assert t["node_config"]["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name
    assert not AWS_SECRETS.search((ROOT / "cluster.yaml").read_text())
    assert any("darkroom" in c and "pip install" in c for c in config["setup_commands"])


def test_cluster_yaml_every_field_is_commented():
    lines = (ROOT / "cluster.yaml").read_text().splitlines()
    uncommented = []
    for i, line in enumerate(lines):
        if re.match(r"^ {0,6}[A-Za-z_][\w.]*:", line):  # top-level keys, node types, their fields, node_config fields
            before = next((p for p in reversed(lines[:i]) if p.strip()), "")
            if not (before.lstrip().startswith("#") or "#" in line):
                uncommented.append(line)
    assert not uncommented, uncommented


# ---- deploy/**.yaml (KubeRay and Kubernetes) ----


def _documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


def _by_kind(kind: str) -> list[dict]:
    return [d for _, d in _documents() if d["kind"] == kind]


def _one(kind: str) -> dict:
    [doc] = _by_kind(kind)
    return doc


def test_every_manifest_has_a_known_kind_api_version_and_name():
    docs = _documents()
    assert {p.name for p, _ in docs} >= {"raycluster.yaml", "rayjob.yaml", "nightly-cronjob.yaml", "kustomization.yaml"}
    for path, doc in docs:
        where = f"{path.relative_to(ROOT)}: {doc.get('kind')}"
        assert doc.get("kind") in API_VERSIONS, where
        assert doc.get("apiVersion") == API_VERSIONS[doc["kind"]], where
        if doc["kind"] != "Kustomization":
            meta = doc["metadata"]
            assert meta.get("name") or meta.get("generateName"), where
    assert not any(AWS_SECRETS.search(p.read_text()) for p in DEPLOY.rglob("*") if p.is_file())


def test_raycluster_cpu_head_and_autoscaling_gpu_workers_with_irsa():
    cluster = _one("RayCluster")
    spec = cluster["spec"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", spec["rayVersion"]) and spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    groups = spec["workerGroupSpecs"]
    for group in [head, *groups]:
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())  # KubeRay wants map[string]string
        [container] = group["template"]["spec"]["containers"]
        assert container["image"] and container["resources"]["limits"]
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]
    gpu = [
        g
        for g in groups
        if int(g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0)) >= 1
    ]
    assert gpu and all(0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] and g["groupName"] for g in gpu)
    accounts = {sa["metadata"]["name"]: sa for sa in _by_kind("ServiceAccount")}
    for group in [head, *groups]:
        sa = accounts[group["template"]["spec"]["serviceAccountName"]]
        assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


def test_clusters_require_rays_auth_token_and_share_it_without_writing_it_down():
    """Token auth on every node: KubeRay's authOptions (a generated Secret), cluster.yaml's start commands
    with the token file copied from the launching machine; no token value in any file."""
    assert _one("RayCluster")["spec"]["authOptions"] == {"mode": "token"}
    config = _cluster_config()
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        [start] = [c for c in commands if "ray start" in c]
        assert "RAY_AUTH_MODE=token ray start" in start, start
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}
    files = [ROOT / "cluster.yaml", *(p for p in DEPLOY.rglob("*") if p.is_file())]
    assert not [p for p in files if re.search(r"RAY_AUTH_TOKEN\s*[:=]\s*['\"]?[0-9a-f]{16}", p.read_text())]


def test_nightly_rayjob_and_raycronjob_run_the_nightly_job_on_the_cluster():
    cluster_name = _one("RayCluster")["metadata"]["name"]
    job = _one("RayJob")
    assert job["metadata"]["generateName"]  # created once per night
    cron = _one("RayCronJob")
    _check_cron_schedule(cron["spec"]["schedule"])
    for spec in (job["spec"], cron["spec"]["jobTemplate"]):
        assert f"darkroom run {NIGHTLY_JOB}" in spec["entrypoint"]
        assert spec["clusterSelector"] == {"ray.io/cluster": cluster_name}
        assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode")


def test_cronjob_creates_rayjobs_with_only_the_rights_it_needs():
    cronjob = _one("CronJob")
    _check_cron_schedule(cronjob["spec"]["schedule"])
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    job_spec = cronjob["spec"]["jobTemplate"]["spec"]
    pod = job_spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    [container] = pod["containers"]
    [rule] = job_spec["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"] == {
        "containerName": container["name"],
        "operator": "In",
        "values": [2, 3],
    }

    # RBAC: the pod's ServiceAccount is bound to a Role that may create (and follow) ray.io rayjobs
    account = pod["serviceAccountName"]
    assert account in {sa["metadata"]["name"] for sa in _by_kind("ServiceAccount")}
    [binding] = [b for b in _by_kind("RoleBinding") if {"kind": "ServiceAccount", "name": account} in b["subjects"]]
    role = next(r for r in _by_kind("Role") if r["metadata"]["name"] == binding["roleRef"]["name"])
    [rule] = role["rules"]
    assert (
        rule["apiGroups"] == ["ray.io"] and rule["resources"] == ["rayjobs"] and {"create", "get"} <= set(rule["verbs"])
    )

    # the ConfigMap it mounts is generated from rayjob.yaml and the script it runs
    kustomization = _one("Kustomization")
    [generator] = kustomization["configMapGenerator"]
    [volume] = pod["volumes"]
    assert volume["configMap"]["name"] == generator["name"]
    [mount] = container["volumeMounts"]
    assert container["command"][-1] == f"{mount['mountPath']}/submit-rayjob.sh"
    assert {"name": "RAYJOB_MANIFEST", "value": f"{mount['mountPath']}/rayjob.yaml"} in container["env"]
    here = DEPLOY / "kuberay"
    assert set(generator["files"]) == {"rayjob.yaml", "submit-rayjob.sh"}
    for name in [*generator["files"], *kustomization["resources"]]:
        assert (here / name).is_file(), name
    assert "raycronjob.yaml" not in kustomization["resources"]  # an alternative to the CronJob, not both
    subprocess.run(["sh", "-n", str(here / "submit-rayjob.sh")], check=True)


def _check_cron_schedule(schedule: str) -> None:
    fields = schedule.split()
    assert len(fields) == 5, schedule
    for value, (lo, hi) in zip(fields, [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]):
        for part in value.split(","):
            if part == "*":
                continue
            assert re.fullmatch(r"\d+(-\d+)?(/\d+)?", part), schedule
            assert all(lo <= int(n) <= hi for n in re.findall(r"\d+", part.split("/")[0])), schedule


# ---- cron and systemd ----


def test_crontab_line_runs_the_wrapper_on_the_nightly_job():
    text = (DEPLOY / "cron" / "darkroom-nightly.cron").read_text()
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    env = dict(ln.split("=", 1) for ln in lines if re.match(r"^[A-Z_]+=", ln))
    [entry] = [ln for ln in lines if not re.match(r"^[A-Z_]+=", ln)]
    minute, hour, dom, month, dow, user, command = entry.split(None, 6)
    _check_cron_schedule(" ".join([minute, hour, dom, month, dow]))
    assert user == "darkroom"
    script = command.split()[0]
    assert script == f"{env['DARKROOM_HOME']}/deploy/cron/darkroom-nightly.sh"
    assert env["DARKROOM_JOB"] == NIGHTLY_JOB
    assert WRAPPER.is_file() and os.access(WRAPPER, os.X_OK)
    subprocess.run(["bash", "-n", str(WRAPPER)], check=True)
    assert f"DARKROOM_JOB:-{NIGHTLY_JOB}" in WRAPPER.read_text()


def _unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit file as {section: [(key, value), ...]} (keys may repeat, e.g. Environment=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        assert current is not None and key and _, f"{path.name}: {raw}"
        current.append((key, value))
    return sections


def test_systemd_timer_starts_the_oneshot_service_nightly():
    service = _unit(DEPLOY / "systemd" / "darkroom-nightly.service")
    timer = _unit(DEPLOY / "systemd" / "darkroom-nightly.timer")
    svc = dict(service["Service"])
    assert svc["Type"] == "oneshot"
    assert svc["ExecStart"].endswith("/deploy/cron/darkroom-nightly.sh")
    assert svc["ExecStart"].startswith(svc["WorkingDirectory"])
    assert "3" in svc["SuccessExitStatus"].split()
    assert ("Environment", f"DARKROOM_JOB={NIGHTLY_JOB}") in service["Service"]
    assert dict(service["Unit"])["Description"]
    t = dict(timer["Timer"])
    assert t["Unit"] == "darkroom-nightly.service" and t["OnCalendar"] and t["Persistent"] == "true"
    assert dict(timer["Install"])["WantedBy"] == "timers.target"


# ---- the wrapper, run for real ----


def _wrapper(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    notes = tmp_path / "notified"
    notify = tmp_path / "notify.sh"
    notify.write_text(f'#!/bin/sh\necho "$1 $2" >> {notes}\n')
    notify.chmod(0o755)
    full = {
        **os.environ,
        "DARKROOM_HOME": str(ROOT),
        "DARKROOM_BIN": str(Path(sys.executable).parent / "darkroom"),
        "DARKROOM_NOTIFY": str(notify),
        "DARKROOM_LOCK": str(tmp_path / "lock"),
        "DARKROOM_RETRY_DELAY": "0",
        **env,
    }
    full.pop("RAY_ADDRESS", None)
    return subprocess.run([str(WRAPPER)], env=full, capture_output=True, text=True, timeout=120)


def _notified(tmp_path: Path) -> list[str]:
    path = tmp_path / "notified"
    return path.read_text().splitlines() if path.exists() else []


def test_wrapper_exit_2_on_a_bad_job_file_without_retrying(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ninput: {uri: /in}\noutput: {uri: /o}\nsteps: [{model: nope}]\n")
    result = _wrapper(tmp_path, DARKROOM_JOB=str(bad), DARKROOM_RETRIES="3")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.count("attempt ") == 1 and "bad job file" in result.stdout
    assert "unknown model 'nope'" in result.stderr
    assert _notified(tmp_path) == [f"2 darkroom nightly: bad job file {bad}"]


def test_wrapper_retries_a_failed_run_then_exits_1(tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(
        f"name: x\ninput: {{uri: {tmp_path}/in}}\noutput: {{uri: {tmp_path}/out}}\nsteps: [{{model: identity}}]\n"
    )
    import socket

    with socket.socket() as s:  # a port nobody listens on: the cluster is unreachable
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    result = _wrapper(
        tmp_path, DARKROOM_JOB=str(job), DARKROOM_RETRIES="1", DARKROOM_SUBMIT_ADDRESS=f"http://127.0.0.1:{closed}"
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        result.stdout.count("attempt ") == 2
        and "retrying in 0s" in result.stdout
        and "after 2 attempt(s)" in result.stdout
    )
    assert result.stderr.count("error: cannot reach the Ray cluster") == 2
    assert _notified(tmp_path) == [f"1 darkroom nightly ({job}): run failed (exit 1) after 2 attempt(s)"]


def test_wrapper_does_not_start_while_another_nightly_run_holds_the_lock(tmp_path):
    with open(tmp_path / "lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = _wrapper(tmp_path)
    assert result.returncode == 1 and "holds" in result.stdout and "attempt" not in result.stdout
