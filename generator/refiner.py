"""The latent refiner: a drawn pyramid's z_hat, and the caption, to the z_hat of a clip like it.

The generator draws each finest token's bits on its own, so a token it is unsure of decodes to speckle and
ragged edges (README "Generator"). The refiner is a small 3D CNN with text cross-attention in every block
that reads the summed z_hat of a drawn pyramid and the prompt's text states and returns a corrected z_hat
for the vae to decode. It is trained (`generator.train_refiner`) on the generator's own draws: each cached
clip keeps its first `keep_levels` levels, the frozen generator draws the rest from the clip's caption, and
the refiner learns to give back the clip's own z_hat (mean squared error). Its last convolution starts at
zero, so an untrained refiner returns its input. With `scales` S > 1 the body is a U-Net: the blocks run at S
resolutions, h and w halved and the width doubled at each, and back up with skips, so the coarsest blocks see a
whole object at once.
With `mode="flow"` it draws instead of regressing: a rectified-flow model (diffusers'
`FlowMatchEulerDiscreteScheduler`) of the finer levels' share of z_hat (the clip's z_hat minus the z_hat of its
first `keep_levels` levels), conditioned on those levels' z_hat and the caption, with classifier-free guidance
against a learned null text. A regression returns the mean over every outline the coarse levels allow, and a
mean of squares and discs is a disc; a draw picks one. It trains on the clips' own coarse levels
(`flow_loss`: no generator in the loop) and, in the pipeline, reads the generator's.
With `target="latent"` it learns the clip's unquantized latent (the encoder's mean, stored by `build_cache
--latents`) in place of its z_hat: the draw is no longer bounded by what the quantizer keeps (a decoded z
keeps corners and pairs of objects that the decoded z_hat loses; README "A refiner that draws the latent").
Letters: b - batch, c - latent channels, d - width, t/h/w - latent grid, s - text tokens, e - text width.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, ModelMixin
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.utils.torch_utils import randn_tensor
from einops import rearrange

from pyratok.null_text import cfg_text_batch
from pyratok.null_text import drop_text as with_null_text  # `forward` has an argument named drop_text
from pyratok.pyramid import TokenPyramid
from pyratok.text_attention import TextCrossAttention

from .sampling import guided_logits

GROUPS = 8  # GroupNorm groups: the width must be a multiple
MODES = ("regress", "flow")
TARGETS = ("z_hat", "latent")  # what a refiner learns to give back: the clip's z_hat, or its unquantized latent
NUM_TRAIN_TIMESTEPS = 1000  # a flow refiner's timestep is sigma * this (diffusers' FlowMatchEulerDiscreteScheduler)


def check_guidance_scale(value, name: str = "refiner_guidance_scale") -> None:
    """None (the refiner's config) or a finite number >= 0; else a ValueError naming the value."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Real)
                              or not math.isfinite(value) or value < 0):
        raise ValueError(f"{name} must be None or a finite number >= 0, got {value!r}")


