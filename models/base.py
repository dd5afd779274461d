"""The contracts of models: ImageModel (restoration), CaptionModel (image → text), GenerativeModel and
TextToImageModel (generation)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.tiling import DEFAULT_TILE_PAD, receptive_field


@dataclass
class ImageModel:
    """A ready-to-run model.

    ``module`` maps a float tensor N×C×H×W with values in [0, 1] to
    N×C×round(H·scale)×round(W·scale), values in [0, 1] (clamping is the caller's job).
    ``channels`` is C (1 or 3); ``supports_half`` says whether the module may run in fp16
    (weights and activations cast, ``module.half()``), ``supports_bfloat16`` the same for bf16
    (None: as ``supports_half``; bf16 has fp32's range, so a model whose activations overflow
    fp16 may still run in it); ``weights_sha256`` is None for models without learned weights.

    ``needs_mask`` (inpainting): the module then takes N×(C+1)×H×W, the last channel being the
    mask in {0, 1} (1 = known pixel to keep, 0 = hole to fill), and still returns N×C×H'×W'.
    The engine builds that channel from the job's mask source; models without it never see one.

    ``colour_out`` (colorization): the output is colour even for a gray input, so the engine
    keeps the model's three output channels for a gray image instead of averaging them back
    to one (which it does for every other model).

    ``tiling``: False for models whose memory is only their input and output (classical
    resamplers, identity). The engine then runs them on whole images even where
    ``resources.tile`` is set: a tile would save no memory, only add overlap and blending work.

    ``tile_pad`` and ``tile_align``: the context, in input pixels, each tile needs on every side
    for tiled output to equal untiled output within one 8-bit level, and the grid tiles start on
    (see models.tiling). None: derived from the network (``models.tiling.receptive_field``) when
    the engine first tiles it; builders set them where a measured figure is needed instead.
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
    tile_pad: int | None = None
    tile_align: int | None = None
    supports_bfloat16: bool | None = None

    def supports(self, dtype: torch.dtype) -> bool:
        """Whether the module may run with its weights and inputs cast to ``dtype``."""
        if dtype == torch.float16:
            return self.supports_half
        if dtype == torch.bfloat16:
            return self.supports_half if self.supports_bfloat16 is None else self.supports_bfloat16
        return dtype == torch.float32

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return round(height * self.scale), round(width * self.scale)

    def tile_context(self) -> tuple[int, int]:
        """(tile_pad, tile_align) for this model: the builder's, else derived from the network
        once (a forward pass on a 32×32 input) and kept; (16, 1) if the network cannot be
        inspected so (e.g. it needs larger inputs)."""
        if self.tile_pad is None or self.tile_align is None:
            try:
                field = receptive_field(self.module, self.channels + (1 if self.needs_mask else 0))
                pad, align = field.feather_pad, field.align
            except Exception:  # a network that refuses a 32×32 probe: the engine's former default
                pad, align = DEFAULT_TILE_PAD, 1
            self.tile_pad = pad if self.tile_pad is None else self.tile_pad
            self.tile_align = align if self.tile_align is None else self.tile_align
        return self.tile_pad, self.tile_align


CaptionFn = Callable[[Sequence[np.ndarray], torch.device], list[str]]


@dataclass
class CaptionModel:
    """A ready-to-run captioner: images in, one line of text each.

    ``caption(images, device)`` maps N RGB images (H×W×3 uint8, any sizes) to N strings (one
    line each, whitespace collapsed). Decoding is deterministic (greedy or beam search, never
    sampled), so the same image and params give the same text. ``module`` holds every learned
    tensor (moved with ``.to(device)`` by the engine); ``max_new_tokens`` bounds each caption.
    """

    name: str
    module: torch.nn.Module
    caption: CaptionFn
    weights_sha256: str | None = None


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


@dataclass(frozen=True)
class Prompt:
    """One text-to-image sample's conditioning: ``guidance_scale`` / ``steps`` None = the model's defaults."""

    text: str
    negative: str | None = None
    guidance_scale: float | None = None
    steps: int | None = None


PromptSampleFn = Callable[[Sequence[torch.Generator], Sequence[Prompt], torch.device], torch.Tensor]


@dataclass
class TextToImageModel:
    """A ready-to-run text-to-image generator: one prompt and one generator per sample, images out.

    ``generate(generators, prompts, device)`` returns float32 N×C×H×W in [0, 1] on ``device``, with
    N = len(generators) = len(prompts) and (C, H, W) = ``shape``. Sample i draws all its randomness
    from ``generators[i]`` (CPU generators from ``models.diffusion.prompt_generator``), so an image
    depends only on its prompt, its generator, the weights, the params and the device type, never
    on the batch it shares. ``sampler`` names the scheduler (e.g. ``ddim``), ``steps`` and
    ``guidance_scale`` are the defaults a prompt without its own gets; all go into the manifest.
    """

    name: str
    module: torch.nn.Module
    generate: PromptSampleFn
    shape: tuple[int, int, int]
    sampler: str
    steps: int
    guidance_scale: float
    weights_sha256: str | None = None
