"""LaPQ's refined bit groups and the quantizer-only first stage (pyratok.fit_quantizer)."""
from __future__ import annotations

import pytest
import torch

from pyratok.fit_quantizer import fit_quantizer
from pyratok.lapq import LaPQ, LaPQConfig
from pyratok.losses import latent_snr

pytestmark = pytest.mark.usefixtures("one_thread")


def _quantizer(refine: bool, seed: int = 0, strides=((2, 2, 2), (1, 1, 1))) -> LaPQ:
    torch.manual_seed(seed)
    config = LaPQConfig(latent_channels=4, num_bits=16, bits_per_group=4, hidden_dim=32, use_text=False,
                        level_strides=list(strides), refine_groups=refine)
    return LaPQ(config).eval()


def _latents(n: int = 32, seed: int = 0) -> torch.Tensor:
    """(n, 4, 2, 4, 4) latents with unequal channel variances, as a VAE's are."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 2, 4, 4, generator=g) * torch.tensor([2.0, 1.0, 0.5, 0.25]).view(1, 4, 1, 1, 1)


@pytest.mark.parametrize("refine", [False, True])
def test_the_bits_alone_decode_to_the_quantized_latent(refine):
    """Refined or not, a token's bits go through one linear dequantizer: the pyramid decodes to z_hat."""
    quantizer, z = _quantizer(refine), _latents(4)
    with torch.no_grad():
        out = quantizer(z)
        assert torch.allclose(quantizer.decode_pyramid(out.pyramid), out.latent, atol=1e-5)


def test_each_group_refines_what_the_earlier_groups_left():
    """Changing what the first group dequantizes to changes the later groups' bits, and only with refine_groups."""
    z = _latents(4)
    for refine in (False, True):
        quantizer = _quantizer(refine, strides=[(1, 1, 1)])  # one level: nothing coarser moves with the change
        with torch.no_grad():
            before = quantizer(z).pyramid.bits[-1]
            quantizer.from_bits.weight[:, :4] *= 3.0  # the first group now overshoots
            after = quantizer(z).pyramid.bits[-1]
        first_same = torch.equal(before[..., :4], after[..., :4])
        later_flipped = float((before[..., 4:] != after[..., 4:]).float().mean())
        assert first_same
        if refine:
            assert later_flipped > 0.05, "later groups ignore the residual the first group left"
        else:
            assert later_flipped == 0.0


def test_fitting_the_quantizer_alone_raises_its_latent_snr():
    quantizer, z, held_out = _quantizer(True), _latents(64), _latents(16, seed=1)
    with torch.no_grad():
        before = float(latent_snr(quantizer(held_out).latent, held_out))
    fit_quantizer(quantizer, z, [], steps=150, lr=3e-3, batch_size=8)
    with torch.no_grad():
        after = float(latent_snr(quantizer(held_out).latent, held_out))
    assert not quantizer.training
    assert after > before + 3.0, (before, after)


def test_the_quantizer_only_stage_needs_a_frozen_encoder():
    from pyratok.train import TokenizerTrainLoop

    with pytest.raises(ValueError, match="freeze_encoder"):
        TokenizerTrainLoop(quantizer_fit_steps=10)
    with pytest.raises(ValueError, match="quantizer_fit_steps"):
        TokenizerTrainLoop(quantizer_fit_steps=-1, freeze_encoder=True)
    with pytest.raises(ValueError, match="steps"):
        fit_quantizer(_quantizer(True), _latents(4), [], steps=0)
