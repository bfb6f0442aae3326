"""Layered drawing of captions that name several objects ("a red circle moving left and a blue square growing").

Each object's phrase (`split_phrases`) is drawn as a video of its own, a layer, a few times over (candidates);
the tokenizer says where its phrase is in each layer (the zero-shot segmentation of `pyratok.understanding`:
the layer re-encoded, the phrase's token map at the finest level, snapped to the layer's edges, normalised to
[0, 1]). Per video, one candidate per phrase is kept, the pick whose objects overlap least, and the kept layers
are composited: inside an object the topmost layer that has it (the smaller object on top), elsewhere the layer
whose map is highest. The generator's joint draw of a pair merges the two objects into one blob (README, "Two
objects, drawn as layers"); a layer holds one object, drawn as well as a single-object prompt draws it.
Layers are independent: they share the empty background of the training clips, and no phrase sees another (a
caption that relates its objects, "a circle chasing a square", is drawn as two unrelated objects).
Letters: n - layers or draws, b - videos, c - channels, f - frames, h/w - pixels.
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import torch

from pyratok.pyramid import TokenPyramid
from pyratok.text_encoder import split_phrases
from pyratok.understanding.common import encode_videos, query_volume
from pyratok.understanding.segment import MASK_THRESHOLD, SEGMENT_LEVELS, segment_volume

SEED_HIGH = 2**63 - 1  # a layer's seed is drawn from its video's generator in [0, SEED_HIGH)


class LayerPlan(NamedTuple):
    """What a batch of prompts draws as layers, video by video. phrases: one per draw, phrase by phrase, each
    phrase `tries` times in a row; counts: phrases per video; tries: draws per phrase (1 for a one-phrase
    video: it is drawn as without layers); draws: draws per video (counts x tries)."""

    phrases: list[str]
    counts: list[int]
    tries: list[int]

    @property
    def draws(self) -> list[int]:
        return [count * tries for count, tries in zip(self.counts, self.tries)]


def check_candidates(candidates) -> None:
    """ValueError unless `candidates` (draws of each layer to pick from) is a positive int."""
    if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
        raise ValueError(f"layer_candidates must be a positive int, got {candidates!r}")


def plan_layers(prompts: list[str], candidates: int = 1) -> LayerPlan:
    """Each video's prompt split into its phrases (`split_phrases`), each phrase of a several-phrase prompt
    drawn `candidates` times: plan_layers(["a red circle and a blue square", "a green triangle"], 2).phrases ==
    ["a red circle", "a red circle", "a blue square", "a blue square", "a green triangle"]."""
    check_candidates(candidates)
    groups = [split_phrases(p) for p in prompts]
    tries = [1 if len(group) == 1 else candidates for group in groups]
    phrases = [phrase for group, k in zip(groups, tries) for phrase in group for _ in range(k)]
    return LayerPlan(phrases, [len(group) for group in groups], tries)


def pick_layers(plan: LayerPlan, maps: torch.Tensor) -> list[int]:
    """The draws kept, one per phrase, video by video (`least_overlap` of the objects in `maps`, (draws, f, h,
    w), each video's draws in the plan's order)."""
    if maps.shape[0] != len(plan.phrases):
        raise ValueError(f"{maps.shape[0]} maps for {len(plan.phrases)} draws")
    kept, start = [], 0
    for count, tries, draws in zip(plan.counts, plan.tries, plan.draws):
        kept += [start + i for i in least_overlap(maps[start : start + draws] >= MASK_THRESHOLD, count, tries)]
        start += draws
    return kept


def layer_generators(generators: list[torch.Generator | None], draws: list[int]) -> list[torch.Generator | None]:
    """One generator per draw, video by video (`draws`: each video's number): a video drawn once keeps its own
    generator (so it is drawn as without layers); the draws of a video with several get seeds drawn from its
    generator, in order, so video k still depends on generator k alone. A None generator stays None for every
    draw (torch's global RNG)."""
    out = []
    for generator, count in zip(generators, draws, strict=True):
        if count == 1 or generator is None:
            out.extend([generator] * count)
            continue
        seeds = torch.randint(SEED_HIGH, (count,), generator=generator, device=generator.device).tolist()
        out.extend(torch.Generator(generator.device).manual_seed(s) for s in seeds)
    return out


@torch.no_grad()
def layer_maps(tokenizer, text_encoder, layers: torch.Tensor, phrases: list[str]) -> torch.Tensor:
    """(n, 3, f, h, w) layers in [-1, 1] and each one's phrase -> (n, f, h, w): where the tokenizer finds the
    phrase in its own layer, in [0, 1] per layer (`segment`'s heatmap, edge-snapped)."""
    if layers.shape[0] != len(phrases):
        raise ValueError(f"{layers.shape[0]} layers but {len(phrases)} phrases")
    size = tuple(layers.shape[-3:])
    pyramid = encode_videos(tokenizer, layers)
    maps = []
    for n, phrase in enumerate(phrases):
        own = TokenPyramid([bits[n : n + 1] for bits in pyramid.bits], pyramid.latent_grid)
        volume = query_volume(tokenizer, text_encoder, own, [phrase], SEGMENT_LEVELS)[0, 0]  # (t, h', w')
        maps.append(segment_volume(volume.float().cpu(), size, tokenizer.temporal_factor, tokenizer.spatial_factor,
                                   guide=layers[n].float().cpu()).heatmaps)  # (f, h, w)
    return torch.stack(maps)


def overlap(a: torch.Tensor, b: torch.Tensor) -> float:
    """Share of the smaller of two object masks (bool, same shape) that the other covers; 0 when one is empty."""
    smaller = min(int(a.sum()), int(b.sum()))
    return float((a & b).sum()) / smaller if smaller else 0.0


def least_overlap(masks: torch.Tensor, num_phrases: int, candidates: int) -> list[int]:
    """masks (num_phrases * candidates, f, h, w) bool, phrase by phrase (phrase p's candidates at p * candidates
    + k) -> one index into masks per phrase: the pick whose objects overlap least, summed over pairs of
    phrases (`overlap`); among equals the first in `itertools.product` order (each phrase's first candidate)."""
    if masks.shape[0] != num_phrases * candidates:
        raise ValueError(f"{masks.shape[0]} masks for {num_phrases} phrases x {candidates} candidates")
    pairs = {(i, j): overlap(masks[i], masks[j]) for i in range(len(masks)) for j in range(i + 1, len(masks))
             if i // candidates != j // candidates}
    picks = (tuple(p * candidates + k for p, k in enumerate(combo))
             for combo in itertools.product(range(candidates), repeat=num_phrases))
    return list(min(picks, key=lambda pick: sum(pairs[pair] for pair in itertools.combinations(pick, 2))))


def composite(layers: torch.Tensor, maps: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """(n, c, f, h, w) layers and their (n, f, h, w) maps -> (b, c, f, h, w), video by video (`counts` layers
    each). A pixel inside an object (map >= MASK_THRESHOLD) comes from the topmost layer that has its object
    there, layers stacked with the smaller object on top (so that both stay in view); any other pixel from the
    layer whose map is highest there (ties: the earlier phrase)."""
    if sum(counts) != layers.shape[0] or maps.shape != layers[:, 0].shape:
        raise ValueError(f"layers {tuple(layers.shape)}, maps {tuple(maps.shape)} and counts {counts} disagree")
    videos, start = [], 0
    for count in counts:
        group, heat = layers[start : start + count], maps[start : start + count].to(layers.device).float()
        inside = heat >= MASK_THRESHOLD  # (k, f, h, w)
        order = torch.argsort(inside.flatten(1).sum(1), stable=True)  # smallest object first: the top layer
        rank = torch.empty(count, device=heat.device)  # count for the top layer ... 1 for the bottom one
        rank[order] = torch.arange(count, 0, -1, device=heat.device, dtype=rank.dtype)
        score = heat + 2 * inside * rank[:, None, None, None]  # a covering layer outranks any map in [0, 1]
        best = score.argmax(dim=0, keepdim=True)  # (1, f, h, w): the first of equal maxima
        index = best[:, None].expand(1, group.shape[1], *best.shape[1:])  # (1, c, f, h, w)
        videos.append(group.gather(0, index)[0])
        start += count
    return torch.stack(videos)
