"""Phrase tokens (generator `model.phrase_tokens`): each phrase of a caption encoded on its own and read by
the generator beside the caption's token states (or alone, `model.word_tokens: false`), so that a two-object
caption binds each object's words.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from generator import GeneratorTrainConfig, PyraTokGenerator, TokenCacheDataset, build_token_cache
from generator.refiner import LatentRefiner
from generator.token_cache import QuantizerEncoder, random_latents
from generator.train import train
from generator.train_refiner import main as refiner_main
from pyratok.config import load_config
from pyratok.lapq import LaPQ, LaPQConfig
from pyratok.text_encoder import TextEncoder

from factories import LATENT, fresh_accelerate_state, tiny_token_cache

PAIR = "a red circle moving left and a blue square moving up"
TRADED = "a red circle moving up and a blue square moving left"  # the same words, the motions traded
TINY = ["model.width=32", "model.depth=1", "model.heads=2", "model.text_dim=384", "train.batch_size=2",
        "train.warmup_steps=1", "train.log_every=1"]


@pytest.fixture(scope="module")
def text_encoder():
    return TextEncoder.from_pretrained()


def test_phrase_vectors_tell_which_object_moves_how(text_encoder):
    """Trading the two motions barely moves the caption's token states but changes both phrase vectors."""
    plain = text_encoder([PAIR, TRADED])
    same_words = plain.input_ids[0] != plain.input_ids[1]  # the two motion words' positions
    kept = F.cosine_similarity(plain.hidden_states[0][~same_words], plain.hidden_states[1][~same_words], dim=-1)
    assert same_words.sum() == 2 and kept.min() > 0.97, kept
    phrases, mask = text_encoder.phrases([PAIR, TRADED, "a red circle moving left"])
    assert phrases.shape == (3, 2, 384) and mask.tolist() == [[True, True], [True, True], [True, False]]
    assert F.cosine_similarity(phrases[0], phrases[1], dim=-1).max() < 0.95
    torch.testing.assert_close(phrases[0, 0], phrases[2, 0])  # a phrase's vector does not see the other phrase
    blank, blank_mask = text_encoder.phrases(["", PAIR])  # the empty prompt (a negative prompt) is one phrase
    assert blank_mask.tolist() == [[True, False], [True, True]]
    joined = text_encoder([PAIR, TRADED], phrases=True)
    s = plain.hidden_states.shape[1]
    assert joined.hidden_states.shape == (2, s + 2, 384) and joined.attention_mask[:, s:].all()
    torch.testing.assert_close(joined.hidden_states[:, s:], phrases[:2])
    torch.testing.assert_close(joined.hidden_states[:, :s], plain.hidden_states)


def _phrase_cache(out, text_encoder):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        quantizer = LaPQ(LaPQConfig(use_text=True, text_dim=384)).eval()
    prompts = [PAIR, "a green triangle growing", TRADED]
    samples = random_latents(6, 8, LATENT, torch.Generator().manual_seed(0), prompts=prompts)
    return build_token_cache(QuantizerEncoder(quantizer), text_encoder, samples, out, batch_size=4, shard_size=4,
                             progress=False)


