"""Training data and loop shared by train_sr.py and train_denoise.py.

Data: scikit-image's bundled sample images (no download) plus procedurally drawn synthetic
images. HELD_OUT images are never used for training; benchmarks/quality.py and
tests/models/test_trained.py evaluate on them.
"""

from __future__ import annotations

import datetime as _dt
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from models.weights import file_sha256, save_atomic

# skimage.data.cat is the same photo as chelsea, so it is held out too.
HELD_OUT = ("astronaut", "coffee", "chelsea", "cat")
TRAIN_IMAGES = (
    "rocket", "immunohistochemistry", "retina", "hubble_deep_field", "stereo_motorcycle",
    "colorwheel", "logo", "camera", "coins", "moon", "text", "page", "brick", "grass",
    "gravel", "cell", "clock",
)  # fmt: skip
SYNTHETIC_IMAGES = 8
WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"


def _to_rgb_float(img: np.ndarray) -> np.ndarray:
    """Any sample image → H×W×3 float32 in [0, 1]."""
    img = np.asarray(img)
    if img.dtype == bool:
        img = img.astype(np.float32)
    elif img.dtype == np.uint8:
        img = img.astype(np.float32) / 255.0
    else:
        img = img.astype(np.float32)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.shape[2] == 4:  # RGBA (logo): composite on white
        alpha = img[..., 3:]
        img = img[..., :3] * alpha + (1 - alpha)
    return np.clip(img, 0, 1)


def sample_image(name: str) -> np.ndarray:
    """One skimage.data image as H×W×3 float32 in [0, 1] (stereo pairs: the left view)."""
    from skimage import data

    if name in ("stereo_motorcycle",):
        return _to_rgb_float(data.stereo_motorcycle()[0])
    return _to_rgb_float(getattr(data, name)())


