"""Regenerate the demo inputs in samples/photos/ from scikit-image's bundled sample images.

The sources are public domain or CC0 (see scikit-image's data/README): astronaut (NASA),
coffee, chelsea, rocket (SpaceX, CC0), moon. They are shrunk so the demo stays fast, and
saved in the kinds of files a real archive holds (JPEG, PNG, WebP, grayscale, RGBA, 16-bit).

    python samples/make_samples.py
"""

from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

OUT = Path(__file__).parent / "photos"


def shrink(arr: np.ndarray, width: int) -> Image.Image:
    im = Image.fromarray(arr)
    height = round(im.height * width / im.width)
    return im.resize((width, height), Image.Resampling.LANCZOS)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    shrink(data.astronaut(), 128).save(OUT / "astronaut.jpg", quality=80)
    (OUT / "cats").mkdir(exist_ok=True)
    shrink(data.chelsea(), 128).save(OUT / "cats" / "chelsea.jpg", quality=70)
    shrink(data.coffee(), 128).save(OUT / "coffee.png")
    shrink(data.rocket(), 96).save(OUT / "rocket.webp", quality=85)
    shrink(data.moon(), 112).save(OUT / "moon-gray.png")
    # RGBA: coffee cup cut out with a soft circular alpha mask.
    cup = np.asarray(shrink(data.coffee(), 120))
    yy, xx = np.mgrid[: cup.shape[0], : cup.shape[1]]
    dist = np.hypot(yy - cup.shape[0] / 2, xx - cup.shape[1] / 2)
    alpha = np.clip((cup.shape[0] / 2 - dist) * 16, 0, 255).astype(np.uint8)
    Image.fromarray(np.dstack([cup, alpha])).save(OUT / "coffee-cutout.png")
    # 16-bit grayscale: the moon scaled to the full 0…65535 range.
    moon = np.asarray(shrink(data.moon(), 96)).astype(np.float64)
    Image.fromarray((moon / 255 * 65535).astype(np.uint16)).save(OUT / "moon-16bit.png")


if __name__ == "__main__":
    main()
