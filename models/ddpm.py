"""DDPMs as :class:`models.base.GenerativeModel` s: the ``ddpm`` registry entry (a user's diffusers
folder); ``darkroom-ddpm-digits`` (models/ddpm_digits.py) is wrapped the same way. Their params
(``SamplerParams``, ``DDPMFolderParams``) are in models/catalog.py.

A model samples with the DDPM or DDIM sampler of models/diffusion.py, on the UNet in fixed
micro-batches, so a sample does not depend on the batch it shares (models/diffusion.py's
determinism contract).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models import diffusers_folder
from models.base import GenerativeModel
from models.catalog import DDPMFolderParams, SamplerParams
from models.diffusion import ddim_sample, ddpm_sample, unet_eps
from models.schedule import NoiseSchedule, alphas_cumprod
from models.weights import WeightsError


def generative_model(
    name: str, unet, schedule: NoiseSchedule, p: SamplerParams, weights_sha256: str | None
) -> GenerativeModel:
    """An unconditional ε-prediction ``UNet2DModel`` as a :class:`GenerativeModel` sampling with ``p``.

    ``sample(generators, None, device)`` → float32 N×C×H×W in [0, 1] (C, H, W from the UNet's
    config); sample i's noise comes from ``generators[i]`` only and the UNet runs on fixed
    ``p.micro_batch``-row chunks, so a sample does not depend on its batch (module docstring).
    """
    cfg = unet.config
    if cfg.in_channels != cfg.out_channels:
        raise WeightsError(
            f"{name}: the UNet maps {cfg.in_channels} channels to {cfg.out_channels}; an ε-prediction DDPM maps C to C"
        )
    if cfg.get("num_class_embeds") or cfg.get("class_embed_type"):
        raise WeightsError(f"{name}: class-conditional UNets are not supported (unconditional DDPMs only)")
    T = schedule.num_train_timesteps
    steps = p.steps or (T if p.sampler == "ddpm" else min(50, T))
    if steps > T:
        raise ValueError(f"steps={steps} exceeds the model's {T} training timesteps")
    size = cfg.sample_size
    height, width = (size, size) if isinstance(size, int) else tuple(size)
    shape = (int(cfg.in_channels), int(height), int(width))
    betas = schedule.betas()
    acp = alphas_cumprod(betas)
    eta = p.eta or 0.0

    def sample(
        generators: Sequence[torch.Generator], labels: Sequence[int] | None, device: torch.device
    ) -> torch.Tensor:
        if labels is not None:
            raise ValueError(f"{name} is unconditional: labels must be None")
        eps = unet_eps(unet, p.micro_batch)  # here, not above: the engine may move or cast the UNet after building
        batch = (len(generators), *shape)
        if p.sampler == "ddpm":
            return ddpm_sample(eps, batch, betas, generators, steps, clip_sample=schedule.clip_sample, device=device)
        return ddim_sample(eps, batch, acp, generators, steps, eta, clip_sample=schedule.clip_sample, device=device)

    return GenerativeModel(
        name=name,
        module=unet,
        sample=sample,
        shape=shape,
        sampler=p.sampler,
        steps=steps,
        weights_sha256=weights_sha256,
    )


def weights_digest(p: DDPMFolderParams) -> str:
    """sha256 of the folder's weights file: :func:`models.diffusers_folder.weights_digest`."""
    return diffusers_folder.weights_digest(p.uri, p.sha256, p.storage_options)


def build_folder(p: DDPMFolderParams) -> GenerativeModel:
    """The ``ddpm`` registry entry: load (pinned to :func:`weights_digest`, so the model reports the
    digest of the very file it loaded) and wrap a user's diffusers DDPM folder."""
    digest = weights_digest(p)
    unet = diffusers_folder.load_pipeline_folder(p.uri, sha256=digest, storage_options=p.storage_options)
    schedule = diffusers_folder.load_schedule(p.uri, p.storage_options)
    return generative_model("ddpm", unet, schedule, p, weights_sha256=digest)
