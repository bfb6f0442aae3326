"""Align a trained tokenizer's tokens with language: train its alignment head on frozen tokens.

    python -m pyratok.train_alignment --tokenizer runs/tok/tokenizer --output_dir runs/align

The last stage of the tokenizer recipe (PyraTok §3.3 language alignment, at token level). The tokenizer
is frozen; its captioned clips (Shapes, one or two objects) are encoded once, without a caption, as
zero-shot understanding encodes them; then only the alignment head learns, with two losses:
- caption <-> video: symmetric InfoNCE of the pooled video embedding and the pooled caption;
- phrase -> video, token level: each caption is split at " and " into phrases (one per object); a
  phrase's score for a video is the mean of its best-matching tokens (`top_fraction_mean`), and InfoNCE
  over the batch's videos (every video whose caption holds the phrase is a positive) teaches tokens to
  light up where, and when, the phrase is seen;
- token level, with a background class (`background_weight`): every token must be explained by the
  background text or by a phrase of its own video's caption (a partial-label loss: phrases of other
  captions are wrong there), and each phrase's best-matching tokens in its videos must pick the phrase
  over the background (multiple instance). The black canvas is in every video under every caption, so
  only the background can explain it; localisation and segmentation then ask "query or background?".
No masks or boxes are used.
Batches are far larger than the tokenizer's (hundreds of clips against 4), which contrastive losses need.
Writes output_dir/tokenizer (the whole tokenizer, new head), config.yaml, checkpoints/, logs,
alignment_curve.png and encoded_clips.safetensors (the encoded clips, reused by a rerun with the same
tokenizer weights and clip settings).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import ClassVar
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .alignment import PHRASE_WEIGHT, TOP_FRACTION, multi_positive_nce, top_fraction_mean
from .config import cli_overrides, config_to_dict, load_config
from .data.shapes import ShapesDataset
from .text_encoder import TextEncoder, split_phrases
from .tokenizer import PyraTokTokenizer
from .training import TrainConfig
from .training.loop import Trainer


@dataclass
class AlignmentData:
    """The captioned Shapes clips, encoded once; the last `val_clips` are held out."""

    clips: int = 3000
    val_clips: int = 100
    two_object_share: float = 0.5
    num_frames: int = 17
    size: int = 64
    split: str = "train"
    seed: int = 0


@dataclass
class AlignmentLoss:
    phrase_weight: float = 1.0
    top_fraction: float = TOP_FRACTION
    background_weight: float = 1.0  # 0: no background class (the head keeps background_text unset)
    background_text: str = "background"


@dataclass
class AlignmentTrainLoop(TrainConfig):
    """The shared `train` knobs (pyratok.training.TrainConfig) with this stage's defaults."""

    output_dir: str = "runs/alignment"
    max_steps: int = 1500
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.01
    lr_scheduler: str = "cosine_with_min_lr"  # cosine from lr down to 10% of it
    lr_scheduler_kwargs: dict = field(default_factory=lambda: {"min_lr_rate": 0.1})
    save_every: int = 250
    log_every: int = 25


_RENAMED = {**{k: f"data.{k}" for k in ("clips", "val_clips", "two_object_share", "num_frames", "size", "split")},
            **{k: f"loss.{k}" for k in ("phrase_weight", "top_fraction", "background_weight", "background_text")},
            **{k: f"train.{k}" for k in ("output_dir", "batch_size", "lr", "weight_decay", "log_every")},
            "steps": "train.max_steps", "seed": lambda v: {"train.seed": v, "data.seed": v}}


@dataclass
class AlignmentTrainConfig:
    tokenizer: str = ""  # folder of a trained PyraTokTokenizer (save_pretrained)
    text_encoder: str | None = None  # local folder; None = the installed MiniLM
    data: AlignmentData = field(default_factory=AlignmentData)
    loss: AlignmentLoss = field(default_factory=AlignmentLoss)
    train: AlignmentTrainLoop = field(default_factory=AlignmentTrainLoop)

    RENAMED_KEYS: ClassVar[dict] = _RENAMED