def test_the_cache_keeps_phrase_vectors_and_the_generator_trains_on_them(text_encoder, tmp_path):
    cache = _phrase_cache(tmp_path / "cache", text_encoder)
    plain, joined = TokenCacheDataset(cache), TokenCacheDataset(cache, phrase_tokens=True)
    assert plain.has_phrases and "text_states" in plain.collate([plain[0]])
    rows = [joined[i] for i in range(3)]
    batch, tokens = joined.collate(rows), plain.collate([plain[i] for i in range(3)])
    s = tokens["text_states"].shape[1]
    assert batch["text_states"].shape == (3, s + 2, 384) and "phrase_text_states" not in batch
    phrases, mask = text_encoder.phrases([PAIR, "a green triangle growing", TRADED])
    assert torch.equal(batch["text_mask"][:, s:], mask)
    torch.testing.assert_close(batch["text_states"][:, s:][mask], phrases[mask], atol=2e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="has none: build it again"):
        TokenCacheDataset(tiny_token_cache(tmp_path / "old"), phrase_tokens=True)
    with fresh_accelerate_state():
        cfg = load_config(GeneratorTrainConfig, None, [*TINY, f"data.token_cache_dir={cache}", "train.max_steps=2",
                                                       f"train.output_dir={tmp_path / 'run'}",
                                                       "model.phrase_tokens=true"])
        trainer, step = train(cfg)
        trainer.finish()
    assert step == 2
    with pytest.raises(ValueError, match="the swapped captions have no phrase vectors"), fresh_accelerate_state():
        train(load_config(GeneratorTrainConfig, None, [*TINY, f"data.token_cache_dir={cache}", "train.max_steps=1",
                                                       f"train.output_dir={tmp_path / 'contrast'}",
                                                       "model.phrase_tokens=true", "train.contrast_weight=0.1"]))
    model = PyraTokGenerator.from_pretrained(str(tmp_path / "run" / "generator"))
    assert model.config.phrase_tokens
    with pytest.raises(ValueError, match="phrase_tokens=True needs text_mode='cross'"):
        load_config(GeneratorTrainConfig, None, ["model.phrase_tokens=true", "model.text_mode=prefix"])


def test_a_phrase_only_generator_reads_each_objects_vector_alone(text_encoder, tmp_path):
    """word_tokens=False: the text is the phrase vectors alone, in the cache's batches, the text encoder and
    training; no text at all is refused."""
    cache = _phrase_cache(tmp_path / "cache", text_encoder)
    alone = TokenCacheDataset(cache, phrase_tokens=True, word_tokens=False)
    batch = alone.collate([alone[i] for i in range(3)])
    phrases, mask = text_encoder.phrases([PAIR, "a green triangle growing", TRADED])
    assert batch["text_states"].shape == (3, 2, 384) and torch.equal(batch["text_mask"], mask)
    torch.testing.assert_close(batch["text_states"][mask], phrases[mask], atol=2e-3, rtol=1e-3)
    encoded = text_encoder([PAIR, "a green triangle growing"], phrases=True, words=False)
    torch.testing.assert_close(encoded.hidden_states, phrases[:2])
    with pytest.raises(ValueError, match="words=False leaves no text"):
        text_encoder([PAIR], words=False)
    with pytest.raises(ValueError, match="word_tokens=False leaves no text"):
        TokenCacheDataset(cache, word_tokens=False)
    with pytest.raises(ValueError, match="word_tokens=False leaves the generator no text"):
        load_config(GeneratorTrainConfig, None, ["model.word_tokens=false"])
    with fresh_accelerate_state():
        cfg = load_config(GeneratorTrainConfig, None, [*TINY, f"data.token_cache_dir={cache}", "train.max_steps=1",
                                                       f"train.output_dir={tmp_path / 'run'}",
                                                       "model.phrase_tokens=true", "model.word_tokens=false"])
        trainer, _ = train(cfg)
        trainer.finish()
    assert not PyraTokGenerator.from_pretrained(str(tmp_path / "run" / "generator")).config.word_tokens
    with fresh_accelerate_state():  # a refiner given this generator reads as it does, and says so in its config
        assert refiner_main(["--set", "model.mode=flow", "model.width=16", "model.depth=1", "model.text_heads=2",
                             "train.batch_size=2", "train.max_steps=1", f"data.token_cache_dir={cache}",
                             f"data.generator_dir={tmp_path / 'run' / 'generator'}",
                             f"train.output_dir={tmp_path / 'refiner'}"]) == 0
    refiner = LatentRefiner.from_pretrained(str(tmp_path / "refiner" / "refiner"))
    assert (refiner.config.phrase_tokens, refiner.config.word_tokens) == (True, False)


def test_the_pipeline_gives_a_phrase_reading_generator_its_phrases():
    from test_pipeline import get_dummy_components

    from pipelines import PyraTokT2VPipeline

    components = get_dummy_components()
    base = components["transformer"]
    phrase_reader = PyraTokGenerator(**{**base.config, "phrase_tokens": True})
    phrase_reader.load_state_dict(base.state_dict())
    pipe = PyraTokT2VPipeline(**{**components, "transformer": phrase_reader})
    tokens, _, _, _ = PyraTokT2VPipeline(**components).encode_prompt([PAIR, "blue"])
    embeds, mask, neg, neg_mask = pipe.encode_prompt([PAIR, "blue"], negative_prompt="a cat and a dog")
    s = tokens.shape[1]
    assert embeds.shape[1] == s + 2 and mask[:, s:].tolist() == [[True, True], [True, False]]
    torch.testing.assert_close(embeds[:, :s], tokens)
    assert neg_mask[:, -2:].all()  # the negative prompt's two phrases too


