"""Text alignment head: level tokens and pooled text embedded in one shared space.

Implements the language alignment of PyraTok §3.3: token embeddings computed from the binary
codes alone (so any token pyramid can be compared with text), a pooled video embedding, and a
symmetric InfoNCE loss. Letters: b - batch, n - tokens, k - bits, d - hidden, e - joint space.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


@dataclass
class AlignmentConfig:
    embed_dim: int = 128
    hidden_dim: int = 128
    init_temperature: float = 0.07


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

    def video_embedding(self, bits: list[torch.Tensor]) -> torch.Tensor:
        """(b, e) unit vectors: the mean over levels of each level's mean token embedding."""
        tokens = self.token_embeddings(bits)
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

    def contrastive_loss(self, video_emb: torch.Tensor, text_emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Symmetric InfoNCE over the batch; returns (loss, video->text top-1 accuracy)."""
        scale = self.logit_scale.clamp(max=math.log(100)).exp()
        logits = scale * video_emb @ text_emb.t()  # (b, b)
        target = torch.arange(logits.shape[0], device=logits.device)
        loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))
        acc = (logits.argmax(-1) == target).float().mean()
        return loss, acc
