"""Denoising diffusion (DDPM / DDIM) for image generation: the network, its weights, the samplers.

The network is diffusers' ``UNet2DModel`` (built from :class:`DDPMConfig`, or loaded from a
diffusers-format folder: ``config.json`` + ``diffusion_pytorch_model.safetensors``; never
unpickled). The samplers are pure functions of an ``eps_model(x_t, t) -> eps`` callable, a noise
schedule and one ``torch.Generator`` per sample:

* ``x_t``: float32 N×C×H×W, the noisy sample in the model's value range ([-1, 1] for x_0);
* ``t``: int64 tensor of shape (N,), the training timestep of every row (all equal);
* ``eps``: the predicted noise, same shape as ``x_t`` (any float dtype; used as float32).

Determinism contract: sample ``i`` draws all its noise (the initial ``x_T`` and every step's
noise) from ``generators[i]`` and from nothing else, and every sampler operation is elementwise
per row, so a sample's output depends only on its generator (seeded by :func:`sample_generator`
from the job seed and the sample index), the network and the device — not on the batch size or on
which other samples share its batch, provided the network itself is batch-invariant: wrap a UNet with
:func:`unet_eps`, whose fixed micro-batch shape makes it so (tests/models/test_diffusion.py checks
it on CPU).

As a :class:`models.base.GenerativeModel` (:func:`generative_model`): the registry entries
``darkroom-ddpm-digits`` (models/ddpm_digits.py) and ``ddpm`` (:func:`build_folder`, any diffusers
folder a user brings), both sampled as :class:`SamplerParams` say.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from models import fetch as remote
from models.base import GenerativeModel
from models.catalog import DDPMFolderParams, SamplerParams
from models.weights import PACKAGE_SCHEME, WeightsError, cache_dir, file_sha256, package_file

EpsModel = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"


@dataclass(frozen=True)
class NoiseSchedule:
    """What sampling needs from a DDPM's training, apart from the network; :func:`load_schedule`
    reads it from a diffusers folder.

    num_train_timesteps: T, the length of the forward (noising) chain.
    beta_schedule: ``linear`` (betas evenly spaced from ``beta_start`` to ``beta_end``, as in
        Ho et al. 2020) or ``scaled_linear`` (evenly spaced in sqrt).
    clip_sample: clamp the predicted x_0 to [-1, 1] at every sampling step (diffusers' default).
    """

    num_train_timesteps: int = 1000
    beta_schedule: str = "linear"
    beta_start: float = 1e-4
    beta_end: float = 0.02
    clip_sample: bool = True

    def betas(self) -> torch.Tensor:
        """float32 (T,) tensor of per-step noise variances β_t, t = 0 … T-1."""
        return make_betas(self.num_train_timesteps, self.beta_schedule, self.beta_start, self.beta_end)

    def alphas_cumprod(self) -> torch.Tensor:
        """float32 (T,) tensor ᾱ_t = ∏_{s≤t} (1 - β_s)."""
        return alphas_cumprod(self.betas())


@dataclass(frozen=True)
class DDPMConfig(NoiseSchedule):
    """A pixel-space DDPM: the training noise schedule (the fields of :class:`NoiseSchedule`)
    and the UNet's shape.

    sample_size: height = width of generated images, in pixels.
    in_channels / out_channels: image channels (out = in for an ε-predicting model).
    block_out_channels: channels of each UNet resolution level (one down/up block per level).
    layers_per_block: ResNet layers per down block (up blocks get one more, as in diffusers).
    attention_levels: indices of levels whose blocks carry self-attention (none by default).
    norm_num_groups: GroupNorm groups; must divide every entry of ``block_out_channels``.
    """

    sample_size: int = 32
    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 2
    attention_levels: tuple[int, ...] = ()
    norm_num_groups: int = 8

    def schedule(self) -> NoiseSchedule:
        """The schedule alone, as :func:`load_schedule` reads it back from a saved folder."""
        return NoiseSchedule(
            self.num_train_timesteps, self.beta_schedule, self.beta_start, self.beta_end, self.clip_sample
        )


def make_betas(
    num_train_timesteps: int, schedule: str = "linear", beta_start: float = 1e-4, beta_end: float = 0.02
) -> torch.Tensor:
    """float32 (T,) β schedule, computed as diffusers' DDPMScheduler/DDIMScheduler compute it."""
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    if schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    raise ValueError(f"unknown beta_schedule {schedule!r} (linear | scaled_linear)")


def alphas_cumprod(betas: torch.Tensor) -> torch.Tensor:
    """ᾱ_t = ∏_{s≤t} (1 - β_s), float32 (T,)."""
    return torch.cumprod(1.0 - betas.to(torch.float32), dim=0)


def build_unet(cfg: DDPMConfig):
    """A freshly initialised diffusers ``UNet2DModel`` for ``cfg`` (ε-prediction)."""
    from diffusers import UNet2DModel

    levels = len(cfg.block_out_channels)
    bad = [c for c in cfg.block_out_channels if c % cfg.norm_num_groups]
    if bad:
        raise ValueError(f"norm_num_groups={cfg.norm_num_groups} does not divide block_out_channels {bad}")
    down = tuple("AttnDownBlock2D" if i in cfg.attention_levels else "DownBlock2D" for i in range(levels))
    up = tuple("AttnUpBlock2D" if (levels - 1 - i) in cfg.attention_levels else "UpBlock2D" for i in range(levels))
    return UNet2DModel(
        sample_size=cfg.sample_size,
        in_channels=cfg.in_channels,
        out_channels=cfg.out_channels,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=cfg.norm_num_groups,
    )


def unet_eps(unet, micro_batch: int | None = 1) -> EpsModel:
    """Wrap a ``UNet2DModel`` as ``eps_model(x_t, t) -> eps`` (no grad; x_t cast to the UNet's dtype).

    Batch invariance: matrix products with few rows (the time embedding's ``Linear`` sees N×C)
    and small convolutions take shape-dependent kernels, so a row's ε can differ in the last bits
    with the batch size (seen on CPU: ~1e-7). With ``micro_batch=m`` the network only ever runs
    on exactly ``m`` rows: the batch is cut into chunks of ``m`` and the last chunk is padded by
    repeating its last row, so a row's ε no longer depends on the batch size or its neighbours.
    Set ``m`` to the usual batch size for throughput (padding costs at most m-1 rows per call);
    ``None`` runs the batch as is (fastest; not bit-stable across batch sizes).
    """
    dtype = next(unet.parameters()).dtype
    if micro_batch is not None and micro_batch < 1:
        raise ValueError(f"micro_batch must be ≥ 1 or None, got {micro_batch}")

    def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x.to(dtype)
        with torch.no_grad():
            if micro_batch is None:
                return unet(x, t).sample
            outs = []
            for start in range(0, x.shape[0], micro_batch):
                xc, tc = x[start : start + micro_batch], t[start : start + micro_batch]
                rows = xc.shape[0]
                if rows < micro_batch:
                    pad = micro_batch - rows
                    xc = torch.cat([xc, xc[-1:].expand(pad, *xc.shape[1:])])
                    tc = torch.cat([tc, tc[-1:].expand(pad)])
                outs.append(unet(xc, tc).sample[:rows])
            return torch.cat(outs)

    return eps


def scheduler_config(cfg: DDPMConfig) -> dict:
    """The ``scheduler_config.json`` diffusers' DDPMScheduler/DDIMScheduler read for ``cfg``."""
    return {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": cfg.num_train_timesteps,
        "beta_schedule": cfg.beta_schedule,
        "beta_start": cfg.beta_start,
        "beta_end": cfg.beta_end,
        "clip_sample": cfg.clip_sample,
        "prediction_type": "epsilon",
        "variance_type": "fixed_small",
    }


def save_pipeline_folder(unet, cfg: DDPMConfig | None, path: str | os.PathLike) -> Path:
    """Write ``config.json`` + ``diffusion_pytorch_model.safetensors`` (+ ``scheduler_config.json``
    when ``cfg`` is given) to the local folder ``path``; returns it."""
    out = Path(path)
    unet.save_pretrained(out, safe_serialization=True)
    if cfg is not None:
        (out / SCHEDULER_CONFIG_NAME).write_text(json.dumps(scheduler_config(cfg), indent=2) + "\n")
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
    folder = Path(root) if local else download_folder(fs, root)
    if not local:
        remote.fetch(fs, f"{root}/{CONFIG_NAME}", folder / CONFIG_NAME)
    config = json.loads((folder / CONFIG_NAME).read_text())
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise WeightsError(f"{uri}: config.json describes a {config.get('_class_name')}, not a UNet2DModel")
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


def download_folder(fs, root: str) -> Path:
    """The cache folder (``$DARKROOM_CACHE/diffusers/<key>``) that holds local copies of the files
    of the remote folder ``root`` of ``fs``; the caller copies the files it needs there."""
    key = hashlib.sha256(f"{fs.protocol}:{root}".encode()).hexdigest()[:24]
    folder = cache_dir() / "diffusers" / key
    folder.mkdir(parents=True, exist_ok=True)
    return folder


# ----------------------------------------------------------------------------------------------
# Samplers


def sample_generator(job_seed: int, index: int, device: str | torch.device = "cpu") -> torch.Generator:
    """The generator of sample ``index`` of a job seeded ``job_seed``.

    Its seed is a 63-bit digest of (job_seed, index), so neighbouring indices and seeds give
    unrelated noise streams; the same pair always gives the same stream on the same device.
    The samplers draw on the generator's device and then move the noise to the sampling device,
    so CPU generators (the default) give the same noise whatever device runs the network.
    """
    digest = hashlib.sha256(f"darkroom-ddpm:{int(job_seed)}:{int(index)}".encode()).digest()
    gen = torch.Generator(device=device)
    gen.manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return gen


def noise(shape: Sequence[int], generators: Sequence[torch.Generator], device: torch.device) -> torch.Tensor:
    """One N(0, I) float32 draw of shape C×H×W per generator, stacked to N×C×H×W on ``device``."""
    rows = [torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=torch.float32) for g in generators]
    return torch.stack(rows).to(device)


