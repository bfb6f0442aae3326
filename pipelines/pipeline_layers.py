"""Layered drawing in `PyraTokT2VPipeline` (`compose_phrases`): its checks, the draw of every video's phrases as
layers and their composite (the pieces themselves are `pipelines.compose`). A mixin of the pipeline class: it
uses the pipeline's `__call__`, `_check`, components and `postprocess`.
Letters: n - layers or draws, f - frames, h/w - pixels.
"""
from __future__ import annotations

import inspect
from typing import NamedTuple

import torch

from pyratok.text_encoder import split_phrases

from .compose import check_candidates, composite, layer_generators, layer_maps, pick_layers, plan_layers
from .pipeline_loading import onload


class LayeredDraw(NamedTuple):
    """`PyraTokT2VPipeline.draw_layers`: layers (n, 3, f, h, w) in [-1, 1], their maps (n, f, h, w) in [0, 1],
    each layer's phrase, and each video's number of layers (videos in order; `compose.composite` joins them)."""

    layers: torch.Tensor
    maps: torch.Tensor
    phrases: list[str]
    counts: list[int]


class LayeredDrawMixin:
    """`compose_phrases` / `layer_candidates` of `PyraTokT2VPipeline.__call__`, and `draw_layers`."""

    def _check_layers(self, call: dict) -> None:
        """The layer arguments of one `__call__` (after `check_call`): a ValueError naming the first bad one."""
        compose = call["compose_phrases"]
        check_candidates(call["layer_candidates"])
        if compose not in (None, True, False):
            raise ValueError(f"compose_phrases must be True, False or None, got {compose!r}")
        if compose and (call["prompt"] is None or call["latents"] is not None or call["output_type"] == "latent"):
            raise ValueError("compose_phrases=True draws layers from prompt texts and returns frames: it takes no "
                             f"prompt_embeds, no latents and no output_type 'latent' (got {call['output_type']!r})")
        text_dim = self.text_encoder_wrapper().dim
        if self._draws_layers(call) and text_dim != self.vae.cfg.text_dim:
            raise ValueError(f"compose_phrases needs the vae's map of each phrase: the vae's alignment reads "
                             f"{self.vae.cfg.text_dim}-d text, the text encoder gives {text_dim}-d")

    def _draws_layers(self, call: dict) -> bool:
        """Whether a checked call draws its prompts' phrases as layers (`compose_phrases` in `__call__`)."""
        compose = call["compose_phrases"]
        if compose is None:
            joint = call["prompt"] is None or call["latents"] is not None or call["output_type"] == "latent"
            compose = bool(getattr(self.config, "compose_phrases", False)) and not joint
        prompts = [call["prompt"]] if isinstance(call["prompt"], str) else call["prompt"]
        return bool(compose) and any(len(split_phrases(p)) > 1 for p in prompts)

    @torch.no_grad()
    def draw_layers(self, *args, **kwargs) -> LayeredDraw:
        """The layers of `pipe(*args, **kwargs, compose_phrases=True)` before they are composited (same checks,
        same draws): every video's phrases drawn in one batch, one layer each with its generator from
        `compose.layer_generators`, decoded, and the vae's map of each layer's phrase."""
        bound = inspect.signature(self.__call__).bind(*args, **kwargs)
        bound.apply_defaults()
        call = {**bound.arguments, "compose_phrases": True}
        self._check(call)
        return self._draw_layers(call)

    def _draw_layers(self, call: dict) -> LayeredDraw:
        prompts = [call["prompt"]] if isinstance(call["prompt"], str) else list(call["prompt"])
        repeats = call["num_videos_per_prompt"]
        plan = plan_layers([p for p in prompts for _ in range(repeats)], call["layer_candidates"])  # video i*n + j
        negative, generator = call["negative_prompt"], call["generator"]
        if negative is not None:  # each video's negative prompt for each of its draws
            negatives = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
            per_video = [q for q in negatives for _ in range(repeats)]
            negative = [q for q, draws in zip(per_video, plan.draws) for _ in range(draws)]
        if generator is not None:
            per_video = list(generator) if isinstance(generator, (list, tuple)) else [generator] * len(plan.counts)
            generator = layer_generators(per_video, plan.draws)
        drawn = self(**{**call, "prompt": plan.phrases, "negative_prompt": negative, "num_videos_per_prompt": 1,
                        "generator": generator, "output_type": "latent", "return_dict": True,
                        "compose_phrases": False}).frames
        onload(self.vae)
        layers = self.vae.decode(drawn.latent.to(self.vae.device))  # (draws, 3, f, h, w) in [-1, 1]
        onload(self.text_encoder)
        maps = layer_maps(self.vae, self.text_encoder_wrapper(call["max_sequence_length"]), layers, plan.phrases)
        kept = pick_layers(plan, maps)
        return LayeredDraw(layers[kept], maps[kept], [plan.phrases[i] for i in kept], plan.counts)

    def _composited_frames(self, call: dict):
        """The frames of `__call__` for prompts drawn as layers (`draw_layers`), composited per video
        (`compose.composite`), in the call's output_type."""
        draw = self._draw_layers(call)
        frames = self.postprocess(composite(draw.layers, draw.maps, draw.counts), call["output_type"])
        self.maybe_free_model_hooks()
        return frames
