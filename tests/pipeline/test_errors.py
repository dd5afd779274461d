"""Where users get stuck: one plain line with the fix, no traceback unless --debug."""

from click.testing import CliRunner

from pipeline.cli import main

JOB = """\
name: e
input: {{uri: "{input}"}}
output: {{uri: "{output}"}}
steps: [{{model: identity}}]
"""


def run(tmp_path, input_uri, output_uri, *args, env=None):
    path = tmp_path / "job.yaml"
    path.write_text(JOB.format(input=input_uri, output=output_uri))
    return CliRunner().invoke(main, [*args, "plan", str(path)], env=env)


def one_line(result) -> str:
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def test_missing_bucket(s3_endpoint, tmp_path):
    line = one_line(run(tmp_path, "s3://no-such-bucket-here/in/", str(tmp_path / "out")))
    assert line.startswith("error: a bucket does not exist: check input.uri (s3://no-such-bucket-here/in/)")


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
