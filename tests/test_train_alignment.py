"""The alignment stage: phrases, its losses, and a short run that trains the head and nothing else."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from factories import tiny_tokenizer

from pyratok.alignment import AlignmentConfig, AlignmentHead, multi_positive_nce, top_fraction_mean
from pyratok.pyramid import resample
from pyratok.tokenizer import PyraTokTokenizer
from pyratok.text_encoder import TextEncoder
from pyratok.train_alignment import (
    AlignmentData,
    AlignmentLoss,
    AlignmentTrainConfig,
    AlignmentTrainLoop,
    TokenTextData,
    alignment_losses,
    background_loss,
    encode_clips,
    main,
    retrieval_at_1,
    split_phrases,
    train_alignment,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_split_phrases_one_per_object():
    assert split_phrases("a red circle moving left and a blue square growing") == [
        "a red circle moving left", "a blue square growing"]
    assert split_phrases("a white triangle on a black background") == ["a white triangle on a black background"]
    with pytest.raises(ValueError, match="no phrase"):
        split_phrases("  ")


def test_multi_positive_nce_is_cross_entropy_with_one_positive_and_rejects_rows_without():
    logits = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([0, 3, 5, 1])
    one_hot = F.one_hot(target, 6).bool()
    assert torch.allclose(multi_positive_nce(logits, one_hot), F.cross_entropy(logits, target), atol=1e-6)
    two = one_hot.clone()
    two[0, 2] = True  # a second positive can only lower the loss of that row
    assert multi_positive_nce(logits, two) < multi_positive_nce(logits, one_hot)
    one_hot[2] = False
    with pytest.raises(ValueError, match="positive in every row"):
        multi_positive_nce(logits, one_hot)


def test_top_fraction_mean_takes_the_best_tokens_of_the_whole_volume():
    volume = torch.zeros(2, 3, 4, 5)  # (b, t, h, w): top 10% of one 4x5 frame = 2 tokens
    volume[0, 1, 2, 3], volume[0, 2, 0, 0] = 1.0, 0.5
    assert torch.allclose(top_fraction_mean(volume, 0.1), torch.tensor([0.75, 0.0]))
    with pytest.raises(ValueError, match="fraction"):
        top_fraction_mean(volume, 0.0)


def test_short_run_trains_the_head_only_and_lowers_its_loss(tmp_path):
    tokenizer = tiny_tokenizer(seed=1, text_dim=384)  # MiniLM's width: the stage encodes real captions
    tokenizer.save_pretrained(tmp_path / "tok")
    cfg = AlignmentTrainConfig(tokenizer=str(tmp_path / "tok"), data=AlignmentData(clips=48, val_clips=8, num_frames=5, size=32),
                               train=AlignmentTrainLoop(output_dir=str(tmp_path / "align"), max_steps=30, batch_size=16,
                                                        lr=3e-3, log_every=10))
    out = train_alignment(cfg)
    trained = PyraTokTokenizer.from_pretrained(out)
    before, after = tokenizer.state_dict(), trained.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("alignment.") for k in changed)
    assert trained.cfg.alignment.background_text == "background"  # understanding contrasts queries with it
    assert (tmp_path / "align" / "alignment_curve.png").is_file()
    assert (tmp_path / "align" / "config.yaml").is_file()
    # a rerun reuses the encoded clips instead of encoding again
    cache = tmp_path / "align" / "encoded_clips.safetensors"
    stamp = cache.stat().st_mtime_ns
    with pytest.warns(UserWarning, match="'steps' is renamed: now train.max_steps"):  # old keys still work
        main(["--tokenizer", cfg.tokenizer, "--output_dir", cfg.train.output_dir, "--set", "clips=48",
              "data.val_clips=8", "data.num_frames=5", "data.size=32", "train.batch_size=16", "steps=1"])
    assert cache.stat().st_mtime_ns == stamp
    assert list((tmp_path / "align" / "logs").rglob("events.out.tfevents.*"))
    # on the clips it trained on, the new head fits captions and phrases better than the old one
    data = TokenTextData(*encode_clips(tokenizer, cfg.data), TextEncoder.from_pretrained(None))
    batch = data.batch(torch.arange(40), "cpu")
    with torch.no_grad():
        old = alignment_losses(tokenizer.alignment, *batch, cfg.loss, data.background_pooled)["loss"]
        new = alignment_losses(trained.alignment, *batch, cfg.loss, data.background_pooled)["loss"]
    assert new < old, (float(old), float(new))
    # held-out R@1 with phrase scores: each caption scores a video by the mean of its phrases' top-10% cosines
    bits, _, ids, phrases, pos = batch
    with torch.no_grad():
        phrase = top_fraction_mean(trained.alignment.similarity_volume(bits, trained.alignment.text_embedding(phrases)), 0.1)
    weights = pos.t().float() / pos.t().float().sum(-1, keepdim=True)  # (captions, phrases)
    expected = float((ids[(weights @ phrase.t()).argmax(-1)] == ids).float().mean())
    assert retrieval_at_1(trained.alignment, data, torch.arange(40), "cpu", phrase_weight=1.0) == pytest.approx(expected)


def test_alignment_losses_can_be_fitted_by_the_head():
    """On distinct token pyramids, 60 steps of the head alone bring both losses far down."""
    g = torch.Generator().manual_seed(0)
    b, k = 12, 16
    bits = [torch.randint(0, 2, (b, t, s, s, k), generator=g).float() * 2 - 1 for t, s in ((1, 1), (2, 2), (3, 4))]
    captions = F.normalize(torch.randn(b, 384, generator=g), dim=-1)
    phrases = F.normalize(torch.randn(b, 384, generator=g), dim=-1)
    background = F.normalize(torch.randn(1, 384, generator=g), dim=-1)
    ids, pos = torch.arange(b), torch.eye(b, dtype=torch.bool)
    head = AlignmentHead(AlignmentConfig(), num_bits=k, num_levels=3, text_dim=384)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-3)
    cfg = AlignmentLoss()
    first = alignment_losses(head, bits, captions, ids, phrases, pos, cfg, background)
    for _ in range(60):
        terms = alignment_losses(head, bits, captions, ids, phrases, pos, cfg, background)
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()
    for name in ("caption", "phrase", "background"):
        assert terms[name] < 0.5 * first[name], (name, float(first[name]), float(terms[name]))


def test_background_loss_wants_objects_on_their_phrase_and_the_rest_on_background():
    """2 videos, 2 phrases (video j holds phrase j), 4 tokens each; token 0 is the object, the rest canvas."""
    pos = torch.eye(2, dtype=torch.bool)  # (m phrases, b videos)

    def volumes(canvas_to_other_phrase: bool):
        phrase = torch.full((2, 2, 1, 1, 4), -1.0)  # (b, m, t, h, w)
        background = torch.full((2, 1, 1, 1, 4), 1.0)
        for j in range(2):
            phrase[j, j, ..., 0], background[j, 0, ..., 0] = 1.0, -1.0  # the object: its phrase, not background
            if canvas_to_other_phrase:
                phrase[j, 1 - j, ..., 1:] = 1.0  # the canvas matches the phrase of the *other* video
                background[j, 0, ..., 1:] = -1.0
        return phrase, background

    scale = torch.tensor(10.0)
    good = background_loss(*volumes(False), pos, scale, fraction=0.25)
    bad = background_loss(*volumes(True), pos, scale, fraction=0.25)
    assert good < 0.01 < 1.0 < bad
    everything_background = background_loss(torch.full((2, 2, 1, 1, 4), -1.0), torch.ones(2, 1, 1, 1, 4), pos,
                                            scale, fraction=0.25)
    assert everything_background > 1.0  # each phrase's best token must still pick the phrase


def test_train_alignment_names_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="tokenizer folder"):
        train_alignment(AlignmentTrainConfig(train=AlignmentTrainLoop(output_dir=str(tmp_path))))
    with pytest.raises(ValueError, match="val_clips"):
        train_alignment(AlignmentTrainConfig(tokenizer="x", data=AlignmentData(clips=10, val_clips=10),
                                             train=AlignmentTrainLoop(output_dir=str(tmp_path))))


def test_similarity_volume_equals_the_mean_of_resampled_level_maps():
    model = tiny_tokenizer()
    pyramid = model.encode(torch.rand(2, 3, 9, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1)
    text = model.alignment.text_embedding(torch.randn(5, 24, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        maps = model.alignment.similarity_maps(pyramid.bits, text)
        reference = torch.stack([resample(m, tuple(maps[-1].shape[-3:])) for m in maps]).mean(0)
        assert torch.allclose(model.alignment.similarity_volume(pyramid.bits, text), reference, atol=1e-5)
