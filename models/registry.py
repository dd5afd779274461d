"""The registry: model names → how to build them, what params they take, where weights come from.

A registry is an ordinary object (``default_registry()`` builds a fresh one), so tests and
users can assemble their own; registering a name twice is refused.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from models import catalog
from models.catalog import NoParams, ScaleParams
from models.weights import WeightsSpec, fetch, is_remote

if TYPE_CHECKING:
    from models.base import ImageModel


@dataclass(frozen=True)
class ModelEntry:
    """One registry entry. ``build(params)`` gets an instance of ``params`` (validated).

    ``weights_digest(params)``, for entries whose weights file depends on the params
    (``checkpoint``), returns the sha256 those params select; see :meth:`weights_sha256`.

    ``inspect(params)``, run on the driver before anything starts, checks that ``build`` would load
    the weights these params select (``WeightsError`` if not) and returns what it found (e.g. the
    detected architecture), or None; see :meth:`check`. ``config_digest(params)`` digests files
    besides the weights that change the outputs (a diffusers folder's configs); see :meth:`configs_sha256`.

    Entries of task ``generation`` build a :class:`GenerativeModel`; their ``num_classes`` lets a
    job's ``class_label`` be checked before anything runs (0 = unconditional; None = only known
    once built, so the engine checks it when the model loads).
    """

    name: str
    task: str
    description: str
    params: type[BaseModel]
    build: Callable[[BaseModel], ImageModel]
    weights: WeightsSpec | None = None
    licence: str = "n/a (no learned weights)"
    weights_digest: Callable[[BaseModel], str] | None = None
    needs_mask: bool = False  # the built model takes a mask (ImageModel.needs_mask); jobs are checked for a mask source
    num_classes: int | None = None
    scale: float | None = None  # output/input size where neither the weights nor a `scale` param says
    prompted: bool = False  # a generation model that takes one text prompt per sample (TextToImageModel)
    inspect: Callable[[BaseModel], str | None] | None = None
    config_digest: Callable[[BaseModel], str | None] | None = None

    def output_scale(self, params: dict) -> float | None:
        """Output size / input size of a step with these params, known without building the model
        (from the weights spec, a ``scale`` param, or ``scale``); None where only the built model
        knows (``checkpoint``: spandrel reads it from the file)."""
        if self.weights is not None:
            return float(self.weights.scale)
        given = getattr(self.validate_params(params), "scale", None)
        return float(given) if given is not None else self.scale

    def validate_params(self, params: dict) -> BaseModel:
        return self.params.model_validate(params)

    def weights_sha256(self, params: dict) -> str | None:
        """sha256 of the weights a step with these params runs (None without learned weights).

        What the manifest records and the job fingerprint hashes; an actor whose built
        model reports other weights refuses to run.
        """
        if self.weights_digest is not None:
            return self.weights_digest(self.validate_params(params))
        return self.weights.sha256 if self.weights else None

    def check(self, params: dict) -> str | None:
        """Whether the weights will load, checked before any model actor starts (``WeightsError``
        saying why not); returns a description of what runs (e.g. ``ESRGAN×4``) or None.
        Shipped weights are checked against their pin where they are files on this machine."""
        if self.inspect is not None:
            return self.inspect(self.validate_params(params))
        if self.weights is not None and not is_remote(self.weights.uri):
            fetch(self.weights.uri, self.weights.sha256)
        return None

    def configs_sha256(self, params: dict) -> str | None:
        """Digest of the config files besides the weights that change the outputs, or None."""
        return self.config_digest(self.validate_params(params)) if self.config_digest is not None else None


class UnknownModelError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class Registry:
    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry] = {}

    def register(self, entry: ModelEntry) -> None:
        if entry.name in self._entries:
            raise ValueError(f"model {entry.name!r} is already registered")
        self._entries[entry.name] = entry

    def get(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(self.names())}"
            raise UnknownModelError(f"unknown model {name!r}{hint}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[ModelEntry]:
        return [self._entries[n] for n in self.names()]

    def build(self, name: str, params: dict | None = None) -> ImageModel:
        entry = self.get(name)
        return entry.build(entry.validate_params(params or {}))


def lazy(module: str, name: str) -> Callable[..., Any]:
    """``module.name``, imported on the first call: the network modules import torch, which
    listing the registry and validating params never need (``darkroom validate`` starts fast)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__qualname__ = f"{module}.{name}"
    return call


