"""Zero-shot classification and text<->video retrieval from token–text similarity.

Implements PyraTok's zero-shot classification and retrieval (§5, K600-style). A video's score for a text
mixes two cosines of the alignment head's space:
- pooled: the video's pooled token embedding (`video_text_similarity`) against the whole text;
- phrases: the text is split into one phrase per object (at " and ", as the alignment stage trains), each
  phrase scores the mean of its best-matching tokens (`top_fraction_mean`, the phrase loss's score), and
  the text scores the mean over its phrases — a video must show every object the text names.
`PHRASE_WEIGHT` of the phrase score: picked on two-object Shapes with seeds 9100 and 9200 (the benchmark
uses 9001): text->video R@1 of the shipped head pooled alone 0.56 / 0.66, phrases alone 0.80 / 0.76,
mixed at 0.75 0.81 / 0.81.
Letters: b - videos, m - texts, p - distinct phrases.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from ..alignment import PHRASE_WEIGHT
from ..pyramid import TokenPyramid
from ..text_encoder import split_phrases
from .common import as_video_batch, check_texts, encode_texts, encode_videos


class Classification(NamedTuple):
    scores: torch.Tensor  # (b, m) video-text score (`pyramid_text_scores`)
    probs: torch.Tensor  # (b, m) softmax over texts at the alignment head's learned temperature
    labels: torch.Tensor  # (b,) index of the best text per video


class Retrieval(NamedTuple):
    scores: torch.Tensor  # (b, m) video-text score (`pyramid_text_scores`)
    text_to_video: torch.Tensor  # (m, b) video indices per text, best first
    video_to_text: torch.Tensor  # (b, m) text indices per video, best first


class TextQueries(NamedTuple):
    pooled: torch.Tensor  # (m, d) pooled text of each whole text
    phrases: torch.Tensor  # (p, d) pooled text of each distinct phrase
    membership: torch.Tensor  # (m, p) row i: 1 / (number of phrases of text i) on its phrases, else 0


def encode_queries(tokenizer, text_encoder, texts: list[str]) -> TextQueries:
    """Embed each text and each distinct phrase of the texts once, for any number of video batches."""
    texts = check_texts(texts)
    per_text = [split_phrases(t) for t in texts]
    phrases = sorted({p for ps in per_text for p in ps})
    membership = torch.zeros(len(texts), len(phrases))
    for i, ps in enumerate(per_text):
        for p in set(ps):
            membership[i, phrases.index(p)] = 1.0 / len(set(ps))
    return TextQueries(encode_texts(tokenizer, text_encoder, texts), encode_texts(tokenizer, text_encoder, phrases),
                       membership.to(tokenizer.device))


@torch.no_grad()
def pyramid_text_scores(tokenizer, pyramid: TokenPyramid, queries: TextQueries,
                        phrase_weight: float = PHRASE_WEIGHT) -> torch.Tensor:
    """(b, m) score of each encoded video with each text (`AlignmentHead.text_scores`): (1 - w) pooled
    cosine + w mean phrase score; a weight outside [0, 1] raises ValueError."""
    bits = [b.to(tokenizer.dtype) for b in pyramid.bits]
    return tokenizer.alignment.text_scores(bits, queries.pooled.to(tokenizer.dtype), queries.phrases.to(tokenizer.dtype),
                                           queries.membership, phrase_weight)


@torch.no_grad()
def video_text_scores(tokenizer, text_encoder, videos: torch.Tensor, texts: list[str], batch_size: int = 8,
                      phrase_weight: float = PHRASE_WEIGHT) -> torch.Tensor:
    """(b, m) score of each video (b, 3, T, H, W) in [-1, 1], encoded without a caption, with each text
    (`pyramid_text_scores`; cosines, so in [-1, 1])."""
    queries = encode_queries(tokenizer, text_encoder, texts)
    videos = as_video_batch(videos)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rows = []
    for start in range(0, videos.shape[0], batch_size):
        pyramid = encode_videos(tokenizer, videos[start : start + batch_size])
        rows.append(pyramid_text_scores(tokenizer, pyramid, queries, phrase_weight).cpu())
    return torch.cat(rows)


def rank(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, m) scores -> (text_to_video (m, b), video_to_text (b, m)) indices, best first, ties by index."""
    text_to_video = torch.argsort(scores.t(), dim=1, descending=True, stable=True)
    video_to_text = torch.argsort(scores, dim=1, descending=True, stable=True)
    return text_to_video, video_to_text


def classify(tokenizer, text_encoder, videos: torch.Tensor, texts: list[str], batch_size: int = 8,
             phrase_weight: float = PHRASE_WEIGHT) -> Classification:
    """Zero-shot classification of videos into `texts` (class prompts such as "a red circle")."""
    scores = video_text_scores(tokenizer, text_encoder, videos, texts, batch_size, phrase_weight)
    scale = tokenizer.alignment.logit_scale.detach().clamp(max=torch.log(torch.tensor(100.0))).exp().cpu()
    probs = torch.softmax(scale * scores, dim=-1)
    return Classification(scores, probs, scores.argmax(-1))


def retrieve(tokenizer, text_encoder, videos: torch.Tensor, texts: list[str], batch_size: int = 8,
             phrase_weight: float = PHRASE_WEIGHT) -> Retrieval:
    """Rank videos for each text and texts for each video."""
    scores = video_text_scores(tokenizer, text_encoder, videos, texts, batch_size, phrase_weight)
    return Retrieval(scores, *rank(scores))