def synthetic_image(rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """Shapes with hard and soft edges over a smooth colour gradient, lines, mild texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    c0, c1, c2 = rng.random((3, 3)).astype(np.float32)
    img = c0 + (c1 - c0) * xx[..., None] + (c2 - c0) * yy[..., None]
    for _ in range(int(rng.integers(8, 20))):
        colour = rng.random(3).astype(np.float32)
        kind = rng.integers(3)
        cx, cy, rx, ry = rng.random(4) * [1, 1, 0.3, 0.3] + [0, 0, 0.02, 0.02]
        if kind == 0:
            mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
        elif kind == 1:
            mask = (np.abs(xx - cx) <= rx) & (np.abs(yy - cy) <= ry)
        else:  # a line of random angle and width
            angle = rng.random() * math.pi
            dist = np.abs((xx - cx) * math.sin(angle) - (yy - cy) * math.cos(angle))
            mask = dist <= rng.random() * 0.01 + 0.002
        img = np.where(mask[..., None], colour, img)
    freq = rng.random() * 40 + 5  # a sinusoidal texture
    img = img + 0.05 * np.sin(2 * math.pi * freq * (xx + yy * rng.random()))[..., None]
    return np.clip(img, 0, 1).astype(np.float32)


def training_images(seed: int) -> list[torch.Tensor]:
    """The training set: 3×H×W float32 tensors."""
    rng = np.random.default_rng(seed)
    arrays = [sample_image(n) for n in TRAIN_IMAGES] + [synthetic_image(rng) for _ in range(SYNTHETIC_IMAGES)]
    return [torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))) for a in arrays]


def random_patches(images: list[torch.Tensor], batch: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """batch random crops size×size with random flips, 90° rotations and channel order."""
    out = torch.empty(batch, 3, size, size)
    for i in range(batch):
        img = images[int(torch.randint(len(images), (1,), generator=gen))]
        _, h, w = img.shape
        top = int(torch.randint(h - size + 1, (1,), generator=gen))
        left = int(torch.randint(w - size + 1, (1,), generator=gen))
        crop = img[:, top : top + size, left : left + size]
        flips = torch.randint(2, (4,), generator=gen).tolist()
        if flips[0]:
            crop = crop.flip(-1)
        if flips[1]:
            crop = crop.flip(-2)
        if flips[2]:
            crop = crop.transpose(-1, -2)
        if flips[3]:
            crop = crop[torch.randperm(3, generator=gen)]
        out[i] = crop
    return out


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Round to 8-bit levels, as a decoded image file would be."""
    return (x.clamp(0, 1) * 255).round() / 255


def train(
    net: torch.nn.Module,
    make_batch: Callable[[torch.Generator], tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    steps: int,
    lr: float,
    seed: int,
    max_cpu_seconds: float,
    log_every: int = 100,
    on_step: Callable[[int], None] | None = None,
    max_wall_seconds: float | None = None,
) -> dict[str, float]:
    """Adam with warm-up and cosine decay, over ``steps`` steps or ``max_cpu_seconds`` of CPU time.

    The schedule follows whichever budget is further spent, so a run stopped by the CPU budget
    (on a busy machine) still ends with an annealed learning rate; the metadata records the
    steps actually run. ``max_wall_seconds`` (optional) is a third such budget, in wall-clock
    time, for runs that must end by a deadline on a shared machine. ``on_step(done)`` is called
    after every optimiser step (e.g. to save sample grids along the way).
    """
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    warm = min(100, steps // 10)
    net.train()
    t0, recent, done = time.process_time(), [], 0
    wall0 = time.monotonic()

    def wall_spent() -> float:
        return 0.0 if max_wall_seconds is None else (time.monotonic() - wall0) / max_wall_seconds

    for step in range(steps):
        progress = max(step / steps, (time.process_time() - t0) / max_cpu_seconds, wall_spent())
        factor = (step + 1) / warm if step < warm else 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        for group in opt.param_groups:
            group["lr"] = lr * factor
        inputs, target = make_batch(gen)
        loss = loss_fn(net(inputs), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recent = (recent + [loss.item()])[-100:]
        done = step + 1
        if done % log_every == 0 or done == steps:
            print(
                f"step {done}/{steps} loss(last100) {sum(recent) / len(recent):.5f} cpu "
                f"{time.process_time() - t0:.0f}s",
                flush=True,
            )
        if on_step is not None:
            on_step(done)
        if time.process_time() - t0 > max_cpu_seconds:
            print(f"CPU budget of {max_cpu_seconds:.0f}s spent: stopping after {done} steps", flush=True)
            break
        if wall_spent() > 1:
            print(f"wall-clock budget of {max_wall_seconds:.0f}s spent: stopping after {done} steps", flush=True)
            break
    net.eval()
    return {"steps": done, "final_loss": sum(recent) / len(recent), "cpu_seconds": time.process_time() - t0}


def init_from(net: torch.nn.Module, path: Path | None) -> dict[str, str]:
    """Load earlier weights into ``net``; returns their steps and sha256 ({} without ``path``)."""
    if path is None:
        return {}
    from safetensors import safe_open

    from models.weights import load_state_dict

    with safe_open(str(path), "pt") as fh:
        meta = fh.metadata() or {}
    digest = file_sha256(path)
    net.load_state_dict(load_state_dict(path))
    return {"steps": meta.get("steps", "0"), "sha256": digest}


def save_weights(
    net: torch.nn.Module,
    filename: str,
    seed: int,
    stats: dict[str, float],
    extra: dict[str, str],
    out_dir: Path = WEIGHTS_DIR,
) -> Path:
    """Write <out_dir>/<filename> (safetensors + metadata) and print its sha256.

    ``extra`` entries override the defaults (``data``, ``held_out`` and ``licence`` describe the
    scikit-image training set unless a script trained on other data says so)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    meta = {
        "data": "skimage.data: " + ", ".join(TRAIN_IMAGES) + f"; {SYNTHETIC_IMAGES} synthetic images",
        "held_out": ", ".join(HELD_OUT),
        "seed": str(seed),
        "steps": str(int(stats["steps"])),
        "final_loss": f"{stats['final_loss']:.6f}",
        "cpu_seconds": f"{stats['cpu_seconds']:.0f}",
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "licence": "MIT (trained by darkroom on scikit-image sample images)",
        **extra,
    }
    save_atomic({k: v.detach().cpu() for k, v in net.state_dict().items()}, path, meta)
    path.chmod(0o644)  # save_atomic's temporary file is private; shipped weights are read by everyone
    digest = file_sha256(path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)\nsha256 {digest}", flush=True)
    return path


__all__ = [
    "HELD_OUT",
    "TRAIN_IMAGES",
    "init_from",
    "quantize",
    "random_patches",
    "sample_image",
    "save_weights",
    "train",
    "training_images",
]
