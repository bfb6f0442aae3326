"""Level-by-level sampling of a token pyramid: per-bit Bernoulli draws (or group codes), CFG, schedules.

PyraTok's text-to-video generation by next-scale prediction (VAR/Infinity): L passes with a KV
cache, classifier-free guidance against a learned null text, one torch.Generator per sample.
Letters: b - batch, s - text length, d - text width, c - latent channels, k - bits per token.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from pyratok.null_text import cfg_text_batch
from pyratok.pyramid import Grid, TokenPyramid, resample

from .finest_conv import pass_of_bits
from .passes import pass_masks, step_input

# How the finest level becomes the latent: its sampled bits, or each bit's expected value (`expected_bits`).
FINEST_DECODES = ("sample", "expected")


def per_level(value, num_levels: int, name: str) -> list[float]:
    """A scalar for every level, or a list with exactly one value per level."""
    if isinstance(value, (list, tuple)):
        if len(value) != num_levels:
            raise ValueError(f"{name} has {len(value)} values but the pyramid has {num_levels} levels: {list(value)}")
        return [float(v) for v in value]
    return [float(value)] * num_levels


def guidance_per_level(guidance_scale: float, schedule, num_levels: int) -> list[float]:
    """None/"constant": the scale everywhere; "linear": 1.0 at level 0 rising to the scale at the
    finest level; a list: one scale per level (guidance_scale is then ignored). Each must be finite, >= 0."""
    if schedule is None or schedule == "constant":
        scales = per_level(guidance_scale, num_levels, "guidance_scale")
    elif schedule == "linear":
        _check_finite("guidance_scale", [guidance_scale], minimum=0.0)
        if num_levels == 1:
            return [float(guidance_scale)]
        scales = [1.0 + (guidance_scale - 1.0) * l / (num_levels - 1) for l in range(num_levels)]
    elif isinstance(schedule, (list, tuple)):
        scales = per_level(schedule, num_levels, "guidance_schedule")
    else:
        raise ValueError(f"guidance_schedule must be None, 'constant', 'linear' or a list per level, got {schedule!r}")
    _check_finite("guidance_scale" if not isinstance(schedule, (list, tuple)) else "guidance_schedule", scales, 0.0)
    return scales


GUIDANCE_SCHEDULE_HELP = "'constant', 'linear' (1 at level 0 up to the scale), or one scale per level: 3,3,3,1"


def parse_guidance_schedule(text: str | None):
    """A command line's --guidance-schedule: None, "constant", "linear", or one scale per level written
    "3,3,3,1" (a list of floats; `guidance_per_level` checks its length and values)."""
    if text is None or text in ("constant", "linear"):
        return text
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"guidance schedule must be 'constant', 'linear' or comma-separated scales, got {text!r}") from None


def _check_finite(name: str, values, minimum: float, strict: bool = False) -> None:
    """ValueError naming `name` when a value is not a finite number >= minimum (> minimum when strict)."""
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                or v < minimum or (strict and v == minimum):
            relation = ">" if strict else ">="
            raise ValueError(f"{name} must be a finite number {relation} {minimum:g}, got {v!r}")


def temperature_per_level(temperature, num_levels: int) -> list[float]:
    """One temperature per level, each finite and > 0 (use top_k=1 for greedy)."""
    values = temperature if isinstance(temperature, (list, tuple)) else [temperature]
    _check_finite("temperature", values, 0.0, strict=True)
    return per_level(temperature, num_levels, "temperature")


def check_top_k_top_p(top_k, top_p) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0.0 < top_p <= 1.0):
        raise ValueError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def check_sampling_values(guidance_scale, guidance_schedule, temperature, top_k, top_p, num_levels: int):
    """Every sampling knob checked at once, before any model runs; returns the guidance scale per level."""
    scales = guidance_per_level(guidance_scale, guidance_schedule, num_levels)
    temperature_per_level(temperature, num_levels)
    check_top_k_top_p(top_k, top_p)
    return scales


def guided_logits(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """uncond + scale * (cond - uncond); exactly `cond` at scale 1."""
    if scale == 1.0:
        return cond
    return uncond + scale * (cond - uncond)


def check_generators(generator, batch: int) -> None:
    """None, one torch.Generator, or a list of exactly `batch` of them; ValueError naming anything else."""
    if generator is None or isinstance(generator, torch.Generator):
        return
    if not isinstance(generator, (list, tuple)):
        raise ValueError(f"generator must be a torch.Generator or a list of them, got "
                         f"{type(generator).__name__}: {generator!r}")
    for i, g in enumerate(generator):
        if not isinstance(g, torch.Generator):
            raise ValueError(f"generator[{i}] must be a torch.Generator, got {type(g).__name__}: {g!r}")
    if len(generator) != batch:
        raise ValueError(f"got {len(generator)} generators for a batch of {batch}; pass one per sample or a single one")


def make_generators(generator, batch: int):
    """One torch.Generator for the whole batch, or a list with one per sample (checked)."""
    check_generators(generator, batch)
    if generator is None:  # fresh, non-deterministic; the global RNG is left alone
        generator = torch.Generator()
        generator.seed()
    return generator if isinstance(generator, torch.Generator) else list(generator)


def draw_uniform(shape: Sequence[int], generators, device) -> torch.Tensor:
    """(b, ...) uniforms in [0, 1); sample i comes from generators[i] alone when a list is given.
    On the meta device (memory estimates) none are drawn."""
    if torch.device(device).type == "meta":
        return torch.empty(tuple(shape), device="meta")
    if isinstance(generators, torch.Generator):
        return torch.rand(tuple(shape), generator=generators, device=generators.device).to(device)
    return torch.stack([torch.rand(tuple(shape[1:]), generator=g, device=g.device).to(device) for g in generators])


def bit_probabilities(logits: torch.Tensor, temperature: float = 1.0, top_k=None, top_p=None) -> torch.Tensor:
    """P(bit on) (b, t, h, w, k) from per-bit logits: sigmoid(logit / T), or 0 / 1 where a bit is greedy.

    top_k / top_p act on each bit's 2-way distribution: top_k=1 is greedy (top_k >= 2 keeps
    both outcomes); top_p makes a bit greedy where its likelier outcome has probability >= top_p.
    """
    _check_finite("temperature", [temperature], 0.0, strict=True)
    check_top_k_top_p(top_k, top_p)
    greedy = (logits > 0).float()
    if top_k == 1:
        return greedy
    p_on = torch.sigmoid(logits.float() / temperature)
    if top_p is not None:
        p_on = torch.where(torch.maximum(p_on, 1 - p_on) >= top_p, greedy, p_on)
    return p_on


def sample_bits(logits: torch.Tensor, uniforms: torch.Tensor, temperature: float = 1.0, top_k=None, top_p=None):
    """Bits {-1, +1} from per-bit logits (b, t, h, w, k): bit on when u < `bit_probabilities`."""
    return torch.where(uniforms < bit_probabilities(logits, temperature, top_k, top_p), 1.0, -1.0)


def check_finest_decode(finest_decode, model) -> None:
    """ValueError unless `finest_decode` is one of FINEST_DECODES and the model's head supports it."""
    if finest_decode not in FINEST_DECODES:
        raise ValueError(f"finest_decode must be one of {FINEST_DECODES}, got {finest_decode!r}")
    if finest_decode == "expected" and getattr(model, "code_head", None) is not None:
        raise ValueError(f"finest_decode='expected' needs the bitwise head (head='bits'); this generator's head is "
                         f"{model.config.head!r}")


