"""Text-to-image with any diffusers Stable Diffusion pipeline folder, batch-invariant per sample.

The folder (``model_index.json``, ``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``scheduler/``; safetensors only) is fetched into the cache pinned by its digest
(models/folders.py) and loaded with ``StableDiffusionPipeline.from_pretrained``. A sample's pixels
depend only on its prompt and its generator, whatever batch it shares:

* each prompt (and its negative prompt) is encoded alone, one row per text-encoder call;
* the initial latents are drawn per sample from its own generator (C×h×w float32, on CPU);
* the UNet runs on fixed micro-batches of ``micro_batch`` rows, the last one padded (as
  models.diffusion.unet_eps does: small matrix products take shape-dependent kernels);
* the VAE decodes one sample per call.

Samples with different steps or guidance scales are run as separate pipeline calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.base import Prompt, TextToImageModel
from models.catalog import TextToImageParams
from models.folders import fetch_folder, params_digest

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": torch.float16}


def micro_batched(unet, rows: int) -> None:
    """Make ``unet`` run every call on exactly ``rows`` rows (chunks, the last padded by repeating
    its last row), so a row's output never depends on how many rows share the call."""
    forward = unet.forward

    def call(sample: torch.Tensor, timestep, *args, encoder_hidden_states=None, return_dict: bool = True, **kwargs):
        n = sample.shape[0]
        per_row = torch.is_tensor(timestep) and timestep.ndim > 0 and timestep.shape[0] == n
        outs = []
        for start in range(0, n, rows):
            x = sample[start : start + rows]
            e = encoder_hidden_states[start : start + rows]
            t = timestep[start : start + rows] if per_row else timestep
            got = x.shape[0]
            if got < rows:
                pad = rows - got
                x = torch.cat([x, x[-1:].expand(pad, *x.shape[1:])])
                e = torch.cat([e, e[-1:].expand(pad, *e.shape[1:])])
                t = torch.cat([t, t[-1:].expand(pad)]) if per_row else t
            outs.append(forward(x, t, *args, encoder_hidden_states=e, return_dict=False, **kwargs)[0][:got])
        out = torch.cat(outs)
        if return_dict:
            from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

            return UNet2DConditionOutput(sample=out)
        return (out,)

    unet.forward = call  # an instance attribute: nn.Module.__call__ finds it before the class's forward


def build(p: TextToImageParams) -> TextToImageModel:
    """The ``text-to-image`` registry entry: fetch, verify and load the pipeline folder at ``p.uri``."""
    from diffusers import StableDiffusionPipeline

    digest = params_digest(p)
    folder = fetch_folder(p.uri, digest, p.storage_options)
    pipe = StableDiffusionPipeline.from_pretrained(
        str(folder),
        use_safetensors=True,
        local_files_only=True,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    if p.attention_slicing:
        pipe.enable_attention_slicing()
    if p.vae_tiling:
        pipe.vae.enable_tiling()
    micro_batched(pipe.unet, p.micro_batch)
    factor = pipe.vae_scale_factor
    height = p.height or pipe.unet.config.sample_size * factor
    width = p.width or height
    latent_shape = (pipe.unet.config.in_channels, height // factor, width // factor)
    module = torch.nn.ModuleDict({"unet": pipe.unet, "vae": pipe.vae, "text_encoder": pipe.text_encoder})
    sampler = type(pipe.scheduler).__name__.removesuffix("Scheduler").lower()

    def generate(
        generators: Sequence[torch.Generator], prompts: Sequence[Prompt], device: torch.device
    ) -> torch.Tensor:
        if len(generators) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts need {len(prompts)} generators, got {len(generators)}")
        dtype = torch.float32 if device.type == "cpu" else DTYPES[p.dtype]
        # The VAE stays float32: SD's VAE overflows in float16, and it runs once per sample.
        if pipe.unet.dtype != dtype:
            pipe.unet.to(dtype)
            pipe.text_encoder.to(dtype)
        groups: dict[tuple[int, float], list[int]] = {}
        for i, prompt in enumerate(prompts):
            key = (
                prompt.steps or p.steps,
                p.guidance_scale if prompt.guidance_scale is None else prompt.guidance_scale,
            )
            groups.setdefault(key, []).append(i)
        out: list[torch.Tensor | None] = [None] * len(prompts)
        for (steps, guidance), rows in groups.items():
            guided = guidance > 1
            embeds, negatives = [], []
            for i in rows:
                pe, ne = pipe.encode_prompt(
                    prompts[i].text, device, 1, guided, negative_prompt=prompts[i].negative or None
                )
                embeds.append(pe)
                negatives.append(ne)
            noise = torch.stack([torch.randn(latent_shape, generator=generators[i]) for i in rows])
            latents = pipe(
                prompt_embeds=torch.cat(embeds),
                negative_prompt_embeds=torch.cat(negatives) if guided else None,
                num_inference_steps=steps,
                guidance_scale=guidance,
                latents=noise.to(device, dtype),
                generator=[generators[i] for i in rows],
                height=height,
                width=width,
                output_type="latent",
                return_dict=False,
            )[0]
            vae = pipe.vae
            shift = getattr(vae.config, "shift_factor", None) or 0.0
            for k, i in enumerate(rows):
                z = latents[k : k + 1].to(torch.float32) / vae.config.scaling_factor + shift
                image = vae.decode(z, return_dict=False)[0]
                out[i] = (image.float() / 2 + 0.5).clamp(0, 1)[0]
        return torch.stack(out)

    return TextToImageModel(
        name="text-to-image",
        module=module,
        generate=generate,
        shape=(3, height, width),
        sampler=sampler,
        steps=p.steps,
        guidance_scale=p.guidance_scale,
        weights_sha256=digest,
    )
