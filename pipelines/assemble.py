"""Assemble a pipeline folder from a trained tokenizer and generator (the shipped default model).

Last step of the default-model recipe (`make default-model`): the MiniLM text encoder is not
copied, it loads from its installed package.
    python -m pipelines.assemble --tokenizer runs/tok/tokenizer --generator runs/gen/generator --out DIR \\
        [--refiner runs/refiner/refiner] [--half]

`--half` writes the weights in fp16 (a shipped folder: half the bytes); `from_pretrained` loads them into an fp32
pipeline, as it loads the shipped tokenizer (`pyratok.checkpoints.shipped_copy`).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from generator import PyraTokGenerator
from generator.refiner import LatentRefiner
from pyratok.checkpoints import shipped_copy
from pyratok.help_format import DefaultsFormatter
from pyratok.tokenizer import PyraTokTokenizer

from .pipeline_pyratok_t2v import PyraTokT2VPipeline


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=DefaultsFormatter)
    parser.add_argument("--tokenizer", required=True, help="trained PyraTok tokenizer folder (the pipeline's vae)")
    parser.add_argument("--generator", required=True, help="trained generator folder (the pipeline's transformer)")
    parser.add_argument("--refiner", default=None,
                        help="trained latent refiner folder (generator.train_refiner), optional")
    parser.add_argument("--out", required=True, help="pipeline folder to write")
    parser.add_argument("--sample-size", type=int, default=64, help="default height and width of generated videos")
    parser.add_argument("--compose-phrases", action="store_true",
                        help="draw each object of a several-object prompt as a layer by default (the pipeline's "
                             "compose_phrases; pipelines.compose)")
    parser.add_argument("--raw-weights", action="store_true",
                        help="the generator's raw weights even if EMA ones exist (default: EMA when present)")
    parser.add_argument("--half", action="store_true", help="write the weights in fp16 (half the bytes)")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    # generator.train exports the EMA of the weights beside them, as the "ema" variant: used when present
    ema = (Path(args.generator) / "diffusion_pytorch_model.ema.safetensors").is_file() and not args.raw_weights
    models = {
        "vae": PyraTokTokenizer.from_pretrained(args.tokenizer),
        "transformer": PyraTokGenerator.from_pretrained(args.generator, variant="ema" if ema else None),
        "refiner": None if args.refiner is None else LatentRefiner.from_pretrained(args.refiner),
    }
    pipe = PyraTokT2VPipeline(
        **{name: None if model is None else shipped_copy(model, f"{Path(args.out).name}/{name}", args.half)
           for name, model in models.items()},
        sample_size=args.sample_size,
        compose_phrases=args.compose_phrases,
    )
    pipe.save_pretrained(args.out, include_text_encoder=False)
    print(f"wrote {args.out} (generator weights: {'EMA' if ema else 'raw'}, {'fp16' if args.half else 'fp32'})")


if __name__ == "__main__":
    main()
