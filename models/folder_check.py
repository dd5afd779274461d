"""Driver-side checks of a user's diffusers DDPM folder (the ``ddpm`` entry): that it will load, and
the digest of the configs that shape its samples.

Both read only small files (the JSON configs and the safetensors header) plus, for a pinned folder,
the weights file's digest, so ``darkroom validate`` and ``plan`` refuse a folder the model actors
would fail on, before Ray starts.
"""

from __future__ import annotations

import hashlib

from models import fetch as remote
from models.catalog import DDPMFolderParams
from models.diffusers_folder import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_schedule,
    resolve_folder,
    scheduler_config_path,
    unet_config,
    weights_digest,
)
from models.weights import WeightsError, check_safetensors


def inspect(p: DDPMFolderParams) -> str:
    """Check that :func:`models.ddpm.build_folder` would load ``p``'s folder: a UNet2DModel
    config, a complete safetensors weights file (its pin, when given, matching), a scheduler config
    the samplers implement. Returns what was found, e.g. ``UNet2DModel 32×32, linear β, T=1000``
    (the manifest's ``model_details``); ``WeightsError`` says what is wrong."""
    fs, root = resolve_folder(p.uri, p.storage_options)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not fs.exists(f"{root}/{name}"):
            raise WeightsError(f"{p.uri}: no {name} (a diffusers folder saved with safe_serialization=True is needed)")
    config = unet_config(fs, root, p.uri)
    check_safetensors(fs, f"{root}/{WEIGHTS_NAME}", f"{p.uri}: {WEIGHTS_NAME}")
    if p.sha256:
        actual = weights_digest(p.uri, None, p.storage_options)
        if actual != p.sha256.lower():
            raise WeightsError(f"{p.uri}: sha256 mismatch (pinned {p.sha256}, file has {actual}); refusing to load")
    schedule = load_schedule(p.uri, p.storage_options)
    size = config.get("sample_size", "?")
    return f"UNet2DModel {size}×{size}, {schedule.beta_schedule} β, T={schedule.num_train_timesteps}"


def config_digest(p: DDPMFolderParams) -> str:
    """sha256 over the folder's ``config.json`` and scheduler config (names and contents' sha256):
    files that change the samples as much as the weights do, so the job fingerprint covers them."""
    fs, root = resolve_folder(p.uri, p.storage_options)
    digest = hashlib.sha256()
    for path in (f"{root}/{CONFIG_NAME}", scheduler_config_path(fs, root)):
        if path is None or not fs.exists(path):
            continue
        fs.invalidate_cache(path)
        digest.update(path.rsplit("/", 2)[-1].encode() + b"\0")
        digest.update(remote.fetch(fs, path).encode() + b"\0")
    return digest.hexdigest()
