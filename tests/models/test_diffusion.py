"""DDPM / DDIM: our pure-function samplers against diffusers' schedulers, determinism, weights folders.

A tiny random UNet (8×8, channels (8, 16), T = 50) stands in for a trained model: the samplers'
arithmetic is what is under test, and it is the same whatever the weights.
"""

from __future__ import annotations

import fsspec
import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.schedulers import scheduling_ddpm

from models.diffusers_folder import load_pipeline_folder, save_pipeline_folder
from models.diffusion import DDPMConfig, build_unet, ddim_sample, ddpm_sample, sample_generator, unet_eps
from models.schedule import NoiseSchedule
from models.weights import WeightsError, file_sha256

CFG = DDPMConfig(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    block_out_channels=(8, 16),
    layers_per_block=1,
    norm_num_groups=4,
    schedule=NoiseSchedule(num_train_timesteps=50),
)
SHAPE = (3, 3, 8, 8)
TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def unet(one_torch_thread):
    torch.manual_seed(0)
    return build_unet(CFG).eval()


class Recorder:
    """An eps_model that records every x_t it is called with (and counts calls)."""

    def __init__(self, eps):
        self.eps, self.inputs, self.timesteps = eps, [], []

    def __call__(self, x, t):
        self.inputs.append(x.clone())
        self.timesteps.append(int(t[0]))
        return self.eps(x, t)


def _gens(seed=3, n=SHAPE[0]):
    return [sample_generator(seed, i) for i in range(n)]


def _noise_stream(seed=3, n=SHAPE[0]):
    """Replays what the samplers draw: stacked per-sample draws, x_T first, then one per noisy step."""
    gens = _gens(seed, n)
    while True:
        yield torch.stack([torch.randn(SHAPE[1:], generator=g) for g in gens])


def _ddpm_scheduler():
    return DDPMScheduler(
        num_train_timesteps=CFG.schedule.num_train_timesteps,
        beta_schedule="linear",
        beta_start=CFG.schedule.beta_start,
        beta_end=CFG.schedule.beta_end,
        clip_sample=True,
        variance_type="fixed_small",
        prediction_type="epsilon",
    )


def _assert_trajectories_match(ours: Recorder, reference: list[torch.Tensor], out, ref_out):
    assert len(ours.inputs) == len(reference)
    for step, (a, b) in enumerate(zip(ours.inputs, reference)):
        assert (a - b).abs().max().item() < TOL, f"x_t differs at step {step}"
    assert (out - ref_out).abs().max().item() < TOL


@pytest.mark.parametrize("steps", [None, 10])
def test_ddpm_matches_diffusers_step_by_step(unet, steps, monkeypatch):
    eps = unet_eps(unet, micro_batch=None)
    ours = Recorder(eps)
    out = ddpm_sample(ours, SHAPE, CFG.schedule.betas(), _gens(), steps=steps)

    noise = _noise_stream()
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", lambda shape, **_: next(noise))
    sched = _ddpm_scheduler()
    sched.set_timesteps(steps or CFG.schedule.num_train_timesteps)
    x, reference = next(noise), []
    for t in sched.timesteps:
        reference.append(x.clone())
        with torch.no_grad():
            e = unet(x, t).sample
        x = sched.step(e, t, x).prev_sample
    assert ours.timesteps == [int(t) for t in sched.timesteps]
    _assert_trajectories_match(ours, reference, out, ((x + 1) / 2).clamp(0, 1))


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers_step_by_step(unet, eta):
    num_steps = 10
    eps = unet_eps(unet, micro_batch=None)
    ours = Recorder(eps)
    out = ddim_sample(ours, SHAPE, CFG.schedule.alphas_cumprod(), _gens(), num_steps=num_steps, eta=eta)

    noise = _noise_stream()
    sched = DDIMScheduler(
        num_train_timesteps=CFG.schedule.num_train_timesteps,
        beta_schedule="linear",
        beta_start=CFG.schedule.beta_start,
        beta_end=CFG.schedule.beta_end,
        clip_sample=True,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type="epsilon",
    )
    sched.set_timesteps(num_steps)
    x, reference = next(noise), []
    for k, t in enumerate(sched.timesteps):
        reference.append(x.clone())
        with torch.no_grad():
            e = unet(x, t).sample
        last = k == len(sched.timesteps) - 1  # σ = 0 there: we draw nothing, diffusers multiplies by 0
        variance_noise = (torch.zeros_like(x) if last else next(noise)) if eta > 0 else None
        x = sched.step(e, t, x, eta=eta, variance_noise=variance_noise).prev_sample
    assert ours.timesteps == [int(t) for t in sched.timesteps]
    _assert_trajectories_match(ours, reference, out, ((x + 1) / 2).clamp(0, 1))


