"""Zero-shot classification and text<->video retrieval from pooled token–text similarity.

Implements PyraTok's zero-shot classification and retrieval (§5, K600-style): each video's pyramid is
pooled into one embedding (`video_text_similarity`) and compared with each text by cosine.
Letters: b - videos, m - texts.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .common import as_video_batch, check_texts, encode_texts, encode_videos


class Classification(NamedTuple):
    scores: torch.Tensor  # (b, m) cosine similarity
    probs: torch.Tensor  # (b, m) softmax over texts at the alignment head's learned temperature
    labels: torch.Tensor  # (b,) index of the best text per video


class Retrieval(NamedTuple):
    scores: torch.Tensor  # (b, m) cosine similarity
    text_to_video: torch.Tensor  # (m, b) video indices per text, best first
    video_to_text: torch.Tensor  # (b, m) text indices per video, best first


@torch.no_grad()
def video_text_scores(tokenizer, text_encoder, videos: torch.Tensor, texts: list[str],
                      batch_size: int = 8) -> torch.Tensor:
    """(b, m) cosine of each video (b, 3, T, H, W) in [-1, 1], encoded without a caption, with each text."""
    texts = check_texts(texts)
    videos = as_video_batch(videos)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    text_pooled = encode_texts(tokenizer, text_encoder, texts)  # (m, d)
    rows = []
    for start in range(0, videos.shape[0], batch_size):
        pyramid = encode_videos(tokenizer, videos[start : start + batch_size])
        rows.append(tokenizer.video_text_similarity(pyramid, text_pooled).float().cpu())
    return torch.cat(rows)


def rank(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, m) scores -> (text_to_video (m, b), video_to_text (b, m)) indices, best first, ties by index."""
    text_to_video = torch.argsort(scores.t(), dim=1, descending=True, stable=True)
    video_to_text = torch.argsort(scores, dim=1, descending=True, stable=True)
    return text_to_video, video_to_text


def classify(tokenizer, text_encoder, videos: torch.Tensor, texts: list[str], batch_size: int = 8) -> Classification:
    """Zero-shot classification of videos into `texts` (class prompts such as "a red circle")."""
    scores = video_text_scores(tokenizer, text_encoder, videos, texts, batch_size)
    scale = tokenizer.alignment.logit_scale.detach().clamp(max=torch.log(torch.tensor(100.0))).exp().cpu()
    probs = torch.softmax(scale * scores, dim=-1)
    return Classification(scores, probs, scores.argmax(-1))


def retrieve(tokenizer, text_encoder, videos: torch.Tensor, texts: list[str], batch_size: int = 8) -> Retrieval:
    """Rank videos for each text and texts for each video."""
    scores = video_text_scores(tokenizer, text_encoder, videos, texts, batch_size)
    return Retrieval(scores, *rank(scores))
