"""Where users get stuck: one plain line with the fix, no traceback unless --debug."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main

JOB = """\
name: e
input: {{uri: "{input}"}}
output: {{uri: "{output}"}}
steps: [{{model: identity}}]
"""


def run(tmp_path, input_uri, output_uri, *args, env=None, command="plan", job=JOB):
    path = tmp_path / "job.yaml"
    path.write_text(job.format(input=input_uri, output=output_uri))
    return CliRunner().invoke(main, [*args, command, str(path)], env=env)


def one_line(result, exit_code: int = 1) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == exit_code, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# ---- configuration errors: exit 2 (like a bad job file), one line naming the field and what is missing ----


def test_missing_input_bucket(s3_endpoint, tmp_path):
    for command in ("plan", "run"):
        line = one_line(run(tmp_path, "s3://no-such-bucket-here/in/", str(tmp_path / "out"), command=command), 2)
        assert line == (
            "error: input.uri: bucket 'no-such-bucket-here' does not exist (s3://no-such-bucket-here/in/): "
            "create it or fix input.uri"
        )
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_missing_output_bucket(s3_bucket, tmp_path):
    for command in ("plan", "run"):
        line = one_line(run(tmp_path, f"s3://{s3_bucket}/in/", "s3://no-such-output-bucket/o/", command=command), 2)
        assert line == (
            "error: output.uri: bucket 'no-such-output-bucket' does not exist (s3://no-such-output-bucket/o/): "
            "create it or fix output.uri"
        )


def test_missing_weights_file_of_a_checkpoint_step(tmp_path):
    weights = f"{tmp_path}/nope.pth"
    job = JOB.replace("{{model: identity}}", "{{model: checkpoint, params: {{uri: " + weights + "}}}}")
    for command in ("plan", "run"):
        line = one_line(run(tmp_path, str(tmp_path), str(tmp_path / "out"), command=command, job=job), 2)
        assert line == f"error: steps[0].params.uri: weights file not found: {tmp_path}/nope.pth"


def test_output_under_a_file_cannot_be_created(tmp_path):
    """A file where the output directory is expected: refused for root too (permission bits would not be)."""
    (tmp_path / "taken").write_text("a file")
    line = one_line(run(tmp_path, str(tmp_path), str(tmp_path / "taken" / "out"), command="run"), 2)
    assert line == f"error: output.uri: {tmp_path}/taken is a file, not a directory ({tmp_path}/taken/out)"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc")
def test_output_where_nothing_may_be_created(tmp_path):
    """/proc refuses new directories whoever asks (root included), as a read-only mount would."""
    line = one_line(run(tmp_path, str(tmp_path), "/proc/darkroom-out", command="run"), 2)
    assert line == "error: output.uri: cannot write to /proc/darkroom-out (No such file or directory)"


def test_unreachable_endpoint(s3_endpoint, tmp_path):
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard"}
    line = one_line(run(tmp_path, "s3://b/in/", str(tmp_path / "out"), env=env))
    assert line.startswith("error: cannot reach the storage endpoint (http://127.0.0.1:9)")


def test_missing_credentials(s3_endpoint, tmp_path):
    env = {
        "AWS_ACCESS_KEY_ID": None,
        "AWS_SECRET_ACCESS_KEY": None,
        "AWS_PROFILE": None,
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    line = one_line(run(tmp_path, "s3://fresh-creds-test/in/", str(tmp_path / "out"), env=env))
    assert line.startswith("error: no AWS credentials found")


def test_debug_shows_the_traceback(s3_endpoint, tmp_path):
    result = run(tmp_path, "s3://no-such-bucket-here/in/", str(tmp_path / "out"), "--debug")
    assert result.exit_code != 0 and result.exception is not None and not isinstance(result.exception, SystemExit)


def test_unknown_model_is_a_job_error(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(JOB.format(input=tmp_path, output=tmp_path / "o").replace("identity", "realesrgan-x4"))
    result = CliRunner().invoke(main, ["run", str(path)])
    assert result.exit_code == 2 and "unknown model 'realesrgan-x4'; did you mean" in result.output


# ---- weights that cannot load: refused on the driver by validate, plan and run, before Ray starts ----


def _weights(tmp_path, kind: str) -> str:
    import torch
    from safetensors.torch import save_file

    tensors = {"fc1.weight": torch.zeros(8, 4), "fc1.bias": torch.zeros(8)}
    if kind == "pickled":
        path = tmp_path / "w.pth"
        torch.save({"params_ema": tensors, "opt": Path("/x")}, path)  # a pickled object beside the tensors
    elif kind == "truncated":
        path = tmp_path / "w.safetensors"
        save_file(tensors, str(path))
        path.write_bytes(path.read_bytes()[:100])
    else:  # "pinned" (any other content than the pin) or "unknown" (no architecture spandrel knows)
        path = tmp_path / "w.safetensors"
        save_file(tensors, str(path))
    return str(path)


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("pinned", r"sha256 mismatch \(pinned 0{64}, file has [0-9a-f]{64}\); refusing to load"),
        ("pickled", r"cannot be loaded safely \(weights_only=True\): the file holds a pickled Python object"),
        ("truncated", r"cannot be read as \.safetensors"),
        ("unknown", r"architecture not detected: spandrel .* \(2 tensors; keys: fc1.bias, fc1.weight\)"),
    ],
)
def test_weights_that_cannot_load_are_refused_before_ray(tmp_path, kind, cause):
    import re

    uri = _weights(tmp_path, kind)
    pin = ', sha256: "' + "0" * 64 + '"' if kind == "pinned" else ""
    job = JOB.replace("{{model: identity}}", "{{model: checkpoint, params: {{uri: " + uri + pin + "}}}}")
    for command in ("validate", "plan", "run"):
        result = run(tmp_path, str(tmp_path), str(tmp_path / "out"), command=command, job=job)
        line = one_line(result, 2)
        prefix = f"{tmp_path}/job.yaml: " if command == "validate" else "error: "
        assert re.match(re.escape(f"{prefix}steps[0] (checkpoint): {uri}: ") + cause, line), line
    assert not list((tmp_path / "out").iterdir())  # nothing planned, no lease taken, no Ray


# ---- one input's storage failure, as its manifest row names it ----


def test_https_to_an_http_only_server_and_a_url_fragment_are_named_as_such(ray_local, tmp_path):
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from models import default_registry
    from pipeline import api, manifest
    from pipeline.job import load_job

    served = tmp_path / "www"
    served.mkdir()
    (served / "a.png").write_bytes(b"not read")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    listing = tmp_path / "urls.csv"
    listing.write_text(f"uri\nhttps://{host}/a.png\nhttp://{host}/b.png#2.png\n")  # no sizes: stat at read time
    job_path = tmp_path / "job.yaml"
    job_path.write_text(JOB.format(input=listing, output=tmp_path / "out"))
    try:
        summary = api.run(load_job(job_path, default_registry(), {"limits.transient_retry_seconds": "1"}))
    finally:
        server.shutdown()
    assert summary.counts == {"error": 2}
    rows = {r["input_uri"]: r for r in manifest.read(str(tmp_path / "out")).to_pylist()}
    tls, fragment = rows[f"https://{host}/a.png"], rows[f"http://{host}/b.png"]
    assert (tls["stage"], tls["error_type"]) == ("read", "tls_error")
    assert "http-only endpoint? then write http://" in tls["error_message"]
    assert (fragment["stage"], fragment["error_type"]) == ("read", "not_found")
    assert fragment["error_message"].startswith(f"not found: http://{host}/b.png (the URL as requested")
    assert "disappeared" not in tls["error_message"] + fragment["error_message"]
