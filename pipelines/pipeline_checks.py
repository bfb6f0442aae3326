"""Input checks of `PyraTokT2VPipeline.__call__`: every bad value is a ValueError naming it, before heavy work.

Part of DESIGN.md "Pipeline": sizes against the tokenizer's factors and against memory (`generator.memory`'s
estimate of the peak), prompts and their embeddings, generators, the token-pyramid prefix, callbacks.
"""
from __future__ import annotations

import numbers
import os

import torch

from generator.memory import GB, SamplingMemory, sampling_memory
from generator.refiner import check_guidance_scale
from generator.sampling import check_conv_passes, check_finest_decode, check_generators, check_sampling_values
from pyratok.pyramid import TokenPyramid
from pyratok.text_encoder import text_reading

OUTPUT_TYPES = ("pil", "np", "pt", "latent")


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


def check_refiner(refiner, vae, transformer) -> None:
    """A refiner (or None) that reads this vae's latent, this transformer's text states, and keeps fewer
    levels than the transformer draws; else a ValueError naming the mismatch."""
    if refiner is None:
        return
    got = {"latent_channels": refiner.config.latent_channels, "text_dim": refiner.config.text_dim}
    want = {"latent_channels": vae.quantizer.config.latent_channels, "text_dim": transformer.config.text_dim}
    if got != want:
        raise ValueError(f"the refiner was built for {got}, but this vae and transformer give {want}")
    if refiner.config.keep_levels >= transformer.config.num_levels:
        raise ValueError(f"the refiner keeps {refiner.config.keep_levels} levels; the transformer draws only "
                         f"{transformer.config.num_levels}")


def estimate_memory(pipe, batch: int, num_frames: int, height: int, width: int, use_cfg: bool,
                    output_type: str, max_sequence_length: int | None = None,
                    use_refiner: bool = True, refiner_guidance_scale: float | None = None) -> SamplingMemory:
    """The memory of one call by `generator.memory` (the models rebuilt on the meta device, the call's own code
    run on them): text encoding, level-by-level sampling, the refiner's draw (when the pipeline has one and
    `use_refiner`; guided at `refiner_guidance_scale`, None: its config's), the decode as the vae is set (tiled
    or not) and the post-processing into `output_type`.
    Counting takes about a second (every op on the meta device goes through Python), so each request's
    estimate is kept in `pipe._memory_estimates`."""
    text_len = pipe.text_encoder_wrapper(max_sequence_length).max_length
    refiner = pipe.refiner if use_refiner else None
    components = (pipe.transformer, pipe.vae, pipe.text_encoder, *([refiner] if refiner is not None else []))
    refiner_config = None if refiner is None else dict(refiner.config)
    if refiner_config is not None and refiner_guidance_scale is not None:
        refiner_config["guidance_scale"] = refiner_guidance_scale
    refiner_guided = refiner_config is not None and refiner_config["guidance_scale"] != 1.0  # else no null batch
    key = (batch, num_frames, height, width, use_cfg, output_type, text_len, repr(pipe.vae.tiling), refiner_guided,
           *(id(c) for c in components), *(c.dtype for c in components))
    if key not in pipe._memory_estimates:
        pipe._memory_estimates[key] = sampling_memory(
            pipe.transformer.generator_config(), pipe.vae.cfg, pipe.vae.latent_grid(num_frames, height, width),
            batch, guidance=use_cfg, text_len=text_len, dtype=pipe.transformer.dtype, vae_dtype=pipe.vae.dtype,
            tiling=pipe.vae.tiling, output_type=output_type, text_encoder=pipe.text_encoder,
            refiner=refiner_config)
    return pipe._memory_estimates[key]


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


def check_memory(pipe, batch: int, num_frames: int, height: int, width: int, use_cfg: bool, output_type: str,
                 max_sequence_length: int | None, device, use_refiner: bool = True,
                 refiner_guidance_scale: float | None = None) -> None:
    """ValueError with the estimate when the call would need more than the memory available on `device`."""
    needed = estimate_memory(pipe, batch, num_frames, height, width, use_cfg, output_type, max_sequence_length,
                             use_refiner, refiner_guidance_scale)
    free = available_bytes(torch.device(device))
    if needed.working > free:
        raise ValueError(f"{batch} video(s) of {num_frames}x{height}x{width} need about {needed.working / GB:.2f} GB "
                         f"beyond the loaded weights (generator.memory: sampling {needed.sampling / GB:.2f}, refine "
                         f"{needed.refine / GB:.2f}, decode {needed.decode / GB:.2f}) but {free / GB:.2f} GB are "
                         f"available on {device}: lower num_frames, height, width or the batch"
                         f"{'' if pipe.vae.tiling else ', or enable tiling'}")


def check_call(pipe, *, prompt, negative_prompt, prompt_embeds, negative_prompt_embeds, num_frames, height, width,
               output_type, num_videos_per_prompt, generator, guidance_scale, guidance_schedule, temperature,
               top_k, top_p, finest_decode, finest_conv_passes, max_sequence_length, latents, attention_kwargs,
               callback_tensor_inputs, use_refiner=True, refiner_guidance_scale=None) -> int:
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
    if not isinstance(use_refiner, bool):
        raise ValueError(f"use_refiner must be True or False, got {use_refiner!r}")
    refiner = pipe.refiner if use_refiner else None
    check_guidance_scale(refiner_guidance_scale)
    if prompt is None and refiner is not None and text_reading(refiner.config) != text_reading(pipe.transformer.config):
        raise ValueError(f"the refiner reads the caption as {text_reading(refiner.config)}, the transformer as "
                         f"{text_reading(pipe.transformer.config)}: pass `prompt`, not only prompt_embeds, or "
                         "use_refiner=False")
    if max_sequence_length is not None:
        check_positive_int("max_sequence_length", max_sequence_length)
    num_levels = pipe.transformer.config.num_levels
    scales = check_sampling_values(guidance_scale, guidance_schedule, temperature, top_k, top_p, num_levels)
    check_finest_decode(finest_decode, pipe.transformer)
    check_conv_passes(finest_conv_passes, pipe.transformer)
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
    check_memory(pipe, batch, num_frames, height, width, use_cfg, output_type, max_sequence_length,
                 pipe._execution_device, refiner is not None, refiner_guidance_scale)
    return batch
