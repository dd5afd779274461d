"""DDPM generation entries: `darkroom-ddpm-digits` (shipped weights) and `ddpm` (a user's diffusers folder).

Real networks throughout: the shipped 32×32 UNet sampled with a few steps, and a tiny random UNet
saved to a real folder (local and on the moto S3 server) for the `ddpm` entry.
"""

from __future__ import annotations

import json

import fsspec
import pytest
import torch
from pydantic import ValidationError
from safetensors import safe_open

from models import ddpm_digits, default_registry, digits_classifier
from models.base import GenerativeModel
from models.diffusers_folder import SCHEDULER_CONFIG_NAME, WEIGHTS_NAME, load_schedule, save_pipeline_folder
from models.diffusion import DDPMConfig, build_unet
from models.schedule import NoiseSchedule
from models.weights import WeightsError, file_sha256, package_file
from tests.models.generation_checks import gens

TINY = DDPMConfig(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    schedule=NoiseSchedule(num_train_timesteps=50),
)
FAST = {"sampler": "ddim", "steps": 3, "micro_batch": 2}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def reg():
    return default_registry()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, one_torch_thread):
    torch.manual_seed(0)
    return save_pipeline_folder(build_unet(TINY).eval(), TINY.schedule, tmp_path_factory.mktemp("tiny-ddpm"))


def test_shipped_folder_is_pinned_and_documented():
    spec = ddpm_digits.WEIGHTS
    weights = package_file(spec.uri)
    folder = weights.parent
    assert file_sha256(weights) == spec.sha256
    assert sum(p.stat().st_size for p in folder.iterdir()) < 8e6
    assert {"config.json", WEIGHTS_NAME, SCHEDULER_CONFIG_NAME, "training.json"} <= {p.name for p in folder.iterdir()}
    record = json.loads((folder / "training.json").read_text())
    with safe_open(str(weights), "pt") as fh:
        meta = fh.metadata()
    assert record["weights_sha256"] == spec.sha256 and record["steps"] == meta["steps"] and int(meta["steps"]) > 0
    assert meta["model"] == ddpm_digits.NAME and "training digits" in meta["data"] and "held-back" in meta["held_out"]
    assert load_schedule(str(folder)) == ddpm_digits.CONFIG.schedule


def test_digits_entry_builds_and_samples(reg):
    entry = reg.get("darkroom-ddpm-digits")
    assert (
        entry.task == "generation" and entry.num_classes == 0 and entry.weights_sha256({}) == ddpm_digits.WEIGHTS.sha256
    )
    model = reg.build("darkroom-ddpm-digits", FAST)
    assert isinstance(model, GenerativeModel)
    assert (model.shape, model.sampler, model.steps, model.num_classes) == ((3, 32, 32), "ddim", 3, 0)
    assert model.weights_sha256 == ddpm_digits.WEIGHTS.sha256
    out = model.sample(gens(range(3)), None, torch.device("cpu"))
    assert out.shape == (3, 3, 32, 32) and out.dtype == torch.float32
    assert 0 <= float(out.min()) and float(out.max()) <= 1
    assert not torch.equal(out[0], out[1])  # different generators, different samples
    with pytest.raises(ValueError, match="unconditional"):
        model.sample(gens(range(1)), [3], torch.device("cpu"))


def test_default_steps_and_param_validation(reg):
    assert reg.build("darkroom-ddpm-digits", {"sampler": "ddpm"}).steps == 1000
    assert reg.build("darkroom-ddpm-digits").steps == 50  # ddim by default
    entry = reg.get("darkroom-ddpm-digits")
    for bad in (
        {"sampler": "ddpm", "eta": 0.5},
        {"sampler": "euler"},
        {"eta": -1},
        {"steps": 0},
        {"micro_batch": 0},
        {"uri": "x"},
    ):
        with pytest.raises(ValidationError):
            entry.validate_params(bad)
    with pytest.raises(ValueError, match="exceeds"):
        reg.build("darkroom-ddpm-digits", {"steps": 1001})


@pytest.mark.parametrize(
    "params",
    [
        FAST,
        {"sampler": "ddim", "steps": 3, "eta": 1.0, "micro_batch": 2},
        {"sampler": "ddpm", "steps": 3, "micro_batch": 2},
    ],
)
def test_a_sample_does_not_depend_on_its_batch(reg, params):
    """Index 5 alone, and in the middle of a batch of 3 (so in another micro-batch position): same bits."""
    model = reg.build("darkroom-ddpm-digits", params)
    alone = model.sample(gens([5]), None, torch.device("cpu"))
    batch = model.sample(gens([4, 5, 6]), None, torch.device("cpu"))
    assert torch.equal(alone[0], batch[1])
    assert torch.equal(model.sample(gens([5]), None, torch.device("cpu")), alone)  # and again


