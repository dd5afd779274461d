"""Train darkroom-caption-digits: python -m models.training.train_caption_digits [--steps N] [--threads 2].

A captioner of painted digits ("a red seven"): a Hugging Face VisionEncoderDecoder — a ViT encoder
(32×32 input, 4×4 patches, 3 layers of width 64) and a GPT-2 decoder (2 layers of width 64) — with
a word-level tokenizer over the caption words (models/training/digits.py: ``caption``), saved as an
ordinary image-to-text folder (safetensors) in models/weights/caption-digits/, so that the
``image-to-text`` step (models/image_to_text.py) runs it like any folder a user brings.

Data: the 1,500 training digits of models/training/digits.py at 32×32, each step painted in
colours drawn uniformly from ``CAPTION_COLOURS`` and warped, weakened, blurred and noised as the
digits classifier's training does (``train_digits_classifier.augment``); the caption is
``a <colour> <digit>``. Loss: the decoder's cross-entropy on the caption tokens (teacher forcing);
AdamW with warm-up and cosine decay. Scored at the end through the saved folder on the 297
held-back digits, each in every colour: the share of captions naming the right digit and colour
(written to training.json; docs/generation.md). Needs scikit-learn (the ``test`` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from models.training import digits
from models.training.common import WEIGHTS_DIR
from models.training.train_digits_classifier import augment

FOLDER = WEIGHTS_DIR / "caption-digits"
SPECIALS = ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]
SEED = 20261207


def vocabulary() -> list[str]:
    return SPECIALS + ["a", *digits.CAPTION_COLOURS, *digits.DIGIT_WORDS]


def word_tokenizer(vocab: list[str]):
    """A transformers tokenizer of whole words: ``vocab[i]`` is token i, SPECIALS first (pad 0,
    bos 1, eos 2, unk 3); text splits on whitespace and decodes with spaces between words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    words.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=words, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]"
    )


def build_model(vocab: list[str]):
    """(model, tokenizer, image processor), randomly initialised (torch's global seed)."""
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    tokenizer = word_tokenizer(vocab)
    encoder = ViTConfig(
        image_size=32, patch_size=4, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=128
    )
    decoder = GPT2Config(vocab_size=len(vocab), n_positions=16, n_embd=64, n_layer=2, n_head=4)
    decoder.update({"is_decoder": True, "add_cross_attention": True})
    special = {"decoder_start_token_id": 1, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    decoder.update({k: v for k, v in special.items() if k != "decoder_start_token_id"})
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.update(special)
    model = VisionEncoderDecoderModel(config=config)
    model.generation_config.update(**special, max_new_tokens=6)
    # The processor's normalisation ((x - 0.5) / 0.5) is what `pixels` below does in training.
    processor = ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    return model, tokenizer, processor


def batch(train: digits.Digits, n: int, gen: torch.Generator, vocab: list[str]):
    """(pixel_values N×3×32×32 normalised as the processor does, labels N×4 token ids)."""
    pick = torch.randint(0, train.images.shape[0], (n,), generator=gen)
    colour_names = list(digits.CAPTION_COLOURS)
    colours = [colour_names[i] for i in torch.randint(0, len(colour_names), (n,), generator=gen).tolist()]
    strokes = augment(train.images[pick], gen)
    images = digits.paint(strokes, colours)
    images = (images * 255).round() / 255  # the 8-bit levels a file holds
    ids = {w: i for i, w in enumerate(vocab)}
    captions = [digits.caption(int(y), c) for y, c in zip(train.labels[pick], colours)]
    labels = [[ids[w] for w in text.split()] + [ids["[EOS]"]] for text in captions]
    return (images - 0.5) / 0.5, torch.tensor(labels)


def score(folder: Path, held: digits.Digits) -> dict[str, float]:
    """Captions of the held-back digits, each painted in every colour, through the saved folder and
    darkroom's image-to-text step code: the share naming the right digit, colour, and both."""
    from models.catalog import CaptionParams
    from models.image_to_text import build

    model = build(CaptionParams(uri=str(folder), micro_batch=64, max_new_tokens=6))
    right = {"digit": 0, "colour": 0, "both": 0}
    total = 0
    for colour in digits.CAPTION_COLOURS:
        images = digits.paint(held.images, [colour] * held.images.shape[0])
        arrays = [(im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for im in images]
        for text, label in zip(model.caption(arrays, torch.device("cpu")), held.labels.tolist()):
            digit, named = digits.read_caption(text)
            right["digit"] += digit == label
            right["colour"] += named == colour
            right["both"] += digit == label and named == colour
            total += 1
    return {k: v / total for k, v in right.items()} | {"captions": total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    train, held = digits.load(32)
    vocab = vocabulary()
    model, tokenizer, processor = build_model(vocab)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = args.steps // 20
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))),
    )
    started, cpu0 = time.time(), time.process_time()
    model.train()
    for step in range(args.steps):
        pixels, labels = batch(train, args.batch, gen, vocab)
        loss = model(pixel_values=pixels, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 250 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.4f} ({time.time() - started:.0f} s)", flush=True)
    model.eval()
    FOLDER.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(FOLDER, safe_serialization=True)
    tokenizer.save_pretrained(FOLDER)
    processor.save_pretrained(FOLDER)
    wall, cpu = time.time() - started, time.process_time() - cpu0
    scores = score(FOLDER, held)
    record = {
        "model": "darkroom-caption-digits",
        "data": f"scikit-learn load_digits, the {train.images.shape[0]} training digits of models/training/digits.py "
        f"(split seed {digits.SPLIT_SEED}), 32x32 bilinear, painted in digits.CAPTION_COLOURS, augmented",
        "held_out": f"the {digits.HELD_BACK} held-back digits of models/training/digits.py, each in every colour",
        "licence": "MIT (trained by darkroom on scikit-learn's digits)",
        "seed": SEED,
        "steps": args.steps,
        "batch": args.batch,
        "lr": args.lr,
        "final_loss": round(loss.item(), 5),
        "train_wall_seconds": round(wall, 1),
        "train_cpu_seconds": round(cpu, 1),
        "threads": args.threads,
        "parameters": sum(p.numel() for p in model.parameters()),
        "held_back_scores": scores,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
    }
    (FOLDER / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
