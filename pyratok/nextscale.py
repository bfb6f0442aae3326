"""Next-scale transformer over a token pyramid: block-causal attention, bitwise heads, KV cache.

Implements PyraTok's global autoregressive objective (§3, a small prior predicting level l from text
and z_hat_<l) and the VAR/Infinity-style generator backbone: all tokens of a level in one pass.
Letters: b - batch, c - latent channels, n - query tokens, m - key tokens, s - text length,
d - width, h - heads, e - head dim, k - bits per token, t/h/w (in grids) - a level's grid.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

try:  # optional fast attention, used only on CUDA tensors and only when asked for
    import xformers.ops as _xops
except Exception:  # noqa: BLE001 - any import failure just means "not available"
    _xops = None

TEXT_MODES = ("cross", "prefix")
ATTN_BACKENDS = ("sdpa", "xformers")


@dataclass
class NextScaleConfig:
    latent_channels: int = 8
    num_bits: int = 16
    width: int = 128
    depth: int = 4
    heads: int = 4
    text_dim: int = 384
    num_levels: int = 4
    mlp_ratio: float = 4.0
    dropout: float = 0.0
    text_mode: str = "cross"  # "cross": cross-attention in each block; "prefix": text tokens prepended
    max_text_len: int = 77
    gradient_checkpointing: bool = False
    attn_backend: str = "sdpa"  # "xformers" is used only on CUDA when installed, else SDPA

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width={self.width} must be divisible by heads={self.heads}")
        if self.text_mode not in TEXT_MODES:
            raise ValueError(f"text_mode must be one of {TEXT_MODES}, got {self.text_mode!r}")
        if self.attn_backend not in ATTN_BACKENDS:
            raise ValueError(f"attn_backend must be one of {ATTN_BACKENDS}, got {self.attn_backend!r}")
        for name in ("latent_channels", "num_bits", "num_levels", "max_text_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.depth < 0:  # depth 0 is allowed: callers use it to mean "no prior"
            raise ValueError(f"depth must be >= 0, got {self.depth}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def block_causal_mask(level_sizes: Sequence[int], prefix_len: int = 0, device=None) -> torch.Tensor:
    """(n, n) bool, True = query row may attend key column; n = prefix_len + sum(level_sizes).

    Prefix (text) tokens see the prefix only; a token of level l sees the prefix and every
    token of levels <= l (its own level in full), never a finer level.
    """
    groups = [torch.full((prefix_len,), -1, dtype=torch.long, device=device)]
    groups += [torch.full((int(n),), l, dtype=torch.long, device=device) for l, n in enumerate(level_sizes)]
    group_n = torch.cat(groups)
    return group_n[None, :] <= group_n[:, None]


def attention(q, k, v, mask=None, dropout_p: float = 0.0, backend: str = "sdpa") -> torch.Tensor:
    """q: (b, h, n, e), k/v: (b, h, m, e), mask: bool broadcastable to (b, h, n, m) -> (b, h, n, e)."""
    if backend == "xformers" and _xops is not None and q.is_cuda:
        b, h, n, _ = q.shape
        m = k.shape[2]
        bias = None
        if mask is not None:  # additive bias; last dim padded to a multiple of 8 as xformers requires
            bias = q.new_zeros(b, h, n, (m + 7) // 8 * 8)[..., :m]
            bias.masked_fill_(~mask.expand(b, h, n, m), float("-inf"))
        out = _xops.memory_efficient_attention(
            *(rearrange(x, "b h n e -> b n h e") for x in (q, k, v)), attn_bias=bias, p=dropout_p
        )
        return rearrange(out, "b n h e -> b h n e")
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)


def grid_coords(grid: Sequence[int], device=None) -> torch.Tensor:
    """(n, 3) cell centres of a (t, h, w) grid in normalised [0, 1] coordinates, raster order."""
    axes = [(torch.arange(g, device=device, dtype=torch.float32) + 0.5) / g for g in grid]
    t, h, w = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([t, h, w], dim=-1).reshape(-1, 3)


class FourierPosition(nn.Module):
    """3D position embedding from sin/cos features of normalised coordinates: any grid size works."""

    def __init__(self, width: int, num_freqs: int = 24, max_freq: float = 256.0):
        super().__init__()
        freqs = math.pi * torch.logspace(0, math.log10(max_freq), num_freqs)
        self.register_buffer("freqs", freqs, persistent=False)
        self.proj = nn.Linear(3 * 2 * num_freqs, width)
        nn.init.normal_(self.proj.weight, std=(3 * num_freqs) ** -0.5)  # unit-scale output: positions count from step 0
        nn.init.zeros_(self.proj.bias)

    def forward(self, grid: Sequence[int]) -> torch.Tensor:
        coords = grid_coords(grid, self.freqs.device)  # (n, 3)
        angles = rearrange(coords[:, :, None] * self.freqs, "n a f -> n (a f)")
        return self.proj(torch.cat([angles.sin(), angles.cos()], dim=-1).to(self.proj.weight.dtype))


class SelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float, backend: str):
        super().__init__()
        self.heads, self.dropout, self.backend = heads, dropout, backend
        self.to_qkv = nn.Linear(width, 3 * width)
        self.to_out = nn.Linear(width, width)

    def forward(self, x, mask=None, past=None):
        """x: (b, n, d); past: cached (k, v) each (b, h, m0, e). Returns out (b, n, d) and the full (k, v)."""
        q, k, v = rearrange(self.to_qkv(x), "b n (three h e) -> three b h n e", three=3, h=self.heads)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (b, h, m0 + n, e)
        p = self.dropout if self.training else 0.0
        out = attention(q, k, v, mask, p, self.backend)
        return self.to_out(rearrange(out, "b h n e -> b n (h e)")), (k, v)


class CrossAttention(nn.Module):
    def __init__(self, width: int, heads: int, dropout: float, backend: str):
        super().__init__()
        self.heads, self.dropout, self.backend = heads, dropout, backend
        self.to_q = nn.Linear(width, width)
        self.to_kv = nn.Linear(width, 2 * width)
        self.to_out = nn.Linear(width, width)

    def text_kv(self, text):
        """text: (b, s, d) projected text -> (k, v) each (b, h, s, e); cacheable across levels."""
        k, v = rearrange(self.to_kv(text), "b s (two h e) -> two b h s e", two=2, h=self.heads)
        return k, v

    def forward(self, x, text_kv, text_mask):
        q = rearrange(self.to_q(x), "b n (h e) -> b h n e", h=self.heads)
        p = self.dropout if self.training else 0.0
        out = attention(q, *text_kv, text_mask, p, self.backend)
        return self.to_out(rearrange(out, "b h n e -> b n (h e)"))


class NextScaleBlock(nn.Module):
    """Pre-norm block: self-attention (block-causal), optional text cross-attention, MLP."""

    def __init__(self, cfg: NextScaleConfig):
        super().__init__()
        d = cfg.width
        self.norm1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, cfg.heads, cfg.dropout, cfg.attn_backend)
        self.cross = CrossAttention(d, cfg.heads, cfg.dropout, cfg.attn_backend) if cfg.text_mode == "cross" else None
        self.norm_cross = nn.LayerNorm(d) if self.cross is not None else None
        self.norm2 = nn.LayerNorm(d)
        hidden = int(d * cfg.mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden), nn.GELU(approximate="tanh"), nn.Dropout(cfg.dropout), nn.Linear(hidden, d)
        )
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mask=None, past=None, text_kv=None, text_mask=None):
        """x: (b, n, d). Returns (x, (k, v)) with the keys/values this block attended to."""
        out, kv = self.attn(self.norm1(x), mask, past)
        x = x + self.drop(out)
        if self.cross is not None and text_kv is not None:
            x = x + self.drop(self.cross(self.norm_cross(x), text_kv, text_mask))
        x = x + self.drop(self.mlp(self.norm2(x)))
        return x, kv


@dataclass
class KVCache:
    """Keys/values of everything already processed, per block: keys[i], values[i] (b, h, m, e)."""

    keys: list = field(default_factory=list)
    values: list = field(default_factory=list)
    key_mask: torch.Tensor | None = None  # (b, m) bool: cached keys that may be attended (text padding off)
    text_kv: list | None = None  # cross mode: per block (k, v) of the text, (b, h, s, e)
    text_mask: torch.Tensor | None = None  # cross mode: (b, 1, 1, s) bool
    batch: int | None = None
    levels_done: int = 0


def bitwise_loss(logits: list[torch.Tensor], bits: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    """BCE of per-bit logits (b, t, h, w, k) against bits in {-1, +1}, averaged over every bit of
    every token of every level (VAR weighting: each token counts once). Stats are detached:
    loss/level{l}, bit_acc/level{l}, bit_acc."""
    if len(logits) != len(bits):
        raise ValueError(f"got logits for {len(logits)} levels but bits for {len(bits)}")
    total, count, stats, correct = 0.0, 0, {}, 0.0
    for level, (lg, b) in enumerate(zip(logits, bits)):
        if lg.shape != b.shape:
            raise ValueError(f"level {level}: logits {tuple(lg.shape)} do not match bits {tuple(b.shape)}")
        target = (b > 0).to(torch.float32)
        loss_sum = F.binary_cross_entropy_with_logits(lg.float(), target, reduction="sum")
        hits = ((lg.detach() > 0).float() == target).float().sum()
        total, count, correct = total + loss_sum, count + b.numel(), correct + hits
        stats[f"loss/level{level}"] = loss_sum.detach() / b.numel()
        stats[f"bit_acc/level{level}"] = hits / b.numel()
    stats["bit_acc"] = correct / count
    return total / count, stats


class NextScaleTransformer(nn.Module):
    """Predicts K bit logits per token of every level from text and z_hat_<l (see module docstring)."""

    def __init__(self, config: NextScaleConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.width
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.input_proj = nn.Linear(cfg.latent_channels, d)
        self.level_embed = nn.Embedding(cfg.num_levels, d)
        nn.init.normal_(self.level_embed.weight, std=0.02)
        self.position = FourierPosition(d)
        self.start = nn.Parameter(torch.randn(d) * 0.02)  # level 0 has no coarser content
        self.text_proj = nn.Sequential(nn.LayerNorm(cfg.text_dim), nn.Linear(cfg.text_dim, d))
        self.text_pool = nn.Linear(d, d)  # pooled text joins the start embedding (Infinity's <SOS>)
        self.text_pos = nn.Parameter(torch.randn(cfg.max_text_len, d) * 0.02) if cfg.text_mode == "prefix" else None
        self.blocks = nn.ModuleList(NextScaleBlock(cfg) for _ in range(cfg.depth))
        self.norm_out = nn.LayerNorm(d)
        self.head = nn.Linear(d, cfg.num_bits)  # bitwise head: K logits, not 2^K

    # --- pieces -------------------------------------------------------------------------------
    def _check_text(self, text_states, text_mask):
        if text_states is None:
            return None, None
        if text_states.dim() != 3 or text_states.shape[-1] != self.config.text_dim:
            raise ValueError(f"text_states must be (b, s, {self.config.text_dim}), got {tuple(text_states.shape)}")
        b, s, _ = text_states.shape
        if text_mask is None:
            text_mask = torch.ones(b, s, dtype=torch.bool, device=text_states.device)
        if tuple(text_mask.shape) != (b, s):
            raise ValueError(f"text_mask must be {(b, s)}, got {tuple(text_mask.shape)}")
        text_mask = text_mask.bool()
        if not text_mask.any(dim=1).all():  # an all-padding row would make attention NaN
            rows = (~text_mask.any(dim=1)).nonzero().flatten().tolist()
            raise ValueError(f"text_mask rows {rows} have no valid token; pass the null text instead")
        if self.config.text_mode == "prefix" and s > self.config.max_text_len:
            raise ValueError(f"text length {s} exceeds max_text_len={self.config.max_text_len}")
        return self.text_proj(text_states.to(self.head.weight.dtype)), text_mask  # (b, s, d)

    def _embed_level(self, level: int, level_input: torch.Tensor, text=None, text_mask=None) -> torch.Tensor:
        """(b, c, t, h, w) -> (b, n, d) with n = t*h*w in raster order."""
        if not 0 <= level < self.config.num_levels:
            raise ValueError(f"level {level} is outside [0, {self.config.num_levels})")
        if level_input.dim() != 5 or level_input.shape[1] != self.config.latent_channels:
            c = self.config.latent_channels
            raise ValueError(f"level {level} input must be (b, {c}, t, h, w), got {tuple(level_input.shape)}")
        x = self.input_proj(rearrange(level_input.to(self.head.weight.dtype), "b c t h w -> b (t h w) c"))
        x = x + self.level_embed.weight[level] + self.position(tuple(level_input.shape[-3:]))
        if level == 0:
            start = self.start
            if text is not None:
                weights = text_mask.to(text.dtype)[..., None]  # (b, s, 1)
                pooled = (text * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (b, d)
                start = start + self.text_pool(pooled)
                start = start[:, None, :]  # (b, 1, d)
            x = x + start
        return x

    def _logits(self, x: torch.Tensor, grid) -> torch.Tensor:
        logits = self.head(self.norm_out(x))  # (b, n, k)
        return rearrange(logits, "b (t h w) k -> b t h w k", t=grid[0], h=grid[1], w=grid[2])

    def _run_blocks(self, x, mask, text_kv_fn, text_mask, past_fn=None):
        new_kv = []
        for i, block in enumerate(self.blocks):
            args = (x, mask, None if past_fn is None else past_fn(i), text_kv_fn(i), text_mask)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x, kv = checkpoint(block, *args, use_reentrant=False)
            else:
                x, kv = block(*args)
            new_kv.append(kv)
        return x, new_kv

    # --- teacher forcing: all levels in one pass ---------------------------------------------
    def forward(self, level_inputs: list[torch.Tensor], text_states=None, text_mask=None) -> list[torch.Tensor]:
        """level_inputs[l]: (b, c, t_l, h_l, w_l) = z_hat_<l on grid l (l = 0..L'-1, L' <= num_levels).

        Returns per level logits (b, t_l, h_l, w_l, k) from ONE block-causal pass.
        """
        if not level_inputs:
            raise ValueError("level_inputs is empty; pass at least level 0")
        text, text_mask = self._check_text(text_states, text_mask)
        tokens = [self._embed_level(l, x, text, text_mask) for l, x in enumerate(level_inputs)]
        grids = [tuple(x.shape[-3:]) for x in level_inputs]
        sizes = [t.shape[1] for t in tokens]
        x = torch.cat(tokens, dim=1)  # (b, n, d)
        b, n, _ = x.shape
        prefix = 0
        key_valid = torch.ones(b, n, dtype=torch.bool, device=x.device)
        if self.config.text_mode == "prefix" and text is not None:
            prefix = text.shape[1]
            x = torch.cat([text + self.text_pos[:prefix], x], dim=1)  # (b, s + n, d)
            key_valid = torch.cat([text_mask, key_valid], dim=1)
        causal = block_causal_mask(sizes, prefix, device=x.device)  # (s + n, s + n)
        eye = torch.eye(causal.shape[0], dtype=torch.bool, device=x.device)
        mask = (causal[None] & key_valid[:, None, :]) | eye  # (b, s + n, s + n); a padded query sees itself
        mask = rearrange(mask, "b n m -> b 1 n m")
        cross_mask = None if text is None else rearrange(text_mask, "b s -> b 1 1 s")
        text_kv_fn = (lambda i: self.blocks[i].cross.text_kv(text)) if self._uses_cross(text) else (lambda i: None)
        x, _ = self._run_blocks(x, mask, text_kv_fn, cross_mask)
        x = x[:, prefix:]
        return [self._logits(chunk, g) for chunk, g in zip(x.split(sizes, dim=1), grids)]

    def _uses_cross(self, text) -> bool:
        return self.config.text_mode == "cross" and text is not None

    # --- incremental decoding: one pass per level, attending to cached keys/values -----------
    def new_cache(self, batch: int | None = None) -> KVCache:
        return KVCache(batch=batch)

    def forward_level(self, level: int, level_input: torch.Tensor, text_states, text_mask, cache: KVCache):
        """Logits (b, t, h, w, k) of `level`; the cache must hold levels 0..level-1 (level 0: empty)."""
        if level != cache.levels_done:
            done = cache.levels_done
            raise ValueError(f"cache holds {done} level(s); the next level must be {done}, got {level}")
        b = level_input.shape[0]
        if cache.batch is not None and b != cache.batch:
            raise ValueError(f"cache was made for batch {cache.batch}, got level input batch {b}")
        text, text_mask = self._check_text(text_states, text_mask)
        if level == 0:
            cache.batch = b
            self._prefill_text(text, text_mask, cache, b, level_input.device)
        x = self._embed_level(level, level_input, text, text_mask)  # (b, n, d)
        n = x.shape[1]
        key_valid = torch.cat([cache.key_mask, torch.ones(b, n, dtype=torch.bool, device=x.device)], dim=1)
        # every token sees all cached levels and its own level; no mask at all lets SDPA take its fastest kernel
        mask = None if bool(key_valid.all()) else rearrange(key_valid, "b m -> b 1 1 m")
        text_kv_fn = (lambda i: cache.text_kv[i]) if cache.text_kv is not None else (lambda i: None)
        past_fn = (lambda i: (cache.keys[i], cache.values[i])) if cache.keys else None
        x, new_kv = self._run_blocks(x, mask, text_kv_fn, cache.text_mask, past_fn)
        cache.keys = [k for k, _ in new_kv]
        cache.values = [v for _, v in new_kv]
        cache.key_mask = key_valid
        cache.levels_done += 1
        return self._logits(x, tuple(level_input.shape[-3:]))

    def _prefill_text(self, text, text_mask, cache: KVCache, b: int, device) -> None:
        cache.key_mask = torch.zeros(b, 0, dtype=torch.bool, device=device)
        if self._uses_cross(text):
            cache.text_kv = [blk.cross.text_kv(text) for blk in self.blocks]
            cache.text_mask = rearrange(text_mask, "b s -> b 1 1 s")
        elif self.config.text_mode == "prefix" and text is not None:
            s = text.shape[1]
            eye = torch.eye(s, dtype=torch.bool, device=device)
            mask = rearrange(text_mask[:, None, :] | eye, "b n m -> b 1 n m")  # text sees text only
            _, kv = self._run_blocks(text + self.text_pos[:s], mask, lambda i: None, None)
            cache.keys, cache.values = [k for k, _ in kv], [v for _, v in kv]
            cache.key_mask = text_mask
