"""diffusers-format DDPM folders: write one, read its UNet and noise schedule, digest its weights.

A folder holds ``config.json`` + ``diffusion_pytorch_model.safetensors`` (+ ``scheduler_config.json``);
a full diffusers pipeline folder (``unet/``, ``scheduler/``) is accepted too. Weights are only ever
read as safetensors (never unpickled). Local folders are read in place; files of remote ones are
copied into the cache (``$DARKROOM_CACHE/diffusers/…``, models/folders.py) by :func:`models.fetch.fetch` first.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from models import fetch as remote
from models.folders import cache_folder
from models.schedule import NoiseSchedule
from models.weights import PACKAGE_SCHEME, WeightsError, file_sha256, package_file

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"


def scheduler_config(schedule: NoiseSchedule) -> dict:
    """The ``scheduler_config.json`` diffusers' DDPMScheduler/DDIMScheduler read for ``schedule``."""
    return {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": schedule.num_train_timesteps,
        "beta_schedule": schedule.beta_schedule,
        "beta_start": schedule.beta_start,
        "beta_end": schedule.beta_end,
        "clip_sample": schedule.clip_sample,
        "prediction_type": "epsilon",
        "variance_type": "fixed_small",
    }


def save_pipeline_folder(unet, schedule: NoiseSchedule | None, path: str | os.PathLike) -> Path:
    """Write ``config.json`` + ``diffusion_pytorch_model.safetensors`` (+ ``scheduler_config.json``
    when ``schedule`` is given) to the local folder ``path``; returns it."""
    out = Path(path)
    unet.save_pretrained(out, safe_serialization=True)
    if schedule is not None:
        (out / SCHEDULER_CONFIG_NAME).write_text(json.dumps(scheduler_config(schedule), indent=2) + "\n")
    return out


def load_pipeline_folder(uri: str, *, sha256: str | None = None, storage_options: dict | None = None):
    """Load a ``UNet2DModel`` from a diffusers-format folder at an fsspec URI (eval mode, CPU).

    ``uri`` may also be ``package://<module>/<folder>`` (a folder shipped in an installed package).
    The folder holds ``config.json`` and ``diffusion_pytorch_model.safetensors`` (a full
    diffusers pipeline folder is accepted too: its ``unet/`` subfolder is used). Local folders are
    read in place; remote ones (``s3://…``) have those two files copied into the cache
    (``$DARKROOM_CACHE/diffusers/…``) first. Only safetensors are read: a folder with pickled
    weights alone is refused. ``sha256`` pins the weights file; a mismatch is refused.
    """
    from diffusers import UNet2DModel

    fs, root = resolve_folder(uri, storage_options)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not fs.exists(f"{root}/{name}"):
            raise WeightsError(f"{uri}: no {name} (a diffusers folder saved with safe_serialization=True is needed)")
    local = remote.is_local(fs)
    folder = Path(root) if local else cache_folder(fs, root)
    unet_config(fs, root, uri)  # remote: copies config.json into ``folder``, where from_pretrained reads it
    if local:
        actual = file_sha256(folder / WEIGHTS_NAME) if sha256 is not None else None
    else:  # atomic: concurrent loaders never see half a file
        actual = remote.fetch(fs, f"{root}/{WEIGHTS_NAME}", folder / WEIGHTS_NAME)
    if sha256 is not None and actual != sha256.lower():
        raise WeightsError(f"{uri}: sha256 mismatch (pinned {sha256}, file has {actual}); refusing to load")
    unet = UNet2DModel.from_pretrained(
        str(folder), use_safetensors=True, local_files_only=True, low_cpu_mem_usage=False
    )
    return unet.eval()


def resolve_folder(uri: str, storage_options: dict | None = None) -> tuple[Any, str]:
    """(filesystem, path) of the UNet folder at ``uri``: the folder itself, or the ``unet/``
    subfolder of a full pipeline folder; ``package://`` URIs resolve to the installed files."""
    if uri.startswith(PACKAGE_SCHEME):
        base = uri.rstrip("/")
        try:
            uri = str(package_file(f"{base}/{CONFIG_NAME}").parent)
        except WeightsError:
            uri = str(package_file(f"{base}/unet/{CONFIG_NAME}").parent)
    fs, root = remote.filesystem(uri, storage_options)
    root = root.rstrip("/")
    if not fs.exists(f"{root}/{CONFIG_NAME}") and fs.exists(f"{root}/unet/{CONFIG_NAME}"):
        root = f"{root}/unet"
    return fs, root


