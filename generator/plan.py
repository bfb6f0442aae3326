"""`python -m generator.plan`: parameters, tokens, training FLOPs and memory per GPU of a generator run,
and the memory of sampling one video with the pipeline (the estimate its up-front check uses).

PyraTok's next-scale generator at video sizes, measured on the meta device (no weights, no compute):
FLOPs by torch's FlopCounterMode, activations as the bytes autograd saves for backward, sampling by
`generator.memory`.
    python -m generator.plan --config configs/generator/base.yaml --tokenizer configs/tokenizer/wan2.1.yaml \\
        --clip 81x480x832 --gpus 8 --gpu-memory 80 [--batch 1] [--sp 8]
    python -m generator.plan --model checkpoints/pyratok-shapes-tiny --clip 33x256x256
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from pyratok.config import config_from_dict, load_config, read_config_file
from pyratok.pyramid import level_grids
from pyratok.text_encoder import default_model_path as default_text_encoder_path
from pyratok.tiling import TilingConfig
from pyratok.tokenizer import PyraTokTokenizer, TokenizerConfig

from .config import GeneratorConfig, GeneratorTrainConfig
from .heads import head_loss
from .memory import GB, FusedAttention, sampling_memory, storage_key
from .model import PyraTokGenerator
from .passes import input_channels, step_grids
from .refiner import LatentRefiner

STRATEGIES = ("ddp", "zero2", "zero3", "zero3+sp")
RESERVE = 0.9  # share of GPU memory a plan may fill (allocator fragmentation, kernels' workspaces)


@dataclass
class ModelCost:
    """What one sample costs: counted from the model on the meta device."""

    params: int
    grids: list[tuple[int, int, int]]
    train_flops: float  # forward + backward of one sample
    saved_outside: int  # bytes autograd keeps outside the blocks (embeddings, head, loss)
    saved_per_block: list[int]  # bytes each block keeps for backward (no checkpointing)
    block_input: int  # bytes of one block's input (what a checkpointed block keeps)
    largest_saved: int  # the largest saved tensor: backward holds its gradient and one temporary of its size

    @property
    def tokens(self) -> list[int]:
        return [t * h * w for t, h, w in self.grids]

    def activation_bytes(self, checkpointing: bool) -> int:
        if not checkpointing:
            return self.saved_outside + sum(self.saved_per_block) + 2 * self.largest_saved
        return (self.saved_outside + len(self.saved_per_block) * self.block_input + max(self.saved_per_block, default=0)
                + 2 * self.largest_saved)


def model_cost(cfg: GeneratorConfig, grids, dtype=torch.bfloat16, text_len: int = 77) -> ModelCost:
    """Count one training step (forward + backward, batch 1, no checkpointing) on the meta device."""
    with torch.device("meta"):
        model = PyraTokGenerator.from_generator_config(cfg)
    torch.nn.Module.to(model, dtype).train()  # every module in `dtype`, as under DeepSpeed bf16
    transformer = model.transformer
    transformer.gradient_checkpointing = False
    seen = {storage_key(p) for p in model.parameters()}
    buckets = {"outside": 0, "largest": 0}
    where = ["outside"]

    def pack(t):
        key = storage_key(t)
        if key not in seen:
            seen.add(key)
            nbytes = t.untyped_storage().nbytes()
            buckets[where[-1]] = buckets.get(where[-1], 0) + nbytes
            buckets["largest"] = max(buckets["largest"], nbytes)
        return t

    inputs_seen = []

    def enter(block, args):
        where.append(block.index)
        inputs_seen.append(args[0].nbytes)

    def leave(block, args, out):
        where.pop()

    for i, block in enumerate(transformer.blocks):
        block.index = i
        block.register_forward_pre_hook(enter)
        block.register_forward_hook(leave)
    meta = dict(device="meta", dtype=dtype)
    bits = [torch.empty(1, *g, cfg.num_bits, **meta) for g in grids]
    channels = input_channels(cfg.latent_channels, cfg.finest_passes)
    inputs = [torch.empty(1, channels, *g, **meta) for g in step_grids(grids, cfg.finest_passes)]
    text = torch.empty(1, min(text_len, cfg.max_text_len), cfg.text_dim, **meta)
    with FusedAttention(), FlopCounterMode(display=False) as flops, \
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        drop = torch.zeros(1, dtype=torch.bool, device="meta")
        loss, _ = head_loss(model(inputs, text, None, drop_text=drop, target_bits=bits), bits)
        loss.backward()
    return ModelCost(
        params=sum(p.numel() for p in model.parameters()), grids=list(grids), train_flops=float(flops.get_total_flops()),
        saved_outside=buckets["outside"], saved_per_block=[buckets.get(i, 0) for i in range(cfg.depth)],
        block_input=max(inputs_seen, default=0), largest_saved=buckets["largest"],
    )


def memory_per_gpu(cost: ModelCost, strategy: str, gpus: int, batch: int, sp: int, checkpointing: bool,
                   bf16: bool) -> dict:
    """Bytes per GPU: parameters, gradients, optimizer (AdamW), activations; sp ranks share a sequence.

    DDP keeps fp32 weights, fp32 grads and Adam's two moments on every GPU (16 bytes/param); ZeRO-2
    keeps bf16 weights and splits grads + fp32 master + moments; ZeRO-3 splits everything.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if gpus % sp:
        raise ValueError(f"the sequence-parallel degree {sp} must divide the GPU count {gpus}")
    p, w = cost.params, (2 if bf16 else 4)
    if strategy == "ddp":
        params, grads, optim = 4 * p, 4 * p, 8 * p
    elif strategy == "zero2":
        params, grads, optim = w * p, w * p / gpus, (8 + (4 if bf16 else 0)) * p / gpus
    else:
        params, grads, optim = w * p / gpus, w * p / gpus, (8 + (4 if bf16 else 0)) * p / gpus
    degree = sp if strategy == "zero3+sp" else 1
    activations = batch * cost.activation_bytes(checkpointing) / degree
    total = params + grads + optim + activations
    return {"params": params, "grads": grads, "optimizer": optim, "activations": activations, "total": total}


