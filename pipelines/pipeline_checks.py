"""Input checks of `PyraTokT2VPipeline.__call__`: every bad value is a ValueError naming it, before heavy work.

Part of DESIGN.md "Pipeline": sizes against the tokenizer's factors and against memory (a lower-bound
estimate of the peak), prompts and their embeddings, generators, the token-pyramid prefix, callbacks.
"""
from __future__ import annotations

import math
import numbers
import os

import torch

from generator.sampling import check_generators, check_sampling_values
from pyratok.pyramid import TokenPyramid

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
GB = 1024**3


def check_texts(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds) -> int:
    """The number of prompts; prompts are str / list of str, or embeddings (b, s, d) instead."""
    if prompt is not None and prompt_embeds is not None:
        raise ValueError("pass prompt or prompt_embeds, not both")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("pass negative_prompt or negative_prompt_embeds, not both")
    if prompt is None and prompt_embeds is None:
        raise ValueError("prompt must be a str or a list of str, got NoneType: None (or pass prompt_embeds)")
    for name, embeds in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
        if embeds is not None and (not isinstance(embeds, torch.Tensor) or embeds.dim() != 3):
            raise ValueError(f"{name} must be a (batch, text tokens, width) tensor, got "
                             f"{tuple(embeds.shape) if isinstance(embeds, torch.Tensor) else type(embeds).__name__}")
        if embeds is not None and not torch.isfinite(embeds).all():
            raise ValueError(f"{name} holds non-finite values")
    if prompt is None:
        count = prompt_embeds.shape[0]
    else:
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)):
            raise ValueError(f"prompt must be a str or a list of str, got {type(prompt).__name__}: {prompt!r}")
        if len(prompts) == 0:
            raise ValueError("prompt is an empty list; give at least one prompt")
        count = len(prompts)
    for name, texts in (("prompt", prompt), ("negative_prompt", negative_prompt)):
        if isinstance(texts, (list, tuple)):
            bad = [(i, t) for i, t in enumerate(texts) if not isinstance(t, str)]
            if bad:
                raise ValueError(f"{name}[{bad[0][0]}] must be a str, got {type(bad[0][1]).__name__}: {bad[0][1]!r}")
        elif texts is not None and not isinstance(texts, str):
            raise ValueError(f"{name} must be a str or a list of str, got {type(texts).__name__}: {texts!r}")
    if isinstance(negative_prompt, (list, tuple)) and len(negative_prompt) != count:
        raise ValueError(f"negative_prompt has {len(negative_prompt)} entries but prompt has {count}; "
                         "pass one negative prompt per prompt, or a single str")
    if negative_prompt_embeds is not None and negative_prompt_embeds.shape[0] not in (1, count):
        raise ValueError(f"negative_prompt_embeds has batch {negative_prompt_embeds.shape[0]}, expected 1 or {count}")
    return count