def test_the_refiner_reads_the_caption_its_own_way_beside_a_phrase_only_generator():
    """A phrase-only generator gets the phrase vectors; a refiner trained on the caption's token states
    (the default reading) still gets those, encoded for it: without that it would read two vectors."""
    from test_pipeline import SMALL, get_dummy_components, gens

    from pipelines import PyraTokT2VPipeline

    components = get_dummy_components()
    base = components["transformer"]
    alone = PyraTokGenerator(**{**base.config, "phrase_tokens": True, "word_tokens": False})
    alone.load_state_dict(base.state_dict())
    torch.manual_seed(0)
    refiner = LatentRefiner(latent_channels=4, width=16, depth=1, text_dim=16, text_heads=2, keep_levels=1,
                            mode="flow", sample_steps=2)
    pipe = PyraTokT2VPipeline(**{**components, "transformer": alone}, refiner=refiner)
    pipe.set_progress_bar_config(disable=True)
    words = PyraTokT2VPipeline(**components).encode_prompt([PAIR, "blue"])[0]
    embeds, mask = pipe.encode_prompt([PAIR, "blue"])[:2]
    assert embeds.shape[1] == 2 and mask.tolist() == [[True, True], [True, False]]
    read = []
    refine = refiner.refine
    refiner.refine = lambda z, text, text_mask, **kwargs: read.append(text) or refine(z, text, text_mask, **kwargs)
    pipe([PAIR, "blue"], generator=gens(1, 2), output_type="latent", **SMALL)
    torch.testing.assert_close(read[0], words)
    with pytest.raises(ValueError, match="the refiner reads the caption as"):
        pipe(prompt_embeds=embeds, prompt_attention_mask=mask, generator=gens(1, 2), output_type="latent", **SMALL)
    pipe(prompt_embeds=embeds, prompt_attention_mask=mask, use_refiner=False, output_type="latent", **SMALL)
    with pytest.raises(ValueError, match="leaves the refiner no text"):
        LatentRefiner(word_tokens=False)


def test_a_refiner_reads_the_caption_as_its_config_says(text_encoder, tmp_path):
    """`model.phrase_tokens` / `model.word_tokens` set a refiner's own reading, whatever a generator reads (no
    generator here: the token states by default). The phrase vectors beside the token states move one step's
    weights otherwise, the exported config says how it reads, and no text at all is refused."""
    cache = _phrase_cache(tmp_path / "cache", text_encoder)
    flow = ["model.mode=flow", "model.width=16", "model.depth=1", "model.text_heads=2", "train.batch_size=2",
            "train.max_steps=1", f"data.token_cache_dir={cache}", "data.generator_dir=null"]

    def trained(name, *extra):
        with fresh_accelerate_state():
            assert refiner_main(["--set", *flow, f"train.output_dir={tmp_path / name}", *extra]) == 0
        return LatentRefiner.from_pretrained(str(tmp_path / name / "refiner"))

    words, both = trained("words"), trained("both", "model.phrase_tokens=true")
    alone = trained("alone", "model.phrase_tokens=true", "model.word_tokens=false")
    assert (words.config.phrase_tokens, words.config.word_tokens) == (False, True)
    assert (both.config.phrase_tokens, both.config.word_tokens) == (True, True)
    assert (alone.config.phrase_tokens, alone.config.word_tokens) == (True, False)
    assert not all(torch.allclose(a, b) for a, b in zip(words.parameters(), both.parameters()))
    assert not all(torch.allclose(a, b) for a, b in zip(both.parameters(), alone.parameters()))
    with pytest.raises(ValueError, match="model.word_tokens=False leaves the refiner no text"), fresh_accelerate_state():
        refiner_main(["--set", *flow, f"train.output_dir={tmp_path / 'none'}", "model.word_tokens=false"])