def _guided(out: torch.Tensor, guidance: float | None) -> torch.Tensor:
    """The model's output, or (2b, ...) cond-then-uncond rows guided to (b, ...) at scale `guidance`."""
    return out if guidance is None else guided_logits(*out.chunk(2), guidance)


def sample_level(model, out: torch.Tensor, guidance: float | None, gens, temperature: float, top_k, top_p,
                 prefix: torch.Tensor | None = None) -> torch.Tensor:
    """A level's bits (b, t, h, w, k) from the model's output for it: bit logits, or the features of a
    group-code head (generator.heads), (2b, ...) when `guidance` is a scale (cond rows, then uncond).

    The uniforms are drawn either way (one per bit, or one per code group), so keeping `prefix` instead
    leaves the draws of later levels as they were."""
    head = getattr(model, "code_head", None)
    rows = out.shape[0] // (1 if guidance is None else 2)
    uniforms = draw_uniform((rows, *out.shape[1:-1], out.shape[-1] if head is None else head.groups),
                            gens, out.device)
    if prefix is not None:
        return prefix.to(out.device, torch.float32)
    if head is None:
        return sample_bits(_guided(out, guidance), uniforms, temperature, top_k, top_p)
    return head.sample(out, uniforms, lambda logits: _guided(logits, guidance), temperature, top_k, top_p)


