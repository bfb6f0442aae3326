"""Tests for contact sheets labelled with their prompts (pyratok/data/contact_sheet.py)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pyratok.data.contact_sheet import LABEL_HEIGHT, contact_sheet, save_contact_sheet


def _clip(value: int) -> np.ndarray:
    return np.full((3, 16, 16, 3), value, np.uint8)


def test_one_clip_carries_its_prompt(tmp_path):
    plain = contact_sheet(_clip(200))
    sheet = np.asarray(Image.open(save_contact_sheet(_clip(200), tmp_path / "a.png", labels="a red circle")))
    assert sheet.shape == (plain.shape[0] + LABEL_HEIGHT, plain.shape[1], 3)
    assert np.array_equal(sheet[LABEL_HEIGHT:], plain)
    strip = sheet[:LABEL_HEIGHT]
    assert (strip.max(-1) > 200).sum() > 10  # light text on the dark strip
    other = np.asarray(Image.open(save_contact_sheet(_clip(200), tmp_path / "b.png", labels="a blue square")))
    assert not np.array_equal(other[:LABEL_HEIGHT], strip)  # the label is the text given


def test_each_clip_of_a_list_gets_its_label(tmp_path):
    path = save_contact_sheet([_clip(10), _clip(250)], tmp_path / "rows.png", labels=["first", "second"])
    sheet = np.asarray(Image.open(path))
    row = contact_sheet([_clip(10)]).shape[0]
    assert sheet.shape[0] == 2 * (row + LABEL_HEIGHT)
    assert sheet[LABEL_HEIGHT + row + LABEL_HEIGHT + 5, 5, 0] == 250  # the second clip under the second strip
    with pytest.raises(ValueError, match="got 1 labels for 2 sheets"):
        save_contact_sheet([_clip(10), _clip(250)], tmp_path / "bad.png", labels=["only one"])
