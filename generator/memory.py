"""Peak memory of text-to-video sampling, counted on the meta device: text encoding, sampling, refining, decoding.

PyraTok's generation (DESIGN.md "Generator", "Pipeline") sized before it runs: the models are rebuilt on the
meta device from their configs, the call's own code (`generate`, the tokenizer's decode) runs on tensors
without storage, and a dispatch mode adds up the bytes of the tensors alive at each moment.
Letters: b - videos, c - latent channels, t/h/w - latent grid, k - tiles decoded together.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from pyratok.lapq import LaPQ, LaPQConfig
from pyratok.tiling import TilingConfig, tile_group_shape
from pyratok.tokenizer import PyraTokTokenizer, TokenizerConfig

from .config import GeneratorConfig
from .model import PyraTokGenerator
from .refiner import LatentRefiner
from .sampling import generate

GB = 1024**3
# float32 copies of the decoded video a pipeline's post-processing holds at once (PyraTokT2VPipeline.postprocess):
# one scaled copy; "pil" adds uint8 frames and the PIL images' own copy (a quarter each); "latent": no decode
OUTPUT_COPIES = {"pt": 1.0, "np": 1.0, "pil": 1.5, "latent": None}
STEADY_FRAMES = 3  # latent frames after which every decoder call is alike: frame 0, then two with a full cache


def storage_key(t: torch.Tensor):
    return t.untyped_storage()._cdata


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of the tensors made inside it (by storage, freed when the storage dies).

    torch's MemTracker does this with process-wide module hooks, which break models running in other
    threads (two pipelines in one process); a dispatch mode is per thread. `phase_peak()` returns the
    peak since the previous call and starts the next phase's peak at what is live now. `device`: count
    only tensors of this device type ("cpu", "meta", ...)."""

    def __init__(self, device: str | None = None):
        super().__init__()
        self.live = self.peak = 0
        self.seen: set[int] = set()
        self.device = device

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {storage_key(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:  # views and in-place results share an input's storage: nothing new
            if isinstance(t, torch.Tensor) and storage_key(t) not in self.seen and storage_key(t) not in inputs \
                    and self.device in (None, t.device.type):
                storage, key = t.untyped_storage(), storage_key(t)
                self.seen.add(key)
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key, storage.nbytes())
        return out

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self.seen.discard(key)

    def phase_peak(self) -> int:
        peak, self.peak = self.peak, self.live
        return peak


class FusedAttention(TorchFunctionMode):
    """SDPA on meta tensors counted as the fused (flash) kernel that CPU and CUDA run: SDPA's own meta path
    is the math one, which builds the (n, m) score matrix those kernels never hold."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention and args[0].device.type == "meta":
            q, k, v = args[:3]
            dropout_p = kwargs.get("dropout_p", args[4] if len(args) > 4 else 0.0)
            return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, dropout_p)[0]
        return func(*args, **kwargs)


@dataclass
class SamplingMemory:
    """Bytes of one call, by phase. A phase's peak counts what earlier phases leave alive (text states
    during sampling, the token pyramid during decoding); the phases run one after another."""

    weights: int  # every model the call runs: generator, tokenizer, text encoder
    text: int  # the text encoder's forward
    sampling: int  # level-by-level sampling: KV cache, a level's pass, logits, guidance, bits, z_hat
    decode: int  # the decoded video, the decoder's working memory (tiled or not) and the caller's copies
    refine: int = 0  # the latent refiner's draw (its Euler steps with guidance), when the call runs one

    @property
    def working(self) -> int:
        """What the call needs beyond its loaded weights."""
        return max(self.text, self.sampling, self.refine, self.decode)

    @property
    def total(self) -> int:
        return self.weights + self.working


def _param_bytes(*modules) -> int:
    return sum(p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters())


def _meta(build, dtype):
    with torch.device("meta"):
        module = build()
    return torch.nn.Module.to(module, dtype).eval()


def _meta_text_encoder(text_encoder):
    """A transformers text model's twin on the meta device: same class, config and dtype, no weights read."""
    if text_encoder is None:
        return None
    return _meta(lambda: type(text_encoder)(text_encoder.config), next(text_encoder.parameters()).dtype)


def _text_phase(encoder, batch: int, text_len: int, guidance: bool, dtype, width: int) -> tuple:
    """Prompt states (b, s, d) and, with guidance, negative ones, encoded together (a negative prompt costs
    at least what the null text does; encoding both at once at least what the pipeline's two calls do)."""
    rows = 2 * batch if guidance else batch
    if encoder is None:
        states = torch.empty(rows, text_len, width, dtype=dtype, device="meta")
    else:
        ids = torch.empty(rows, text_len, dtype=torch.long, device="meta")
        states = encoder(input_ids=ids).last_hidden_state.to(dtype)
    return states[:batch], (states[batch:] if guidance else None)


def _sampling_phase(model, quantizer, latent_grid, prompt, negative):
    """`generate` itself on the meta device (no uniforms are drawn there); top_p on, since its
    temporaries include the plain draw's."""
    mask = torch.ones(prompt.shape[:2], dtype=torch.bool, device="meta")
    return generate(model, quantizer, prompt, mask, latent_grid, guidance_scale=1.0 if negative is None else 3.0,
                    negative_prompt_embeds=negative, top_p=0.9)


