"""The contract every image model fulfils (ImageModel) and every generator (GenerativeModel)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch


@dataclass
class ImageModel:
    """A ready-to-run model.

    ``module`` maps a float tensor N×C×H×W with values in [0, 1] to
    N×C×round(H·scale)×round(W·scale), values in [0, 1] (clamping is the caller's job).
    ``channels`` is C (1 or 3); ``supports_half`` says whether fp16/bf16 is safe;
    ``weights_sha256`` is None for models without learned weights.

    ``needs_mask`` (inpainting): the module then takes N×(C+1)×H×W, the last channel being the
    mask in {0, 1} (1 = known pixel to keep, 0 = hole to fill), and still returns N×C×H'×W'.
    The engine builds that channel from the job's mask source; models without it never see one.

    ``colour_out`` (colorization): the output is colour even for a gray input, so the engine
    keeps the model's three output channels for a gray image instead of averaging them back
    to one (which it does for every other model).

    ``tiling``: False for models whose memory is only their input and output (classical
    resamplers, identity). The engine then runs them on whole images even where
    ``resources.tile`` is set: a tile would save no memory, only add overlap and blending work.
    """

    name: str
    module: torch.nn.Module
    scale: float
    channels: int
    supports_half: bool
    weights_sha256: str | None = None
    needs_mask: bool = False
    colour_out: bool = False
    tiling: bool = True

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return round(height * self.scale), round(width * self.scale)


SampleFn = Callable[[Sequence[torch.Generator], "Sequence[int] | None", torch.device], torch.Tensor]


@dataclass
class GenerativeModel:
    """A ready-to-run generator (DDPM/DDIM, GAN, VAE decoder): noise in, images out.

    ``sample(generators, labels, device)`` returns float32 N×C×H×W in [0, 1] on ``device``, with
    N = len(generators) and (C, H, W) = ``shape``. Sample i draws *all* its randomness from
    ``generators[i]`` (CPU generators from ``models.diffusion.sample_generator(job_seed, index)``),
    so an image depends only on (job seed, sample index, weights, params, device type), never on the
    batch it shares or how the seed range was sharded. ``labels`` is one class per sample for
    class-conditional models (``num_classes > 0``), else None.

    ``module`` holds every learned tensor (moved with ``.to(device)`` by the engine);
    ``sampler`` names the procedure (``ddpm`` | ``ddim`` | ``gan`` | ``vae``) and ``steps`` the
    network evaluations per sample (1 for GAN and VAE); both go into the manifest.
    """

    name: str
    module: torch.nn.Module
    sample: SampleFn
    shape: tuple[int, int, int]
    sampler: str
    steps: int
    weights_sha256: str | None = None
    num_classes: int = 0
