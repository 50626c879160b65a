"""The study's tokenizer: a byte-level BPE trained on a sample balanced across languages.

Petty et al. train one tokenizer per study so that every mixture is counted in the same
units; `N_code` and `N_lang` are token counts of *this* tokenizer. The sample gives
natural language and each code language the same number of bytes, so that no language's
tokens are starved by the choice of `m`. Byte-level BPE never produces an unknown token,
which code (with its unusual characters) needs.

The tokenizer's hash (of its canonical JSON) is recorded in every artifact built with it,
so a stream or mixture built with another tokenizer is detected and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from codemix.config import DataConfig, SourceConfig
from codemix.data.fetch import data_path
from codemix.data.sources import heldout_count, shuffled_documents
from codemix.errors import DataError
from codemix.io import atomic_write_json, atomic_write_text, stable_hash

__all__ = [
    "EOS",
    "PAD",
    "SEP",
    "SENTINELS",
    "SPECIAL_TOKENS",
    "build_tokenizer",
    "hf_tokenizer",
    "load_tokenizer",
    "tokenizer_hash",
    "training_sample",
]

EOS = "<eos>"
PAD = "<pad>"
SEP = "<sep>"
SENTINELS = [f"<extra_id_{i}>" for i in range(100)]
#: In id order: <eos>=0, <pad>=1, <sep>=2, <extra_id_0>=3, ...
SPECIAL_TOKENS = [EOS, PAD, SEP, *SENTINELS]


def _tokenizer_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"tokenizer not found at {path}: expected a tokenizer.json file or a Hugging Face "
                        f"tokenizer directory holding one; fix data.tokenizer.path or let codemix train one")
    return path


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json file or a directory that holds one."""
    file = _tokenizer_file(path)
    try:
        return Tokenizer.from_file(str(file))
    except Exception as err:  # tokenizers raises a bare Exception on bad JSON
        raise DataError(f"{file} is not a valid tokenizer.json ({err}); delete it and rerun `codemix mix`") from None


def tokenizer_hash(path: str | Path) -> str:
    """Hash of the tokenizer's canonical JSON: equal for equal tokenizers, whatever the file's formatting."""
    canonical = json.dumps(json.loads(load_tokenizer(path).to_str()), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def hf_tokenizer(path: str | Path):
    """The tokenizer as a `transformers.PreTrainedTokenizerFast` with eos/pad/sep and the sentinels set."""
    tok = PreTrainedTokenizerFast(tokenizer_object=load_tokenizer(path), eos_token=EOS, pad_token=PAD,
                                  sep_token=SEP, additional_special_tokens=list(SENTINELS))
    return tok


# ----------------------------------------------------------------------------- training


def _groups(sources: list[SourceConfig]) -> dict[str, list[SourceConfig]]:
    """Natural language is one group; each code language is its own group."""
    groups: dict[str, list[SourceConfig]] = {}
    for s in sources:
        groups.setdefault(f"code:{s.lang}" if s.code else "nl", []).append(s)
    return groups


def training_sample(data: DataConfig) -> Iterator[str]:
    """Texts to train the tokenizer on: `sample_bytes_per_source` bytes per group (NL, each code language).

    Within a group the bytes are split equally among its sources. Documents come in each
    source's fixed shuffled order, skipping its held-out documents, so the tokenizer never
    sees evaluation text.
    """
    for group in _groups(data.sources).values():
        share = data.tokenizer.sample_bytes_per_source // len(group)
        for src in group:
            skip = heldout_count(src, data.heldout_docs)
            taken = 0
            for i, doc in enumerate(shuffled_documents(src, data.shuffle_seed)):
                if i < skip:
                    continue
                text = doc.text[: share - taken]
                taken += len(text)
                yield text
                if taken >= share:
                    break


def _recipe(data: DataConfig) -> dict:
    return {"tokenizer": data.tokenizer.model_dump(), "sources": [s.model_dump() for s in data.sources],
            "heldout_docs": data.heldout_docs, "shuffle_seed": data.shuffle_seed, "version": 1}


def _train(data: DataConfig) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=data.tokenizer.vocab_size,
        min_frequency=data.tokenizer.min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_sample(data), trainer=trainer)
    return tok


def build_tokenizer(data: DataConfig, out_path: str | Path) -> Path:
    """Train (or copy, with `data.tokenizer.path`) the study tokenizer to ``out_path`` (a tokenizer.json).

    Idempotent: a tokenizer already at ``out_path`` built from the same recipe is kept.
    The recipe and the tokenizer hash go to ``<out_path stem>.meta.json`` beside it.
    """
    out_path = Path(out_path)
    meta_path = out_path.with_name(out_path.stem + ".meta.json")
    recipe = stable_hash(_recipe(data))
    if out_path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("recipe") == recipe and meta.get("hash") == tokenizer_hash(out_path):
            return out_path
    if data.tokenizer.path:
        tok = load_tokenizer(data_path(data.tokenizer.path, must_exist=False))
        missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
        if missing:  # a from-scratch model needs them; an existing vocabulary keeps its ids
            tok.add_special_tokens(missing)
    else:
        tok = _train(data)
        if tok.get_vocab_size() < len(SPECIAL_TOKENS) + 256:
            raise DataError(f"trained tokenizer has only {tok.get_vocab_size()} tokens; the sources gave too "
                            f"little text (raise data.tokenizer.sample_bytes_per_source or add documents)")
    atomic_write_text(out_path, tok.to_str())
    atomic_write_json(meta_path, {"recipe": recipe, "hash": tokenizer_hash(out_path),
                                  "vocab_size": tok.get_vocab_size()})
    return out_path
