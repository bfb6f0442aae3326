"""Prompt faithfulness of a text-to-video pipeline on Shapes prompts, judged by pixels alone.

Implements SHAPES.md "Prompt-faithfulness check" with `judge_video`: colour, shape and motion accuracy
on train colour x shape pairs and, separately, on the heldout pairs (compositional generalisation); and
its "Two-object check" with `score_objects` on two-object prompts ("a red circle moving left and a blue
square growing"): both objects right, and per-object colour / shape / motion rates.
`python -m pipelines.evaluate_shapes --model DIR [--num-seeds 4] [--out DIR]` -> results.json + sheets.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from generator.sampling import FINEST_DECODES, GUIDANCE_SCHEDULE_HELP, parse_guidance_schedule
from pyratok.data.contact_sheet import save_contact_sheet
from pyratok.data.shapes import COLOURS, HELDOUT_PAIRS, MOTIONS, SHAPES, TRAIN_PAIRS, caption_for
from pyratok.data.shapes_judge import judge_video, score_objects
from pyratok.help_format import DefaultsFormatter

from .cli import add_debug_flag, report_errors
from .video_export import frames_to_uint8

SEED_BASE = 1_000_000  # generation seeds; training runs use small seeds (0, 1, ...)
ATTRIBUTES = ("colour", "shape", "motion")
CHANCE = {"colour": 1 / len(COLOURS), "shape": 1 / len(SHAPES), "motion": 1 / len(MOTIONS)}
SHEET_ROWS = 24
TWO_OBJECT = "two_object"  # the category of two-object prompts, next to the "train" and "heldout" splits


def two_object_prompts(num: int, seed: int = 0) -> list[tuple[tuple[str, str, str], ...]]:
    """`num` distinct object pairs ((colour, shape, motion), (colour, shape, motion)) from the train pairs,
    two colours in each (as ShapesDataset(num_objects=2) draws them); fixed by `seed`."""
    singles = [(c, s, m) for c, s in TRAIN_PAIRS for m in MOTIONS]
    possible = sum(a[0] != b[0] for a in singles for b in singles)
    if not 0 <= num <= possible:
        raise ValueError(f"number of two-object prompts must be in [0, {possible}], got {num}")
    rng = np.random.default_rng([seed, 2])  # a stream of its own: the single-object subsets do not move
    items: list[tuple] = []
    while len(items) < num:
        first, second = (singles[i] for i in rng.choice(len(singles), size=2, replace=False))
        if first[0] != second[0] and (first, second) not in items:
            items.append((first, second))
    return items


def evaluation_prompts(num_train: int = 48, num_heldout: int = 0, num_two_object: int = 24,
                       seed: int = 0) -> dict[str, list[tuple]]:
    """(colour, shape, motion) per split: every pair x motion, or a fixed random subset of `num_*` (0: all);
    under "two_object", `num_two_object` pairs of such triples (`two_object_prompts`; 0: none)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, pairs, n in (("train", TRAIN_PAIRS, num_train), ("heldout", HELDOUT_PAIRS, num_heldout)):
        items = [(c, s, m) for c, s in pairs for m in MOTIONS]
        if 0 < n < len(items):
            items = [items[i] for i in sorted(rng.choice(len(items), size=n, replace=False))]
        out[split] = items
    out[TWO_OBJECT] = two_object_prompts(num_two_object, seed)
    return out


def prompt_text(split: str, item: tuple) -> str:
    """The canonical caption: "a red circle moving left", or two joined with "and" for two_object items."""
    return " and ".join(caption_for(*o) for o in item) if split == TWO_OBJECT else caption_for(*item)


def traded_caption(split: str, item: tuple) -> str | None:
    """A two-object item's canonical caption with the two motions traded ("a red circle moving up and a blue
    square moving left" for "... moving left and ... moving up"): the wrong binding, as a negative prompt.
    None for a single object, or a pair whose motions are the same."""
    if split != TWO_OBJECT:
        return None
    (c1, s1, m1), (c2, s2, m2) = item
    return None if m1 == m2 else prompt_text(split, ((c1, s1, m2), (c2, s2, m1)))


def _judge(split: str, item: tuple, clip: np.ndarray) -> dict:
    """Per-video record fields: the single-object verdict, or the two-object score with one row per object."""
    if split != TWO_OBJECT:
        judged = judge_video(clip)
        return {**dict(zip(ATTRIBUTES, item)), "judged": {k: judged[k] for k in (*ATTRIBUTES, "found", "fill_ratio")}}
    score = score_objects(clip, item)
    return {"objects": [_object_record(row) for row in score["objects"]], "both_right": score["all_right"],
            "both_colour_shape_right": score["colour_shape_right"]}


def _object_record(row: dict) -> dict:
    """One object of a two-object score: what the prompt names, what the judge saw, and the three verdicts."""
    seen = {k: row["judged"][k] for k in ("present", "area_fraction", "shape", "fill_ratio", "motion", "frames")}
    return {**{a: row[a] for a in ATTRIBUTES}, "judged": seen, **{f"{a}_ok": row[f"{a}_ok"] for a in ATTRIBUTES}}


