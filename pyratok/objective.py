"""The tokenizer's training objective: every loss term of PyraTok in one place.

Implements PyraTok §3.4: reconstruction (L1 + SSIM), VAE KL (warm-up stage), commitment,
grouped entropy, contrastive text alignment, and the global AR objective, whose next-scale
prior predicts level l's bits from text and z_hat_<l with gradients flowing into LaPQ.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .losses import kl_loss, psnr, reconstruction_loss
from .tokenizer import PyraTokTokenizer, TokenizerOutput


@dataclass
class LossWeights:
    ssim: float = 0.2
    kl: float = 1e-6
    commitment: float = 0.25
    entropy: float = 0.05
    align: float = 0.1
    ar: float = 0.1


def ar_prior_loss(model: PyraTokTokenizer, out: TokenizerOutput) -> tuple[torch.Tensor, list[float]]:
    """BCE of the next-scale prior on every level's bits; inputs carry straight-through gradients."""
    quant = out.quant
    inputs = model.quantizer.level_inputs(quant.bits_st, quant.pyramid.latent_grid)
    logits = model.prior(inputs, out.text_states, out.text_mask)
    losses, accs = [], []
    for lg, bits in zip(logits, quant.pyramid.bits):
        target = (bits > 0).to(lg.dtype)
        losses.append(F.binary_cross_entropy_with_logits(lg, target))
        accs.append(float(((lg > 0) == (bits > 0)).float().mean()))
    return torch.stack(losses).mean(), accs


def tokenizer_losses(
    model: PyraTokTokenizer,
    out: TokenizerOutput,
    video: torch.Tensor,
    weights: LossWeights,
    text_pooled: torch.Tensor | None = None,
) -> dict:
    """All loss terms and metrics of one batch; `loss` is the weighted total to backpropagate."""
    rec = reconstruction_loss(out.recon, video, weights.ssim)
    terms = {"l1": rec["l1"], "psnr": psnr(out.recon.detach().clamp(-1, 1), video)}
    if "ssim" in rec:
        terms["ssim"] = rec["ssim"]
    total = rec["loss"]
    if out.quant is None:  # continuous-VAE stage
        terms["kl"] = kl_loss(out.z, out.logvar)
        terms["loss"] = total + weights.kl * terms["kl"]
        return terms
    quant = out.quant
    terms["commitment"], terms["entropy"] = quant.commitment, quant.entropy
    total = total + weights.commitment * quant.commitment + weights.entropy * quant.entropy
    if weights.align > 0 and text_pooled is not None and video.shape[0] > 1:
        # align the tokens made without a caption: that is how videos are tokenized for understanding
        null_states, null_mask = model.text_inputs(video.shape[0])
        uncaptioned = model.quantizer(out.z, out.taps, null_states, null_mask)
        video_emb = model.alignment.video_embedding(uncaptioned.bits_st)
        text_emb = model.alignment.text_embedding(text_pooled.to(video_emb.dtype))
        terms["align"], terms["align_acc"] = model.alignment.contrastive_loss(video_emb, text_emb)
        total = total + weights.align * terms["align"]
    if weights.ar > 0 and model.prior is not None:
        terms["ar"], accs = ar_prior_loss(model, out)
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

    def forward(self, video, prompt_embeds=None, prompt_mask=None, text_pooled=None, drop_text=None, quantize=True):
        out = self.tokenizer(video, prompt_embeds, prompt_mask, drop_text=drop_text, quantize=quantize)
        terms = tokenizer_losses(self.tokenizer, out, video, self.weights, text_pooled)
        return terms, out
