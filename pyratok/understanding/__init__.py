"""Zero-shot video understanding with a PyraTok tokenizer: classification, retrieval, localisation, segmentation.

Implements the zero-shot uses of PyraTok's language-aligned tokens (§5): videos are encoded without a caption
and compared with text through the alignment head (`token_text_similarity`, `video_text_similarity`).
"""
from __future__ import annotations

from .common import fit_video, fitted_size, similarity_volume
from .localize import LocalizationResult, Segment, frame_scores, localize, localize_scores, segments_from_scores
from .metrics import iou, recall_at_k, segments_to_mask, temporal_iou
from .retrieval import (
    PHRASE_WEIGHT, Classification, Retrieval, TextQueries, classify, encode_queries, pyramid_text_scores, rank,
    retrieve, video_text_scores,
)
from .segment import SegmentationResult, segment, segment_volume
from .thresholds import midpoint_threshold, otsu_threshold, range_threshold, resolve_threshold

__all__ = [
    "Classification", "classify", "encode_queries", "fit_video", "fitted_size", "frame_scores", "iou",
    "LocalizationResult", "localize", "localize_scores", "midpoint_threshold", "otsu_threshold", "range_threshold",
    "PHRASE_WEIGHT", "pyramid_text_scores", "rank", "recall_at_k", "resolve_threshold", "Retrieval",
    "retrieve", "Segment", "segment", "segment_volume", "SegmentationResult", "segments_from_scores",
    "segments_to_mask", "similarity_volume", "temporal_iou", "TextQueries", "video_text_scores",
]