def _two_object_accuracies(records: list[dict]) -> dict:
    """both_right (SHAPES.md: both present, right shape and motion; also as all_acc), both_colour_shape_right,
    per-object rates of colour (present), shape and motion, found_rate (both colours show at all), and
    motion_of_other: of the objects whose motion differs from the other object's, the share drawn with the
    other's (a binding error: the motion given to the wrong object); shape_confusion per object (`shape_confusion`;
    "None": the object's colour was not found)."""
    n, objects = len(records), [o for r in records for o in r["objects"]]
    acc = {f"{a}_acc": sum(bool(o[f"{a}_ok"]) for o in objects) / len(objects) for a in ATTRIBUTES}
    acc["both_right"] = acc["all_acc"] = sum(r["both_right"] for r in records) / n
    acc["both_colour_shape_right"] = sum(r["both_colour_shape_right"] for r in records) / n
    acc["found_rate"] = sum(all(o["judged"]["frames"] for o in r["objects"]) for r in records) / n
    differ = [(mine, other) for r in records for mine, other in zip(r["objects"], r["objects"][::-1])
              if None not in (mine["motion"], other["motion"]) and mine["motion"] != other["motion"]]
    acc["motion_of_other"] = sum(mine["judged"]["motion"] == other["motion"] for mine, other in differ) / max(len(differ), 1)
    acc["shape_confusion"] = shape_confusion(objects)
    return {**acc, "num_videos": n, "num_prompts": len({r["prompt"] for r in records})}


def shape_confusion(records: list[dict]) -> dict[str, dict[str, int]]:
    """{shape named: {shape judged (None: no object found): count}} over single-object records, or over the
    objects of two-object records (each with its own "shape" and "judged")."""
    confusion: dict[str, dict[str, int]] = {}
    for r in records:
        row, judged = confusion.setdefault(r["shape"], {}), str(r["judged"]["shape"])
        row[judged] = row.get(judged, 0) + 1
    return confusion


def _accuracies(records: list[dict]) -> dict:
    """Accuracy per attribute, all three, found_rate; shape_confusion, and shape_balanced_acc: the mean over
    the shapes named of each one's accuracy, so a generator that draws every object as one shape (a blob
    the judge reads as a circle, or a speckled one it reads as a triangle) scores 1/3 whatever the prompt mix."""
    n = len(records)
    acc = {f"{a}_acc": sum(r["judged"][a] == r[a] for r in records) / n for a in ATTRIBUTES}
    acc["all_acc"] = sum(all(r["judged"][a] == r[a] for a in ATTRIBUTES) for r in records) / n
    acc["found_rate"] = sum(r["judged"]["found"] for r in records) / n
    confusion = shape_confusion(records)
    acc["shape_balanced_acc"] = float(np.mean([row.get(shape, 0) / sum(row.values()) for shape, row in confusion.items()]))
    acc["shape_confusion"] = confusion
    return {**acc, "num_videos": n, "num_prompts": len({r["prompt"] for r in records})}


