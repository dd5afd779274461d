"""PNG encoding: darkroom's encoder (libpng through imagecodecs) against Pillow's level 1, side by side.

Same pixels, same process, one thread: CPU seconds per image (best of 3) and file size, on
the decode workload's output (2304×1728 smooth noise + grain, benchmarks/throughput.py) and
on three photos shipped with scikit-image, upscaled to 2048×1536 with bicubic (what a ×4
model's output looks like to an encoder). Every file is decoded again and compared with its
pixels, so a faster encoder cannot be a lossy one.

    .venv/bin/python benchmarks/png_encode.py     # ~20 s
"""

from __future__ import annotations

import importlib.util
import io
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.images import encode_png

HERE = Path(__file__).resolve().parent


def pillow_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def best_cpu_seconds(fn, pixels: np.ndarray, repeat: int = 3) -> tuple[float, bytes]:
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        data = fn(pixels)
        times.append(time.process_time() - t0)
    return min(times), data


def samples() -> dict[str, np.ndarray]:
    import skimage.data

    spec = importlib.util.spec_from_file_location("darkroom_bench_throughput", HERE / "throughput.py")
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    out = {"synthetic 2304×1728": np.asarray(throughput.smooth_noise(2304, 1728, seed=3).convert("RGB"))}
    for name in ("astronaut", "coffee", "chelsea"):
        photo = Image.fromarray(getattr(skimage.data, name)()).resize((2048, 1536), Image.BICUBIC)
        out[f"{name} 2048×1536"] = np.asarray(photo)
    return out


def main() -> None:
    print(f"{'image':<22} {'Pillow s':>9} {'Pillow MB':>10} {'darkroom s':>11} {'darkroom MB':>12} {'speed-up':>9}")
    for name, pixels in samples().items():
        t_pil, pil = best_cpu_seconds(pillow_png, pixels)
        t_dr, dr = best_cpu_seconds(encode_png, pixels)
        for data in (pil, dr):
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
        print(
            f"{name:<22} {t_pil:>9.3f} {len(pil) / 1e6:>10.2f} {t_dr:>11.3f} {len(dr) / 1e6:>12.2f} "
            f"{t_pil / t_dr:>8.2f}×"
        )


if __name__ == "__main__":
    main()