def _check(shape: Sequence[int], generators: Sequence[torch.Generator]) -> None:
    if len(shape) != 4:
        raise ValueError(f"shape must be N×C×H×W, got {tuple(shape)}")
    if shape[0] != len(generators):
        raise ValueError(f"batch of {shape[0]} needs {shape[0]} generators, got {len(generators)}")


def leading_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """Descending timesteps ``[(n-1)·r, …, r, 0]`` with ``r = T // n`` (diffusers' "leading" spacing)."""
    if not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(f"num_steps must be in 1…{num_train_timesteps}, got {num_steps}")
    ratio = num_train_timesteps // num_steps
    return [i * ratio for i in reversed(range(num_steps))]


def _to_unit(x: torch.Tensor) -> torch.Tensor:
    return ((x + 1) / 2).clamp(0, 1)


def ddpm_sample(
    eps_model: EpsModel,
    shape: Sequence[int],
    betas: torch.Tensor,
    generators: Sequence[torch.Generator],
    steps: int | None = None,
    *,
    clip_sample: bool = True,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, σ_t² = β̃_t, the "fixed_small" variance).

    eps_model: ``(x_t, t) -> eps`` as described in the module docstring.
    shape: (N, C, H, W); ``len(generators) == N``.
    betas: float (T,) training noise schedule.
    generators: sample i draws x_T (C×H×W, float32) then one C×H×W N(0, I) per step with t > 0,
        in that order, from ``generators[i]``.
    steps: None runs all T steps (t = T-1 … 0, T model calls); n < T strides the chain with
        leading spacing (t = (n-1)·⌊T/n⌋ … 0), as diffusers' DDPMScheduler.set_timesteps(n).
    clip_sample: clamp the predicted x_0 to [-1, 1] at every step.

    Returns float32 N×C×H×W in [0, 1] (``clamp((x_0 + 1) / 2)``) on ``device``.
    """
    _check(shape, generators)
    device = torch.device(device)
    acp = alphas_cumprod(betas).to(device)
    T = acp.shape[0]
    timesteps = leading_timesteps(T, steps or T)
    one = torch.tensor(1.0, dtype=torch.float32, device=device)
    x = noise(shape, generators, device)
    for k, t in enumerate(timesteps):
        prev = timesteps[k + 1] if k + 1 < len(timesteps) else -1
        a_t = acp[t]
        a_prev = acp[prev] if prev >= 0 else one
        beta_prod_t, beta_prod_prev = 1 - a_t, 1 - a_prev
        alpha_step = a_t / a_prev
        beta_step = 1 - alpha_step
        eps = eps_model(x, torch.full((shape[0],), t, dtype=torch.long, device=device)).to(torch.float32)
        x0 = (x - beta_prod_t**0.5 * eps) / a_t**0.5
        if clip_sample:
            x0 = x0.clamp(-1, 1)
        mean = (a_prev**0.5 * beta_step / beta_prod_t) * x0 + (alpha_step**0.5 * beta_prod_prev / beta_prod_t) * x
        if t > 0:
            variance = torch.clamp(beta_prod_prev / beta_prod_t * beta_step, min=1e-20)
            x = mean + variance**0.5 * noise(shape, generators, device)
        else:
            x = mean
    return _to_unit(x)


def ddim_sample(
    eps_model: EpsModel,
    shape: Sequence[int],
    alphas_cumprod: torch.Tensor,
    generators: Sequence[torch.Generator],
    num_steps: int,
    eta: float = 0.0,
    *,
    clip_sample: bool = True,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021) over ``num_steps`` leading-spaced timesteps.

    eps_model: ``(x_t, t) -> eps`` as described in the module docstring; called num_steps times.
    shape: (N, C, H, W); ``len(generators) == N``.
    alphas_cumprod: float (T,) ᾱ_t of the training schedule; ᾱ before t = 0 is taken as 1.
    eta: 0 is deterministic DDIM (noise only in x_T); 1 has DDPM-like stochasticity, with
        σ_t = eta · sqrt((1-ᾱ_prev)/(1-ᾱ_t) · (1-ᾱ_t/ᾱ_prev)).
    generators: sample i draws x_T (C×H×W, float32) and then, when eta > 0, one C×H×W N(0, I)
        per step that has a previous timestep (all steps but the last), from ``generators[i]``.
    clip_sample: clamp the predicted x_0 to [-1, 1] (ε is not recomputed from the clamped x_0).

    Returns float32 N×C×H×W in [0, 1] on ``device``.
    """
    _check(shape, generators)
    if eta < 0:
        raise ValueError(f"eta must be ≥ 0, got {eta}")
    device = torch.device(device)
    acp = alphas_cumprod.to(device=device, dtype=torch.float32)
    timesteps = leading_timesteps(acp.shape[0], num_steps)
    one = torch.tensor(1.0, dtype=torch.float32, device=device)
    x = noise(shape, generators, device)
    for k, t in enumerate(timesteps):
        prev = timesteps[k + 1] if k + 1 < len(timesteps) else -1
        a_t = acp[t]
        a_prev = acp[prev] if prev >= 0 else one
        beta_prod_t = 1 - a_t
        eps = eps_model(x, torch.full((shape[0],), t, dtype=torch.long, device=device)).to(torch.float32)
        x0 = (x - beta_prod_t**0.5 * eps) / a_t**0.5
        if clip_sample:
            x0 = x0.clamp(-1, 1)
        variance = (1 - a_prev) / beta_prod_t * (1 - a_t / a_prev)
        std = eta * variance**0.5
        x = a_prev**0.5 * x0 + (1 - a_prev - std**2) ** 0.5 * eps
        if eta > 0 and prev >= 0:
            x = x + std * noise(shape, generators, device)
    return _to_unit(x)


