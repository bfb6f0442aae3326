"""The tokenizer's training objective: every loss term of PyraTok in one place.

Implements PyraTok §3.4: reconstruction (L1 + SSIM), VAE KL (warm-up stage), commitment, latent error,
grouped entropy, contrastive text alignment, and the global AR objective, whose next-scale
prior predicts level l's bits from text and z_hat_<l with gradients flowing into LaPQ.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .losses import kl_loss, psnr, reconstruction_loss
from .nextscale import bitwise_loss
from .tokenizer import PyraTokTokenizer, TokenizerOutput


@dataclass
class LossWeights:
    ssim: float = 0.2
    mse: float = 0.0
    foreground: float = 0.0  # extra L1/MSE weight on non-black pixels (see losses.foreground_weights)
    lowpass: float = 0.0  # MSE of 4x4-pooled frames: region colours
    chroma: float = 0.0  # L1 on the opponent chroma axes (see losses.reconstruction_loss)
    kl: float = 1e-6
    commitment: float = 0.25
    latent: float = 1.0  # z_hat towards the latent and back (VQ-VAE's codebook + commitment terms)
    entropy: float = 0.05
    align: float = 0.1
    ar: float = 0.1
    # the AR loss's gradient reaches LaPQ's bits (context and targets); off, it trains only the prior,
    # on detached tokens: the ablation that isolates what the objective does to the tokens
    ar_to_tokens: bool = True


def ar_prior_loss(model: PyraTokTokenizer, out: TokenizerOutput, to_tokens: bool = True) -> tuple[torch.Tensor, list[float]]:
    """BCE of the next-scale prior on every level's bits, with gradients into LaPQ on both sides.

    The context (z_hat_<l) and the targets (level l's bits) are both straight-through bits. Through the
    targets, d BCE / d target = -prior logit: the quantizer is pulled towards codes the prior predicts,
    the rate term of learned compression (fewer bits per token under the prior); every level, the
    finest included, gets this gradient, which a detached target would cut. `to_tokens=False` detaches
    both, so only the prior learns (the ablation).
    """
    quant = out.quant
    bits = quant.bits_st if to_tokens else [b.detach() for b in quant.bits_st]
    inputs = model.quantizer.level_inputs(bits, quant.pyramid.latent_grid)
    if not to_tokens:  # nor the dequantizer, through the context
        inputs = [x.detach() for x in inputs]
    logits = model.prior(inputs, out.text_states, out.text_mask)
    loss, stats = bitwise_loss(logits, bits, weighting="level")  # straight-through targets
    return loss, [float(stats[f"bit_acc/level{l}"]) for l in range(len(logits))]


def quantizer_loss(quant, weights: LossWeights) -> torch.Tensor:
    """The weighted codebook terms of one LaPQ output: latent error, commitment and entropy."""
    return weights.latent * quant.latent_error + weights.commitment * quant.commitment + weights.entropy * quant.entropy


def tokenizer_losses(
    model: PyraTokTokenizer,
    out: TokenizerOutput,
    video: torch.Tensor,
    weights: LossWeights,
    text_pooled: torch.Tensor | None = None,
) -> dict:
    """All loss terms and metrics of one batch; `loss` is the weighted total to backpropagate."""
    rec = reconstruction_loss(out.recon, video, weights.ssim, weights.mse, weights.foreground, weights.lowpass,
                              weights.chroma)
    terms = {"l1": rec["l1"], "psnr": psnr(out.recon.detach().clamp(-1, 1), video)}
    terms.update({k: rec[k] for k in ("ssim", "mse", "lowpass", "chroma") if k in rec})
    total = rec["loss"]
    if out.quant is None:  # continuous-VAE stage
        terms["kl"] = kl_loss(out.z, out.logvar)
        total = total + weights.kl * terms["kl"]
        if weights.latent > 0:  # fit LaPQ to the (detached) latent meanwhile, so the switch is smooth
            taps = [t.detach() for t in out.taps]
            fit = model.quantizer(out.z.detach(), taps, out.text_states, out.text_mask)
            terms["latent"] = fit.latent_error
            total = total + quantizer_loss(fit, weights)
        terms["loss"] = total
        return terms
    quant = out.quant
    terms["commitment"], terms["entropy"], terms["latent"] = quant.commitment, quant.entropy, quant.latent_error
    total = total + quantizer_loss(quant, weights)
    if weights.align > 0 and text_pooled is not None and video.shape[0] > 1:
        # align the tokens made without a caption: that is how videos are tokenized for understanding
        null_states, null_mask = model.text_inputs(video.shape[0])
        uncaptioned = model.quantizer(out.z, out.taps, null_states, null_mask)
        video_emb = model.alignment.video_embedding(uncaptioned.bits_st)
        text_emb = model.alignment.text_embedding(text_pooled.to(video_emb.dtype))
        terms["align"], terms["align_acc"] = model.alignment.contrastive_loss(video_emb, text_emb)
        total = total + weights.align * terms["align"]
    if weights.ar > 0 and model.prior is not None:
        terms["ar"], accs = ar_prior_loss(model, out, weights.ar_to_tokens)
        for level, acc in enumerate(accs):
            terms[f"ar_bit_acc/level{level}"] = acc
        total = total + weights.ar * terms["ar"]
    terms.update(quant.stats)
    terms["loss"] = total
    return terms


class TokenizerObjective(torch.nn.Module):
    """Tokenizer plus its losses in one forward, so DDP/DeepSpeed see every parameter used."""

    def __init__(self, tokenizer: PyraTokTokenizer, weights: LossWeights):
        super().__init__()
        self.tokenizer = tokenizer
        self.weights = weights

    def forward(
        self, video, prompt_embeds=None, prompt_mask=None, text_pooled=None, drop_text=None, quantize=True,
        sample_posterior=True, flip_finest=None,
    ):
        out = self.tokenizer(
            video, prompt_embeds, prompt_mask, drop_text=drop_text, quantize=quantize, sample_posterior=sample_posterior,
            flip_finest=flip_finest,
        )
        terms = tokenizer_losses(self.tokenizer, out, video, self.weights, text_pooled)
        return terms, out
