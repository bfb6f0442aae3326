"""Tests for the finest level's edge weighting (train.finest_edge_share / finest_flat_weight).

The finest level draws where inside the coarse levels' blur an edge runs; `finest_edge_weights` finds those
tokens from z_hat_<L alone, and the token weights of the one bit loss (`bitwise_loss`, `group_code_loss`)
let them count more. The mechanism test follows the weights into a real generator's finest logits.
"""
from __future__ import annotations

import pytest
import torch

from generator import PyraTokGenerator
from generator.config import GeneratorTrainConfig
from generator.heads import group_code_loss
from generator.objective import finest_edge_weights, generator_loss
from pyratok.config import load_config
from pyratok.lapq import LaPQ, LaPQConfig
from pyratok.nextscale import bitwise_loss

LATENT = (2, 4, 4)  # default strides -> grids (1,1,1) (1,1,1) (1,2,2) (2,4,4)

pytestmark = pytest.mark.usefixtures("one_thread")


def square_clip(size: int = 16, lo: int = 6, hi: int = 10) -> torch.Tensor:
    """z_hat (1, 4, 1, size, size): 0 with a square of 1 in rows and columns lo..hi-1."""
    z = torch.zeros(1, 4, 1, size, size)
    z[..., lo:hi, lo:hi] = 1.0
    return z


def test_edge_weights_mark_the_tokens_around_an_edge_and_no_more_than_the_share():
    z = square_clip()
    w = finest_edge_weights(z, edge_share=0.5, flat_weight=0.25)[0, 0]  # (h, w)
    assert w.shape == (16, 16) and set(w.unique().tolist()) == {0.25, 1.0}
    outline = torch.zeros(16, 16, dtype=torch.bool)
    outline[6:10, 6:10] = True
    outline[7:9, 7:9] = False
    assert (w[outline] == 1.0).all()  # every token the square's edge runs through
    assert w[0, 0] == 0.25 and w[15, 15] == 0.25 and w[8, 0] == 0.25  # far from it: flat
    assert (w == 1.0).float().mean() <= 0.5  # fewer changing tokens than the share: just those
    near = torch.nn.functional.max_pool2d(outline[None, None].float(), 5, 1, 2)[0, 0] > 0
    few = finest_edge_weights(z, edge_share=0.05, flat_weight=0.0)[0, 0]
    assert (few[~near] == 0).all() and (few[outline] == 1.0).any()  # the strongest changes: at the edge
    noisy = finest_edge_weights(torch.randn(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0)), 0.3, 0.0)
    assert ((noisy == 1.0).flatten(1).float().mean(1) - 0.3).abs().max() < 0.01  # each clip's share, no more
    flat = finest_edge_weights(torch.ones(2, 4, 1, 8, 8), 0.3, 0.25)
    assert (flat == 0.25).all()  # nothing changes: no edges
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=f"edge_share must be in \\(0, 1\\], got {bad}"):
            finest_edge_weights(z, bad, 0.1)


def test_token_weights_set_each_tokens_share_of_the_loss_and_leave_the_stats_alone():
    torch.manual_seed(0)
    logits = [torch.randn(2, 1, 2, 2, 8), torch.randn(2, 2, 4, 4, 8, requires_grad=True)]
    bits = [torch.randint(0, 2, lg.shape).float() * 2 - 1 for lg in logits]
    plain, plain_stats = bitwise_loss(logits, bits)
    ones, ones_stats = bitwise_loss(logits, bits, token_weights=[None, torch.ones(2, 2, 4, 4)])
    torch.testing.assert_close(ones, plain)
    w = torch.zeros(2, 2, 4, 4)
    w[:, :, :2] = 1.0  # the top half of the finest grid only
    half, half_stats = bitwise_loss(logits, bits, token_weights=[None, w])
    assert not torch.allclose(half, plain)
    assert half_stats.keys() == plain_stats.keys()
    for key in plain_stats:  # stats stay unweighted means
        torch.testing.assert_close(half_stats[key], plain_stats[key])
    half.backward()
    grad = logits[1].grad
    assert (grad[:, :, 2:] == 0).all() and (grad[:, :, :2] != 0).any()
    # the same in the group-code head: weight 0 tokens give their code logits no gradient
    codes = torch.randn(2, 2, 4, 4, 2, 16, requires_grad=True)
    loss, _ = group_code_loss([codes], [bits[1]], token_weights=[w])
    loss.backward()
    assert (codes.grad[:, :, 2:] == 0).all() and (codes.grad[:, :, :2] != 0).any()
    unweighted, _ = group_code_loss([codes], [bits[1]])
    torch.testing.assert_close(group_code_loss([codes], [bits[1]], [torch.ones(2, 2, 4, 4)])[0], unweighted)
    # per-bit weights (b, t, h, w, k): a token's weight on each of its bits is the token's weight; 0 bits drop out
    torch.testing.assert_close(bitwise_loss(logits, bits, token_weights=[None, w[..., None].expand(-1, -1, -1, -1, 8)])[0], half)
    first = torch.zeros(2, 2, 4, 4, 8)
    first[..., 0] = 1.0  # each token's first bit only
    torch.testing.assert_close(bitwise_loss([logits[1][..., :1]], [bits[1][..., :1]])[0],
                               bitwise_loss([logits[1]], [bits[1]], token_weights=[first])[0])
    with pytest.raises(ValueError, match=r"level 1: token weights \(2, 4, 4\) match neither the grid \(2, 2, 4, 4\)"):
        bitwise_loss(logits, bits, token_weights=[None, torch.ones(2, 4, 4)])
    with pytest.raises(ValueError, match="token weights for 1 levels but bits for 2"):
        bitwise_loss(logits, bits, token_weights=[w])


