"""Tiny randomly initialised Hugging Face model folders for tests (the hubs are unreachable): a Stable
Diffusion pipeline (with a character-level tokenizer written here) and a VisionEncoderDecoder
captioner (with the word-level tokenizer of models/training/train_caption_digits.py)."""

from __future__ import annotations

import json
import string
from pathlib import Path

CHARS = list(string.ascii_lowercase) + list(string.digits) + list(".,!?'-")


def _vocab(path: Path, specials: list[str]) -> dict[str, int]:
    """A character-level BPE vocab (every character alone and as a word end) and an empty merges file."""
    vocab = {s: i for i, s in enumerate(specials)}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    return vocab


def save_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """A 32×32 Stable Diffusion pipeline (UNet 8→16 channels, 2-level VAE, 2-layer CLIP text encoder,
    DDIM) saved with safetensors to ``folder``."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    tok_dir = folder.parent / f"{folder.name}-vocab"
    vocab = _vocab(tok_dir, ["<|startoftext|>", "<|endoftext|>"])
    tokenizer = CLIPTokenizer(
        str(tok_dir / "vocab.json"), str(tok_dir / "merges.txt"), model_max_length=16, pad_token="<|endoftext|>"
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=16,
            intermediate_size=32,
            num_attention_heads=2,
            num_hidden_layers=2,
            max_position_embeddings=16,
            vocab_size=len(vocab),
            projection_dim=16,
        )
    )
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    )
    pipe = StableDiffusionPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    return folder


INIT_RANGE = 0.5  # weights wide enough that different images get different words (0.02 said "black" to all)
CAPTION_WORDS = ["a", "red", "green", "blue", "zero", "one", "two", "three", "seven", "on", "black"]


def save_tiny_captioner(folder: Path, seed: int = 0) -> Path:
    """A tiny randomly initialised VisionEncoderDecoder (ViT encoder 32×32, GPT-2 decoder, one layer
    each) with its image processor and a word-level tokenizer, saved as a Hugging Face
    image-to-text folder (safetensors), as transformers' own tests build theirs. Its captions are
    nonsense but deterministic: a few words of CAPTION_WORDS."""
    import torch
    from transformers import (
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    from models.training.train_caption_digits import SPECIALS, word_tokenizer

    vocab = SPECIALS + CAPTION_WORDS
    tokenizer = word_tokenizer(vocab)
    encoder = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        initializer_range=INIT_RANGE,
    )
    decoder = GPT2Config(
        vocab_size=len(vocab),
        n_positions=64,
        n_embd=32,
        n_layer=1,
        n_head=2,
        bos_token_id=1,
        eos_token_id=2,
        initializer_range=INIT_RANGE,
    )
    decoder.update({"is_decoder": True, "add_cross_attention": True, "pad_token_id": 0})
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.update({"decoder_start_token_id": 1, "pad_token_id": 0, "eos_token_id": 2})
    torch.manual_seed(seed)
    model = VisionEncoderDecoderModel(config=config)
    model.generation_config.update(decoder_start_token_id=1, pad_token_id=0, eos_token_id=2, bos_token_id=1)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