def read_json(fs, root: str, path: str, uri: str) -> dict:
    """The JSON file ``path`` of the folder ``root`` of ``fs`` (read in place when local, else copied
    into :func:`models.folders.cache_folder` first); ``WeightsError`` naming ``uri`` if it is not JSON."""
    if remote.is_local(fs):
        text = Path(path).read_text()
    else:
        local = cache_folder(fs, root) / path.rsplit("/", 1)[-1]
        remote.fetch(fs, path, local)
        text = local.read_text()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise WeightsError(f"{uri}: {path.rsplit('/', 1)[-1]} is not JSON ({exc})") from None


def unet_config(fs, root: str, uri: str) -> dict:
    """The ``config.json`` of the UNet folder ``root`` of ``fs``; ``WeightsError`` unless it
    describes a ``UNet2DModel``."""
    config = read_json(fs, root, f"{root}/{CONFIG_NAME}", uri)
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise WeightsError(f"{uri}: config.json describes a {config.get('_class_name')}, not a UNet2DModel")
    return config


def scheduler_config_path(fs, root: str) -> str | None:
    """Path of the scheduler config of the UNet folder ``root`` (see :func:`resolve_folder`) on ``fs``, or None:
    its own ``scheduler_config.json``, or the ``scheduler/`` one beside it in a full pipeline folder."""
    candidates = [f"{root}/{SCHEDULER_CONFIG_NAME}"]
    if root.endswith("/unet"):  # a full pipeline folder: its scheduler/ sits next to unet/
        candidates.append(f"{root.rsplit('/', 1)[0]}/scheduler/{SCHEDULER_CONFIG_NAME}")
    return next((c for c in candidates if fs.exists(c)), None)


def load_schedule(uri: str, storage_options: dict | None = None) -> NoiseSchedule:
    """The noise schedule of the diffusers folder at ``uri``.

    Read from its ``scheduler_config.json`` (or ``scheduler/scheduler_config.json`` of a full
    pipeline folder, also when ``uri`` names its ``unet/``); without one, diffusers' scheduler
    defaults (linear β from 1e-4 to 0.02 over T = 1000, x̂₀ clipped). What the samplers do not
    implement is refused (``WeightsError``): a prediction type other than ε, a learned variance,
    trained betas, dynamic thresholding, a clip range other than 1, an unknown β schedule.
    Timesteps are leading-spaced whatever the file's ``timestep_spacing`` says.
    """
    fs, root = resolve_folder(uri, storage_options)
    found = scheduler_config_path(fs, root)
    if found is None:
        return NoiseSchedule()
    config = read_json(fs, root, found, uri)
    unsupported = [
        (
            config.get("prediction_type", "epsilon") != "epsilon",
            f"prediction_type {config.get('prediction_type')!r} (ε only)",
        ),
        (
            str(config.get("variance_type") or "fixed_small").startswith("learned"),
            f"variance_type {config.get('variance_type')!r}",
        ),
        (config.get("trained_betas") is not None, "trained_betas"),
        (bool(config.get("thresholding")), "thresholding"),
        (float(config.get("clip_sample_range", 1.0)) != 1.0, f"clip_sample_range {config.get('clip_sample_range')}"),
    ]
    refused = [why for bad, why in unsupported if bad]
    if refused:
        raise WeightsError(f"{uri}: scheduler config not supported: {', '.join(refused)}")
    schedule = NoiseSchedule(
        num_train_timesteps=int(config.get("num_train_timesteps", 1000)),
        beta_schedule=str(config.get("beta_schedule", "linear")),
        beta_start=float(config.get("beta_start", 1e-4)),
        beta_end=float(config.get("beta_end", 0.02)),
        clip_sample=bool(config.get("clip_sample", True)),
    )
    try:
        schedule.betas()
    except ValueError as exc:
        raise WeightsError(f"{uri}: {exc}") from None
    return schedule


def weights_digest(uri: str, sha256: str | None = None, storage_options: dict | None = None) -> str:
    """sha256 of the folder's ``diffusion_pytorch_model.safetensors``: the pin ``sha256`` when given, else the
    file's digest, computed once per process and file version (:func:`models.fetch.digest`)
    because the driver asks several times while planning a run."""
    if sha256:
        return sha256.lower()
    fs, root = resolve_folder(uri, storage_options)
    try:
        return remote.digest(fs, f"{root}/{WEIGHTS_NAME}")
    except FileNotFoundError:
        raise WeightsError(
            f"{uri}: no {WEIGHTS_NAME} (a diffusers folder saved with safe_serialization=True is needed)"
        ) from None
