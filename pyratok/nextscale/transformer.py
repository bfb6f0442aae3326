"""`NextScaleTransformer`: bit logits of every level of a token pyramid from text and z_hat_<l.

PyraTok's global AR objective (§3, a small prior predicting level l from text and z_hat_<l) and the
VAR/Infinity-style generator backbone: all tokens of a level in one pass, bitwise heads, KV cache.
Letters: b - batch, c - latent channels, n - tokens, s - text length, d - width, k - bits per token.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from ..null_text import mean_text
from .attention import LevelAttention
from .block import NextScaleBlock
from .cache import KVCache
from .config import NextScaleConfig
from .local_input import LocalInput
from .position import FourierPosition


class NextScaleTransformer(nn.Module):
    """Predicts K bit logits per token of every level from text and z_hat_<l (see module docstring)."""

    def __init__(self, config: NextScaleConfig):
        super().__init__()
        self.config = cfg = config
        d = cfg.width
        self.gradient_checkpointing = cfg.gradient_checkpointing
        self.input_proj = nn.Linear(cfg.latent_channels, d)
        self.local_input = LocalInput(cfg.latent_channels, d, cfg.input_conv) if cfg.input_conv else None
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
        self.sequence_parallel = None  # a sequence_parallel.UlyssesAttention (set by enable_sequence_parallel)

    def enable_sequence_parallel(self, group=None) -> None:
        """Split `forward`'s sequence over `group` (default: the world) with DeepSpeed Ulysses.

        Every rank of the group must get the same batch; it returns the same logits on each rank.
        """
        from .sequence_parallel import UlyssesAttention

        self.sequence_parallel = UlyssesAttention(group)

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
        if not text_mask.is_meta and not text_mask.any(dim=1).all():  # an all-padding row would make attention NaN
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
        level_input = level_input.to(self.head.weight.dtype)
        x = self.input_proj(rearrange(level_input, "b c t h w -> b (t h w) c"))  # (b, n, d)
        if self.local_input is not None:
            x = x + self.local_input(level_input)
        x = x + self.level_embed.weight[level] + self.position(tuple(level_input.shape[-3:]))
        if level == 0:
            start = self.start
            if text is not None:
                start = start + self.text_pool(mean_text(text, text_mask))  # (b, d)
                start = start[:, None, :]  # (b, 1, d)
            x = x + start
        return x

    def _logits(self, x: torch.Tensor, grid, return_features: bool = False):
        features = self.norm_out(x)  # (b, n, d)
        logits = _on_grid(self.head(features), grid)  # (b, t, h, w, k)
        return (logits, _on_grid(features, grid)) if return_features else logits

    def _run_blocks(self, x, layout: LevelAttention, text_kv_fn, text_mask, past_fn=None, text=None):
        new_kv = []
        for i, block in enumerate(self.blocks):
            args = (x, layout, None if past_fn is None else past_fn(i), text_kv_fn(i), text_mask, text)
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x, kv = checkpoint(block, *args, use_reentrant=False)
            else:
                x, kv = block(*args)
            new_kv.append(kv)
        return x, new_kv

    def _uses_cross(self, text) -> bool:
        return self.config.text_mode == "cross" and text is not None

    # --- teacher forcing: all levels in one pass ---------------------------------------------
    def forward(self, level_inputs: list[torch.Tensor], text_states=None, text_mask=None,
                layout: type[LevelAttention] = LevelAttention, return_features: bool = False):
        """level_inputs[l]: (b, c, t_l, h_l, w_l) = z_hat_<l on grid l (l = 0..L'-1, L' <= num_levels).

        Returns per level logits (b, t_l, h_l, w_l, k) from ONE block-causal pass. `layout`: the
        attention's visibility rule (`reference.DenseBlockCausal` is the dense-mask reference).
        With `return_features`, also the last level's normalised hidden states (b, t, h, w, d), what the
        head reads (for a head of the generator's own, generator.finest_conv).
        """
        if not level_inputs:
            raise ValueError("level_inputs is empty; pass at least level 0")
        text, text_mask = self._check_text(text_states, text_mask)
        tokens = [self._embed_level(l, x, text, text_mask) for l, x in enumerate(level_inputs)]
        grids = [tuple(x.shape[-3:]) for x in level_inputs]
        sizes = [t.shape[1] for t in tokens]
        x = torch.cat(tokens, dim=1)  # (b, n, d)
        prefix, key_valid = 0, None
        if self.config.text_mode == "prefix" and text is not None:
            prefix = text.shape[1]
            x = torch.cat([text + self.text_pos[:prefix], x], dim=1)  # (b, s + n, d)
            key_valid = torch.cat([text_mask, text_mask.new_ones(x.shape[0], sum(sizes))], dim=1)  # (b, s + n)
        attn = layout.block_causal(sizes, prefix, key_valid)
        cross_mask = None if text is None else rearrange(text_mask, "b s -> b 1 1 s")
        if self.sequence_parallel is not None:  # each rank runs the blocks on its slice of the sequence
            x, attn = self.sequence_parallel.shard(x, attn)
        # each block projects the text itself, inside its forward (where FSDP has gathered its weights)
        x, _ = self._run_blocks(x, attn, lambda i: None, cross_mask, text=text if self._uses_cross(text) else None)
        features = self.norm_out(x)  # (b, s + n, d)
        logits = self.head(features)  # (b, s + n, k)
        if self.sequence_parallel is not None:
            logits = self.sequence_parallel.gather(logits, prefix + sum(sizes))
        logits = [_on_grid(chunk, g) for chunk, g in zip(logits[:, prefix:].split(sizes, dim=1), grids)]
        if not return_features:
            return logits
        if self.sequence_parallel is not None:
            features = self.sequence_parallel.gather(features, prefix + sum(sizes))
        return logits, _on_grid(features[:, prefix + sum(sizes[:-1]):], grids[-1])  # (b, t, h, w, d)

    # --- incremental decoding: one pass per level, attending to cached keys/values -----------
    def new_cache(self, batch: int | None = None) -> KVCache:
        return KVCache(batch=batch)

    def forward_level(self, level: int, level_input: torch.Tensor, text_states, text_mask, cache: KVCache,
                      return_features: bool = False):
        """Logits (b, t, h, w, k) of `level`; the cache must hold levels 0..level-1 (level 0: empty).
        With `return_features`, (logits, the level's normalised hidden states (b, t, h, w, d))."""
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
        attn = LevelAttention([(n, key_valid.shape[1])], key_valid)  # every cached level and its own
        text_kv_fn = (lambda i: cache.text_kv[i]) if cache.text_kv is not None else (lambda i: None)
        past_fn = (lambda i: (cache.keys[i], cache.values[i])) if cache.keys else None
        x, new_kv = self._run_blocks(x, attn, text_kv_fn, cache.text_mask, past_fn)
        cache.keys = [k for k, _ in new_kv]
        cache.values = [v for _, v in new_kv]
        cache.key_mask = key_valid
        cache.levels_done += 1
        return self._logits(x, tuple(level_input.shape[-3:]), return_features)

    def _prefill_text(self, text, text_mask, cache: KVCache, b: int, device) -> None:
        cache.key_mask = torch.zeros(b, 0, dtype=torch.bool, device=device)
        if self._uses_cross(text):
            cache.text_kv = [blk.cross.text_kv(text) for blk in self.blocks]
            cache.text_mask = rearrange(text_mask, "b s -> b 1 1 s")
        elif self.config.text_mode == "prefix" and text is not None:
            s = text.shape[1]
            attn = LevelAttention([(s, s)], text_mask)  # text sees text only
            _, kv = self._run_blocks(text + self.text_pos[:s], attn, lambda i: None, None)
            cache.keys, cache.values = [k for k, _ in kv], [v for _, v in kv]
            cache.key_mask = text_mask


def _on_grid(x: torch.Tensor, grid) -> torch.Tensor:
    """(b, t*h*w, c) in raster order -> (b, t, h, w, c)."""
    return rearrange(x, "b (t h w) c -> b t h w c", t=grid[0], h=grid[1], w=grid[2])
