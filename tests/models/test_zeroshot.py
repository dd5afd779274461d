"""Zero-shot restoration with a DDPM prior: RePaint inpainting, DDNM super-resolution and colorization.

A tiny random UNet (8×8, channels (8, 16), T = 50) written as a diffusers folder stands in for the
prior: what is under test is the arithmetic around it (known pixels kept, the degradation model
satisfied, determinism, registry plumbing), which holds whatever the weights. One test runs the
shipped digits prior, when present, to show the restoration is better than a trivial fill.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

from models import default_registry
from models.diffusers_folder import WEIGHTS_NAME, save_pipeline_folder
from models.diffusion import DDPMConfig, build_unet
from models.schedule import NoiseSchedule
from models.weights import WeightsError, file_sha256
from models.zeroshot import consistent, ddnm, gray, gray_pinv, input_generators, jump_schedule, pool, pool_pinv, repaint

CFG = DDPMConfig(
    sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
    norm_num_groups=4, schedule=NoiseSchedule(num_train_timesteps=50),
)  # fmt: skip
FAST = {"steps": 6, "micro_batch": 2}
TOL = 1 / 255
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "weights" / "ddpm-digits"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_prior(folder: Path, cfg: DDPMConfig, seed: int = 0) -> str:
    torch.manual_seed(seed)
    save_pipeline_folder(build_unet(cfg).eval(), cfg.schedule, folder)
    return str(folder)


@pytest.fixture(scope="module")
def prior(tmp_path_factory) -> str:
    return _write_prior(tmp_path_factory.mktemp("prior"), CFG)


def _build(name, prior, **params):
    return default_registry().build(name, {"prior": prior, **FAST, **params})


def _images(n: int, size: int = 8, seed: int = 1) -> torch.Tensor:
    """N×3×size×size in [0, 1] with saturated pixels (0 and 1), where a final clamp would bite."""
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
    x[:, :, :2] = 1.0
    x[:, :, -1] = 0.0
    return x


def _with_mask(x: torch.Tensor) -> torch.Tensor:
    mask = torch.ones(x.shape[0], 1, *x.shape[2:])
    mask[:, :, 2:6, 3:7] = 0
    return torch.cat([x, mask], dim=1)


def _run(model, x):
    with torch.inference_mode():
        return model.module(x)


# --- the operators and the projection ----------------------------------------------------------


def _matrix(op, shape) -> torch.Tensor:
    """The matrix of a linear operator on tensors of ``shape`` (columns: images of basis vectors)."""
    n = int(torch.tensor(shape).prod())
    return torch.stack([op(e.view(shape)).flatten() for e in torch.eye(n)], dim=1)


@pytest.mark.parametrize(
    "A, A_pinv, shape",
    [
        (functools.partial(pool, s=2), functools.partial(pool_pinv, s=2), (1, 2, 4, 4)),
        (functools.partial(pool, s=4), functools.partial(pool_pinv, s=4), (1, 1, 8, 4)),
        (gray, gray_pinv, (1, 3, 2, 3)),
    ],
)
def test_pinv_is_the_moore_penrose_pseudo_inverse(A, A_pinv, shape):
    M = _matrix(A, shape)
    out_shape = A(torch.zeros(shape)).shape
    assert torch.allclose(_matrix(A_pinv, out_shape), torch.linalg.pinv(M), atol=1e-5)


@pytest.mark.parametrize("op", ["pool", "gray"])
def test_consistent_projects_onto_the_observation_within_the_box(op):
    A, A_pinv = (functools.partial(pool, s=4), functools.partial(pool_pinv, s=4)) if op == "pool" else (gray, gray_pinv)
    g = torch.Generator().manual_seed(0)
    truth = torch.rand(3, 3, 8, 8, generator=g)
    truth[0] = 1.0  # a saturated observation: every pixel of its groups must be exactly 1
    y = A(truth)
    x = torch.randn(3, 3, 8, 8, generator=g) * 2  # far outside [0, 1] and inconsistent
    out = consistent(x, y, A, A_pinv)
    assert out.min() >= 0 and out.max() <= 1
    assert (A(out) - y).abs().max() < 1e-5
    assert torch.allclose(consistent(truth, y, A, A_pinv), truth, atol=1e-5)  # already consistent: unchanged


def test_jump_schedule():
    assert jump_schedule(4) == [0, 1, 2, 3, 4]
    assert jump_schedule(5, jump_length=2, jumps=2) == [0, 1, 2, 0, 1, 2, 3, 4, 2, 3, 4, 5]
    path = jump_schedule(50, jump_length=5, jumps=3)
    assert path[0] == 0 and path[-1] == 50 and all(abs(b - a) in (1, 5) for a, b in zip(path, path[1:]))
    assert sum(b > a for a, b in zip(path, path[1:])) == 50 + 2 * 5 * 9


# --- the samplers, with an exact prior -----------------------------------------------------------


class ExactPrior:
    """The true ε of a DDPM whose data are a few fixed images (no network): E[x₀ | x_t] is the
    softmax-weighted mean of the images, so every restoration should land on the image that fits
    the observation."""

    def __init__(self, images: torch.Tensor, acp: torch.Tensor):
        self.images, self.acp = images.flatten(1) * 2 - 1, acp

    def __call__(self, x, t):
        a = self.acp[t[0]]
        d2 = torch.cdist(x.flatten(1).double(), a.sqrt() * self.images.double()) ** 2
        x0 = torch.softmax(-d2 / (2 * (1 - a)), dim=1) @ self.images.double()
        return ((x.flatten(1) - a.sqrt() * x0) / (1 - a).sqrt()).view_as(x).float()


@pytest.mark.parametrize("task", ["inpaint", "sr", "colorize"])
def test_exact_prior_restores_its_images(task):
    acp = NoiseSchedule().alphas_cumprod()
    images = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(5))
    eps = ExactPrior(images, acp)
    truth = images[[4, 1, 6]]  # an unconditional sample would hit these three by chance 1 time in 512
    gens = input_generators(truth, 0)
    if task == "inpaint":
        mask = torch.ones(3, 1, 8, 8)
        mask[:, :, 1:7, 2:7] = 0
        out = repaint(eps, truth * mask, mask, acp, gens, steps=30, jump_length=3, jumps=2)
    elif task == "sr":
        A, A_pinv = functools.partial(pool, s=2), functools.partial(pool_pinv, s=2)
        out = ddnm(eps, A(truth), A, A_pinv, acp, gens, steps=30)
    else:
        out = ddnm(eps, gray(truth), gray, gray_pinv, acp, gens, steps=30)
    assert (out - truth).abs().max() < 1e-3


# --- known pixels --------------------------------------------------------------------------------


def test_repaint_keeps_known_pixels_and_fills_holes(prior):
    model = _build("repaint", prior, jumps=2, jump_length=2)
    assert model.needs_mask and model.scale == 1 and model.channels == 3
    x = _with_mask(_images(3))
    out = _run(model, x)
    assert out.shape == (3, 3, 8, 8) and out.min() >= 0 and out.max() <= 1
    known = x[:, -1:].expand(-1, 3, -1, -1) == 1
    assert (out - x[:, :3])[known].abs().max() <= TOL
    assert (out - x[:, :3])[~known].abs().max() > 0.05  # holes were filled by the prior, not copied


def test_ddnm_sr_output_pools_back_to_its_input(prior):
    model = _build("ddnm-sr", prior, scale=2)
    assert model.scale == 2 and model.output_size(4, 4) == (8, 8)
    lr = _images(3, size=4)
    out = _run(model, lr)
    assert out.shape == (3, 3, 8, 8) and out.min() >= 0 and out.max() <= 1
    assert (pool(out, 2) - lr).abs().max() <= TOL
    assert (out - pool_pinv(lr, 2)).abs().max() > 0.05  # not just the nearest-neighbour enlargement


@pytest.mark.parametrize("gray_input", [False, True])
def test_ddnm_colorize_keeps_the_gray_and_adds_colour(prior, gray_input):
    model = _build("ddnm-colorize", prior)
    assert model.colour_out and model.channels == 3
    x = _images(3)
    if gray_input:  # the engine feeds a gray image to a 3-channel model as three equal channels
        x = gray(x).expand(-1, 3, -1, -1)
    out = _run(model, x)
    assert out.shape == (3, 3, 8, 8)
    assert (gray(out) - gray(x)).abs().max() <= TOL
    assert (out - gray(out)).abs().max() > 0.05  # channels differ: colour came from the prior


# --- determinism ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, size", [("repaint", 8), ("ddnm-sr", 4), ("ddnm-colorize", 8)])
def test_same_input_same_output_whatever_the_batch(prior, name, size):
    params = {"scale": 2} if name == "ddnm-sr" else {}
    model = _build(name, prior, **params)
    x = _images(4, size=size)
    if name == "repaint":
        x = _with_mask(x)
    whole = _run(model, x)
    assert torch.equal(whole, _run(model, x))
    for order in ([2], [3, 0], [1, 3, 2]):  # alone, fewer and reordered neighbours, other micro-batch cuts
        part = _run(model, x[order])
        for k, i in enumerate(order):
            assert torch.equal(part[k], whole[i]), f"row {i} changed in batch {order}"
    assert not torch.equal(whole[0], whole[1])
    other_seed = _run(_build(name, prior, seed=1, **params), x)
    assert not torch.equal(other_seed, whole)


def test_same_pixels_same_output_in_any_row(prior):
    model = _build("ddnm-colorize", prior)
    x = _images(2)
    twice = torch.stack([x[0], x[1], x[0]])
    out = _run(model, twice)
    assert torch.equal(out[0], out[2])  # noise is seeded from the pixels, not the position


# --- registry ------------------------------------------------------------------------------------


def test_registry_records_and_pins_the_prior_digest(prior):
    digest = file_sha256(Path(prior) / WEIGHTS_NAME)
    reg = default_registry()
    for name in ("repaint", "ddnm-sr", "ddnm-colorize"):
        assert reg.get(name).weights_sha256({"prior": prior}) == digest
        assert _build(name, prior).weights_sha256 == digest
        assert _build(name, prior, prior_sha256=digest.upper()).weights_sha256 == digest
        with pytest.raises(WeightsError, match="sha256 mismatch"):
            _build(name, prior, prior_sha256="0" * 64)


def test_pipeline_folder_with_unet_subfolder(tmp_path, prior):
    unet_dir = tmp_path / "pipe" / "unet"
    _write_prior(unet_dir, CFG)
    (unet_dir / "scheduler_config.json").rename(tmp_path / "pipe" / "scheduler_config.json")
    model = _build("ddnm-colorize", str(tmp_path / "pipe"))
    assert model.weights_sha256 == file_sha256(unet_dir / WEIGHTS_NAME)


def test_wrong_size_is_a_clear_error(prior):
    with pytest.raises(ValueError, match=r"restores 4×4 images .* got 8×8"):
        _run(_build("ddnm-sr", prior, scale=2), _images(1, size=8))
    with pytest.raises(ValueError, match=r"restores 8×8 images"):
        _run(_build("repaint", prior), _with_mask(_images(1, size=16)))


def test_unsuitable_params_and_priors_refused(tmp_path, prior):
    with pytest.raises(ValueError, match="scale 3 does not divide"):
        _build("ddnm-sr", prior, scale=3)
    gray_prior = _write_prior(tmp_path / "gray", DDPMConfig(**{**CFG.__dict__, "in_channels": 1, "out_channels": 1}))
    with pytest.raises(WeightsError, match="needs an RGB"):
        _build("ddnm-colorize", gray_prior)
    assert _build("repaint", gray_prior).channels == 1  # inpainting works with any channel count
    with pytest.raises(WeightsError, match="no diffusion_pytorch_model.safetensors"):
        _build("repaint", str(tmp_path / "missing"))
    with pytest.raises(Exception, match="String should match pattern"):
        _build("repaint", prior, prior_sha256="abc")


# --- in the engine --------------------------------------------------------------------------------


def test_engine_chain_runs_them_on_8_bit_images(prior):
    import numpy as np

    from pipeline.inference import Chain

    def chain(name, **params):
        return Chain([_build(name, prior, **params)], torch.device("cpu"), batch_size=2, tile=512)

    rgb = (_images(2) * 255).round().byte().permute(0, 2, 3, 1).numpy()  # N×H×W×3 uint8
    known = np.ones((8, 8), dtype=bool)
    known[2:6, 3:7] = False
    outs = chain("repaint")(list(rgb), [known, known])
    for img, r in zip(rgb, outs):
        assert r.error is None and r.pixels.shape == (8, 8, 3)
        assert np.array_equal(r.pixels[known], img[known]) and not np.array_equal(r.pixels, img)

    gray8 = rgb.mean(axis=3, keepdims=True).round().astype(np.uint8)  # N×H×W×1: gray files
    for img, r in zip(gray8, chain("ddnm-colorize")(list(gray8))):
        assert r.error is None and r.pixels.shape == (8, 8, 3)  # colour out of a gray file
        assert np.abs(r.pixels.astype(float).mean(axis=2) - img[..., 0]).max() <= 1  # 8-bit rounding of 3 channels

    lr = rgb[:, ::2, ::2]
    for img, r in zip(lr, chain("ddnm-sr", scale=2)(list(lr))):
        assert r.error is None and r.pixels.shape == (8, 8, 3)
        pooled = r.pixels.astype(float).reshape(4, 2, 4, 2, 3).mean(axis=(1, 3))
        assert np.abs(pooled - img).max() <= 1

    wrong = chain("ddnm-sr", scale=2)(list(rgb))  # 8×8 inputs: the prior makes 8×8 outputs only
    assert all(r.pixels is None and "restores 4×4 images" in r.error for r in wrong)


def test_benchmark_script_runs(tmp_path):
    """benchmarks/zeroshot_quality.py end to end on a random 32×32 prior, 4 digits, 2 steps."""
    import json

    from tests.scripts import load_benchmark

    prior = _write_prior(tmp_path / "prior32", DDPMConfig(**{**CFG.__dict__, "sample_size": 32}))
    bench = load_benchmark("zeroshot_quality")
    out = tmp_path / "r.json"
    result = bench.main(
        ["--prior", prior, "--n", "4", "--batch", "3", "--steps", "2", "--json", str(out), "--doc", "-"]
    )
    assert json.loads(out.read_text())["rows"] == result["rows"]
    methods = [(r["task"].split()[0], r["method"]) for r in result["rows"]]
    assert methods == [
        ("inpaint", "mean fill"),
        ("inpaint", "repaint"),
        ("SR", "bicubic"),
        ("SR", "ddnm-sr"),
        ("SR", "bicubic"),
        ("SR", "ddnm-sr"),
        ("colorize", "gray replicated"),
        ("colorize", "ddnm-colorize"),
    ]
    for r in result["rows"]:
        assert r["mse"] > 0 and r["known_err_model"] is not None
        if r["method"] in ("repaint", "ddnm-sr", "ddnm-colorize"):
            assert r["known_err_model"] <= 1 and r["cpu_images_per_s"] > 0


# --- the shipped prior ---------------------------------------------------------------------------


@pytest.mark.skipif(not (SHIPPED / WEIGHTS_NAME).is_file(), reason="shipped digits DDPM not present")
def test_shipped_prior_inpaints_better_than_mean_fill():
    from models.training import digits

    truth = digits.load(32)[1].coloured()[:8]
    mask = torch.ones(8, 1, 32, 32)
    mask[:, :, 10:22, 10:22] = 0
    model = default_registry().build("repaint", {"steps": 25, "jumps": 1})  # the default prior
    out = _run(model, torch.cat([truth, mask], dim=1))
    hole = mask.expand(-1, 3, -1, -1) == 0
    known_mean = (truth * mask).sum(dim=(2, 3), keepdim=True) / mask.sum(dim=(2, 3), keepdim=True)
    mean_fill = torch.where(hole, known_mean.expand_as(truth), truth)
    mse = ((out - truth)[hole] ** 2).mean()
    mse_fill = ((mean_fill - truth)[hole] ** 2).mean()
    assert mse < 0.5 * mse_fill, (float(mse), float(mse_fill))  # measured: 0.014 vs 0.063 (shipped prior, 2026-11-29)
