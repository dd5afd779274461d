"""The entrypoint of a submitted job on the head: check this interpreter can run darkroom, then run the CLI.

``darkroom submit`` starts ``<python> -m pipeline.entry run <job file> ...`` through Ray's job manager,
in a shell on the head. An interpreter without darkroom's dependencies (typically the system Python
when Ray was started from an unactivated virtualenv) ends here with one line naming the interpreter,
what it lacks and the fix, exit 1, instead of a traceback from deep inside an import. Standard
library only, so the check itself cannot fail to import.
"""

from __future__ import annotations

import importlib.util
import runpy
import sys

MIN_PYTHON = (3, 11)  # as pyproject.toml's requires-python (imagecodecs' wheels)
# Imported by `darkroom run` itself (import names, not distribution names).
REQUIRED = ("click", "ray", "torch", "numpy", "pyarrow", "fsspec", "PIL", "pydantic", "yaml", "imagecodecs")
FIX = (
    "start Ray on the head from darkroom's environment, or submit with "
    "`darkroom submit --python /path/to/venv/bin/python` (or $DARKROOM_PYTHON) — see docs/cluster.md"
)


def problem() -> str | None:
    """What keeps this interpreter from running darkroom, as one line; None when nothing does."""
    if sys.version_info < MIN_PYTHON:
        found = ".".join(map(str, sys.version_info[:3]))
        return f"{sys.executable} is Python {found}; darkroom needs >= {'.'.join(map(str, MIN_PYTHON))}: {FIX}"
    missing = [name for name in REQUIRED if importlib.util.find_spec(name) is None]
    if missing:
        return f"{sys.executable} lacks darkroom's dependencies (no module {', '.join(missing)}): {FIX}"
    return None


def main() -> None:
    found = problem()
    if found:
        print(f"error: {found}", file=sys.stderr)
        sys.exit(1)
    runpy.run_module("pipeline.cli", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
