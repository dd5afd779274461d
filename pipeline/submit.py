"""Submit darkroom jobs to a running Ray cluster: thin wrappers over Ray's Job Submission SDK.

A submission is ``python -m pipeline.entry run <job file>`` started on the cluster's head node by
Ray's job manager (the dashboard, ``http://HEAD:8265``). The project directory travels with it as
the runtime_env ``working_dir`` (minus virtualenvs, outputs, git and caches), so the cluster runs
exactly this checkout's code and job file; the nodes only need darkroom's dependencies installed
(``cluster.yaml`` does that). Inside the job, Ray sets ``RAY_ADDRESS``, so ``darkroom run`` joins
the cluster instead of starting its own Ray.

A cluster with Ray's token authentication (``RAY_AUTH_MODE=token``: the default for local clusters
from Ray 2.59, for all from 2.61) wants its token in every request. It is looked up where Ray looks
(:func:`auth_token`) and sent as an ``Authorization: Bearer`` header; it is never written into the
submission (entrypoint, runtime_env, metadata) nor into any message.

Every failure surfaces as :class:`SubmitError` with a one-line message.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import secrets
import shlex
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Not shipped with a submission (gitignore-style patterns for Ray; plain names for the staging copy).
EXCLUDES = [
    ".venv", "venv", ".git", "out", "__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache",
    ".ruff_cache", ".cache", "*.egg-info", "build", "dist", ".ci",
]  # fmt: skip
STAGED_JOBS_DIR = ".darkroom-submitted"  # where a job file from outside the project goes in a staged copy
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


class SubmitError(Exception):
    """A submission-side failure; ``str()`` is one line fit for the terminal."""


@dataclass
class JobState:
    submission_id: str
    status: str  # PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED
    message: str
    entrypoint: str
    start_time: float | None  # epoch seconds
    end_time: float | None
    exit_code: int | None  # the entrypoint's exit code once it has finished (darkroom's 0/3/2/1)
    job_name: str | None  # darkroom job name, from the submission's metadata

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


def resolve_address(address: str | None) -> str:
    """``address`` or ``$RAY_ADDRESS``: the dashboard URL (``http://HEAD:8265``); a bare host:port gets http://."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise SubmitError("no cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS")
    return address if "://" in address else f"http://{address}"


@contextlib.contextmanager
def _explicit_address_wins():
    """Ray's client lets $RAY_ADDRESS / $RAY_API_SERVER_ADDRESS override its argument; we want the reverse."""
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


DEFAULT_TOKEN_FILE = "~/.ray/auth_token"  # where `ray get-auth-token --generate` and a local ray.init() put it
TOKEN_HELP = "set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) — see docs/cluster.md"


def auth_token() -> str | None:
    """The cluster token, from where Ray itself looks, in Ray's order; None when there is none to send.

    ``$RAY_AUTH_TOKEN``, else the file ``$RAY_AUTH_TOKEN_PATH`` (unreadable or empty: SubmitError,
    as Ray treats it), else ``~/.ray/auth_token`` if it exists. ``RAY_AUTH_MODE=disabled`` sends none.
    """
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled":
        return None
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            token = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise SubmitError(f"cannot read the Ray token file RAY_AUTH_TOKEN_PATH={path} ({exc.strerror})") from None
        if not token:
            raise SubmitError(f"the Ray token file RAY_AUTH_TOKEN_PATH={path} is empty")
        return token
    try:
        return Path(DEFAULT_TOKEN_FILE).expanduser().read_text().strip() or None
    except OSError:
        return None


def client(address: str | None = None):
    """A connected ``JobSubmissionClient``; an unreachable cluster, or one refusing us, raises SubmitError."""
    url = resolve_address(address)  # before importing Ray: a missing address is reported without loading it
    from ray.job_submission import JobSubmissionClient

    token = auth_token()
    # Our own header: Ray adds its token only when this process runs with RAY_AUTH_MODE=token, and
    # caches the first one it loads for the life of the process.
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        with _explicit_address_wins():
            return JobSubmissionClient(url, headers=headers)
    except Exception as exc:
        raise SubmitError(
            _auth_problem(exc, url) or f"cannot reach the Ray cluster at {url} ({_one_line(exc)})"
        ) from None


def _auth_problem(exc: BaseException, url: str | None) -> str | None:
    """The one-line message for a 401/403 from the dashboard (Ray's own text spans several lines)."""
    from ray.exceptions import AuthenticationError

    if not isinstance(exc, AuthenticationError):
        return None
    cluster = f"the Ray cluster at {url}" if url else "the Ray cluster"
    if "Authentication failed" in str(exc):  # 403: a token was sent but it is not the cluster's
        return (
            f"{cluster} refused the token: use the cluster's own token "
            "(`ray get-auth-token` on the head) in RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH — see docs/cluster.md"
        )
    return f"{cluster} requires a token: {TOKEN_HELP}"  # 401: no token sent


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """``exc`` on one line, cut at a word boundary (with …) when longer than ``limit`` characters."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    if len(text) <= limit:
        return text
    return text[:limit].rsplit(" ", 1)[0].rstrip(" ,.;:(") + " …"


@contextlib.contextmanager
def _sdk_errors(what: str, url: str | None = None):
    try:
        yield
    except SubmitError:
        raise
    except Exception as exc:  # the SDK raises RuntimeError (404, 500, …), ConnectionError, aiohttp errors
        raise SubmitError(_auth_problem(exc, url) or f"{what}: {_one_line(exc)}") from None


def project_root() -> Path:
    """The darkroom checkout this code runs from (the directory holding ``pipeline/`` and pyproject.toml)."""
    candidates = [Path(__file__).resolve().parents[1], *[p for p in (Path.cwd(), *Path.cwd().parents)]]
    for root in candidates:
        if (root / "pyproject.toml").is_file() and (root / "pipeline" / "cli" / "__main__.py").is_file():
            return root
    raise SubmitError("cannot find the darkroom project directory (pyproject.toml + pipeline/): run from a checkout")


def _ignored(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in EXCLUDES)


def package(job_file: Path, root: Path, staging: Path) -> tuple[Path, str]:
    """The directory to upload as working_dir and the job file's path inside it.

    The project itself when the job file lies in it (and not in an excluded directory such as
    out/); otherwise a copy of the project (minus EXCLUDES) under ``staging`` with the job file
    added as ``.darkroom-submitted/<name>``.
    """
    job_file = job_file.resolve()
    try:
        rel = job_file.relative_to(root)
    except ValueError:
        rel = None
    if rel is not None and not any(_ignored(part) for part in rel.parts):
        return root, rel.as_posix()
    return _stage(root, job_file, staging)


def _stage(root: Path, job_file: Path, into: Path) -> tuple[Path, str]:
    """Copy the project (minus EXCLUDES) plus the job file into ``into``; returns (dir, job path)."""
    staged = into / "project"
    shutil.copytree(root, staged, ignore=lambda _dir, names: [n for n in names if _ignored(n)], symlinks=False)
    rel = f"{STAGED_JOBS_DIR}/{job_file.name}"
    (staged / STAGED_JOBS_DIR).mkdir(exist_ok=True)
    shutil.copy2(job_file, staged / rel)
    return staged, rel


def _job_name(job_file: Path) -> str:
    """The job's ``name`` field (the file's stem if it has none): submission ids start with it."""
    import yaml

    try:
        data = yaml.safe_load(job_file.read_text())
    except (OSError, yaml.YAMLError):
        data = None
    name = data.get("name") if isinstance(data, dict) else None
    return name if isinstance(name, str) and name else job_file.stem


@contextlib.contextmanager
def _quiet_packaging():
    """Ray logs each ignored file and the upload at INFO; keep the terminal to darkroom's own lines."""
    loggers = [
        logging.getLogger(n) for n in ("ray._private.runtime_env.packaging", "ray.dashboard.modules.dashboard_sdk")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def new_submission_id(job_name: str) -> str:
    return f"darkroom-{job_name}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(3)}"


def head_python(python: str | None = None) -> str:
    """The interpreter a submission runs under on the head: ``python``, else ``$DARKROOM_PYTHON``, else ``python``.

    The entrypoint is a shell command on the head, so a bare ``python`` is whichever comes first on
    the PATH Ray was started with: the system one when Ray runs from an unactivated virtualenv.
    """
    return python or os.environ.get("DARKROOM_PYTHON") or "python"


def submit(
    job_path: str | os.PathLike,
    address: str | None = None,
    extra_args: list[str] | tuple[str, ...] = (),
    job_name: str | None = None,
    submission_id: str | None = None,
    python: str | None = None,
) -> str:
    """Submit ``darkroom run JOB_PATH EXTRA_ARGS`` to the cluster; returns the submission id.

    A job file inside the project travels with the project and is named by its relative path.
    A job file outside it is copied, with the project, into a temporary staged directory that
    is uploaded instead (so it works on a remote cluster too). ``python``: see :func:`head_python`;
    the entrypoint (pipeline/entry.py) checks it has darkroom's dependencies before running.
    """
    job_file = Path(job_path).resolve()
    if not job_file.is_file():
        raise SubmitError(f"{job_path}: no such job file")
    root = project_root()
    name = job_name or _job_name(job_file)
    sdk = client(address)  # connect before copying or packaging anything
    with tempfile.TemporaryDirectory(prefix="darkroom-submit-") as tmp:
        working_dir, rel = package(job_file, root, Path(tmp))
        # Plain progress lines read well in `darkroom logs`; extra args come last, so they can override it.
        entrypoint = shlex.join(
            [head_python(python), "-m", "pipeline.entry", "run", rel, "--log-format", "plain", *extra_args]
        )
        with _sdk_errors("submission refused"), _quiet_packaging():
            return sdk.submit_job(
                entrypoint=entrypoint,
                submission_id=submission_id or new_submission_id(name),
                runtime_env={"working_dir": str(working_dir), "excludes": list(EXCLUDES)},
                metadata={"darkroom_job": name, "job_file": rel},
            )


def _state(info) -> JobState:
    def seconds(ms):
        return ms / 1000 if ms else None

    return JobState(
        submission_id=info.submission_id or info.job_id or "",
        status=str(info.status),
        message=info.message or "",
        entrypoint=info.entrypoint or "",
        start_time=seconds(info.start_time),
        end_time=seconds(info.end_time),
        exit_code=getattr(info, "driver_exit_code", None),
        job_name=(info.metadata or {}).get("darkroom_job"),
    )


def status(submission_id: str, address: str | None = None) -> JobState:
    sdk = client(address)
    with _sdk_errors(f"no status for {submission_id}"):
        return _state(sdk.get_job_info(submission_id))


def logs(submission_id: str, address: str | None = None, follow: bool = False) -> Iterator[str]:
    """The job's output so far, or with ``follow`` every chunk as it is written until the job ends."""
    sdk = client(address)
    if not follow:
        with _sdk_errors(f"no logs for {submission_id}"):
            text = sdk.get_job_logs(submission_id)
        yield text
        return
    with _sdk_errors(f"no logs for {submission_id}"):
        sdk.get_job_info(submission_id)  # a wrong id fails here with a clear message, not inside the websocket
    loop = asyncio.new_event_loop()
    chunks = sdk.tail_job_logs(submission_id)
    try:
        while True:
            with _sdk_errors(f"log stream of {submission_id} broke"):
                try:
                    chunk = loop.run_until_complete(chunks.__anext__())
                except StopAsyncIteration:
                    return
            yield chunk
    finally:
        loop.run_until_complete(chunks.aclose())
        loop.close()


def stop(submission_id: str, address: str | None = None) -> bool:
    """Ask Ray to stop the job (SIGTERM, then SIGKILL); True when it was still running."""
    sdk = client(address)
    with _sdk_errors(f"cannot stop {submission_id}"):
        return sdk.stop_job(submission_id)


def list_jobs(address: str | None = None) -> list[JobState]:
    """Submitted jobs on the cluster (drivers started by hand are left out), oldest first."""
    sdk = client(address)
    with _sdk_errors("cannot list jobs"):
        jobs = [_state(j) for j in sdk.list_jobs() if j.submission_id]
    return sorted(jobs, key=lambda j: j.start_time or 0)


def wait(submission_id: str, address: str | None = None, timeout: float | None = None, poll: float = 1.0) -> JobState:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED (or ``timeout`` seconds pass: SubmitError)."""
    sdk = client(address)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        with _sdk_errors(f"no status for {submission_id}"):
            state = _state(sdk.get_job_info(submission_id))
        if state.terminal:
            return state
        if deadline is not None and time.monotonic() > deadline:
            raise SubmitError(f"{submission_id} still {state.status} after {timeout:.0f} s")
        time.sleep(poll)
