"""darkroom-ddpm-digits: darkroom's own unconditional pixel DDPM of class-coloured digits, 32×32.

The network is a small diffusers ``UNet2DModel`` (:data:`CONFIG`: three levels of 16/32/64
channels, one ResNet layer per down block, self-attention only in the 8×8 middle block), trained by
``models/training/train_ddpm_digits.py`` on the 1,500 training digits of
``models/training/digits.py``, class-coloured (stroke hue = class, on black), scaled to [-1, 1].
The EMA weights ship as a diffusers folder in ``models/weights/ddpm-digits/`` (``config.json``,
``diffusion_pytorch_model.safetensors`` with the training metadata, ``scheduler_config.json``,
``training.json``), so any diffusers tool — and darkroom's zero-shot restoration, which uses it
as its default prior — can load it. Samples: float32 N×3×32×32 in [0, 1]; docs/generation.md
has grids and measured quality.
"""

from __future__ import annotations

from models.base import GenerativeModel, WeightsSpec
from models.diffusion import DDPMConfig, SamplerParams, generative_model, load_pipeline_folder
from models.weights import package_file

NAME = "darkroom-ddpm-digits"
LICENCE = "MIT (trained by darkroom on scikit-learn's digits)"
CONFIG = DDPMConfig(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    num_train_timesteps=1000,
)
FOLDER_URI = "package://models/weights/ddpm-digits"
WEIGHTS = WeightsSpec(
    uri=f"{FOLDER_URI}/diffusion_pytorch_model.safetensors",
    # the digest train_ddpm_digits.py printed
    sha256="2e7857f83a8c95992de3b8a534b728037fc3259840a0a3545918346d374539c3",
    format="safetensors",
    scale=1,
    licence=LICENCE,
    value_range=(-1.0, 1.0),
)


def build(p: SamplerParams | None = None, spec: WeightsSpec = WEIGHTS) -> GenerativeModel:
    """The shipped DDPM (sha256-checked) as a :class:`GenerativeModel` sampling with ``p``."""
    unet = load_pipeline_folder(
        str(package_file(spec.uri).parent), sha256=spec.sha256
    )  # the folder holding the pinned file
    return generative_model(NAME, unet, CONFIG.schedule(), p or SamplerParams(), weights_sha256=spec.sha256)