def expected_bits(out: torch.Tensor, guidance: float | None, temperature: float, top_k, top_p) -> torch.Tensor:
    """Each bit's mean (b, t, h, w, k) in [-1, 1] under the distribution `sample_level` draws it from
    (bit logits, guided as there). The dequantizer is linear, so these bits dequantize to the mean of the
    level's latent over the model's draws: its MMSE estimate when the bits are independent, as the
    bitwise head makes them."""
    return 2 * bit_probabilities(_guided(out, guidance), temperature, top_k, top_p) - 1


def draw_finest_in_passes(logits_of: Callable, shape: Sequence[int], passes: int, guidance: float | None, gens,
                          device, temperature: float, top_k, top_p, expected: bool = False):
    """The finest level's bits (b, t, h, w, k) drawn in `passes` passes (`GeneratorConfig.finest_conv_passes`),
    and the values it is decoded from: the bits, or with `expected` each bit's mean when it was drawn.

    logits_of((bits, flags)) -> the FinestConv's bit logits given the bits drawn so far, (2b, ...) cond rows
    then uncond when `guidance` is a scale. Each video draws its own random order of its bits
    (`pass_of_bits`), then one uniform per bit per pass, all from its generator."""
    drawn_in = pass_of_bits(draw_uniform(shape, gens, device), passes)  # (b, t, h, w, k)
    bits = torch.zeros(tuple(shape), device=device)
    given = torch.zeros(tuple(shape), dtype=torch.bool, device=device)
    values = bits
    double = (lambda x: torch.cat([x, x])) if guidance is not None else (lambda x: x)
    for p in range(passes):
        logits = _guided(logits_of((double(bits), double(given))), guidance)
        now = drawn_in == p
        bits = torch.where(now, sample_bits(logits, draw_uniform(shape, gens, device), temperature, top_k, top_p), bits)
        if expected:
            values = torch.where(now, 2 * bit_probabilities(logits, temperature, top_k, top_p) - 1, values)
        given = given | now
    return bits, (values if expected else bits)


def check_conv_passes(finest_conv_passes, model) -> int:
    """The passes to draw the finest level in: the model's own (None) or a count >= 1, more than one only for
    a model whose FinestConv was trained to read given bits; ValueError naming the value otherwise."""
    trained = model.config.get("finest_conv_passes", 1)
    if finest_conv_passes is None:
        return trained
    if isinstance(finest_conv_passes, bool) or not isinstance(finest_conv_passes, int) or finest_conv_passes < 1:
        raise ValueError(f"finest_conv_passes must be an int >= 1, got {finest_conv_passes!r}")
    if finest_conv_passes > 1 and trained == 1:
        raise ValueError(f"finest_conv_passes={finest_conv_passes} needs a generator trained to draw its finest level "
                         f"in passes (config finest_conv_passes > 1); this one draws it in one")
    return finest_conv_passes


