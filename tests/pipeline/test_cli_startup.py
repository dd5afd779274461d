"""Light commands start without torch or Ray: `darkroom --help`, `validate`, `plan`, `models` (also
`models NAME`), `schema`, `runs` and `jobs` (without a cluster address) import neither, so they start in about a
second instead of the ~3 s and ~700 MB that importing torch costs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "ray", "diffusers", "spandrel")

# Runs one darkroom command in a fresh interpreter, then reports its exit code and the heavy modules it loaded.
PROBE = """
import importlib, json, sys
for name in json.loads(sys.argv[2]):
    importlib.import_module(name)
from pipeline.cli import main
sys.argv = ["darkroom", *json.loads(sys.argv[1])]
try:
    main()
    code = 0
except SystemExit as exc:
    code = exc.code or 0
print("PROBE " + json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}), file=sys.stderr)
""" % (HEAVY,)


def darkroom(*args: str, preload: tuple[str, ...] = ()) -> tuple[int, list[str], str]:
    """(exit code, heavy modules loaded, stdout) of ``darkroom ARGS`` in a fresh interpreter that
    first imports ``preload``."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(args), json.dumps(preload)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    probe = next(line for line in done.stderr.splitlines() if line.startswith("PROBE "))
    report = json.loads(probe.removeprefix("PROBE "))
    return report["code"], report["heavy"], done.stdout


@pytest.fixture
def job(tmp_path, corpus_dir) -> str:
    path = tmp_path / "job.yaml"
    spec = {
        "name": "light",
        "input": {"uri": str(corpus_dir)},
        "output": {"uri": str(tmp_path / "out")},
        "steps": [{"model": "realesr-animevideov3"}, {"model": "lanczos", "params": {"scale": 0.5}}],
    }
    path.write_text(json.dumps(spec))  # JSON is YAML
    return str(path)


@pytest.mark.parametrize(
    "args, code, shown",
    [
        (["--help"], 0, "validate"),
        (["validate", "jobs/demo.yaml", "jobs/generate-digits.yaml", "jobs/nightly-restore.yaml"], 0, ": ok"),
        (["validate", "jobs/text-to-image.yaml"], 0, ": ok"),  # transformers/diffusers stay unimported too
        (["models"], 0, "realesr-animevideov3"),
        (["models", "ddnm-sr"], 0, "prior_sha256"),
        (["schema"], 0, '"properties"'),
        (["jobs"], 1, ""),  # no cluster address: the error is reported before Ray is imported
        (["report", "/nonexistent/out"], 1, ""),
    ],
)
def test_light_commands_import_neither_torch_nor_ray(args, code, shown):
    exit_code, heavy, stdout = darkroom(*args)
    assert exit_code == code and shown in stdout
    assert heavy == []


def test_plan_and_runs_import_neither_torch_nor_ray(job, tmp_path):
    exit_code, heavy, stdout = darkroom("plan", job)
    assert exit_code == 0 and "listed:" in stdout
    assert heavy == []
    exit_code, heavy, stdout = darkroom("runs", str(tmp_path / "out"))
    assert exit_code == 0 and "no runs under" in stdout
    assert heavy == []


def test_the_probe_sees_heavy_imports():
    """The check can fail: a module imported before the command is reported."""
    exit_code, heavy, _ = darkroom("--help", preload=("torch",))
    assert exit_code == 0 and heavy == ["torch"]