def _ignoring_params(module: str, name: str) -> Callable[[NoParams], ImageModel]:
    """The build of an entry without params: ``module.name()`` (imported on the first call, see lazy)."""
    build = lazy(module, name)
    return lambda _: build()


def _build_identity(_: NoParams) -> ImageModel:
    from models.base import ImageModel  # torch: imported when the model is built (see lazy)
    from models.resample import Identity

    # fp32 only: nothing to gain from half precision without weights, and a 16-bit image (or bf16's 8-bit
    # mantissa) would lose levels on the way through.
    return ImageModel("identity", Identity(), scale=1, channels=3, supports_half=False, tiling=False)


def _resample_entry(kernel: str, description: str) -> ModelEntry:
    def build(p: ScaleParams) -> ImageModel:
        from models.base import ImageModel  # torch: imported when the model is built (see lazy)
        from models.resample import Resample

        # fp32 only, as identity: exact levels for 16-bit images, and no weights to halve.
        return ImageModel(
            name=kernel, module=Resample(p.scale, kernel), scale=p.scale, channels=3, supports_half=False, tiling=False
        )

    return ModelEntry(name=kernel, task="resample", description=description, params=ScaleParams, build=build)


def default_registry() -> Registry:
    """A new registry holding every model darkroom ships."""
    reg = Registry()
    reg.register(
        ModelEntry(
            name="identity",
            task="passthrough",
            description="returns the input unchanged (tests, format conversion)",
            params=NoParams,
            build=_build_identity,
            scale=1,
        )
    )
    reg.register(_resample_entry("bicubic", "Keys cubic (a=-0.5), antialiased when shrinking"))
    reg.register(_resample_entry("lanczos", "Lanczos-3, antialiased when shrinking"))
    for name, description, build, weights in (
        (
            "realesr-animevideov3",
            "Real-ESRGAN SRVGGNetCompact 64×16, ×4 (anime/video, fast)",
            "build_animevideov3",
            catalog.REALESR_ANIMEVIDEOV3,
        ),
        (
            "realesrgan-x4plus",
            "Real-ESRGAN RRDBNet 64×23, ×4 (general photos; slow, best quality)",
            "build_x4plus",
            catalog.REALESRGAN_X4PLUS,
        ),
        (
            "realesrgan-x4plus-anime",
            "Real-ESRGAN RRDBNet 64×6, ×4 (anime illustrations)",
            "build_x4plus_anime",
            catalog.REALESRGAN_X4PLUS_ANIME,
        ),
    ):
        reg.register(
            ModelEntry(
                name=name,
                task="super-resolution",
                description=description,
                params=NoParams,
                build=_ignoring_params("models.realesrgan", build),
                weights=weights,
                licence=catalog.REALESRGAN_LICENCE,
            )
        )
    for name, task, description, module, weights in (
        (
            "darkroom-sr-x4",
            "super-resolution",
            "darkroom's own ×4 residual CNN (126k params), trained for PSNR; docs/quality.md",
            "darkroom_sr",
            catalog.DARKROOM_SR,
        ),
        (
            "darkroom-denoise",
            "denoising",
            "darkroom's own blind colour Gaussian denoiser, sigma 0–50 (218k params); docs/quality.md",
            "darkroom_denoise",
            catalog.DARKROOM_DENOISE,
        ),
        (
            "darkroom-colorize",
            "colorization",
            "darkroom's own colorizer: keeps the luma, chroma from a fitted luma→chroma curve (10 params); RGB out; "
            "docs/quality.md",
            "darkroom_colorize",
            catalog.DARKROOM_COLORIZE,
        ),
        (
            "darkroom-inpaint",
            "inpainting",
            "darkroom's own inpainter: multigrid membrane fill + U-Net correction (256k params); needs a mask; "
            "docs/quality.md",
            "darkroom_inpaint",
            catalog.DARKROOM_INPAINT,
        ),
    ):
        reg.register(
            ModelEntry(
                name=name,
                task=task,
                description=description,
                params=NoParams,
                build=_ignoring_params(f"models.{module}", "build"),
                weights=weights,
                licence=weights.licence,
                needs_mask=task == "inpainting",
            )
        )
    reg.register(
        ModelEntry(
            name="checkpoint",
            task="any",
            description="a public restoration checkpoint (ESRGAN, SwinIR, HAT, DAT, SCUNet, DRUNet, …) loaded with "
            "spandrel",
            params=catalog.CheckpointParams,
            build=lazy("models.checkpoint", "build"),
            licence=catalog.CHECKPOINT_LICENCE,
            weights_digest=lazy("models.checkpoint", "weights_digest"),
            inspect=lazy("models.checkpoint", "inspect"),
        )
    )
    reg.register(
        ModelEntry(
            name=catalog.DDPM_DIGITS_NAME,
            task="generation",
            description="darkroom's own 32×32 DDPM of class-coloured digits (637k params; ddim 50 steps or ddpm "
            "1000); docs/generation.md",
            params=catalog.SamplerParams,
            build=lazy("models.ddpm_digits", "build"),
            weights=catalog.DDPM_DIGITS,
            licence=catalog.DIGITS_LICENCE,
            num_classes=0,
        )
    )
    reg.register(
        ModelEntry(
            name="ddpm",
            task="generation",
            description="an unconditional ε-prediction DDPM in diffusers format (UNet2DModel folder) from any fsspec "
            "URI",
            params=catalog.DDPMFolderParams,
            build=lazy("models.ddpm", "build_folder"),
            licence="that of the weights (user-supplied)",
            weights_digest=lazy("models.ddpm", "weights_digest"),
            num_classes=0,
            inspect=lazy("models.folder_check", "inspect"),
            config_digest=lazy("models.folder_check", "config_digest"),
        )
    )
    reg.register(
        ModelEntry(
            name="image-to-text",
            task="captioning",
            description="any Hugging Face image-to-text folder (VisionEncoderDecoder, BLIP, …; safetensors) from an "
            "fsspec URI: one caption per image, in the manifest's caption column; docs/generation.md",
            params=catalog.CaptionParams,
            build=lazy("models.image_to_text", "build"),
            licence="that of the weights (user-supplied)",
            weights_digest=lazy("models.folders", "params_digest"),  # torch-free: `darkroom plan` stays light
            scale=1.0,  # the image passes through unchanged
        )
    )
    reg.register(
        ModelEntry(
            name=catalog.CAPTION_DIGITS_NAME,
            task="captioning",
            description="darkroom's own captioner of painted digits ('a red seven'; ViT + GPT-2, 0.3M params): "
            "an image-to-text folder shipped in the package; docs/generation.md",
            params=catalog.CaptionDecoding,
            build=lazy("models.image_to_text", "build_shipped"),
            licence="MIT (trained by darkroom on scikit-learn's digits)",
            weights_digest=lambda p: catalog.CAPTION_DIGITS_SHA256,
            scale=1.0,
        )
    )
    reg.register(
        ModelEntry(
            name="text-to-image",
            task="generation",
            description="any diffusers Stable Diffusion pipeline folder (unet, vae, text_encoder, tokenizer, "
            "scheduler; safetensors) from an fsspec URI; one image per prompt and seed; docs/generation.md",
            params=catalog.TextToImageParams,
            build=lazy("models.text_to_image", "build"),
            licence="that of the weights (user-supplied)",
            weights_digest=lazy("models.folders", "params_digest"),  # torch-free: `darkroom plan` stays light
            num_classes=0,
            prompted=True,
        )
    )
    for name, module, weights, description in (
        (
            catalog.GAN_DIGITS_NAME,
            "gan",
            catalog.GAN_DIGITS,
            "darkroom's own class-conditional DCGAN of 32×32 class-coloured digits (141k generator params); "
            "docs/generation.md",
        ),
        (
            catalog.VAE_DIGITS_NAME,
            "vae",
            catalog.VAE_DIGITS,
            "darkroom's own class-conditional VAE of 32×32 class-coloured digits (133k params); docs/generation.md",
        ),
    ):
        reg.register(
            ModelEntry(
                name=name,
                task="generation",
                description=description,
                params=catalog.LatentParams,
                build=lazy(f"models.{module}", "build"),
                weights=weights,
                licence=weights.licence,
                num_classes=10,
            )
        )
    for name, task, description, params, build in catalog.ZEROSHOT_ENTRIES:
        reg.register(
            ModelEntry(
                name=name,
                task=task,
                description=description,
                params=params,
                build=lazy("models.zeroshot", build),
                licence=catalog.ZEROSHOT_LICENCE,
                weights_digest=lazy("models.zeroshot", "weights_digest"),
                needs_mask=task == "inpainting",
                scale=1,  # ddnm-sr says its own through its `scale` param
            )
        )
    return reg
