"""Token streams: format, held-out split, budget, resumability, corruption detection."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from codemix.data.loader import MixtureLoader
from codemix.data.sources import shuffled_documents
from codemix.data.streams import TokenStream, build_stream
from codemix.data.tokenizer import EOS, load_tokenizer
from codemix.errors import DataError
from codemix.io import sha256_file
from codemix.study.commands import StudyData
from codemix.study.graph import plan_study

# Tests sharing the session-built study run in one xdist worker, so it is built once.
pytestmark = pytest.mark.xdist_group("data_built")


def test_stream_format_and_round_trip(built, study):
    tok = load_tokenizer(built.tokenizer_path)
    eos = tok.token_to_id(EOS)
    held = TokenStream(built.heldout_dir("python"))
    assert held.tokens.dtype == np.uint16 and held.meta["vocab_size"] == 512
    texts = [json.loads(line) for line in gzip.open(built.heldout_dir("python") / "docs.jsonl.gz", "rt")]
    assert len(texts) == held.n_docs == 5
    assert {t["lang"] for t in texts} == {"python"}
    for i, rec in enumerate(texts):
        ids = held.doc(i)
        assert ids[-1] == eos and eos not in ids[:-1]
        assert tok.decode(ids[:-1].tolist(), skip_special_tokens=False) == rec["text"]  # byte-level BPE is lossless
    train = TokenStream(built.stream_dir("python"))
    assert train.meta["tokenizer_hash"] == held.meta["tokenizer_hash"]
    assert int((np.asarray(train.tokens) == eos).sum()) == train.n_docs
    train.verify()


def test_heldout_documents_come_first_and_never_train(built, study):
    src = study.source("wiki")
    order = [d.text for d, _ in zip(shuffled_documents(src, study.data.shuffle_seed), range(8))]
    held = [json.loads(line)["text"] for line in gzip.open(built.heldout_dir("wiki") / "docs.jsonl.gz", "rt")]
    assert held == order[:5]
    tok = load_tokenizer(built.tokenizer_path)
    train = TokenStream(built.stream_dir("wiki"))
    assert tok.decode(train.doc(0)[:-1].tolist()) == order[5]


def test_budgets_nest_and_kill_resume_gives_the_same_stream(built, study, tmp_path):
    src = study.source("c4")
    kw = dict(budget_tokens=6000, progress=False, chunk_chars=2_000, workers=2)
    small = build_stream(src, study.data, built.tokenizer_path, tmp_path / "small", **{**kw, "budget_tokens": 2000})
    # A build killed after two committed chunks leaves its work directory; the rerun finishes it.
    with pytest.raises(KeyboardInterrupt):
        build_stream(src, study.data, built.tokenizer_path, tmp_path / "resumed", _stop_after_chunks=2, **kw)
    work = tmp_path / ".resumed.partial"
    assert len((work / "commits.jsonl").read_text().splitlines()) == 2 and not (tmp_path / "resumed").exists()
    resumed = build_stream(src, study.data, built.tokenizer_path, tmp_path / "resumed", **kw)
    assert not work.exists()
    fresh = build_stream(src, study.data, built.tokenizer_path, tmp_path / "fresh", **kw)
    assert resumed.meta["sha256"] == fresh.meta["sha256"] == sha256_file(tmp_path / "fresh" / "tokens.bin")
    np.testing.assert_array_equal(resumed.doc_ends, fresh.doc_ends)
    assert fresh.n_tokens >= 6000 and fresh.doc_ends[-2] < 6000
    # the smaller budget's stream is a prefix of the larger one
    np.testing.assert_array_equal(np.asarray(small.tokens), np.asarray(fresh.tokens[: small.n_tokens]))
    # the main study's c4 stream (other budget, other chunking) starts with the same documents
    main = TokenStream(built.stream_dir("c4"))
    np.testing.assert_array_equal(np.asarray(main.tokens[: small.n_tokens]), np.asarray(small.tokens))


def test_a_longer_budget_extends_the_stream_and_keeps_its_prefix(built, study, tmp_path):
    """A stream is keyed without its budget: growing it tokenizes only the new documents, and the result
    is byte for byte the stream a fresh build with the larger budget writes."""
    src = study.source("c4")
    kw = dict(progress=False, chunk_chars=2_000, workers=1)
    short = build_stream(src, study.data, built.tokenizer_path, tmp_path / "short", budget_tokens=1500, **kw)
    prefix = np.asarray(short.tokens).copy()
    extended = build_stream(src, study.data, built.tokenizer_path, tmp_path / "grown", budget_tokens=5000,
                            extend=tmp_path / "short", **kw)
    fresh = build_stream(src, study.data, built.tokenizer_path, tmp_path / "fresh", budget_tokens=5000, **kw)
    assert extended.meta["sha256"] == fresh.meta["sha256"] and extended.meta["key"] == short.meta["key"]
    np.testing.assert_array_equal(np.asarray(extended.tokens[: len(prefix)]), prefix)
    np.testing.assert_array_equal(extended.doc_ends, fresh.doc_ends)
    assert sha256_file(tmp_path / "grown" / "heldout" / "tokens.bin") == sha256_file(
        tmp_path / "fresh" / "heldout" / "tokens.bin")
    extended.verify()
    # growing in place (no `extend`): the directory's own stream is the prefix
    in_place = build_stream(src, study.data, built.tokenizer_path, tmp_path / "short", budget_tokens=5000, **kw)
    assert in_place.meta["sha256"] == fresh.meta["sha256"]
    # a stream of another source (or tokenizer, or held-out split) cannot be extended
    with pytest.raises(DataError, match="cannot extend"):
        build_stream(study.source("wiki"), study.data, built.tokenizer_path, tmp_path / "x", budget_tokens=9000,
                     extend=tmp_path / "fresh", **kw)


def copy_study_data(built, tmp_path: Path) -> StudyData:
    """A copy of the built study's data: the same jobs (same keys) under another out directory."""
    root = tmp_path / "copy"
    shutil.copytree(built.root / "jobs", root / "jobs")
    return StudyData(plan_study(built.plan.cfg, root=root))


