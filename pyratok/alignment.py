"""Text alignment head: level tokens and pooled text embedded in one shared space.

Implements the language alignment of PyraTok §3.3: token embeddings computed from the binary
codes alone (so any token pyramid can be compared with text), a pooled video embedding, and a
symmetric InfoNCE loss. Letters: b - batch, n - tokens, k - bits, d - hidden, e - joint space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from .pyramid import resample


TOP_FRACTION = 0.1  # share of one latent frame's tokens a phrase score averages (training and retrieval)
PHRASE_WEIGHT = 0.75  # share of the phrase score in a zero-shot video-text score (`understanding.retrieval`)


@dataclass
class AlignmentConfig:
    embed_dim: int = 128
    hidden_dim: int = 128
    init_temperature: float = 0.07
    # a text every query is contrasted with at token level (zero-shot localisation and segmentation ask
    # "query or background?"); set by the alignment stage when it trains with a background class
    background_text: str | None = None


class AlignmentHead(nn.Module):
    def __init__(self, config: AlignmentConfig, num_bits: int, num_levels: int, text_dim: int):
        super().__init__()
        d, e = config.hidden_dim, config.embed_dim
        self.bit_embed = nn.Linear(num_bits, d)
        self.level_embed = nn.Parameter(torch.zeros(num_levels, d))
        self.context = nn.Conv3d(d, d, kernel_size=3, padding=1, groups=d)  # local (t, h, w) context
        self.token_proj = nn.Sequential(nn.GELU(), nn.Linear(d, d), nn.GELU(), nn.Linear(d, e))
        self.text_proj = nn.Sequential(nn.Linear(text_dim, d), nn.GELU(), nn.Linear(d, e))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))

    def token_embeddings(self, bits: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per level (b, t, h, w, e), not normalised: pooled and per-token scores share this space."""
        out = []
        for level, b in enumerate(bits):
            x = self.bit_embed(b.to(self.bit_embed.weight.dtype)) + self.level_embed[level]
            x_bdthw = rearrange(x, "b t h w d -> b d t h w")
            x = x + rearrange(self.context(x_bdthw), "b d t h w -> b t h w d")
            out.append(self.token_proj(x))
        return out

    def video_embedding(self, bits: list[torch.Tensor], tokens: list[torch.Tensor] | None = None) -> torch.Tensor:
        """(b, e) unit vectors: the mean over levels of each level's mean token embedding.

        `tokens`: `token_embeddings(bits)` when the caller has them already (they are then not recomputed).
        """
        tokens = self.token_embeddings(bits) if tokens is None else tokens
        pooled = torch.stack([t.mean(dim=(1, 2, 3)) for t in tokens]).mean(0)
        return F.normalize(pooled, dim=-1)

    def text_embedding(self, text_pooled: torch.Tensor) -> torch.Tensor:
        """(b, d_text) pooled text -> (b, e) unit vectors."""
        return F.normalize(self.text_proj(text_pooled), dim=-1)

    def similarity_maps(self, bits: list[torch.Tensor], text_emb: torch.Tensor) -> list[torch.Tensor]:
        """Cosine of each token with each text: per level (b, m, t, h, w) for m texts."""
        maps = []
        for tok in self.token_embeddings(bits):
            tok = F.normalize(tok, dim=-1)
            maps.append(torch.einsum("bthwe,me->bmthw", tok, text_emb))
        return maps

    def token_field(self, bits: list[torch.Tensor], tokens: list[torch.Tensor] | None = None,
                    levels: Sequence[int] | None = None) -> torch.Tensor:
        """(b, e, t, h, w): unit token embeddings of the chosen levels (default all; -1 is the finest)
        resampled to the finest grid, averaged."""
        tokens = self.token_embeddings(bits) if tokens is None else tokens
        finest = tuple(tokens[-1].shape[1:4])
        chosen = [tokens[i] for i in check_levels(levels, len(tokens))]
        fields = [resample(rearrange(F.normalize(t, dim=-1).float(), "b t h w e -> b e t h w"), finest) for t in chosen]
        return torch.stack(fields).mean(0)

    def similarity_volume(
        self, bits: list[torch.Tensor], text_emb: torch.Tensor, tokens: list[torch.Tensor] | None = None,
        field: torch.Tensor | None = None, levels: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """(b, m, t, h, w) on the finest grid: the mean over levels of each level's cosine map resampled there.

        Resampling is linear, so this is the token field (levels resampled and averaged first) times the
        text: the same numbers at a fraction of the cost when there are many texts. `field`:
        `token_field(bits)` when the caller has it already. `levels`: average only these levels.
        """
        field = self.token_field(bits, tokens, levels) if field is None else field
        return torch.einsum("bethw,me->bmthw", field, text_emb.float())

    def text_scores(self, bits: list[torch.Tensor], text_pooled: torch.Tensor, phrase_pooled: torch.Tensor,
                    membership: torch.Tensor, phrase_weight: float) -> torch.Tensor:
        """(b, m) video-text scores: (1 - w) x the cosine of the pooled video and text embeddings plus
        w x the mean over each text's phrases of the phrase's `top_fraction_mean` token cosine.

        text_pooled (m, d) and phrase_pooled (p, d): pooled text; membership (m, p): each text's weights
        over the phrases (rows sum to 1); w = phrase_weight in [0, 1].
        """
        if not 0.0 <= phrase_weight <= 1.0:
            raise ValueError(f"phrase_weight must be in [0, 1], got {phrase_weight!r}")
        tokens = self.token_embeddings(bits)
        pooled = (self.video_embedding(bits, tokens) @ self.text_embedding(text_pooled).t()).float()  # (b, m)
        if phrase_weight == 0.0:
            return pooled
        volume = self.similarity_volume(bits, self.text_embedding(phrase_pooled), tokens)  # (b, p, t, h, w)
        phrase = top_fraction_mean(volume, TOP_FRACTION).float() @ membership.float().t()  # (b, m)
        return (1.0 - phrase_weight) * pooled + phrase_weight * phrase

    def scale(self) -> torch.Tensor:
        """The learned inverse temperature of the contrastive logits, at most 100."""
        return self.logit_scale.clamp(max=math.log(100)).exp()

    def contrastive_loss(self, video_emb: torch.Tensor, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Symmetric InfoNCE over the batch; returns (loss, video->text top-1 accuracy)."""
        scale = self.scale()
        logits = scale * video_emb @ text_emb.t()  # (b, b)
        target = torch.arange(logits.shape[0], device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        acc = (logits.argmax(-1) == target).float().mean()
        return loss, acc


def check_levels(levels: Sequence[int] | None, num_levels: int) -> list[int]:
    """None -> every level; else the given indices (negative count from the finest), each in range, no repeats."""
    if levels is None:
        return list(range(num_levels))
    chosen = [int(i) % num_levels if -num_levels <= int(i) < num_levels else None for i in levels]
    if not chosen or None in chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"levels must be distinct indices in [-{num_levels}, {num_levels}), got {list(levels)!r}")
    return chosen


def top_fraction_mean(volume: torch.Tensor, fraction: float) -> torch.Tensor:
    """(..., t, h, w) -> (...): mean of the highest ceil(fraction * h * w) values over all tokens.

    A multiple-instance score: a phrase matches a video where some tokens match it, wherever and
    whenever they are (about one latent frame's top `fraction`, as `understanding.localize` scores a frame).
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    k = max(1, math.ceil(fraction * volume.shape[-1] * volume.shape[-2]))
    return volume.flatten(-3).topk(k, dim=-1).values.mean(-1)


def multi_positive_nce(logits: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    """InfoNCE with several positives per row: mean over rows of -log(sum_pos exp / sum_all exp).

    logits, positive: (rows, candidates); every row needs at least one positive. With exactly one
    positive per row this is `F.cross_entropy` against that column.
    """
    if positive.shape != logits.shape or not bool(positive.any(-1).all()):
        raise ValueError(f"positive must be a {tuple(logits.shape)} mask with a positive in every row")
    pos = logits.masked_fill(~positive, float("-inf")).logsumexp(-1)
    return (logits.logsumexp(-1) - pos).mean()