def _video_bytes(cfg: TokenizerConfig, batch: int, latent_grid, dtype) -> int:
    t, h, w = latent_grid
    frames, sf = 1 + cfg.backbone.temporal_factor * (t - 1), cfg.backbone.spatial_factor
    return batch * 3 * frames * h * sf * w * sf * torch.finfo(dtype).bits // 8


def _decode_phase(live: LiveBytes, vae: PyraTokTokenizer, latent_grid, batch: int, output_copies: float) -> int:
    """Peak of decoding a (b, c, t, h, w) latent, then of post-processing (`output_copies` float32 videos).

    Decoding costs the same for every group of tiles and every latent frame after the first few, so the
    decode runs on the largest group (tiled; the whole batch and frame untiled) for at most STEADY_FRAMES
    latent frames, and what grows with the clip is added: `tiled_decode` writes into one preallocated video
    (one copy), diffusers' untiled decode concatenates each frame onto the video so far and then clamps out
    of place (two copies); latent-sized copies (normalisation, dtype) twice."""
    t, h, w = latent_grid
    if vae.tiling is None:
        k, th, tw = batch, h, w
    else:
        k, th, tw = tile_group_shape(batch, h, w, vae.tiling, vae.spatial_factor)
    run = (min(t, STEADY_FRAMES), th, tw)
    dtype = next(vae.parameters()).dtype
    z = torch.empty(k, vae.cfg.backbone.z_dim, *run, device="meta", dtype=dtype)
    live.phase_peak()
    video = vae.decode_latent(z)
    peak = live.phase_peak()
    grown = _video_bytes(vae.cfg, batch, latent_grid, dtype) - video.numel() * video.element_size()
    latent_grown = (batch * t * h * w - k * run[0] * th * tw) * z.shape[1] * z.element_size()
    copies = 1 if vae.tiling is not None else 2
    after = live.live + grown + int(output_copies * _video_bytes(vae.cfg, batch, latent_grid, torch.float32))
    return max(peak + copies * grown + 2 * latent_grown, after)


def sampling_memory(generator: GeneratorConfig, tokenizer: TokenizerConfig | LaPQConfig, latent_grid, batch: int,
                    *, guidance: bool = True, text_len: int = 77, dtype=torch.float32, vae_dtype=None,
                    tiling: TilingConfig | None = None, output_type: str = "pil",
                    text_encoder=None, refiner=None) -> SamplingMemory:
    """Peak bytes of sampling `batch` videos on `latent_grid` (t, h, w), by phase, from the models' configs.

    tokenizer: a `TokenizerConfig` (the decode is counted, `tiling` on or off, then the post-processing into
    `output_type`, one of OUTPUT_COPIES; "latent": no decode) or only a `LaPQConfig` (sampling alone).
    text_encoder: a transformers model (its class and config are used, not its weights); None counts no text
    encoder. refiner: a `LatentRefiner` config whose `refine` runs between sampling and decoding (None: no
    refiner). guidance: the batch runs twice (prompt + negative or null text). Phases and what they count:
    `SamplingMemory`; the pipeline's check compares `.working` with the memory available."""
    if len(latent_grid) != 3 or min(latent_grid) < 1:
        raise ValueError(f"latent_grid must be (t, h, w) of positive ints, got {latent_grid}")
    if batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch}")
    if output_type not in OUTPUT_COPIES:
        raise ValueError(f"output_type must be one of {tuple(OUTPUT_COPIES)}, got {output_type!r}")
    vae_dtype = vae_dtype or dtype
    if isinstance(tokenizer, TokenizerConfig):
        vae = _meta(lambda: PyraTokTokenizer.from_config_dataclass(tokenizer), vae_dtype)
        vae.tiling = tiling
        quantizer = vae.quantizer
    else:
        vae, quantizer = None, _meta(lambda: LaPQ(tokenizer), vae_dtype)
    model = _meta(lambda: PyraTokGenerator.from_generator_config(generator), dtype)
    refiner = None if refiner is None else _meta(lambda: LatentRefiner.from_config(refiner), dtype)
    encoder = _meta_text_encoder(text_encoder)
    positions = getattr(getattr(encoder, "config", None), "max_position_embeddings", None) or text_len
    with FusedAttention(), LiveBytes("meta") as live, torch.no_grad():
        prompt, negative = _text_phase(encoder, batch, min(text_len, generator.max_text_len, positions), guidance,
                                       dtype, generator.text_dim)
        text = live.phase_peak()
        pyramid = _sampling_phase(model, quantizer, tuple(latent_grid), prompt, negative)
        sampling = live.phase_peak()
        refine = 0
        if refiner is not None:  # the refined z_hat replaces the pyramid's, as in the pipeline
            pyramid.latent = refiner.refine(refiner.condition(pyramid, quantizer), prompt, None)
            refine = live.phase_peak()
        decode = 0  # the text states and `pyramid` stay alive through the decode, as in the pipeline
        if vae is not None and OUTPUT_COPIES[output_type] is not None:
            decode = _decode_phase(live, vae, tuple(latent_grid), batch, OUTPUT_COPIES[output_type])
    weights = _param_bytes(model, quantizer if vae is None else vae, encoder, refiner)
    return SamplingMemory(weights=weights, text=text, sampling=sampling, decode=decode, refine=refine)
