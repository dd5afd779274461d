"""Zero-shot restoration with an unconditional pixel DDPM: no task-specific training.

One prior (an ε-predicting ``UNet2DModel`` trained only to generate images) restores by steering
its sampling chain towards the observed pixels:

* **RePaint** (Lugmayr et al. 2022) — inpainting. At every step the known pixels of ``x_{t-1}`` are
  the input noised to level ``t-1`` (a fresh forward-process draw) and the holes are the model's
  reverse step; "jumps" re-noise the result a few steps back and denoise again, so the holes get
  several passes to harmonise with the known region.
* **DDNM** (Wang et al. 2023, range–null-space decomposition) — any linear degradation ``y = A x``
  with pseudo-inverse ``A⁺``. At every step the predicted clean image ``x̂₀`` is replaced by
  ``A⁺y + (I − A⁺A) x̂₀``: its range-space part comes from the observation, its null-space part
  (what ``A`` cannot see) from the prior. Used here for super-resolution (``A`` = average-pool by
  ``s``, ``A⁺`` = nearest upsample by ``s``) and colorization (``A`` = mean over channels, ``A⁺`` =
  replicate to 3 channels). Both ``A`` are means over disjoint groups of pixels, so ``A A⁺ = I``.

Value ranges: the functions take and return images in [0, 1]; internally the chain runs in the
DDPM's [-1, 1] (``2·v − 1``). The degradations commute with that affine map (they are averages), so
the observation is simply mapped the same way.

Known pixels. The chain ends on the observation exactly (up to float rounding) but the final
clamp to [0, 1] can move it (a white low-res pixel needs all 16 high-res pixels at 1); so both
methods finish with an exact data-consistency step: RePaint pastes the known pixels back, DDNM
projects onto {x ∈ [0, 1]ⁿ : A x = y} (:func:`consistent`). The output therefore re-degrades to
the input to float precision.

Randomness: every function draws only from ``generators`` (one CPU ``torch.Generator`` per image;
:func:`input_generators` seeds them from a digest of the input pixels and a ``seed``), and every
operation is per row, so with a batch-invariant ``eps_model`` (:func:`models.diffusion.unet_eps`)
an image's output does not depend on the batch it shares: the same image gives the same output.

Image size: a pixel DDPM generates ``sample_size``×``sample_size`` images only (its UNet is
trained at that size, and the shipped digits prior is 32×32). The registry models take exactly the
size their prior implies — ``sample_size`` for ``repaint`` and ``ddnm-colorize``,
``sample_size / scale`` for ``ddnm-sr`` — and raise a ``ValueError`` naming the expected size for
anything else (the engine records it as an error row). Patch-wise restoration of larger images is
deliberately not offered: a 32×32 digits prior knows nothing about the content of 32×32 patches of
a photograph. The models say ``tiling=False``, so the engine runs them on whole images.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from models import catalog, ddpm_digits, diffusers_folder
from models.base import ImageModel
from models.catalog import DDNMParams, PriorParams, RepaintParams, SRParams
from models.diffusers_folder import load_pipeline_folder, load_schedule
from models.diffusion import EpsModel, noise, unet_eps
from models.schedule import NoiseSchedule, leading_timesteps, predict_x0, step
from models.schedule import alphas_cumprod as cumprod
from models.weights import WeightsError

Operator = Callable[[torch.Tensor], torch.Tensor]

DEFAULT_PRIOR = ddpm_digits.FOLDER_URI  # the shipped digits DDPM
LICENCE = catalog.ZEROSHOT_LICENCE
CONSISTENCY_ITERS = 48  # bisection halvings: the bracket (≤ 4 wide) shrinks below float32 resolution


# ----------------------------------------------------------------------------------------------
# Degradation operators (pure; any N, values in any range)


def pool(x: torch.Tensor, s: int) -> torch.Tensor:
    """Average-pool by ``s``: N×C×H×W → N×C×(H/s)×(W/s) (H, W multiples of ``s``)."""
    return F.avg_pool2d(x, s)


def pool_pinv(y: torch.Tensor, s: int) -> torch.Tensor:
    """Moore–Penrose pseudo-inverse of :func:`pool`: nearest upsample, N×C×h×w → N×C×(h·s)×(w·s)."""
    return y.repeat_interleave(s, dim=-2).repeat_interleave(s, dim=-1)


def gray(x: torch.Tensor) -> torch.Tensor:
    """Mean over channels: N×C×H×W → N×1×H×W."""
    return x.mean(dim=1, keepdim=True)


def gray_pinv(y: torch.Tensor) -> torch.Tensor:
    """Pseudo-inverse of :func:`gray` for 3 channels: replicate, N×1×H×W → N×3×H×W."""
    return y.expand(-1, 3, -1, -1)


# ----------------------------------------------------------------------------------------------
# Samplers


def input_generators(x: torch.Tensor, seed: int) -> list[torch.Generator]:
    """One CPU generator per row of ``x`` (N×C×H×W in [0, 1], any device), seeded from a sha256 of
    ``seed``, the row's shape and its pixels quantised to 16 bits: the same image and seed always
    give the same stream, whatever else is in the batch."""
    rows = (x.detach().float().cpu().clamp(0, 1) * 65535).round().to(torch.int32)
    gens = []
    for row in rows:
        digest = hashlib.sha256(f"darkroom-zeroshot:{int(seed)}:{tuple(row.shape)}:".encode())
        digest.update(row.contiguous().numpy().tobytes())
        gen = torch.Generator()
        gen.manual_seed(int.from_bytes(digest.digest()[:8], "little") & (2**63 - 1))
        gens.append(gen)
    return gens


def jump_schedule(steps: int, jump_length: int = 10, jumps: int = 1) -> list[int]:
    """The positions a resampling chain visits, as RePaint's "jump" schedule.

    Position ``p`` in 0…steps is the state before the p-th denoising step (0: pure noise at the
    first timestep, ``steps``: the clean image). The chain moves down one position at a time;
    on reaching a multiple of ``jump_length`` (other than the end) it jumps back up
    ``jump_length`` positions, ``jumps − 1`` times per such position, and denoises again. So the
    network runs ``steps + (jumps − 1)·jump_length·⌊(steps − 1)/jump_length⌋`` times; ``jumps=1``
    is the plain chain ``[0, 1, …, steps]``.
    """
    if steps < 1 or jump_length < 1 or jumps < 1:
        raise ValueError(f"steps, jump_length and jumps must be ≥ 1, got {steps}, {jump_length}, {jumps}")
    path, p, left = [0], 0, {}
    while p < steps:
        p += 1
        path.append(p)
        if p < steps and p % jump_length == 0:
            left.setdefault(p, jumps - 1)
            if left[p] > 0:
                left[p] -= 1
                p -= jump_length
                path.append(p)
    return path


def _levels(alphas_cumprod: torch.Tensor, steps: int, device: torch.device) -> tuple[list[int], torch.Tensor]:
    """(timesteps t_0 > … > t_{n-1}, ᾱ at positions 0…n with ᾱ = 1 at the clean end n)."""
    acp = alphas_cumprod.to(device=device, dtype=torch.float32)
    ts = leading_timesteps(acp.shape[0], steps)
    return ts, torch.cat([acp[ts], torch.ones(1, device=device)])


def _eps(eps_model: EpsModel, x: torch.Tensor, t: int) -> torch.Tensor:
    return eps_model(x, torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)).to(torch.float32)


def _renoise(x: torch.Tensor, a_from: torch.Tensor, a_to: torch.Tensor, generators, device) -> torch.Tensor:
    """Forward process from noise level ᾱ=a_from up to a_to < a_from (a RePaint jump)."""
    ratio = a_to / a_from
    return ratio**0.5 * x + (1 - ratio) ** 0.5 * noise(x.shape, generators, device)


def _check(y: torch.Tensor, generators: Sequence[torch.Generator]) -> None:
    if y.ndim != 4:
        raise ValueError(f"expected N×C×H×W, got shape {tuple(y.shape)}")
    if y.shape[0] != len(generators):
        raise ValueError(f"batch of {y.shape[0]} needs {y.shape[0]} generators, got {len(generators)}")


def repaint(
    eps_model: EpsModel,
    y: torch.Tensor,
    mask: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    generators: Sequence[torch.Generator],
    steps: int,
    jump_length: int = 10,
    jumps: int = 1,
    *,
    clip_sample: bool = True,
) -> torch.Tensor:
    """RePaint inpainting with DDPM ancestral steps (:func:`models.schedule.step`, as ``ddpm_sample``).

    eps_model: ``(x_t, t) -> eps`` on N×C×H×W in the DDPM's [-1, 1] scale (models.diffusion).
    y: float N×C×H×W in [0, 1], the image; its values under holes are ignored.
    mask: N×1×H×W or N×C×H×W, 1 = known pixel, 0 = hole (values ≥ 0.5 count as known).
    alphas_cumprod: float (T,) ᾱ of the prior's training schedule.
    generators: one per row; row i draws x_T, then two C×H×W N(0, I) per denoising step except
        the last (holes, then known pixels) and one per jump, all from ``generators[i]``.
    steps: distinct timesteps, leading-spaced over T as ``ddpm_sample``; jump_length / jumps as
        :func:`jump_schedule` (``jumps=1``: no resampling).

    Returns float32 N×C×H×W in [0, 1] on ``y``'s device; known pixels equal ``y`` exactly (pasted
    back after the chain, which already ends on them up to float rounding).
    """
    _check(y, generators)
    device = y.device
    ts, a = _levels(alphas_cumprod, steps, device)
    n = len(ts)
    known = (mask >= 0.5).to(torch.float32).expand_as(y)
    y = y.to(torch.float32)
    y2 = y * 2 - 1
    x = noise(y.shape, generators, device)
    path = jump_schedule(n, jump_length, jumps)
    for p, q in zip(path, path[1:]):
        if q < p:
            x = _renoise(x, a[p], a[q], generators, device)
            continue
        a_prev = a[q]
        eps = _eps(eps_model, x, ts[p])
        if q < n:  # the holes' noise first, then the known pixels': the order of the generators' draws
            holes = step(x, eps, a[p], a_prev, noise=noise(y.shape, generators, device), clip_sample=clip_sample)
            seen = a_prev**0.5 * y2 + (1 - a_prev) ** 0.5 * noise(y.shape, generators, device)
        else:
            holes, seen = step(x, eps, a[p], a_prev, clip_sample=clip_sample), y2
        x = known * seen + (1 - known) * holes
    out = ((x + 1) / 2).clamp(0, 1)
    return known * y + (1 - known) * out


def ddnm(
    eps_model: EpsModel,
    y: torch.Tensor,
    A: Operator,
    A_pinv: Operator,
    alphas_cumprod: torch.Tensor,
    generators: Sequence[torch.Generator],
    steps: int,
    eta: float = 0.85,
    jump_length: int = 10,
    jumps: int = 1,
    *,
    clip_sample: bool = True,
) -> torch.Tensor:
    """DDNM: DDIM-style sampling with the range–null-space projection of x̂₀ at every step.

    eps_model: ``(x_t, t) -> eps`` on the image shape (that of ``A_pinv(y)``), [-1, 1] scale.
    y: float observation ``A x`` in [0, 1] (e.g. N×C×h×w low-res, or N×1×H×W gray).
    A / A_pinv: the degradation and its Moore–Penrose pseudo-inverse, per-row linear maps that
        average disjoint groups of pixels and copy back to them (:func:`pool`/:func:`pool_pinv`,
        :func:`gray`/:func:`gray_pinv`), so that ``A(A_pinv(y)) = y`` and constants are preserved.
    alphas_cumprod: float (T,) ᾱ of the prior's schedule; steps: leading-spaced timesteps.
    eta: share of the step's noise that is fresh (``x_{t-1} = √ᾱ' x̂₀ + √(1-ᾱ')(η z + √(1-η²) ε)``,
        as the DDNM paper's sampler; 0 is deterministic after x_T).
    generators: one per row; row i draws x_T, then one image-shaped N(0, I) per denoising step
        except the last (when ``eta > 0``) and one per jump (``jumps > 1``: DDNM's "time travel").

    Returns float32 image-shaped N×C×H×W in [0, 1] with ``A(out) = y`` to float precision
    (:func:`consistent` is applied last).
    """
    _check(y, generators)
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    device = y.device
    y = y.to(torch.float32)
    y2 = y * 2 - 1
    shape = A_pinv(y).shape
    ts, a = _levels(alphas_cumprod, steps, device)
    n = len(ts)
    x = noise(shape, generators, device)
    path = jump_schedule(n, jump_length, jumps)
    for p, q in zip(path, path[1:]):
        if q < p:
            x = _renoise(x, a[p], a[q], generators, device)
            continue
        eps = _eps(eps_model, x, ts[p])
        x0 = predict_x0(x, eps, a[p])
        x0 = x0.clamp(-1, 1) if clip_sample else x0
        x0 = x0 - A_pinv(A(x0) - y2)
        if q < n:
            a_prev = a[q]
            z = eta * noise(shape, generators, device) + (1 - eta**2) ** 0.5 * eps if eta > 0 else eps
            x = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * z
        else:
            x = x0
    return consistent((x + 1) / 2, y, A, A_pinv)


def consistent(
    x: torch.Tensor, y: torch.Tensor, A: Operator, A_pinv: Operator, iters: int = CONSISTENCY_ITERS
) -> torch.Tensor:
    """The image nearest ``x`` (per group, in L2) with values in [0, 1] and ``A(out) = y``.

    x: float N×C×H×W, any values; y: ``A``'s output shape, values in [0, 1].
    For ``A`` a mean over disjoint groups and ``A_pinv`` the copy back, the projection onto
    {v ∈ [0, 1]ⁿ : mean(v) = y} of a group is ``clamp(x + c)`` with one shift ``c`` per group,
    and mean(clamp(x + c)) grows with ``c``: ``c`` is found by bisection, per element of ``y``,
    on a bracket from each row's own extremes (so a row never depends on its batch).
    Returns float32, same shape as ``x``.
    """
    x = x.to(torch.float32)
    dims = tuple(range(1, x.ndim))
    lo = (-x.amax(dim=dims, keepdim=True)).expand_as(y).clone()  # every pixel ≤ 0: mean 0 ≤ y
    hi = (1 - x.amin(dim=dims, keepdim=True)).expand_as(y).clone()  # every pixel ≥ 1: mean 1 ≥ y
    for _ in range(iters):
        mid = (lo + hi) / 2
        low = A((x + A_pinv(mid)).clamp(0, 1)) < y
        lo = torch.where(low, mid, lo)
        hi = torch.where(low, hi, mid)
    return (x + A_pinv((lo + hi) / 2)).clamp(0, 1)


# ----------------------------------------------------------------------------------------------
# Registry models


def weights_digest(p: PriorParams) -> str:
    """sha256 of the prior's ``diffusion_pytorch_model.safetensors``: the pin when given (the shipped
    prior is pinned by ``models.ddpm_digits.WEIGHTS``), else computed as for the ``ddpm``
    generation entry, once per process and file version."""
    pin = p.prior_sha256 or (ddpm_digits.WEIGHTS.sha256 if p.prior.rstrip("/") == DEFAULT_PRIOR else None)
    return diffusers_folder.weights_digest(p.prior, pin)


class ZeroShotModule(nn.Module):
    """The prior's UNet plus one restoration procedure, as an ``ImageModel.module``.

    ``forward(x)``: x float N×C_in×H×W in [0, 1] with (H, W) = ``in_size`` → float32 output in
    [0, 1]; any other size raises ``ValueError``. ``restore(eps_model, x, generators, ᾱ, clip)``
    is one of the procedures above bound to its params; generators come from
    :func:`input_generators`.
    """

    def __init__(
        self,
        name: str,
        unet: nn.Module,
        schedule: NoiseSchedule,
        restore: Callable,
        in_size: tuple[int, int],
        seed: int,
        micro_batch: int,
    ):
        super().__init__()
        self.name, self.unet, self.restore = name, unet, restore
        self.acp, self.clip_sample = cumprod(schedule.betas()), schedule.clip_sample
        self.in_size, self.seed, self.micro_batch = in_size, seed, micro_batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.in_size:
            (h, w), (ph, pw) = self.in_size, _size(self.unet)
            makes = f" (it generates {pw}×{ph})" if (h, w) != (ph, pw) else ""
            raise ValueError(
                f"{self.name} restores {w}×{h} images with this prior{makes}; got {x.shape[-1]}×{x.shape[-2]}: "
                "resize or crop the inputs"
            )
        eps = unet_eps(self.unet, self.micro_batch)  # here: the engine may move the UNet after building
        return self.restore(eps, x.float(), input_generators(x, self.seed), self.acp, self.clip_sample)


def _size(unet) -> tuple[int, int]:
    size = unet.config.sample_size
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _inpaint(p: RepaintParams, eps, x, gens, acp, clip):
    return repaint(eps, x[:, :-1], x[:, -1:], acp, gens, p.steps, p.jump_length, p.jumps, clip_sample=clip)


def _super_resolve(p: SRParams, eps, x, gens, acp, clip):
    A, A_pinv = functools.partial(pool, s=p.scale), functools.partial(pool_pinv, s=p.scale)
    return ddnm(eps, x, A, A_pinv, acp, gens, p.steps, p.eta, clip_sample=clip)


def _colorize(p: DDNMParams, eps, x, gens, acp, clip):
    return ddnm(eps, gray(x), gray, gray_pinv, acp, gens, p.steps, p.eta, clip_sample=clip)


def _build(
    name: str, p: PriorParams, restore: Callable, *, scale: int = 1, needs_mask: bool = False, colour_out: bool = False
) -> ImageModel:
    digest = weights_digest(p)
    unet = load_pipeline_folder(p.prior, sha256=digest)  # pinned to the digest recorded for the run
    schedule = load_schedule(p.prior)
    cfg = unet.config
    if cfg.in_channels != cfg.out_channels:
        raise WeightsError(
            f"{p.prior}: UNet maps {cfg.in_channels} channels to {cfg.out_channels}; an ε-prediction prior maps C to C"
        )
    if cfg.get("num_class_embeds") or cfg.get("class_embed_type"):
        raise WeightsError(f"{p.prior}: class-conditional UNets are not supported (unconditional priors only)")
    if colour_out and cfg.in_channels != 3:
        raise WeightsError(
            f"{p.prior}: {name} needs an RGB (3-channel) prior, this one has {cfg.in_channels} channel(s)"
        )
    if p.steps > schedule.num_train_timesteps:
        raise ValueError(
            f"{name}: steps={p.steps} exceeds the prior's {schedule.num_train_timesteps} training timesteps"
        )
    h, w = _size(unet)
    if h % scale or w % scale:
        raise ValueError(f"{name}: scale {scale} does not divide the prior's sample size {w}×{h}")
    module = ZeroShotModule(
        name, unet, schedule, functools.partial(restore, p), (h // scale, w // scale), p.seed, p.micro_batch
    )
    # tiling=False: the prior only works on whole images of its own size, never on tiles.
    return ImageModel(
        name=name,
        module=module,
        scale=scale,
        channels=cfg.in_channels,
        supports_half=False,
        weights_sha256=digest,
        needs_mask=needs_mask,
        colour_out=colour_out,
        tiling=False,
    )


def build_repaint(p: RepaintParams) -> ImageModel:
    return _build("repaint", p, _inpaint, needs_mask=True)


def build_sr(p: SRParams) -> ImageModel:
    return _build("ddnm-sr", p, _super_resolve, scale=p.scale)


def build_colorize(p: DDNMParams) -> ImageModel:
    return _build("ddnm-colorize", p, _colorize, colour_out=True)
