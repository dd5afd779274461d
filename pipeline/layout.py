"""Where everything a run writes lives under its output prefix, spelled once.

::

    images/<rel_path>.<ext>                          the outputs (pipeline.outputs)
    manifest/<run_id>/part-<shard:05d>.parquet       one manifest part per committed shard (pipeline.manifest)
    _darkroom/runs/<run_id>/run.json                 the run record (pipeline.runs)
    _darkroom/runs/<run_id>/plan/shard-<shard:05d>.parquet   the recorded plan (pipeline.runs)
    _darkroom/lease.json                             the lease of the run holding the output (pipeline.lease)
    _darkroom/snapshot/history.parquet               what planning reads instead of every part (pipeline.snapshot)

Every function takes the output prefix (a local path or any fsspec URI) and returns a URI.
"""

from __future__ import annotations

from pipeline.storage import join

IMAGES = "images"
MANIFEST = "manifest"
STATE = "_darkroom"  # darkroom's own state: run records, plans, the lease
PART_PREFIX, PART_SUFFIX = "part-", ".parquet"
PLAN_PREFIX = "shard-"


def images_dir(output_uri: str) -> str:
    return join(output_uri, IMAGES)


def images_uri(output_uri: str, rel: str) -> str:
    """One output file, ``rel`` relative to the images folder (pipeline.names.output_rel_path)."""
    return join(images_dir(output_uri), rel)


def images_prefix(output_uri: str) -> str:
    """The images folder as shown to users: ``<output>/images/``."""
    return images_dir(output_uri) + "/"


def manifest_prefix(output_uri: str) -> str:
    """The manifest folder as shown to users (and globbed: ``<output>/manifest/**/*.parquet``)."""
    return manifest_dir(output_uri) + "/"


def manifest_dir(output_uri: str, run_id: str | None = None) -> str:
    """The manifest folder, or one run's folder of parts in it."""
    return join(output_uri, MANIFEST) if run_id is None else join(output_uri, MANIFEST, run_id)


def manifest_part_uri(output_uri: str, run_id: str, shard: int) -> str:
    return join(manifest_dir(output_uri, run_id), f"{PART_PREFIX}{shard:05d}{PART_SUFFIX}")


def is_manifest_part(name: str) -> bool:
    """Whether a file name in a run's manifest folder is a committed part."""
    return name.startswith(PART_PREFIX) and name.endswith(PART_SUFFIX)


def shard_of_part(name: str) -> int:
    """The shard a part's file name (``part-00012.parquet``) commits."""
    return int(name[len(PART_PREFIX) : -len(PART_SUFFIX)])


def runs_dir(output_uri: str) -> str:
    """The folder holding one folder per run (its record and plan)."""
    return join(output_uri, STATE, "runs")


def run_dir(output_uri: str, run_id: str) -> str:
    return join(runs_dir(output_uri), run_id)


def run_record_uri(output_uri: str, run_id: str) -> str:
    return join(run_dir(output_uri, run_id), "run.json")


def plan_dir(output_uri: str, run_id: str) -> str:
    """One run's recorded plan: one file per shard."""
    return join(run_dir(output_uri, run_id), "plan")


def plan_shard_uri(output_uri: str, run_id: str, shard: int) -> str:
    return join(plan_dir(output_uri, run_id), f"{PLAN_PREFIX}{shard:05d}{PART_SUFFIX}")


def shard_of_plan(name: str) -> int | None:
    """The shard a plan file's name (``shard-00012.parquet``) records; None for any other name."""
    if not (name.startswith(PLAN_PREFIX) and name.endswith(PART_SUFFIX)):
        return None
    return int(name[len(PLAN_PREFIX) : -len(PART_SUFFIX)])


def lease_uri(output_uri: str) -> str:
    return join(output_uri, STATE, "lease.json")


def snapshot_uri(output_uri: str) -> str:
    """The compacted history of every committed part (pipeline.snapshot)."""
    return join(output_uri, STATE, "snapshot", "history.parquet")