def test_ddim_eta0_is_deterministic_given_x_T_and_eta1_is_not(unet):
    eps = unet_eps(unet)
    acp = CFG.schedule.alphas_cumprod()
    a = ddim_sample(eps, SHAPE, acp, _gens(), num_steps=5, eta=0.0)
    b = ddim_sample(eps, SHAPE, acp, _gens(), num_steps=5, eta=0.0)
    c = ddim_sample(eps, SHAPE, acp, _gens(), num_steps=5, eta=1.0)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_model_call_counts_and_output_contract(unet):
    eps = unet_eps(unet)
    calls = Recorder(eps)
    out = ddpm_sample(calls, SHAPE, CFG.schedule.betas(), _gens())
    assert len(calls.inputs) == CFG.schedule.num_train_timesteps
    assert calls.timesteps == list(reversed(range(CFG.schedule.num_train_timesteps)))
    assert out.shape == SHAPE and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    for n in (1, 7, 25):
        calls = Recorder(eps)
        ddim_sample(calls, SHAPE, CFG.schedule.alphas_cumprod(), _gens(), num_steps=n, eta=0.5)
        assert len(calls.inputs) == n and calls.timesteps[-1] == 0


def test_generator_count_must_match_batch(unet):
    with pytest.raises(ValueError, match="needs 3 generators"):
        ddpm_sample(unet_eps(unet), SHAPE, CFG.schedule.betas(), _gens(n=2))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim-eta1"])
def test_sample_is_bit_identical_whatever_the_batching(unet, sampler):
    eps = unet_eps(unet, micro_batch=2)

    def run(indices: list[int]) -> dict[int, torch.Tensor]:
        gens = [sample_generator(7, i) for i in indices]
        shape = (len(indices), *SHAPE[1:])
        if sampler == "ddpm":
            out = ddpm_sample(eps, shape, CFG.schedule.betas(), gens)
        else:
            out = ddim_sample(eps, shape, CFG.schedule.alphas_cumprod(), gens, num_steps=10, eta=1.0)
        return dict(zip(indices, out))

    whole = run([0, 1, 2, 3, 4, 5])
    for batches in ([[0, 1], [2, 3, 4, 5]], [[5, 3, 1], [0, 4, 2]]):  # sizes 2+4; another order and mix
        parts: dict[int, torch.Tensor] = {}
        for b in batches:
            parts.update(run(b))
        for i in range(6):
            assert torch.equal(parts[i], whole[i]), f"sample {i} changed with batching {batches}"
    assert not torch.equal(whole[0], whole[1])  # different indices, different noise
    assert sample_generator(7, 0).initial_seed() != sample_generator(8, 0).initial_seed()


def test_folder_round_trip_local(unet, tmp_path):
    folder = save_pipeline_folder(unet, CFG.schedule, tmp_path / "digits")
    assert {p.name for p in folder.iterdir()} >= {
        "config.json",
        "diffusion_pytorch_model.safetensors",
        "scheduler_config.json",
    }
    loaded = load_pipeline_folder(str(folder), sha256=file_sha256(folder / "diffusion_pytorch_model.safetensors"))
    for (k, a), (k2, b) in zip(unet.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x, t = torch.randn(2, 3, 8, 8), torch.tensor([5, 40])
    with torch.no_grad():
        assert torch.equal(unet(x, t).sample, loaded(x, t).sample)
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        load_pipeline_folder(str(folder), sha256="0" * 64)


def test_folder_round_trip_remote_fsspec(unet, tmp_path, monkeypatch):
    monkeypatch.setenv("DARKROOM_CACHE", str(tmp_path / "cache"))
    folder = save_pipeline_folder(unet, None, tmp_path / "src")
    fs = fsspec.filesystem("memory")
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        fs.pipe(f"/models/digits/unet/{name}", (folder / name).read_bytes())
    loaded = load_pipeline_folder("memory://models/digits")  # a pipeline folder: its unet/ is used
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), loaded.state_dict().values()))
    assert list((tmp_path / "cache" / "diffusers").glob("*/diffusion_pytorch_model.safetensors"))


def test_pickled_weights_refused(unet, tmp_path):
    unet.save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(WeightsError, match="safe_serialization=True"):
        load_pipeline_folder(str(tmp_path / "pickled"))
