"""Sequence-parallel training of the generator: groups of ranks share one batch, each rank a slice of it.

PyraTok's generator on long clips (DeepSpeed Ulysses through `NextScaleTransformer.enable_sequence_parallel`):
ranks [g*P, (g+1)*P) form group g; the group's first rank picks the batch; losses scale by P so that
DDP's / ZeRO's average over all ranks equals the average over data-parallel groups.
"""
from __future__ import annotations

import torch.distributed as dist


class SequenceParallelGroups:
    """Sequence-parallel groups of `size` consecutive ranks, made on every rank (a collective)."""

    def __init__(self, world_size: int, rank: int, size: int):
        if size < 1 or world_size % size:
            raise ValueError(f"sequence_parallel_size={size} must divide the number of processes {world_size}")
        self.size, self.rank = size, rank
        self.data_rank = rank // size  # which data-parallel replica this rank belongs to
        self.leader = self.data_rank * size
        groups = [dist.new_group(list(range(g * size, (g + 1) * size))) for g in range(world_size // size)]
        self.group = groups[self.data_rank]

    def enable(self, model) -> None:
        """Ulysses attention over this rank's group in `model` (a PyraTokGenerator, unwrapped)."""
        model.transformer.enable_sequence_parallel(self.group)

    def share(self, batch: dict) -> dict:
        """The group leader's batch on every rank of the group (other ranks' batches are dropped)."""
        box = [batch if self.rank == self.leader else None]
        dist.broadcast_object_list(box, src=self.leader, group=self.group)
        return box[0]

    @property
    def loss_scale(self) -> float:
        """Each rank's gradient covers its own tokens: the all-rank mean of P partial gradients is 1/P of
        the group's gradient, so the loss is multiplied by P."""
        return float(self.size)