def shapes_clips(cfg: AlignmentData):
    """Yield (video (3, T, H, W), caption) for cfg.clips Shapes clips, one- and two-object mixed."""
    two = round(cfg.clips * cfg.two_object_share)
    kw = dict(split=cfg.split, num_frames=cfg.num_frames, height=cfg.size, width=cfg.size, seed=cfg.seed)
    sources = [ShapesDataset(length=max(1, cfg.clips - two), num_objects=1, **kw),
               ShapesDataset(length=max(1, two), num_objects=2, **kw)]
    counts = [cfg.clips - two, two]
    order = torch.randperm(cfg.clips, generator=torch.Generator().manual_seed(cfg.seed))
    for i in order.tolist():  # interleaved, so the held-out tail has both kinds
        source, j = (0, i) if i < counts[0] else (1, i - counts[0])
        item = sources[source][j]
        yield item["video"], item["caption"]


@torch.no_grad()
def encode_clips(tokenizer: PyraTokTokenizer, cfg: AlignmentData, batch: int = 16):
    """-> (bits per level, each (n, t, h, w, k) int8 in {-1, 1}; captions)."""
    chunks, captions, videos = [], [], []
    for video, caption in tqdm(shapes_clips(cfg), total=cfg.clips, desc="encoding clips"):
        videos.append(video)
        captions.append(caption)
        if len(videos) == batch or len(captions) == cfg.clips:
            pyramid = tokenizer.encode(torch.stack(videos).to(tokenizer.device, tokenizer.dtype))
            chunks.append([b.to(torch.int8).cpu() for b in pyramid.bits])
            videos = []
    return [torch.cat(level) for level in zip(*chunks)], captions


