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

from models import catalog
from models.base import GenerativeModel
from models.catalog import SamplerParams
from models.ddpm import generative_model
from models.diffusers_folder import load_pipeline_folder
from models.diffusion import DDPMConfig
from models.schedule import NoiseSchedule
from models.weights import WeightsSpec, package_file

NAME = catalog.DDPM_DIGITS_NAME  # models/catalog.py: read by the registry without torch
LICENCE = catalog.DIGITS_LICENCE
CONFIG = DDPMConfig(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    norm_num_groups=8,
    schedule=NoiseSchedule(num_train_timesteps=1000),
)
FOLDER_URI = catalog.DDPM_DIGITS_FOLDER
WEIGHTS = catalog.DDPM_DIGITS


def build(p: SamplerParams | None = None, spec: WeightsSpec = WEIGHTS) -> GenerativeModel:
    """The shipped DDPM (sha256-checked) as a :class:`GenerativeModel` sampling with ``p``."""
    unet = load_pipeline_folder(
        str(package_file(spec.uri).parent), sha256=spec.sha256
    )  # the folder holding the pinned file
    return generative_model(NAME, unet, CONFIG.schedule, p or SamplerParams(), weights_sha256=spec.sha256)