def check_memory(model, quantizer, latent_grid, batch: int, prompt_embeds, use_cfg: bool, limit: int) -> None:
    """ValueError with the estimate when sampling `latent_grid` would need more than `limit` bytes."""
    from .memory import GB, sampling_memory  # memory runs `generate` on the meta device: imported when asked for

    text_len = 1 if prompt_embeds is None else prompt_embeds.shape[1]
    need = sampling_memory(model.generator_config(), quantizer.config, latent_grid, batch, guidance=use_cfg,
                           text_len=text_len, dtype=next(model.parameters()).dtype,
                           vae_dtype=next(quantizer.parameters()).dtype, output_type="latent").total
    if need > limit:
        grids = quantizer.grids_for(latent_grid)
        tokens = sum(t * h * w for t, h, w in grids)
        raise ValueError(f"sampling {tokens:,} tokens per video (finest grid {tuple(grids[-1])}, batch {batch}"
                         f"{', x2 for guidance' if use_cfg else ''}) needs about {need / GB:.2f} GB "
                         f"(generator.memory), more than the {limit / GB:.2f} GB available")


@torch.no_grad()
def generate(
    model,
    quantizer,
    prompt_embeds: torch.Tensor | None,
    prompt_mask: torch.Tensor | None,
    latent_grid: Grid,
    guidance_scale: float = 3.0,
    guidance_schedule=None,
    temperature=1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    negative_prompt_embeds: torch.Tensor | None = None,
    negative_prompt_mask: torch.Tensor | None = None,
    generator=None,
    use_cache: bool = True,
    callback: Callable[[int, TokenPyramid], dict | None] | None = None,
    batch_size: int | None = None,
    prefix_bits: Sequence[torch.Tensor] | None = None,
    interrupt: Callable[[], bool] | None = None,
    memory_limit: int | None = None,
    finest_decode: str = "sample",
    finest_conv_passes: int | None = None,
) -> TokenPyramid:
    """Sample a TokenPyramid for text (b, s, d) + mask (b, s) on the quantizer's grids of latent_grid.

    model: a PyraTokGenerator (anything with forward / new_cache / forward_level / null_text);
    quantizer: a LaPQ (grids_for, dequantize_level, config.latent_channels). prompt_embeds None
    with batch_size: unconditional. generator: one torch.Generator or a list, one per sample.
    prefix_bits: the bits (b, t_l, h_l, w_l, k) of the first levels, kept instead of sampled (their
    uniforms are still drawn, so a prefix equal to what the seed samples changes nothing).
    callback(level, pyramid_so_far) runs after each level; it may return {"bits": this level's bits,
    "latents": z_hat (b, c, t, h, w)} to replace them (new bits re-derive z_hat, unless "latents" is given).
    interrupt() -> True stops after the current level: the pyramid then has fewer levels.
    memory_limit (bytes): refuse, before any work, a request whose peak by
    `generator.memory.sampling_memory` (weights included) exceeds it.
    finest_decode: "sample" decodes the finest level's drawn bits; "expected" decodes each of its bits'
    expected value (`expected_bits`; bitwise head only). The finest level feeds no later level, so only the
    returned latent changes: the bits are drawn either way and the pyramid keeps them.
    finest_conv_passes: how many passes a FinestConv trained to draw in passes draws the finest level in
    (`draw_finest_in_passes`; None: its config's `finest_conv_passes`; 1: one pass, nothing given).
    """
    if prompt_embeds is None and batch_size is None:
        raise ValueError("pass prompt_embeds (b, s, d) or, for unconditional sampling, batch_size")
    if prompt_embeds is not None and prompt_embeds.dim() != 3:
        raise ValueError(f"prompt_embeds must be (b, s, d), got {tuple(prompt_embeds.shape)}")
    batch = prompt_embeds.shape[0] if prompt_embeds is not None else int(batch_size)
    latent_grid = tuple(int(n) for n in latent_grid)
    if len(latent_grid) != 3:
        raise ValueError(f"latent_grid must be (t, h, w), got {latent_grid}")
    grids = quantizer.grids_for(latent_grid)
    num_levels = model.config.num_levels
    if len(grids) != num_levels:
        raise ValueError(f"the quantizer gives {len(grids)} levels for {latent_grid} but the model has {num_levels}")
    scales = guidance_per_level(guidance_scale, guidance_schedule, num_levels)
    temps = temperature_per_level(temperature, num_levels)
    check_top_k_top_p(top_k, top_p)
    check_finest_decode(finest_decode, model)
    conv_passes = check_conv_passes(finest_conv_passes, model)  # a FinestConv drawing the finest level in passes
    prefix_bits = list(prefix_bits or [])
    if len(prefix_bits) > num_levels:
        raise ValueError(f"prefix_bits has {len(prefix_bits)} levels but the model samples {num_levels}")
    use_cfg = prompt_embeds is not None and any(s != 1.0 for s in scales)
    param = next(model.parameters())
    if memory_limit is not None:
        check_memory(model, quantizer, latent_grid, batch, prompt_embeds, use_cfg, memory_limit)
    text, text_mask = cfg_text_batch(
        model.null_text, prompt_embeds, prompt_mask, negative_prompt_embeds, negative_prompt_mask, batch, use_cfg, param.device
    )
    gens = make_generators(generator, batch)
    q_param = next(quantizer.parameters())
    z_hat = q_param.new_zeros(batch, quantizer.config.latent_channels, *latent_grid)  # (b, c, t, h, w)
    cache = model.new_cache() if use_cache else None
    passes = model.config.finest_passes
    inputs, bits = [], []

    def draw(level: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Bits of one step (a level, or a pass of the finest level) from its input x (b, c', t, h, w), and
        the values the latent is decoded from: the bits, or at the finest level their expected values."""
        step = len(inputs)
        inputs.append(torch.cat([x, x]) if use_cfg else x)

        def logits_of(given=None):  # bit logits or code features; given: the finest bits drawn so far
            extra = {} if given is None else {"finest_given": given}
            if use_cache:
                return model.forward_level(step, inputs[-1], text, text_mask, cache, **extra)
            return model(inputs, text, text_mask, per_level=False, **extra)[step]

        guidance = scales[level] if use_cfg else None
        prefix = prefix_bits[level] if level < len(prefix_bits) else None
        if level == num_levels - 1 and prefix is None and conv_passes > 1:
            shape = (batch, *x.shape[2:], model.config.num_bits)  # (b, t, h, w, k)
            return draw_finest_in_passes(logits_of, shape, conv_passes, guidance, gens, param.device, temps[level],
                                         top_k, top_p, expected=finest_decode == "expected")
        out = logits_of()
        drawn = sample_level(model, out, guidance, gens, temps[level], top_k, top_p, prefix)
        if finest_decode == "expected" and level == num_levels - 1 and prefix is None:
            return drawn, expected_bits(out, guidance, temps[level], top_k, top_p)
        return drawn, drawn

    for level, grid in enumerate(grids):
        x = resample(z_hat, grid).to(param.device, param.dtype)  # (b, c, t_l, h_l, w_l)
        level_bits, values = draw(level, step_input(x, passes))
        if level == num_levels - 1:  # the finest level's later passes, each seeing the bits the earlier ones drew
            masks = pass_masks(grid, passes, param.device)
            for p in range(1, passes):
                residual = quantizer.dequantize_level(level_bits.to(q_param.device), level).to(param.device)
                drawn, drawn_values = draw(level, step_input(x, passes, residual, masks[:p].any(0)))
                level_bits = torch.where(masks[p][..., None], drawn, level_bits)  # (b, t, h, w, k)
                values = torch.where(masks[p][..., None], drawn_values, values)
        bits.append(level_bits)
        z_before = z_hat
        z_hat = z_before + resample(quantizer.dequantize_level(values.to(q_param.device), level), latent_grid)
        if callback is not None:
            replaced = callback(level, TokenPyramid(list(bits), latent_grid, latent=z_hat)) or {}
            if "bits" in replaced and replaced["bits"] is not bits[level]:
                bits[level] = replaced["bits"]
                part = quantizer.dequantize_level(bits[level].to(q_param.device), level)
                z_hat = z_before + resample(part, latent_grid)
            if "latents" in replaced:
                z_hat = replaced["latents"]
        if interrupt is not None and interrupt():
            break
    return TokenPyramid(bits, latent_grid, latent=z_hat)