class LatentRefiner(ModelMixin, ConfigMixin):
    """z_hat (b, c, t, h, w) + text (b, s, e) -> refined z_hat (b, c, t, h, w); diffusers save / load.

    mode "regress": `forward` returns the refined z_hat of a drawn pyramid's z_hat. mode "flow": `forward`
    returns the velocity (noise - data) of the noisy finer-level share `noisy` at `timestep`, given the z_hat
    of the first `keep_levels` levels; `refine` draws with `sample_steps` Euler steps at `guidance_scale`.
    target: what training gave back (`TARGETS`): the clip's z_hat, or its unquantized latent.
    phrase_tokens / word_tokens: how it reads the caption (`pyratok.text_encoder.text_reading`), recorded by its
    training: the caption's token states unless it learned from a generator that reads phrase vectors."""

    @register_to_config
    def __init__(self, latent_channels: int = 16, width: int = 64, depth: int = 4, text_dim: int = 384,
                 text_heads: int = 4, keep_levels: int = 3, mode: str = "regress", num_null_tokens: int = 1,
                 sample_steps: int = 16, guidance_scale: float = 3.0, scales: int = 1, phrase_tokens: bool = False,
                 word_tokens: bool = True, target: str = "z_hat"):
        super().__init__()
        if not (phrase_tokens or word_tokens):
            raise ValueError("word_tokens=False leaves the refiner no text: it needs phrase_tokens=True")
        if width % GROUPS or width % text_heads:
            raise ValueError(f"width={width} must be a multiple of {GROUPS} and of text_heads={text_heads}")
        if latent_channels < 1 or depth < 1 or scales < 1 or keep_levels < 0:
            raise ValueError(f"latent_channels, depth and scales must be >= 1 and keep_levels >= 0, got "
                             f"{latent_channels}, {depth}, {scales}, {keep_levels}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if num_null_tokens < 1 or sample_steps < 1 or not (math.isfinite(guidance_scale) and guidance_scale >= 0):
            raise ValueError(f"num_null_tokens and sample_steps must be >= 1 and guidance_scale a finite number "
                             f">= 0, got {num_null_tokens}, {sample_steps}, {guidance_scale}")
        flow = mode == "flow"
        self.stem = nn.Conv3d(latent_channels * (2 if flow else 1), width, 3, padding=1)  # flow: [noisy, z_hat]
        # the body: `depth` blocks at each resolution on the way down, and again on the way up (scales > 1)
        widths = [width * 2**i for i in range(scales)]  # h and w halve, the width doubles
        block_widths = [d for d in widths for _ in range(depth)] + [d for d in widths[-2::-1] for _ in range(depth)]
        self.convs = nn.ModuleList(
            nn.Sequential(nn.GroupNorm(GROUPS, d), nn.SiLU(), nn.Conv3d(d, d, 3, padding=1)) for d in block_widths)
        self.text = nn.ModuleList(TextCrossAttention(d, text_dim, text_heads, gate_init=1.0) for d in block_widths)
        self.downs = nn.ModuleList(nn.Conv3d(d, 2 * d, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))
                                   for d in widths[:-1])
        self.ups = nn.ModuleList(nn.Conv3d(2 * d, d, (1, 3, 3), padding=(0, 1, 1)) for d in widths[:-1])
        self.merges = nn.ModuleList(nn.Conv3d(2 * d, d, 1) for d in widths[:-1])  # [up, skip] -> d
        self.out = nn.Sequential(nn.GroupNorm(GROUPS, width), nn.SiLU(), nn.Conv3d(width, latent_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # regress: starts as the identity; flow: as a zero velocity
        nn.init.zeros_(self.out[-1].bias)
        if flow:
            self.time_proj = Timesteps(width, flip_sin_to_cos=True, downscale_freq_shift=0)
            self.time_embed = TimestepEmbedding(width, width)
            self.time_shift = nn.ModuleList(nn.Linear(width, d) for d in block_widths)
            self.null_text = nn.Parameter(torch.randn(num_null_tokens, text_dim) * 0.02)  # (n_null, e)

    @property
    def draws(self) -> bool:
        return self.config.mode == "flow"

    def check_inputs(self, z_hat: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor | None,
                     noisy: torch.Tensor | None = None, timestep: torch.Tensor | None = None) -> None:
        """ValueError naming the first input whose shape does not fit this refiner."""
        c, e = self.config.latent_channels, self.config.text_dim
        if z_hat.dim() != 5 or z_hat.shape[1] != c:
            raise ValueError(f"z_hat must be (b, {c}, t, h, w), got {tuple(z_hat.shape)}")
        halvings = 2 ** (self.config.scales - 1)
        if z_hat.shape[-1] % halvings or z_hat.shape[-2] % halvings:
            raise ValueError(f"a refiner with scales={self.config.scales} needs h and w divisible by {halvings}, got "
                             f"{tuple(z_hat.shape[-2:])}")
        if text_states.dim() != 3 or text_states.shape[0] != z_hat.shape[0] or text_states.shape[-1] != e:
            raise ValueError(f"text_states must be ({z_hat.shape[0]}, s, {e}), got {tuple(text_states.shape)}")
        if text_mask is not None and tuple(text_mask.shape) != tuple(text_states.shape[:2]):
            raise ValueError(f"text_mask must be {tuple(text_states.shape[:2])}, got {tuple(text_mask.shape)}")
        if self.draws != (noisy is not None) or self.draws != (timestep is not None):
            raise ValueError(f"a {self.config.mode} refiner takes noisy and timestep {'both' if self.draws else 'neither'}")
        if self.draws and (noisy.shape != z_hat.shape or tuple(timestep.shape) != (z_hat.shape[0],)):
            raise ValueError(f"noisy must be {tuple(z_hat.shape)} and timestep ({z_hat.shape[0]},), got "
                             f"{tuple(noisy.shape)} and {tuple(timestep.shape)}")

    def forward(self, z_hat: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor | None = None,
                noisy: torch.Tensor | None = None, timestep: torch.Tensor | None = None,
                drop_text: torch.Tensor | None = None) -> torch.Tensor:
        """regress: the refined z_hat. flow: the velocity at (noisy, timestep); drop_text (b,) bool -> null text."""
        self.check_inputs(z_hat, text_states, text_mask, noisy, timestep)
        dtype = self.stem.weight.dtype
        if drop_text is not None:
            if not self.draws:
                raise ValueError("a regress refiner has no null text: drop_text is for a flow refiner")
            text_states, text_mask = with_null_text(self.null_text, text_states, text_mask, drop_text)
        h_bdthw = self.stem((z_hat if noisy is None else torch.cat([noisy, z_hat], 1)).to(dtype))
        temb_bd = self.time_embed(self.time_proj(timestep).to(dtype)) if self.draws else None
        text_states = text_states.to(dtype)
        scales, depth, block = self.config.scales, self.config.depth, 0
        skips = []
        for level in range(2 * scales - 1):  # resolutions 0 .. S-1 on the way down, S-2 .. 0 on the way up
            if level >= scales:  # up: back to the skip's resolution r, then merge the skip
                r, skip = 2 * scales - 2 - level, skips.pop()
                up = self.ups[r](F.interpolate(h_bdthw, size=skip.shape[2:], mode="nearest"))
                h_bdthw = self.merges[r](torch.cat([up, skip], 1))
            for _ in range(depth):
                h_bdthw = self._block(block, h_bdthw, temb_bd, text_states, text_mask)
                block += 1
            if level < scales - 1:
                skips.append(h_bdthw)
                h_bdthw = self.downs[level](h_bdthw)
        out = self.out(h_bdthw).to(z_hat.dtype)
        return out if self.draws else z_hat + out

    def _block(self, i: int, h_bdthw: torch.Tensor, temb_bd, text_states, text_mask) -> torch.Tensor:
        """Block i: a residual convolution (shifted by the timestep's embedding), then text cross-attention."""
        shift = 0 if temb_bd is None else rearrange(self.time_shift[i](temb_bd), "b d -> b d 1 1 1")
        h_bdthw = h_bdthw + self.convs[i](h_bdthw + shift)
        t, h, w = h_bdthw.shape[2:]
        tokens_bnd = self.text[i](rearrange(h_bdthw, "b d t h w -> b (t h w) d"), text_states, text_mask)
        return rearrange(tokens_bnd, "b (t h w) d -> b d t h w", t=t, h=h, w=w)

    def condition(self, pyramid: TokenPyramid, quantizer) -> torch.Tensor:
        """What this refiner reads of a drawn pyramid: regress - its z_hat; flow - the z_hat of its first
        `keep_levels` levels (zeros for none)."""
        if not self.draws:
            return pyramid.latent
        keep = self.config.keep_levels
        if keep == 0:
            return torch.zeros_like(pyramid.latent)
        return quantizer.reconstruct(pyramid.bits[:keep], pyramid.latent_grid).to(pyramid.latent.dtype)

    @torch.no_grad()
    def refine(self, z_hat: torch.Tensor, text_states: torch.Tensor, text_mask: torch.Tensor | None = None,
               generator=None, guidance_scale: float | None = None) -> torch.Tensor:
        """The z_hat to decode, from `condition`'s output: regress - one forward; flow - a draw of the finer
        levels' share from noise (`generator`: one torch.Generator, or one per video) added to z_hat, guided at
        `guidance_scale` (None: the config's)."""
        check_guidance_scale(guidance_scale, "guidance_scale")
        if not self.draws:
            return self(z_hat, text_states, text_mask)
        b = z_hat.shape[0]
        scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        use_cfg = scale != 1.0
        states, mask = cfg_text_batch(self.null_text, text_states, text_mask, None, None, b, use_cfg, z_hat.device)
        cond = torch.cat([z_hat, z_hat]) if use_cfg else z_hat
        scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS)
        scheduler.set_timesteps(self.config.sample_steps)  # on the CPU, as its sigmas: refine runs on meta too
        sample = randn_tensor(tuple(z_hat.shape), generator=generator, device=z_hat.device, dtype=z_hat.dtype)
        for timestep in scheduler.timesteps:
            noisy = torch.cat([sample, sample]) if use_cfg else sample
            velocity = self(cond, states, mask, noisy=noisy,
                            timestep=timestep.to(z_hat.device).expand(noisy.shape[0]))
            if use_cfg:
                velocity = guided_logits(*velocity.chunk(2), scale)
            sample = scheduler.step(velocity, timestep, sample).prev_sample
        return z_hat + sample


def clip_target(config, quantizer, batch: dict) -> torch.Tensor:
    """What a refiner of this config learns to give back for a token-cache batch, (b, c, t, h, w): the clips'
    z_hat, or (`target="latent"`) their unquantized latents, which the cache must hold (`build_cache --latents`)."""
    if config.target == "z_hat":
        return quantizer.reconstruct(batch["bits"], batch["latent_grid"])
    if batch.get("latent") is None:
        raise ValueError("a refiner with target='latent' learns the unquantized latents, but the token cache has "
                         "none: build it with `generator.build_cache --latents`")
    return batch["latent"]


def flow_loss(refiner: LatentRefiner, config, quantizer, batch: dict, rng: torch.Generator,
              text_dropout: float = 0.1, sigma_location: float = 0.0) -> tuple[torch.Tensor, dict]:
    """Rectified-flow loss of a flow refiner on a token-cache batch: the finer levels' share of each clip's
    z_hat (or of its latent: `clip_target`), noised at sigma = sigmoid(N(sigma_location, 1)) (logit-normal, as
    SD3; a positive location weighs the high noise levels, where a shape is laid down, a negative one the finest
    detail), its velocity (noise - data) regressed given the clip's own first `keep_levels` levels; captions
    dropped at `text_dropout` for guidance.
    refiner: the (possibly wrapped) model; config: its config. Noise, sigmas and drops come from `rng`."""
    bits, keep = batch["bits"], config.keep_levels
    if config.mode != "flow":
        raise ValueError(f"flow_loss trains a flow refiner, got mode={config.mode!r}")
    if not 0 <= keep < len(bits):
        raise ValueError(f"keep_levels={keep} must leave a level to draw: the cache has {len(bits)} levels")
    states, mask = batch["text_states"], batch["text_mask"]
    if states is None:
        raise ValueError("the refiner learns from captions: the token cache has no text states")
    with torch.no_grad():
        target = clip_target(config, quantizer, batch)  # (b, c, t, h, w) the clip's z_hat or latent
        cond = quantizer.reconstruct(bits[:keep], batch["latent_grid"]) if keep else torch.zeros_like(target)
    data = target - cond
    b = data.shape[0]
    noise = torch.randn(data.shape, generator=rng).to(data)
    sigma = torch.sigmoid(sigma_location + torch.randn(b, generator=rng)).to(data)
    drop = (torch.rand(b, generator=rng) < text_dropout).to(data.device)
    sigma_b1111 = rearrange(sigma, "b -> b 1 1 1 1")
    noisy = sigma_b1111 * noise + (1 - sigma_b1111) * data
    velocity = refiner(cond, states, mask, noisy=noisy, timestep=sigma * NUM_TRAIN_TIMESTEPS, drop_text=drop)
    loss = F.mse_loss(velocity, noise - data)
    return loss, {"loss": loss.detach(), "data_var": data.pow(2).mean()}


def refiner_loss(refiner: LatentRefiner, generator, quantizer, batch: dict, rng: torch.Generator,
                 guidance_scale: float = 3.0) -> tuple[torch.Tensor, dict]:
    """Mean squared error between the refined z_hat of the generator's draw and the clip's own z_hat (or its
    latent: `clip_target`).

    batch: a token-cache batch (`TokenCacheDataset.collate`: "bits" per level, "text_states", "text_mask",
    "latent_grid"). The frozen generator keeps each clip's first `refiner.config.keep_levels` levels and draws
    the rest from the caption (guidance as the pipeline samples), with one seed per clip taken from `rng`.
    Logs: loss, and the error of the drawn z_hat itself ("drawn_mse", what an identity refiner scores)."""
    bits, keep = batch["bits"], refiner.config.keep_levels
    if not 0 <= keep < len(bits):
        raise ValueError(f"keep_levels={keep} must leave a level to draw: the cache has {len(bits)} levels")
    states, mask = batch["text_states"], batch["text_mask"]
    if states is None:
        raise ValueError("the refiner learns from captions: the token cache has no text states")
    seeds = torch.randint(0, 2**62, (bits[0].shape[0],), generator=rng).tolist()
    with torch.no_grad():
        target = clip_target(refiner.config, quantizer, batch)  # (b, c, t, h, w) the clip's z_hat or latent
        drawn: TokenPyramid = generator.generate(
            quantizer, states, mask, batch["latent_grid"], guidance_scale=guidance_scale, prefix_bits=bits[:keep],
            generator=[torch.Generator().manual_seed(s) for s in seeds])
    refined = refiner(drawn.latent, states, mask)
    loss = F.mse_loss(refined, target)
    return loss, {"loss": loss.detach(), "drawn_mse": F.mse_loss(drawn.latent, target).detach()}