class KeepLogits(torch.nn.Module):
    """A generator whose forward keeps its output logits (with their gradients) for the test to read."""

    def __init__(self, model):
        super().__init__()
        self.model, self.logits = model, None

    def forward(self, *args, **kwargs):
        self.logits = self.model(*args, **kwargs)
        for lg in self.logits:
            lg.retain_grad()
        return self.logits


@pytest.mark.parametrize("finest_head", ["transformer", "conv"])
def test_generator_loss_weighs_the_finest_tokens_where_the_coarse_levels_change(finest_head):
    """With the flat weight 0, exactly the finest tokens `finest_edge_weights` marks get a gradient, and the
    coarser levels keep theirs; at flat weight 1 the loss is the unweighted one. Detach the weights from
    generator_loss and the first assertion fails."""
    torch.manual_seed(0)
    quantizer = LaPQ(LaPQConfig(use_text=False)).eval()
    model = KeepLogits(PyraTokGenerator(width=32, depth=1, heads=4, num_bits=16, finest_head=finest_head,
                                        finest_conv_width=16, finest_conv_blocks=1))
    rng = torch.Generator().manual_seed(0)
    bits = [torch.randint(0, 2, (3, *g, 16), generator=rng).float() * 2 - 1 for g in quantizer.grids_for(LATENT)]
    batch = {"bits": bits, "text_states": torch.randn(3, 2, 384), "text_mask": None, "latent_grid": LATENT}
    loss, stats = generator_loss(model, quantizer, batch, torch.Generator().manual_seed(1), cfg_dropout=0.0,
                                 finest_edge_share=0.25, finest_flat_weight=0.0)
    loss.backward()
    marked = finest_edge_weights(quantizer.level_inputs(bits, LATENT)[-1], 0.25, 0.0) > 0  # (b, t, h, w)
    assert 0 < marked.float().mean() < 0.6  # ties in the coarse levels may mark a little more than the share
    finest_grad = model.logits[-1].grad.abs().sum(-1)  # (b, t, h, w)
    assert (finest_grad[~marked] == 0).all() and (finest_grad[marked] > 0).all()
    assert all((lg.grad != 0).any() for lg in model.logits[:-1])
    plain, plain_stats = generator_loss(model, quantizer, batch, torch.Generator().manual_seed(1), cfg_dropout=0.0)
    same, _ = generator_loss(model, quantizer, batch, torch.Generator().manual_seed(1), cfg_dropout=0.0,
                             finest_edge_share=0.25, finest_flat_weight=1.0)
    torch.testing.assert_close(same, plain)
    torch.testing.assert_close(stats["loss/level3"], plain_stats["loss/level3"])


def test_edge_weight_settings_round_trip_and_name_bad_values(tmp_path):
    cfg = load_config(GeneratorTrainConfig, None, ["train.finest_edge_share=0.3", "train.finest_flat_weight=0.1"])
    assert (cfg.train.finest_edge_share, cfg.train.finest_flat_weight) == (0.3, 0.1)
    from pyratok.config import save_config

    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(GeneratorTrainConfig, tmp_path / "c.yaml", [])
    assert (again.train.finest_edge_share, again.train.finest_flat_weight) == (0.3, 0.1)
    with pytest.raises(ValueError, match="finest_edge_share must be in \\[0, 1\\], got 1.5"):
        load_config(GeneratorTrainConfig, None, ["train.finest_edge_share=1.5"])
    with pytest.raises(ValueError, match="finest_flat_weight must be in \\[0, 1\\], got -0.1"):
        load_config(GeneratorTrainConfig, None, ["train.finest_flat_weight=-0.1"])