def encoded_clips(tokenizer: PyraTokTokenizer, folder: str, cfg: AlignmentData, path: Path):
    """`encode_clips`, kept in `path` (safetensors) and reused while the tokenizer's weights (in
    `folder`) and the clip settings are unchanged."""
    digest = hashlib.sha256()
    for weights in sorted(Path(folder).glob("*.safetensors")):
        digest.update(weights.read_bytes())
    settings = ("clips", "two_object_share", "num_frames", "size", "split", "seed")
    key = json.dumps({"weights": digest.hexdigest(), **{k: getattr(cfg, k) for k in settings}}, sort_keys=True)
    if path.is_file():
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("key") == key:
            tensors = load_file(str(path))
            return [tensors[f"level{i}"] for i in range(len(tensors))], json.loads(meta["captions"])
    bits, captions = encode_clips(tokenizer, cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({f"level{i}": b.contiguous() for i, b in enumerate(bits)}, str(path),
              metadata={"key": key, "captions": json.dumps(captions)})
    return bits, captions


@torch.no_grad()
def pooled_texts(text_encoder: TextEncoder, texts: list[str], batch: int = 256) -> torch.Tensor:
    return torch.cat([text_encoder(texts[i:i + batch]).pooled.float().cpu() for i in range(0, len(texts), batch)])


def background_loss(volume: torch.Tensor, background: torch.Tensor, phrase_pos: torch.Tensor, scale: torch.Tensor,
                    fraction: float) -> torch.Tensor:
    """Token-level partial-label + multiple-instance loss with a background class.

    volume (b, m, t, h, w): token cosine with the batch's m phrases; background (b, 1, t, h, w): with the
    background text; phrase_pos (m, b): True where video j's caption holds phrase i.
    """
    b, m = volume.shape[:2]
    logits = scale * torch.cat([volume, background], dim=1).flatten(2)  # (b, m + 1, n tokens)
    allowed = torch.cat([phrase_pos.t(), phrase_pos.new_ones(b, 1)], dim=1)  # (b, m + 1)
    log_allowed = logits.masked_fill(~allowed[:, :, None], float("-inf")).logsumexp(1)  # (b, n)
    partial = (logits.logsumexp(1) - log_allowed).mean()
    k = max(1, math.ceil(fraction * volume.shape[-1] * volume.shape[-2]))
    best = volume.flatten(2).topk(k, dim=-1).indices  # (b, m, k): each phrase's best tokens in each video
    log_p = logits.log_softmax(1)[:, :m].gather(2, best)  # (b, m, k)
    pos = phrase_pos.t().to(log_p.dtype)  # (b, m)
    instance = -(log_p.mean(-1) * pos).sum() / pos.sum()
    return partial + instance


def alignment_losses(head, bits, caption_pooled, caption_ids, phrase_pooled, phrase_pos, cfg: AlignmentLoss,
                     background_pooled: torch.Tensor | None = None) -> dict:
    """bits: per level (b, t, h, w, k); caption_pooled (b, d) with ids (b,) (equal captions are both positive);
    phrase_pooled (m, d) with phrase_pos (m, b) True where video j's caption holds phrase i;
    background_pooled (1, d): the background text, used when cfg.background_weight > 0."""
    scale = head.scale()
    tokens = head.token_embeddings(bits)  # once, for the pooled and the token-level loss
    video = head.video_embedding(bits, tokens)
    text = head.text_embedding(caption_pooled)
    same = caption_ids[:, None] == caption_ids[None, :]
    logits = scale * video @ text.t()  # (b videos, b captions)
    caption = 0.5 * (multi_positive_nce(logits, same) + multi_positive_nce(logits.t(), same))
    field = head.token_field(bits, tokens)  # (b, e, t, h, w), shared by every text below
    volume = head.similarity_volume(bits, head.text_embedding(phrase_pooled), field=field)  # (b, m, t, h, w)
    scores = top_fraction_mean(volume, cfg.top_fraction)  # (b, m)
    phrase = multi_positive_nce(scale * scores.t(), phrase_pos)
    hit = (logits.argmax(-1) == torch.arange(len(bits[0]), device=logits.device)).float().mean()
    out = {"loss": caption + cfg.phrase_weight * phrase, "caption": caption, "phrase": phrase, "v2t_acc": hit,
           "scale": scale}
    if cfg.background_weight > 0:
        if background_pooled is None:
            raise ValueError("background_weight > 0 needs the pooled background text")
        bg = head.similarity_volume(bits, head.text_embedding(background_pooled), field=field)  # (b, 1, t, h, w)
        out["background"] = background_loss(volume, bg, phrase_pos, scale, cfg.top_fraction)
        out["loss"] = out["loss"] + cfg.background_weight * out["background"]
    return out


class AlignmentObjective(torch.nn.Module):
    """`alignment_losses` as a module's forward, so DDP averages the head's gradients."""

    def __init__(self, head, cfg: AlignmentLoss):
        super().__init__()
        self.head, self.cfg = head, cfg

    def forward(self, bits, caption_pooled, caption_ids, phrase_pooled, phrase_pos, background_pooled) -> dict:
        return alignment_losses(self.head, bits, caption_pooled, caption_ids, phrase_pooled, phrase_pos, self.cfg,
                                background_pooled)


class TokenTextData:
    """Encoded clips with their caption and phrase ids; `batch(idx)` gives alignment_losses' inputs."""

    def __init__(self, bits, captions: list[str], text_encoder: TextEncoder, background_text: str = "background"):
        self.bits = bits
        self.caption_names = sorted(set(captions))
        self.phrase_names = sorted({p for c in captions for p in split_phrases(c)})
        self.caption_ids = torch.tensor([self.caption_names.index(c) for c in captions])
        phrase_index = {p: i for i, p in enumerate(self.phrase_names)}
        self.phrase_sets = [[phrase_index[p] for p in split_phrases(c)] for c in captions]
        self.caption_pooled = pooled_texts(text_encoder, self.caption_names)
        self.phrase_pooled = pooled_texts(text_encoder, self.phrase_names)
        self.background_pooled = pooled_texts(text_encoder, [background_text])  # (1, d)

    def __len__(self) -> int:
        return len(self.caption_ids)

    def batch(self, idx: torch.Tensor, device) -> tuple:
        bits = [b[idx].to(device, torch.float32) for b in self.bits]
        ids = self.caption_ids[idx]
        phrases = sorted({p for i in idx.tolist() for p in self.phrase_sets[i]})
        pos = torch.tensor([[p in self.phrase_sets[i] for i in idx.tolist()] for p in phrases])
        return (bits, self.caption_pooled[ids].to(device), ids.to(device),
                self.phrase_pooled[phrases].to(device), pos.to(device))


@torch.no_grad()
def retrieval_at_1(head, data: TokenTextData, idx: torch.Tensor, device, phrase_weight: float = 0.0) -> float:
    """Text -> video R@1 over the clips `idx` (query: each clip's caption; duplicates count as hits), scored
    as zero-shot retrieval scores (`AlignmentHead.text_scores`; phrase_weight 0: pooled cosine alone)."""
    bits, caption_pooled, ids, phrase_pooled, phrase_pos = data.batch(idx, device)
    membership = phrase_pos.t().float()  # (clips, phrases): each clip's caption over the batch's phrases
    membership = membership / membership.sum(-1, keepdim=True)
    scores = head.text_scores(bits, caption_pooled, phrase_pooled, membership, phrase_weight).t()  # (texts, videos)
    return float((ids[scores.argmax(-1)] == ids).float().mean())


def train_alignment(cfg: AlignmentTrainConfig, resume: str | None = None) -> Path:
    tc = cfg.train
    if not cfg.tokenizer:
        raise ValueError("train_alignment needs a tokenizer folder (cfg.tokenizer / --tokenizer)")
    if not 0 < cfg.data.val_clips < cfg.data.clips:
        raise ValueError(f"data.val_clips must be in (0, data.clips={cfg.data.clips}), got {cfg.data.val_clips}")
    trainer = Trainer(tc, "alignment", cfg)
    out, device = trainer.out, trainer.accelerator.device
    tokenizer = PyraTokTokenizer.from_pretrained(cfg.tokenizer).to(device).eval()
    text_encoder = TextEncoder.from_pretrained(cfg.text_encoder, device=device)
    bits, captions = encoded_clips(tokenizer, cfg.tokenizer, cfg.data, out / "encoded_clips.safetensors")
    data = TokenTextData(bits, captions, text_encoder, cfg.loss.background_text)
    del text_encoder
    tokenizer.requires_grad_(False)
    tokenizer.alignment.requires_grad_(True)
    objective = trainer.prepare(AlignmentObjective(tokenizer.alignment.train(), cfg.loss))
    trainer.resume(resume)

    n_train = len(data) - cfg.data.val_clips
    val = torch.arange(n_train, len(data))
    unwrapped = trainer.accelerator.unwrap_model(objective).head
    history = {"step": [], "loss": [], "caption": [], "phrase": [], "val_r1": [], "val_r1_phrases": []}
    trainer.accelerator.print(f"held-out text->video R@1 {retrieval_at_1(unwrapped.eval(), data, val, device):.3f} "
                              f"over {len(val)} clips at step {trainer.step}")

    def loss_fn(_, rng):
        objective.train()
        idx = torch.randperm(n_train, generator=rng)[: tc.batch_size]
        terms = objective(*data.batch(idx, device), data.background_pooled.to(device))
        return terms.pop("loss"), terms

    def after_step(step: int) -> None:
        if not (step % tc.log_every == 0 or step == tc.max_steps):
            return
        logs = trainer.last_logs | trainer.log({
            "val_t2v_r1": retrieval_at_1(unwrapped.eval(), data, val, device),
            "val_t2v_r1_phrases": retrieval_at_1(unwrapped, data, val, device, PHRASE_WEIGHT)}, reduce=False)
        history["step"].append(step)
        for key, name in (("loss", "loss"), ("caption", "caption"), ("phrase", "phrase"), ("val_r1", "val_t2v_r1"),
                          ("val_r1_phrases", "val_t2v_r1_phrases")):
            history[key].append(logs[name])

    trainer.fit(loss_fn, after_step)
    if cfg.loss.background_weight > 0:  # understanding now contrasts every query with this text
        tokenizer.cfg.alignment.background_text = cfg.loss.background_text
        tokenizer.register_to_config(alignment_config=config_to_dict(tokenizer.cfg.alignment))
    trainer.full_state_dict()
    folder = trainer.export("alignment", tokenizer.save_pretrained)  # the tokenizer with its trained alignment head
    if trainer.accelerator.is_main_process and history["step"]:
        plot_curves(history, out / "alignment_curve.png")
    trainer.finish()
    return folder


def plot_curves(history: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_r1) = plt.subplots(1, 2, figsize=(9, 3.2))
    for key in ("loss", "caption", "phrase"):
        ax_loss.plot(history["step"], history[key], label=key)
    ax_loss.set_xlabel("step"), ax_loss.set_title("alignment losses"), ax_loss.legend()
    ax_r1.plot(history["step"], history["val_r1"], color="tab:green", label="pooled")
    ax_r1.plot(history["step"], history["val_r1_phrases"], color="tab:purple", label="pooled + phrases")
    ax_r1.legend()
    ax_r1.set_xlabel("step"), ax_r1.set_ylim(0, 1), ax_r1.set_title("held-out text->video R@1")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="YAML AlignmentTrainConfig (defaults if omitted)")
    parser.add_argument("--tokenizer", default=None, help="folder of the trained tokenizer")
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                        help="overrides, e.g. train.max_steps=500")
    parser.add_argument("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint folder")
    args = parser.parse_args(argv)
    overrides = cli_overrides(args, {"tokenizer": "tokenizer", "output_dir": "train.output_dir"})
    cfg = load_config(AlignmentTrainConfig, args.config, overrides)
    train_alignment(cfg, args.resume_from_checkpoint)


if __name__ == "__main__":
    main()