def evaluate(pipe, prompts: dict[str, list[tuple]], num_seeds: int = 4, batch_size: int = 8,
             out_dir: Path | None = None, seed_base: int = SEED_BASE, traded_negatives: bool = False,
             **sampling) -> dict:
    """Generate `num_seeds` videos per prompt (seed `seed_base` + k, counted over all videos), judge each.

    Returns {"splits": {split: accuracies}, "chance": ..., "videos": [per-video records]}; with `out_dir`,
    writes `{split}_sheet.png` (one row per prompt, its first seed, at most 24 rows). The "two_object"
    category reports both_right (= all_acc), both_colour_shape_right, per-object rates and motion_of_other.
    traded_negatives: the generator is guided away from each pair's caption with its motions traded
    (`traded_caption`) instead of the null text, and from the empty caption for every other prompt.
    """
    if num_seeds < 1:
        raise ValueError(f"num_seeds must be >= 1, got {num_seeds}")
    if seed_base < 0:
        raise ValueError(f"seed_base must be >= 0, got {seed_base}")
    jobs = [(split, item, k) for split, items in prompts.items() for item in items for k in range(num_seeds)]
    records, sheets, titles = [], {split: [] for split in prompts}, {split: [] for split in prompts}
    bar = tqdm(total=len(jobs), desc="prompts x seeds", unit="video")
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        seeds = [seed_base + start + j for j in range(len(chunk))]
        texts = [prompt_text(split, item) for split, item, _ in chunk]
        if traded_negatives:
            sampling["negative_prompt"] = [traded_caption(split, item) or "" for split, item, _ in chunk]
        frames = pipe(texts, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np",
                      **sampling).frames  # (b, f, h, w, 3) in [0, 1]
        for (split, item, k), text, seed, video in zip(chunk, texts, seeds, frames):
            clip = frames_to_uint8(video)
            records.append({"split": split, "prompt": text, "seed": seed, **_judge(split, item, clip)})
            bar.update()
            if k == 0 and len(sheets[split]) < SHEET_ROWS:
                sheets[split].append(clip)
                titles[split].append(f"{text} (seed {seed})")
    bar.close()
    if out_dir is not None:
        for split, clips in sheets.items():
            if clips:
                save_contact_sheet(clips, Path(out_dir) / f"{split}_sheet.png", labels=titles[split])
    splits = {split: (_two_object_accuracies if split == TWO_OBJECT else _accuracies)(
        [r for r in records if r["split"] == split]) for split in prompts if prompts[split]}
    return {"splits": splits, "chance": CHANCE, "num_seeds": num_seeds, "videos": records}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.evaluate_shapes", description=__doc__.splitlines()[0],
                                formatter_class=DefaultsFormatter)
    p.add_argument("--model", type=Path, default=None, help="pipeline folder (default: the shipped model)")
    p.add_argument("--num-seeds", type=int, default=4, help="videos per prompt")
    p.add_argument("--out", type=Path, default=Path("outputs/evaluate_shapes"),
                   help="folder for results.json and the labelled contact sheets")
    p.add_argument("--train-prompts", type=int, default=48, help="fixed random subset of the 120 (0: all)")
    p.add_argument("--heldout-prompts", type=int, default=0, help="subset of the 24 heldout prompts (0: all)")
    p.add_argument("--two-object-prompts", type=int, default=24,
                   help="fixed random two-object prompts, train pairs, two colours (0: none)")
    p.add_argument("--prompt-seed", type=int, default=0,
                   help="seed of the prompt subsets (another seed: another subset, to read the spread)")
    p.add_argument("--seed-base", type=int, default=SEED_BASE, help="first generation seed")
    p.add_argument("--batch-size", type=int, default=8, help="videos per pipeline call")
    p.add_argument("--num-frames", type=int, default=17, help="1 + 4k frames")
    p.add_argument("--height", type=int, default=None, help="pixels (default: the model's sample size)")
    p.add_argument("--width", type=int, default=None, help="pixels (default: the model's sample size)")
    p.add_argument("--guidance-scale", type=float, default=3.0, help="classifier-free guidance (1: none)")
    p.add_argument("--guidance-schedule", default=None, help=GUIDANCE_SCHEDULE_HELP)
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, > 0")
    p.add_argument("--finest-decode", choices=FINEST_DECODES, default="sample",
                   help="the finest level's drawn bits, or each bit's expected value (bitwise head)")
    p.add_argument("--finest-conv-passes", type=int, default=None,
                   help="passes of a FinestConv that draws in passes (default: the model's; 1: one pass)")
    p.add_argument("--refiner-guidance-scale", type=float, default=None,
                   help="the refiner's classifier-free guidance (default: its config's)")
    p.add_argument("--traded-negatives", action="store_true",
                   help="guide each two-object prompt away from its caption with the motions traded, instead of "
                        "the null text (the empty caption for every other prompt)")
    p.add_argument("--compose-phrases", action=argparse.BooleanOptionalAction, default=None,
                   help="draw each object of a two-object prompt as a layer and composite them "
                        "(`pipelines.compose`); --no-compose-phrases: one joint draw, its ablation (default: the "
                        "pipeline's config)")
    p.add_argument("--layer-candidates", type=int, default=3,
                   help="draws of each layer, of which the pick whose objects overlap least is kept (1: no choice)")
    p.add_argument("--no-refiner", action="store_true",
                   help="decode the sampled z_hat even if the pipeline has a refiner (its ablation)")
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    add_debug_flag(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_errors("evaluate_shapes", lambda: _run(args), args.debug)


def _run(args: argparse.Namespace) -> int:
    from pipelines.pipeline_pyratok_t2v import load_pipeline
    from pyratok.default_model import default_model_path

    schedule = parse_guidance_schedule(args.guidance_schedule)  # a bad one fails before the model loads
    model = (args.model or default_model_path()).resolve()
    pipe = load_pipeline(model, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    prompts = evaluation_prompts(args.train_prompts, args.heldout_prompts, args.two_object_prompts, args.prompt_seed)
    args.out.mkdir(parents=True, exist_ok=True)
    result = evaluate(pipe, prompts, args.num_seeds, args.batch_size, args.out, num_frames=args.num_frames,
                      height=args.height, width=args.width, guidance_scale=args.guidance_scale,
                      guidance_schedule=schedule,
                      temperature=args.temperature, finest_decode=args.finest_decode, seed_base=args.seed_base,
                      finest_conv_passes=args.finest_conv_passes, use_refiner=not args.no_refiner,
                      refiner_guidance_scale=args.refiner_guidance_scale, traded_negatives=args.traded_negatives,
                      compose_phrases=args.compose_phrases, layer_candidates=args.layer_candidates)
    result["model"] = str(model)
    result["compose_phrases"] = bool(pipe.config.get("compose_phrases", False) if args.compose_phrases is None
                                     else args.compose_phrases)
    result["layer_candidates"] = args.layer_candidates
    result["traded_negatives"] = args.traded_negatives
    result["prompt_seed"] = args.prompt_seed
    (args.out / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({"model": str(model), "splits": result["splits"], "chance": CHANCE,
                      "results": str(args.out / "results.json")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
