"""The study tokenizer: special tokens, balanced sample, hashing, loading existing tokenizers."""

from __future__ import annotations

import json

import pytest

from codemix.config import validate_study
from codemix.data.tokenizer import (
    EOS,
    PAD,
    SENTINELS,
    SEP,
    build_tokenizer,
    hf_tokenizer,
    load_tokenizer,
    tokenizer_hash,
    training_sample,
)
from codemix.errors import DataError

from .conftest import small_study_raw

# Tests sharing the session-built study run in one xdist worker, so it is built once.
pytestmark = pytest.mark.xdist_group("data_built")


def test_special_tokens_and_hf_wrapper(built):
    tok = load_tokenizer(built.tokenizer_path)
    assert tok.get_vocab_size() == 512
    assert [tok.token_to_id(t) for t in (EOS, PAD, SEP, SENTINELS[0], SENTINELS[99])] == [0, 1, 2, 3, 102]
    text = "def f(x):\n    return x  # ünïcode ✓\n"
    assert tok.decode(tok.encode(text).ids) == text  # byte-level: nothing is unknown
    hf = hf_tokenizer(built.tokenizer_path.parent)  # a directory holding tokenizer.json also works
    assert (hf.eos_token, hf.pad_token, hf.sep_token) == (EOS, PAD, SEP)
    assert (hf.eos_token_id, hf.pad_token_id, hf.sep_token_id) == (0, 1, 2)
    assert hf.convert_tokens_to_ids("<extra_id_7>") == 10
    assert hf("<extra_id_7>x")["input_ids"][0] == 10  # sentinels are never split


def test_sample_is_balanced_across_nl_and_each_code_language(study):
    """NL (c4 + wiki) gets one share, split between its sources; each code language gets a share."""
    import itertools

    sizes = [len(t) for t in training_sample(study.data)]
    cumulative = set(itertools.accumulate(sizes))
    share = 60_000
    assert sum(sizes) == 4 * share  # NL, python, rust, go
    assert {share // 2, share, 2 * share, 3 * share} <= cumulative  # c4 | wiki | python | rust | go


def test_hash_and_idempotent_build(built, study, tmp_path):
    h = tokenizer_hash(built.tokenizer_path)
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(json.loads(built.tokenizer_path.read_text()), indent=4))
    assert tokenizer_hash(pretty) == h  # formatting does not change the hash
    before = built.tokenizer_path.stat().st_mtime_ns
    build_tokenizer(study.data, built.tokenizer_path)
    assert built.tokenizer_path.stat().st_mtime_ns == before
    meta = json.loads(built.tokenizer_path.with_name("tokenizer.meta.json").read_text())
    assert meta["hash"] == h and meta["vocab_size"] == 512


def test_existing_tokenizer_gets_missing_special_tokens(built, tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    other = Tokenizer(models.BPE())
    other.pre_tokenizer = pre_tokenizers.ByteLevel()
    other.train_from_iterator(["plain text without our special tokens " * 20],
                              trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>"], show_progress=False))
    other.save(str(tmp_path / "tokenizer.json"))
    raw = small_study_raw()
    raw["data"]["tokenizer"] = {"path": str(tmp_path)}
    out = build_tokenizer(validate_study(raw).data, tmp_path / "out" / "tokenizer.json")
    tok = load_tokenizer(out)
    assert tok.token_to_id("<s>") == 0 and tok.token_to_id(EOS) is not None and tok.token_to_id(SENTINELS[-1]) is not None
    raw["data"]["tokenizer"] = {"path": str(tmp_path / "missing.json")}
    with pytest.raises(DataError, match="tokenizer not found at"):
        build_tokenizer(validate_study(raw).data, tmp_path / "out2" / "tokenizer.json")
