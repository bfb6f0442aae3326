"""GPU check for the tokenizer (issue #3), run when a CUDA device is lent to a session.

With the small config (`configs/tokenizer/small.yaml`, seeded random weights):
  1. tiled decode of one 17-frame 4K latent (fp32 and bf16): wall time and peak CUDA memory, in total
     and beyond the output tensor itself;
  2. at 1080p, tiled against untiled decode: PSNR and the time overhead of tiling;
  3. bf16 training steps (accelerate `mixed_precision="bf16"`) on Shapes clips at the config's size:
     every loss finite, step time, peak memory.

    python bench/gpu_check.py --out results/          # writes gpu_check.json there

Text states are seeded random (384-d, MiniLM's width) so that the check needs no text-encoder weights.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tokenizer" / "small.yaml"
GB = 1024**3
LARGE, MEDIUM = (2160, 3840), (1080, 1920)  # 4K and 1080p (height, width)


def build_tokenizer(device: torch.device):
    from pyratok.config import config_from_dict, read_config_file
    from pyratok.tokenizer import PyraTokTokenizer, TokenizerConfig

    data = read_config_file(CONFIG)
    torch.manual_seed(0)
    tokenizer = PyraTokTokenizer.from_config_dataclass(config_from_dict(TokenizerConfig, data["model"], "model."))
    return tokenizer.to(device), data


def timed(fn, device: torch.device) -> tuple[torch.Tensor, float, float]:
    """Run fn once; (result, seconds, peak GB allocated above what was allocated before)."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    result = fn()
    torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    return result, seconds, (torch.cuda.max_memory_allocated(device) - base) / GB


def latent_for(tokenizer, frames: int, height: int, width: int, device, seed: int = 1) -> torch.Tensor:
    t, h, w = tokenizer.latent_grid(frames, height, width)
    g = torch.Generator(device=device).manual_seed(seed)
    return torch.randn(1, tokenizer.cfg.backbone.z_dim, t, h, w, generator=g, device=device)


@torch.no_grad()  # not inference_mode: the dtype casts here would make inference-mode parameters
def decode_checks(tokenizer, device) -> dict:
    results = {}
    tokenizer.enable_tiling()
    tokenizer.decode_latent(latent_for(tokenizer, 5, 128, 128, device))  # kernels / cuDNN plans, unmeasured
    for dtype in (torch.float32, torch.bfloat16):
        tokenizer.to(dtype)
        z = latent_for(tokenizer, 17, *LARGE, device).to(dtype)
        video, seconds, peak = timed(lambda: tokenizer.decode_latent(z), device)
        out_gb = video.numel() * video.element_size() / GB
        results[f"tiled_4k_17f_{str(dtype).split('.')[-1]}"] = {
            "shape": list(video.shape), "seconds": round(seconds, 2), "peak_gb": round(peak, 2),
            "output_gb": round(out_gb, 2), "peak_beyond_output_gb": round(peak - out_gb, 2),
            "finite": bool(torch.isfinite(video).all()),
        }
        del video
    tokenizer.to(torch.float32)
    z = latent_for(tokenizer, 17, *MEDIUM, device)
    tiled, t_tiled, p_tiled = timed(lambda: tokenizer.decode_latent(z), device)
    tokenizer.disable_tiling()
    untiled, t_untiled, p_untiled = timed(lambda: tokenizer.decode_latent(z), device)
    mse = (tiled - untiled).float().pow(2).mean().item()
    results["tiled_vs_untiled_1080p_17f_fp32"] = {
        "psnr_db": round(10 * torch.log10(torch.tensor(4.0 / max(mse, 1e-12))).item(), 2),
        "tiled_seconds": round(t_tiled, 2), "untiled_seconds": round(t_untiled, 2),
        "time_overhead": round(t_tiled / t_untiled - 1, 3),
        "tiled_peak_gb": round(p_tiled, 2), "untiled_peak_gb": round(p_untiled, 2),
    }
    return results


def bf16_training(tokenizer, data: dict, device, steps: int) -> dict:
    from accelerate import Accelerator

    from pyratok.config import config_from_dict
    from pyratok.data.shapes import ShapesDataset
    from pyratok.objective import LossWeights, TokenizerObjective

    d = data["data"]
    batch_size = data["train"].get("batch_size", 4)
    shapes = ShapesDataset("train", length=batch_size * steps, num_frames=d["num_frames"], height=d["height"], width=d["width"])
    accelerator = Accelerator(mixed_precision="bf16")
    objective = TokenizerObjective(tokenizer.train(), config_from_dict(LossWeights, data.get("loss", {}), "loss."))
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4)
    objective, optimizer = accelerator.prepare(objective, optimizer)
    g = torch.Generator(device=device).manual_seed(2)
    records = []
    for step in range(steps):
        video = torch.stack([shapes[step * batch_size + i]["video"] for i in range(batch_size)]).to(device)
        states = torch.randn(batch_size, 12, 384, generator=g, device=device)
        mask = torch.ones(batch_size, 12, dtype=torch.bool, device=device)
        pooled = torch.nn.functional.normalize(torch.randn(batch_size, 384, generator=g, device=device), dim=-1)

        def step_fn():
            terms, _ = objective(video, states, mask, pooled, sample_posterior=False)
            accelerator.backward(terms["loss"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return terms

        terms, seconds, peak = timed(step_fn, device)
        records.append({
            "seconds": round(seconds, 3), "peak_gb": round(peak, 2),
            "loss": round(terms["loss"].item(), 4), "psnr": round(terms["psnr"].item(), 2),
            "all_finite": all(bool(torch.isfinite(v).all()) for v in terms.values() if torch.is_tensor(v)),
        })
    return {
        "batch": [batch_size, 3, d["num_frames"], d["height"], d["width"]],
        "steps": records,
        "all_finite": all(r["all_finite"] for r in records),
        "mean_seconds_after_first": round(sum(r["seconds"] for r in records[1:]) / max(1, steps - 1), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/gpu_check")
    parser.add_argument("--train-steps", type=int, default=5)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs a CUDA device (torch.cuda.is_available() is False)")
    device = torch.device("cuda")
    tokenizer, data = build_tokenizer(device)
    report = {"device": torch.cuda.get_device_name(device), "torch": torch.__version__, "config": str(CONFIG.name)}
    report["decode"] = decode_checks(tokenizer, device)
    print(json.dumps(report["decode"], indent=1), flush=True)
    report["bf16_training"] = bf16_training(tokenizer, data, device, args.train_steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