# ----------------------------------------------------------------------------------------------
# As a GenerativeModel (registry entries `darkroom-ddpm-digits` and `ddpm`)


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
    candidates = [f"{root}/{SCHEDULER_CONFIG_NAME}"]
    if root.endswith("/unet"):  # a full pipeline folder: its scheduler/ sits next to unet/
        candidates.append(f"{root.rsplit('/', 1)[0]}/scheduler/{SCHEDULER_CONFIG_NAME}")
    found = next((c for c in candidates if fs.exists(c)), None)
    if found is None:
        return NoiseSchedule()
    if remote.is_local(fs):
        config = json.loads(Path(found).read_text())
    else:
        local = download_folder(fs, root) / SCHEDULER_CONFIG_NAME
        remote.fetch(fs, found, local)
        config = json.loads(local.read_text())
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


def weights_digest(p: DDPMFolderParams) -> str:
    """sha256 of the folder's ``diffusion_pytorch_model.safetensors``: the pin when given, else the
    file's digest, computed once per process and file version (:func:`models.fetch.digest`)
    because the driver asks several times while planning a run."""
    if p.sha256:
        return p.sha256
    fs, root = resolve_folder(p.uri, p.storage_options)
    try:
        return remote.digest(fs, f"{root}/{WEIGHTS_NAME}")
    except FileNotFoundError:
        raise WeightsError(
            f"{p.uri}: no {WEIGHTS_NAME} (a diffusers folder saved with safe_serialization=True is needed)"
        ) from None


def build_folder(p: DDPMFolderParams) -> GenerativeModel:
    """The ``ddpm`` registry entry: load (pinned to :func:`weights_digest`, so the model reports the
    digest of the very file it loaded) and wrap a user's diffusers DDPM folder."""
    digest = weights_digest(p)
    unet = load_pipeline_folder(p.uri, sha256=digest, storage_options=p.storage_options)
    return generative_model("ddpm", unet, load_schedule(p.uri, p.storage_options), p, weights_sha256=digest)