def test_shipped_ddpm_draws_recognisable_digits(reg):
    """A quality floor (benchmarks/generation_quality.py measures quality properly): even 25 strided
    DDPM steps give samples the classifier reads confidently (15 of 16 when shipped), of several
    classes. The classifier is confident about none of what an untrained UNet draws (noise)."""
    model = reg.build("darkroom-ddpm-digits", {"sampler": "ddpm", "steps": 25, "micro_batch": 16})
    probs = digits_classifier.probabilities(
        digits_classifier.build(), model.sample(gens(range(16), seed=0), None, torch.device("cpu"))
    )
    top_p, top = probs.max(1)
    assert float((top_p > 0.9).float().mean()) >= 0.6, top_p
    assert len(set(top.tolist())) >= 5, top


def test_ddpm_entry_loads_a_local_folder_and_pins_it(reg, tiny_folder):
    entry = reg.get("ddpm")
    digest = file_sha256(tiny_folder / WEIGHTS_NAME)
    params = {"uri": str(tiny_folder), "sampler": "ddim", "steps": 2, "micro_batch": 2}
    assert entry.weights_sha256(params) == digest  # the manifest's digest, without a pin
    model = reg.build("ddpm", params)
    assert (model.shape, model.steps, model.weights_sha256) == ((3, 8, 8), 2, digest)
    out = model.sample(gens(range(3)), None, torch.device("cpu"))
    assert out.shape == (3, 3, 8, 8) and 0 <= float(out.min()) and float(out.max()) <= 1
    assert (
        reg.build("ddpm", {"uri": str(tiny_folder), "sampler": "ddpm"}).steps == TINY.schedule.num_train_timesteps
    )  # T from its scheduler_config.json
    assert reg.build("ddpm", {**params, "sha256": digest.upper()}).weights_sha256 == digest
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        reg.build("ddpm", {**params, "sha256": "0" * 64})
    with pytest.raises(ValueError, match="exceeds"):
        reg.build("ddpm", {**params, "steps": TINY.schedule.num_train_timesteps + 1})


def test_ddpm_entry_reads_a_pipeline_folder_on_s3(reg, tiny_folder, s3_bucket, s3_endpoint):
    """A full diffusers pipeline layout (unet/ + scheduler/) in a bucket, reached with storage_options."""
    fs = fsspec.filesystem("s3", client_kwargs={"endpoint_url": s3_endpoint})
    root = f"{s3_bucket}/pipe"
    fs.put(str(tiny_folder / "config.json"), f"{root}/unet/config.json")
    fs.put(str(tiny_folder / WEIGHTS_NAME), f"{root}/unet/{WEIGHTS_NAME}")
    fs.put(str(tiny_folder / SCHEDULER_CONFIG_NAME), f"{root}/scheduler/{SCHEDULER_CONFIG_NAME}")
    params = {
        "uri": f"s3://{root}",
        "storage_options": {"client_kwargs": {"endpoint_url": s3_endpoint}},
        "sampler": "ddim",
        "steps": 2,
        "micro_batch": 2,
    }
    digest = file_sha256(tiny_folder / WEIGHTS_NAME)
    assert reg.get("ddpm").weights_sha256(params) == digest
    remote = reg.build("ddpm", params)
    local = reg.build("ddpm", {**params, "uri": str(tiny_folder), "storage_options": {}})
    assert remote.weights_sha256 == digest
    assert torch.equal(
        remote.sample(gens([0, 1]), None, torch.device("cpu")), local.sample(gens([0, 1]), None, torch.device("cpu"))
    )


def test_unsupported_folders_are_refused(reg, tiny_folder, tmp_path):
    bad = tmp_path / "v-pred"
    bad.mkdir()
    for name in ("config.json", WEIGHTS_NAME):
        (bad / name).write_bytes((tiny_folder / name).read_bytes())
    config = json.loads((tiny_folder / SCHEDULER_CONFIG_NAME).read_text())
    (bad / SCHEDULER_CONFIG_NAME).write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    with pytest.raises(WeightsError, match="prediction_type"):
        reg.build("ddpm", {"uri": str(bad)})
    with pytest.raises(WeightsError, match="no diffusion_pytorch_model.safetensors"):
        reg.build("ddpm", {"uri": str(tmp_path / "nothing-here")})
