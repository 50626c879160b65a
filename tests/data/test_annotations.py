"""Identifier annotations of real Python, Rust and Go streams against row-level parsing of the same tokens."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from codemix.config import DataConfig, SourceConfig
from codemix.data import annotations
from codemix.data.annotations import StreamAnnotations, annotation_dir, build_annotations
from codemix.data.identifiers import TokenBytes, TokenIdentifiers, token_doc_pairs, token_identifiers
from codemix.data.streams import TokenStream, build_stream, write_stream
from codemix.data.tokenizer import EOS, SENTINELS, build_tokenizer, load_tokenizer
from codemix.errors import CodemixError, DataError
from codemix.objectives.identifiers import mask_identifiers

LANGS = ("python", "rust", "go")
BUDGET = 150_000  # tokens per stream: 30 to 60 documents of the mirror's code
SEQ_LEN = 128


def _data_config(vocab_size: int = 2048) -> DataConfig:
    sources = [SourceConfig(name=lang, lang=lang, code=True, paths=[f"code/code_{lang}.jsonl.gz"], max_docs=100)
               for lang in LANGS]
    return DataConfig(seq_len=SEQ_LEN, heldout_docs=0, sources=sources, workers=2,
                      tokenizer={"vocab_size": vocab_size, "sample_bytes_per_source": 150_000})


@pytest.fixture(scope="module")
def code_streams(data_dir, tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """The study-style byte-level BPE and one stream per code language, annotated by two workers in small chunks."""
    root = tmp_path_factory.mktemp("annotations")
    data = _data_config()
    tokenizer = build_tokenizer(data, root / "tokenizer.json")
    streams = {s.lang: build_stream(s, data, tokenizer, root / s.name, budget_tokens=BUDGET, progress=False).dir
               for s in data.sources}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(annotations, "CHUNK_TOKENS", 20_000)  # several chunks per stream, so the pool runs
        for lang, stream in streams.items():
            build_annotations(stream, lang, tokenizer, workers=2, progress=False)
    return tokenizer, streams


@pytest.fixture(scope="module")
def token_bytes(code_streams) -> TokenBytes:
    return TokenBytes(load_tokenizer(code_streams[0]))


def _stream_tokens(stream_dir: Path) -> np.ndarray:
    return np.asarray(TokenStream(stream_dir).tokens, dtype=np.int64)


def _same_names(names: list, keys: list) -> bool:
    """Whether equal names have equal keys and different names different keys."""
    return len(names) == len(keys) and len(set(names)) == len(set(zip(names, keys))) == len(set(keys))


def _window_of(whole: TokenIdentifiers, lo: int, hi: int) -> TokenIdentifiers:
    """Tokens [lo, hi) of a parse of whole documents: occurrences with a token there, cut ones not maskable."""
    keep = np.flatnonzero((whole.spans[:, 0] < hi) & (whole.spans[:, 1] > lo)).tolist()
    number = {k: i for i, k in enumerate(keep)}
    occurrence = np.array([number.get(k, -1) for k in whole.occurrence[lo:hi].tolist()])
    maskable = [whole.maskable[k] and whole.spans[k, 0] >= lo and whole.spans[k, 1] <= hi for k in keep]
    return TokenIdentifiers(occurrence >= 0, occurrence, [whole.names[k] for k in keep], maskable,
                            whole.spans[keep] - lo)


def _assert_same_identifiers(window: TokenIdentifiers, expected: TokenIdentifiers) -> None:
    np.testing.assert_array_equal(window.tagged, expected.tagged)
    np.testing.assert_array_equal(window.occurrence, expected.occurrence)
    np.testing.assert_array_equal(window.spans.reshape(-1, 2), expected.spans.reshape(-1, 2))
    assert window.maskable == expected.maskable
    assert _same_names(expected.names, window.names)


def _assert_same_pairs(window: list, expected: list) -> None:
    assert [p.name for p in window] == [p.name for p in expected]
    for got, want in zip(window, expected):
        np.testing.assert_array_equal(got.doc, want.doc)
        np.testing.assert_array_equal(got.code, want.code)


@pytest.mark.parametrize("lang", LANGS)
def test_windows_of_whole_documents_equal_row_level_parsing(code_streams, token_bytes, lang):
    stream_dir = code_streams[1][lang]
    found = StreamAnnotations(stream_dir)
    tokens = _stream_tokens(stream_dir)
    ends = TokenStream(stream_dir).doc_ends.tolist()
    assert found.lang == lang and len(ends) >= 10
    # the whole stream as one window: one parse per document, as the annotator did
    whole = token_identifiers(tokens, lang, token_bytes)
    _assert_same_identifiers(found.identifiers(0, len(tokens)), whole)
    _assert_same_pairs(found.doc_pairs(0, len(tokens)), token_doc_pairs(tokens, lang, token_bytes))
    # each document, and runs of three, with positions relative to the window
    for lo, hi in [*zip([0, *ends[:-1]], ends), *zip([0, *ends[:-3]], ends[2:])]:
        _assert_same_identifiers(found.identifiers(lo, hi), token_identifiers(tokens[lo:hi], lang, token_bytes))
        _assert_same_pairs(found.doc_pairs(lo, hi), token_doc_pairs(tokens[lo:hi], lang, token_bytes))
    # the counts in meta.json are those of the arrays
    meta = found.meta
    assert meta["n_tokens"] == len(tokens) and meta["n_docs"] == len(ends)
    assert meta["n_tagged"] == int(whole.tagged.sum()) > len(tokens) // 10
    assert meta["n_occurrences"] == len(whole.names) and sum(whole.maskable) > len(whole.names) // 2
    assert meta["n_pairs"] == len(token_doc_pairs(tokens, lang, token_bytes)) > 5


@pytest.mark.parametrize("lang", LANGS)
def test_windows_cutting_documents_leave_edge_occurrences_unmaskable(code_streams, token_bytes, lang):
    stream_dir = code_streams[1][lang]
    found = StreamAnnotations(stream_dir)
    tokens = _stream_tokens(stream_dir)
    whole = token_identifiers(tokens, lang, token_bytes)
    whole_pairs = token_doc_pairs(tokens, lang, token_bytes)
    cut = 0
    for lo in range(0, len(tokens) - SEQ_LEN, SEQ_LEN - 29):  # rows cut anywhere: mid-name, mid-document, across <eos>
        hi = lo + SEQ_LEN
        window = found.identifiers(lo, hi)
        _assert_same_identifiers(window, _window_of(whole, lo, hi))
        outside = (window.spans[:, 0] < 0) | (window.spans[:, 1] > SEQ_LEN)
        assert not any(np.array(window.maskable)[outside])
        cut += int(outside.sum())
        inside = [p for p in whole_pairs if lo <= min(p.doc[0], p.code[0]) and max(p.doc[-1], p.code[-1]) < hi]
        expected = [type(p)(p.name, p.doc - lo, p.code - lo) for p in inside]
        _assert_same_pairs(found.doc_pairs(lo, hi), expected)
    assert cut > 50


@pytest.mark.parametrize("lang", LANGS)
def test_masked_identifier_prediction_on_windows_hides_each_name_with_one_sentinel(code_streams, lang):
    tokenizer = load_tokenizer(code_streams[0])
    sentinels = [tokenizer.token_to_id(t) for t in SENTINELS]
    eos = tokenizer.token_to_id(EOS)
    stream_dir = code_streams[1][lang]
    found = StreamAnnotations(stream_dir)
    tokens = _stream_tokens(stream_dir)
    masked_any = 0
    for lo in range(7, len(tokens) - SEQ_LEN, 5 * SEQ_LEN):
        row = tokens[lo:lo + SEQ_LEN]
        window = found.identifiers(lo, lo + SEQ_LEN)
        inputs, targets, names = mask_identifiers(row, window, sentinels=sentinels, eos_id=eos, max_target=1000)
        masked_any += len(names)
        of_name = {name: [k for k, n in enumerate(window.names) if n == name] for name in names}
        for s, (name, ks) in zip(sentinels, of_name.items()):
            assert all(window.maskable[k] for k in ks)
            assert (window.spans[ks] >= 0).all() and (window.spans[ks] <= SEQ_LEN).all()  # no part left outside
            assert int((inputs == s).sum()) == len(ks)
        hidden = np.isin(window.occurrence, [k for ks in of_name.values() for k in ks])
        np.testing.assert_array_equal(inputs[~np.isin(inputs, sentinels)], row[~hidden])
        # the target is `sentinel, tokens of the name's first occurrence` per name, then <eos>
        expected = [t for s, ks in zip(sentinels, of_name.values()) for t in [s, *row[window.occurrence == ks[0]]]]
        assert targets.tolist() == [*expected, eos]
    assert masked_any > 100


def test_building_again_changes_nothing(code_streams):
    tokenizer, streams = code_streams
    out = annotation_dir(streams["go"])
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert build_annotations(streams["go"], "go", tokenizer, progress=False) == out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


def _copy_stream(stream_dir: Path, to: Path, *, annotated: bool) -> Path:
    ignore = None if annotated else shutil.ignore_patterns("annotations")
    return Path(shutil.copytree(stream_dir, to / stream_dir.name, ignore=ignore))


def test_an_interrupted_build_resumes_with_the_missing_chunks(code_streams, tmp_path, monkeypatch):
    tokenizer, streams = code_streams
    stream = _copy_stream(streams["python"], tmp_path, annotated=False)
    monkeypatch.setattr(annotations, "CHUNK_TOKENS", 12_000)
    annotate = annotations._annotate_chunk
    done, redone = [], []

    def killed_after_two(lo: int, hi: int):
        if len(done) == 2:
            raise KeyboardInterrupt("killed")
        done.append((lo, hi))
        return annotate(lo, hi)

    monkeypatch.setattr(annotations, "_annotate_chunk", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_annotations(stream, "python", tokenizer, workers=1, progress=False)
    work = stream / ".annotations.partial"
    assert not annotation_dir(stream).exists() and len(list((work / "shards").glob("*.npz"))) == 2

    monkeypatch.setattr(annotations, "_annotate_chunk", lambda lo, hi: redone.append((lo, hi)) or annotate(lo, hi))
    build_annotations(stream, "python", tokenizer, workers=1, progress=False)
    chunks = sorted(done + redone)  # each chunk annotated once, and together they tile the stream
    assert len(redone) >= 3 and set(done).isdisjoint(redone)
    assert [lo for lo, _ in chunks[1:]] == [hi for _, hi in chunks[:-1]]
    assert chunks[0][0] == 0 and chunks[-1][1] == TokenStream(stream).n_tokens
    assert not work.exists()
    # the same files as the fixture's build, in other chunks by two workers
    assert StreamAnnotations(stream).meta["files"] == StreamAnnotations(streams["python"]).meta["files"]


def test_a_rebuilt_stream_makes_its_old_annotations_a_clear_error(code_streams, tmp_path):
    tokenizer, streams = code_streams
    stream = _copy_stream(streams["rust"], tmp_path, annotated=True)
    old = TokenStream(stream)
    keep = old.n_docs // 2
    tokens = np.array(old.tokens[:old.doc_ends[keep - 1]])
    lens = np.diff(old.doc_ends[:keep], prepend=0)
    meta = {k: v for k, v in old.meta.items() if k not in ("n_tokens", "n_docs", "sha256", "docs_sha256")}
    del old
    write_stream(stream, tokens, lens, meta)  # the stream changed; its annotations stayed behind
    with pytest.raises(DataError, match=r"do not belong to the stream.*rerun `codemix mix"):
        StreamAnnotations(stream)
    build_annotations(stream, "rust", tokenizer, progress=False)
    assert StreamAnnotations(stream).n_tokens == len(tokens)


def test_missing_or_truncated_annotations_are_clear_errors(code_streams, tmp_path):
    tokenizer, streams = code_streams
    stream = _copy_stream(streams["go"], tmp_path, annotated=False)
    with pytest.raises(DataError, match=r"no identifier annotations at .*rerun `codemix mix"):
        StreamAnnotations(stream)
    build_annotations(stream, "go", tokenizer, progress=False)
    keys = annotation_dir(stream) / "occ_key.npy"
    with open(keys, "r+b") as f:
        f.truncate(keys.stat().st_size - 8)
    with pytest.raises(DataError, match=r"occ_key.npy is missing or truncated"):
        StreamAnnotations(stream)


def test_wrong_language_or_tokenizer_is_a_clear_error(code_streams, tmp_path):
    tokenizer, streams = code_streams
    with pytest.raises(CodemixError, match="no tree-sitter grammar for language 'java'"):
        build_annotations(streams["python"], "java", tokenizer, progress=False)
    with pytest.raises(DataError, match="holds language 'python', not 'rust'"):
        build_annotations(streams["python"], "rust", tokenizer, progress=False)
    other = build_tokenizer(_data_config(vocab_size=512), tmp_path / "other.json")
    with pytest.raises(DataError, match="was tokenized with tokenizer"):
        build_annotations(streams["python"], "python", other, progress=False)
    assert not any(tmp_path.glob("*/annotations"))


def test_an_empty_stream_has_empty_annotations(code_streams, tmp_path):
    # a code source that only serves evaluation has a training stream of no tokens
    tokenizer, streams = code_streams
    meta = {k: v for k, v in TokenStream(streams["go"]).meta.items()
            if k not in ("n_tokens", "n_docs", "sha256", "docs_sha256")}
    stream = tmp_path / "go"
    stream.mkdir()
    write_stream(stream, np.zeros(0, np.uint16), np.zeros(0, np.int64), meta)
    build_annotations(stream, "go", tokenizer, progress=False)
    found = StreamAnnotations(stream)
    assert found.n_tokens == 0 and json.loads((annotation_dir(stream) / "meta.json").read_text())["n_pairs"] == 0
    with pytest.raises(ValueError, match="not a non-empty range"):
        found.identifiers(0, 1)
