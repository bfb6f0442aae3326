"""Sequence parallelism for long clips: DeepSpeed Ulysses around the per-level attention.

PyraTok's generator at video sizes: each rank of a sequence-parallel group holds n / P tokens; before
attention an all-to-all trades the sequence split for a head split (`deepspeed.sequence.layer.
DistributedAttention`), so every rank attends the whole sequence with h / P heads. Letters: b - batch,
n - tokens, h - heads, e - head dim, d - width, P - group size.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange

from .attention import LevelAttention


class _GatherSequence(torch.autograd.Function):
    """(b, n / P, ...) per rank -> (b, n, ...) on every rank. Backward keeps this rank's slice of the
    gradient: every rank must compute the same loss from the gathered tensor (it does: same batch)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.rank, ctx.chunk = dist.get_rank(group), x.shape[1]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        return grad[:, ctx.rank * ctx.chunk:(ctx.rank + 1) * ctx.chunk], None


class UlyssesAttention:
    """Shards the sequence over a process group and runs `LevelAttention` through DeepSpeed Ulysses.

    Parameter gradients on each rank cover its own tokens: sum them over the group (all_reduce) to
    get the one-process gradient; DeepSpeed's engine does this when `sequence_parallel_size` is set.
    """

    def __init__(self, group=None):
        import deepspeed.comm
        from deepspeed.sequence.layer import DistributedAttention

        if not deepspeed.comm.is_initialized():
            deepspeed.init_distributed(dist_backend=dist.get_backend(group), verbose=False)
        self.group = group if group is not None else dist.group.WORLD
        self.size, self.rank = dist.get_world_size(self.group), dist.get_rank(self.group)
        # q/k/v are (b, n, h, e): scatter heads (dim 2), gather the sequence (dim 1)
        self.attention = DistributedAttention(self._local, self.group, scatter_idx=2, gather_idx=1)

    @staticmethod
    def _local(q, k, v, layout: LevelAttention, dropout_p: float, backend: str):
        """The whole sequence with h / P heads: (b, n, h / P, e) -> (b, n, h / P, e)."""
        out = layout(*(rearrange(t, "b n h e -> b h n e") for t in (q, k, v)), dropout_p, backend)
        return rearrange(out, "b h n e -> b n h e")

    def __call__(self, q, k, v, layout: LevelAttention, dropout_p: float, backend: str):
        """q/k/v: this rank's (b, n / P, h, e) -> attention output (b, n / P, h, e)."""
        if q.shape[2] % self.size:
            raise ValueError(f"{q.shape[2]} heads cannot be split over a sequence-parallel group of {self.size}")
        return self.attention(q, k, v, 0, None, layout, dropout_p, backend)

    def shard(self, x: torch.Tensor, layout: LevelAttention):
        """x (b, n, d) -> this rank's (b, n_pad / P, d) and the layout to use with it. The sequence is
        zero-padded to a multiple of P; padded queries attend every real key and are dropped later."""
        n = x.shape[1]
        pad = (-n) % self.size
        groups = list(layout.groups) + ([(pad, n)] if pad else [])
        x = F.pad(x, (0, 0, 0, pad))  # (b, n + pad, d)
        chunk = x.shape[1] // self.size
        local = x[:, self.rank * chunk:(self.rank + 1) * chunk]
        return local, dataclasses.replace(layout, groups=groups, distributed=self)

    def gather(self, x: torch.Tensor, n: int) -> torch.Tensor:
        """This rank's (b, n_pad / P, ...) -> the whole (b, n, ...) on every rank."""
        return _GatherSequence.apply(x, self.group)[:, :n]