def clip_grids(tokenizer: TokenizerConfig, clip: tuple[int, int, int]) -> list[tuple[int, int, int]]:
    return level_grids(tokenizer.backbone.latent_grid(*clip), tokenizer.quantizer.level_strides)


def parse_clip(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise ValueError(f"clip must be FRAMESxHEIGHTxWIDTH, e.g. 81x480x832, got {text!r}")
    return tuple(int(p) for p in parts)


def report(cfg: GeneratorTrainConfig, tokenizer: TokenizerConfig, clip, gpus: int, gpu_memory_gb: float,
           batch: int, sp: int) -> str:
    model_cfg = cfg.model
    if len(tokenizer.quantizer.level_strides) != model_cfg.num_levels:
        raise ValueError(f"the tokenizer has {len(tokenizer.quantizer.level_strides)} levels, "
                         f"the generator {model_cfg.num_levels}")
    bf16 = cfg.train.mixed_precision == "bf16"
    cost = model_cost(model_cfg, clip_grids(tokenizer, clip), torch.bfloat16 if bf16 else torch.float32)
    ckpt = model_cfg.gradient_checkpointing
    lines = [f"clip {'x'.join(map(str, clip))}: levels {cost.grids}",
             f"tokens per level {cost.tokens} = {sum(cost.tokens):,}",
             f"parameters {cost.params / 1e6:.1f}M; training FLOPs {cost.train_flops / 1e12:.2f} TFLOP per clip "
             f"(forward + backward, checkpoint recompute not counted); {batch} clip(s) per GPU (per SP group)",
             f"{'bf16' if bf16 else 'fp32'}, gradient checkpointing {'on' if ckpt else 'off'}, AdamW; "
             f"fits = total <= {RESERVE:.0%} of {gpu_memory_gb:g} GB",
             f"{'strategy':<12}{'params':>9}{'grads':>9}{'optim':>9}{'activ.':>10}{'total GB':>10}  fits"]
    for strategy in STRATEGIES:
        if strategy == "zero3+sp" and sp == 1:
            continue
        m = memory_per_gpu(cost, strategy, gpus, batch, sp, ckpt, bf16)
        name = f"zero3+sp{sp}" if strategy == "zero3+sp" else strategy
        fits = m["total"] <= RESERVE * gpu_memory_gb * GB
        lines.append(f"{name:<12}" + "".join(f"{m[k] / GB:>9.2f}" for k in ("params", "grads", "optimizer"))
                     + f"{m['activations'] / GB:>10.2f}{m['total'] / GB:>10.2f}  {'yes' if fits else 'no'}")
    return "\n".join(lines)


def sampling_report(model_cfg: GeneratorConfig, tokenizer: TokenizerConfig, clip, text_encoder=None,
                    refiner=None) -> str:
    """What `pipe(prompt, num_frames, height, width)` needs, as its up-front check counts it: one video, guidance
    on, fp32, "pil" output, the refiner's draw (`refiner`: its config, or None), decode untiled and tiled
    (`generator.memory.sampling_memory`)."""
    grid = tokenizer.backbone.latent_grid(*clip)
    lines = [f"sampling one video of {'x'.join(map(str, clip))} (guidance, fp32, pil), as the pipeline checks it; "
             f"GB beyond the weights{'' if text_encoder is not None else ' (no text encoder counted)'}",
             f"{'decode':<10}{'text':>8}{'sampling':>10}{'refine':>8}{'decode':>9}{'peak':>8}{'weights':>9}"]
    for name, tiling in (("untiled", None), ("tiled", TilingConfig())):
        m = sampling_memory(model_cfg, tokenizer, grid, 1, tiling=tiling, text_encoder=text_encoder, refiner=refiner)
        lines.append(f"{name:<10}{m.text / GB:>8.3f}{m.sampling / GB:>10.3f}{m.refine / GB:>8.3f}{m.decode / GB:>9.3f}"
                     f"{m.working / GB:>8.3f}{m.weights / GB:>9.3f}")
    return "\n".join(lines)


def meta_text_encoder(folder):
    """A transformers text model on the meta device from `folder`'s config.json (no weights read)."""
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    with torch.device("meta"):
        if config.architectures:
            return getattr(transformers, config.architectures[0])(config)
        return transformers.AutoModel.from_config(config)


def pipeline_configs(folder: Path) -> tuple[GeneratorConfig, TokenizerConfig, object, dict | None]:
    """The generator and tokenizer configs, the text encoder (meta) and the refiner's config (None without one)
    of a saved pipeline folder."""
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"--model {folder} is not a pipeline folder (no model_index.json there)")
    generator = PyraTokGenerator.load_config(folder / "transformer")
    model_cfg = GeneratorConfig(**{f.name: generator[f.name] for f in fields(GeneratorConfig) if f.name in generator})
    with torch.device("meta"):
        tokenizer = PyraTokTokenizer.from_config(PyraTokTokenizer.load_config(folder / "vae")).cfg
    text = folder / "text_encoder"
    text = text if (text / "config.json").is_file() else default_text_encoder_path()
    refiner = LatentRefiner.load_config(folder / "refiner") if (folder / "refiner" / "config.json").is_file() else None
    return model_cfg, tokenizer, meta_text_encoder(text), refiner


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="GeneratorTrainConfig YAML (defaults if omitted)")
    p.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--tokenizer", default="configs/tokenizer/wan2.1.yaml", help="TokenizerConfig YAML (grids)")
    p.add_argument("--model", default=None, help="a saved pipeline folder instead of --config / --tokenizer")
    p.add_argument("--clip", default="17x256x256", help="FRAMESxHEIGHTxWIDTH")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GB per GPU")
    p.add_argument("--batch", type=int, default=None, help="clips per GPU (default: the config's batch_size)")
    p.add_argument("--sp", type=int, default=None, help="sequence-parallel degree (default: the model config's)")
    args = p.parse_args(argv)
    cfg = load_config(GeneratorTrainConfig, args.config, args.set)
    refiner = None
    if args.model:
        cfg.model, tokenizer, text_encoder, refiner = pipeline_configs(Path(args.model))
    else:
        data = read_config_file(args.tokenizer)  # a tokenizer training YAML: its model section
        tokenizer = config_from_dict(TokenizerConfig, data.get("model", data))
        try:
            text_encoder = meta_text_encoder(default_text_encoder_path())
        except FileNotFoundError:  # the default MiniLM package is not installed: the report says so
            text_encoder = None
    sp = args.sp or cfg.model.sequence_parallel_size
    batch = args.batch or cfg.train.batch_size
    clip = parse_clip(args.clip)
    print(report(cfg, tokenizer, clip, args.gpus, args.gpu_memory, batch, sp))
    print()
    print(sampling_report(cfg.model, tokenizer, clip, text_encoder, refiner))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