def check_positive_int(name: str, value, limit: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if limit is not None and value > limit:
        raise ValueError(f"{name} must be at most {limit}, got {value!r}")


def check_prefix(latents, grids: list, batch: int) -> None:
    """`latents`: a TokenPyramid whose levels (fewer than all) are the first levels of this video's pyramid."""
    if latents is None:
        return
    if not isinstance(latents, TokenPyramid):
        raise ValueError(f"latents must be a TokenPyramid (its levels are kept, the rest sampled), "
                         f"got {type(latents).__name__}")
    if not 0 < latents.num_levels <= len(grids):
        raise ValueError(f"latents has {latents.num_levels} levels; give 1 to {len(grids)}")
    for level, bits in enumerate(latents.bits):
        if tuple(bits.shape[1:4]) != tuple(grids[level]) or bits.shape[0] != batch:
            raise ValueError(f"latents level {level} has bits {tuple(bits.shape)} but this call samples "
                             f"{batch} videos on grid {grids[level]}")


def estimate_peak_bytes(pipe, batch: int, num_frames: int, height: int, width: int, use_cfg: bool) -> int:
    """A lower bound of the peak memory of one call: the transformer's KV cache and MLP activations over all
    tokens, four full-resolution feature maps of the decoder's last stage for every frame, the decoded float
    video and its post-processed copies (six). bench/bench_memory_estimate.py: on the shipped model the
    estimate is 0.71-0.72 of the measured peak (17x256x256, 129x64x64)."""
    grids = pipe.vae.token_grids(num_frames, height, width)
    tokens = sum(math.prod(g) for g in grids)
    cfg = pipe.transformer.config
    rows = batch * (2 if use_cfg else 1)
    itemsize = torch.finfo(pipe.transformer.dtype).bits // 8
    kv_cache = 2 * cfg.depth * rows * tokens * cfg.width * itemsize
    activations = rows * math.prod(grids[-1]) * cfg.width * cfg.mlp_ratio * 4
    video = batch * 3 * num_frames * height * width * 4
    backbone = pipe.vae.cfg.backbone
    decoder = 4 * batch * backbone.base_dim * backbone.dim_mult[0] * num_frames * height * width * 4
    return int(kv_cache + activations + decoder + 6 * video)


def available_bytes(device: torch.device) -> int:
    """Free memory of a CUDA device, else the host's available memory (MemAvailable)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_memory(pipe, batch: int, num_frames: int, height: int, width: int, use_cfg: bool, device) -> None:
    needed = estimate_peak_bytes(pipe, batch, num_frames, height, width, use_cfg)
    free = available_bytes(torch.device(device))
    if needed > free:
        raise ValueError(f"{batch} video(s) of {num_frames}x{height}x{width} need at least {needed / GB:.1f} GB "
                         f"but {free / GB:.1f} GB are available on {device}: lower num_frames, height, width or the "
                         "batch")


def check_call(pipe, *, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_frames, height, width,
               output_type, num_videos_per_prompt, generator, guidance_scale, guidance_schedule, temperature,
               top_k, top_p, max_sequence_length, latents, attention_kwargs, callback_tensor_inputs) -> int:
    """Raise ValueError naming the first bad value; returns the number of videos."""
    prompts = check_texts(prompt, negative_prompt, prompt_embeds, negative_prompt_embeds)
    tf, sf = pipe.vae.temporal_factor, pipe.vae.spatial_factor
    if isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral) or num_frames < 1 \
            or (num_frames - 1) % tf:
        raise ValueError(f"num_frames must be 1 + {tf}k (1, {1 + tf}, {1 + 2 * tf}, ...), got {num_frames!r}")
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0 or value % sf:
            raise ValueError(f"{name} must be a positive multiple of the spatial factor {sf}, got {value!r}")
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
    check_positive_int("num_videos_per_prompt", num_videos_per_prompt)
    if max_sequence_length is not None:
        check_positive_int("max_sequence_length", max_sequence_length)
    num_levels = pipe.transformer.config.num_levels
    scales = check_sampling_values(guidance_scale, guidance_schedule, temperature, top_k, top_p, num_levels)
    batch = prompts * num_videos_per_prompt
    check_generators(generator, batch)
    unknown = [n for n in callback_tensor_inputs or [] if n not in pipe._callback_tensor_inputs]
    if unknown:
        raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not among {pipe._callback_tensor_inputs}")
    if attention_kwargs is not None:
        if not isinstance(attention_kwargs, dict) or set(attention_kwargs) - {"scale"}:
            raise ValueError(f"attention_kwargs takes only 'scale' (the LoRA scale), got {attention_kwargs!r}")
    grids = pipe.vae.token_grids(num_frames, height, width)
    if len(grids) != num_levels:
        raise ValueError(f"{num_frames}x{height}x{width} gives {len(grids)} token levels {grids} but the "
                         f"generator samples {num_levels}")
    check_prefix(latents, grids, batch)
    use_cfg = any(s != 1.0 for s in scales)
    check_memory(pipe, batch, num_frames, height, width, use_cfg, pipe._execution_device)
    return batch
