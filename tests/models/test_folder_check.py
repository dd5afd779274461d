"""models/folder_check.py: a diffusers DDPM folder checked on the driver (what the model actors would
fail on) and the digest of its configs, on a copy of the shipped ddpm-digits folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from models.catalog import DDPMFolderParams
from models.folder_check import config_digest, inspect
from models.weights import WeightsError

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "weights" / "ddpm-digits"


@pytest.fixture
def folder(tmp_path) -> Path:
    return Path(shutil.copytree(SHIPPED, tmp_path / "ddpm"))


def test_folder_check_refuses_what_the_actor_would_fail_on(folder):
    """A scheduler the samplers lack, a truncated weights file, a changed config (its digest, which
    the job fingerprint hashes)."""
    p = DDPMFolderParams(uri=str(folder))
    assert inspect(p).startswith("UNet2DModel 32×32, linear β, T=")
    before = config_digest(p)
    cfg = json.loads((folder / "scheduler_config.json").read_text())
    (folder / "scheduler_config.json").write_text(json.dumps(cfg | {"beta_schedule": "squaredcos_cap_v2"}))
    assert "squaredcos_cap_v2 β" in inspect(p) and config_digest(p) != before
    (folder / "scheduler_config.json").write_text(json.dumps(cfg | {"prediction_type": "v_prediction"}))
    with pytest.raises(WeightsError, match="scheduler config not supported: prediction_type 'v_prediction'"):
        inspect(p)
    (folder / "scheduler_config.json").write_text(json.dumps(cfg))
    weights = folder / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(WeightsError, match="diffusion_pytorch_model.safetensors: truncated"):
        inspect(p)


def test_folder_check_refuses_a_wrong_pin_and_a_config_that_is_not_a_unet(folder):
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        inspect(DDPMFolderParams(uri=str(folder), sha256="0" * 64))
    (folder / "config.json").write_text(json.dumps({"_class_name": "VQModel"}))
    with pytest.raises(WeightsError, match="describes a VQModel, not a UNet2DModel"):
        inspect(DDPMFolderParams(uri=str(folder)))
    (folder / "config.json").write_text("{not json")
    with pytest.raises(WeightsError, match="config.json is not JSON"):
        inspect(DDPMFolderParams(uri=str(folder)))