def test_corrupt_token_file_is_detected_by_sha256(built, tmp_path):
    copy = copy_study_data(built, tmp_path)
    path = copy.stream_dir("python") / "tokens.bin"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    stream = TokenStream(copy.stream_dir("python"))  # same size: opens
    with pytest.raises(DataError, match=r"tokens.bin is corrupt: sha256"):
        stream.verify()
    with pytest.raises(DataError, match=r"corrupt"):  # the loader checks small streams on open
        MixtureLoader(copy.mixture_dir("competitive", 0.4), batch_size=4, seed=0)
    MixtureLoader(copy.mixture_dir("competitive", 0.0), batch_size=4, seed=0)  # does not read python


def test_truncated_token_file_is_detected(built, tmp_path):
    copy = copy_study_data(built, tmp_path)
    path = copy.stream_dir("rust") / "tokens.bin"
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(DataError, match=r"truncated"):
        TokenStream(copy.stream_dir("rust"))
    with pytest.raises(DataError, match=r"truncated"):
        MixtureLoader(copy.mixture_dir("additive", 0.2), batch_size=4, seed=0)
    docs = copy.heldout_dir("go") / "docs.npy"
    np.save(docs, np.load(docs)[:-1])
    with pytest.raises(DataError, match=r"does not match meta.json"):
        TokenStream(copy.heldout_dir("go"))


def test_incomplete_stream_is_rebuilt(built, study, tmp_path):
    copy = copy_study_data(built, tmp_path)
    meta = copy.stream_dir("rust") / "meta.json"
    meta.unlink()
    with pytest.raises(DataError, match="meta.json missing"):
        TokenStream(copy.stream_dir("rust"))
    budget = built_budget = TokenStream(built.stream_dir("rust")).meta["budget_tokens"]
    stream = build_stream(study.source("rust"), study.data, copy.tokenizer_path, copy.stream_dir("rust"),
                          budget_tokens=budget, progress=False)
    assert stream.meta["sha256"] == TokenStream(built.stream_dir("rust")).meta["sha256"] and built_budget


def test_no_heldout_and_eval_only_streams(built, study, tmp_path):
    data = study.data.model_copy(update={"heldout_docs": 0})
    src = study.source("wiki")
    stream = build_stream(src, data, built.tokenizer_path, tmp_path / "wiki", budget_tokens=300, progress=False)
    first = next(iter(shuffled_documents(src, data.shuffle_seed)))
    assert TokenStream(tmp_path / "wiki" / "heldout").n_docs == 0
    assert load_tokenizer(built.tokenizer_path).decode(stream.doc(0)[:-1].tolist()) == first.text
    empty = build_stream(src, study.data, built.tokenizer_path, tmp_path / "eval", budget_tokens=0, progress=False)
    assert empty.n_tokens == empty.n_docs == 0 and not empty.meta["exhausted"]
    empty.verify()
    assert TokenStream(tmp_path / "eval" / "heldout").n_docs == 5
