"""Captioning with any Hugging Face image-to-text folder (VisionEncoderDecoder, BLIP, …), batched.

The folder — what ``save_pretrained(safe_serialization=True)`` writes for the model, its image
processor and its tokenizer (``config.json``, ``model.safetensors``, ``generation_config.json``,
``preprocessor_config.json``, tokenizer files) — is fetched into the cache pinned by its digest
(models/folders.py) and loaded by transformers from local files only, safetensors only, with no
remote code. A ``vision-encoder-decoder`` config loads as ``VisionEncoderDecoderModel``; any other
as ``AutoModelForImageTextToText``.

Captions are decoded greedily or by beam search (never sampled), so an image gets the same text
in every run; images go through ``generate`` ``micro_batch`` at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from models import catalog
from models.base import CaptionModel
from models.catalog import CaptionDecoding, CaptionParams
from models.folders import fetch_folder, params_digest
from models.text_to_image import DTYPES
from models.weights import package_file


def as_rgb8(image: np.ndarray) -> np.ndarray:
    """H×W×C uint8 or uint16 (C = 1 or 3) → H×W×3 uint8, as image processors expect."""
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
    return image if image.flags.writeable else image.copy()  # Ray hands read-only arrays; torch wants writable


def one_line(text: str) -> str:
    """A caption as one line: whitespace (newlines included) collapsed to single spaces."""
    return " ".join(text.split())


def build(p: CaptionParams, name: str = "image-to-text") -> CaptionModel:
    """The ``image-to-text`` registry entry: fetch, verify and load the folder at ``p.uri``."""
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoModelForImageTextToText,
        AutoTokenizer,
        VisionEncoderDecoderModel,
    )
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()  # a bar per load in every actor's log says nothing
    digest = params_digest(p)
    folder = str(fetch_folder(p.uri, digest, p.storage_options))
    config = AutoConfig.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    cls = VisionEncoderDecoderModel if config.model_type == "vision-encoder-decoder" else AutoModelForImageTextToText
    model = cls.from_pretrained(folder, local_files_only=True, use_safetensors=True, trust_remote_code=False)
    model.eval()
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)

    def caption(images: Sequence[np.ndarray], device: torch.device) -> list[str]:
        dtype = torch.float32 if device.type == "cpu" else DTYPES[p.dtype]
        if model.dtype != dtype:
            model.to(dtype)
        texts: list[str] = []
        for start in range(0, len(images), p.micro_batch):
            chunk = [as_rgb8(im) for im in images[start : start + p.micro_batch]]
            pixels = processor(images=chunk, return_tensors="pt").pixel_values.to(device, dtype)
            with torch.inference_mode():
                ids = model.generate(
                    pixel_values=pixels, max_new_tokens=p.max_new_tokens, num_beams=p.num_beams, do_sample=False
                )
            texts += [one_line(t) for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return texts

    return CaptionModel(name=name, module=model, caption=caption, weights_sha256=digest)


def build_shipped(p: CaptionDecoding) -> CaptionModel:
    """The ``darkroom-caption-digits`` registry entry: the folder shipped in the package, checked
    against its pin like any other."""
    folder = package_file(f"{catalog.CAPTION_DIGITS_FOLDER}/config.json").parent
    params = CaptionParams(uri=str(folder), sha256=catalog.CAPTION_DIGITS_SHA256, **p.model_dump())
    return build(params, catalog.CAPTION_DIGITS_NAME)
