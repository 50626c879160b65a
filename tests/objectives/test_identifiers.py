"""Identifier tagging and masked identifier prediction on real Python, Rust and Go."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from codemix.data.streams import TokenStream
from codemix.data.tokenizer import EOS, SENTINELS
from codemix.errors import CodemixError
from codemix.objectives.identifiers import (
    TokenBytes,
    find_identifiers,
    mask_identifiers,
    token_identifiers,
)

from .conftest import SEQ_LEN, corpus_doc


def _snippet(data_dir: Path, lang: str, path: str, start: str, stop: str) -> str:
    text = corpus_doc(data_dir, lang, path)
    i = text.index(start)
    return text[i:text.index(stop, i)]


# Hand-checked: every name the programmer chose, in order; keywords (try, fn, func, self, nil),
# builtins (round, TypeError, DeprecationWarning, bool, error) and literals are not identifiers.
SNIPPETS = {
    "python": (("Lib/gettext.py", "def _as_int(", "\n\n\ndef c2py"),
               ["_as_int", "n", "i", "n", "n", "__class__", "__name__", "warnings", "warnings", "warn", "n",
                "__class__", "__name__", "n"]),
    "rust": (("library/core/src/num/dec2flt/number.rs", "    fn is_fast_path", "\n\n    /// The fast path algorithm"),
             ["is_fast_path", "F", "RawFloat", "F", "MIN_EXPONENT_FAST_PATH", "exponent", "exponent", "F",
              "MAX_EXPONENT_DISGUISED_FAST_PATH", "mantissa", "F", "MAX_MANTISSA_FAST_PATH", "many_digits"]),
    "go": (("src/go/types/instantiate.go", "func Instantiate(", "\tif validate {"),
           ["Instantiate", "ctxt", "Context", "orig", "Type", "targs", "Type", "validate", "Type", "ctxt", "ctxt",
            "NewContext"]),
}


@pytest.mark.parametrize("lang", sorted(SNIPPETS))
def test_identifiers_of_hand_checked_snippets(data_dir, lang):
    (path, start, stop), expected = SNIPPETS[lang]
    snippet = _snippet(data_dir, lang, path, start, stop)
    found = find_identifiers(snippet, lang)
    assert [i.name.decode() for i in found] == expected
    data = snippet.encode()
    assert all(data[i.start:i.end] == i.name for i in found)


@pytest.mark.parametrize("lang", sorted(SNIPPETS))
def test_identifier_tags_of_tokens_follow_the_identifiers(data_dir, tokenizer, token_bytes, lang):
    (path, start, stop), expected = SNIPPETS[lang]
    snippet = _snippet(data_dir, lang, path, start, stop)
    ids = tokenizer.encode(snippet).ids
    found = token_identifiers(ids, lang, token_bytes)
    pieces = [token_bytes.table[i] for i in ids]
    assert b"".join(pieces) == snippet.encode()  # token bytes are exact offsets into the source
    # a token is tagged exactly when it holds a byte of an identifier
    occurrences = find_identifiers(snippet, lang)
    covered = np.zeros(len(snippet.encode()), dtype=bool)
    for occ in occurrences:
        covered[occ.start:occ.end] = True
    offset = 0
    for piece, tag in zip(pieces, found.tagged):
        assert bool(covered[offset:offset + len(piece)].any()) == bool(tag)
        offset += len(piece)
    assert [n.decode() for n in found.names] == expected


def test_hand_checked_token_labels_in_python(data_dir, tokenizer, token_bytes):
    (path, start, stop), _ = SNIPPETS["python"]
    snippet = _snippet(data_dir, "python", path, start, stop)
    ids = tokenizer.encode(snippet).ids
    found = token_identifiers(ids, "python", token_bytes)
    ends = np.cumsum([len(token_bytes.table[i]) for i in ids])
    starts = ends - [len(token_bytes.table[i]) for i in ids]
    hand = {"try": False, "import": False, "return": False, "except": False, "raise": False, "from": False,
            "None": False, "round": False, "TypeError": False, "DeprecationWarning": False, "Plural": False,
            "4": False, "warnings": True, "warn": True, "n": True, "i": True, "_as_int": True, "__class__": True}
    for word, label in hand.items():
        spans = [m.span() for m in re.finditer(rf"(?<![\w.]){re.escape(word)}(?!\w)|(?<=\.){re.escape(word)}(?!\w)",
                                              snippet)]
        assert spans, word
        for lo, hi in spans:
            overlapping = (starts < hi) & (ends > lo)
            assert set(found.tagged[overlapping].tolist()) == {label}, word


def test_chunk_starting_inside_a_docstring_does_not_tag_its_words(token_bytes, tokenizer):
    # the tail of a docstring, then code: the parser re-opens the string rather than reading prose as code
    text = ('the words of a docstring should never count as names\n    """\n'
            '    def area(width, height):\n        return width * height\n')
    ids = tokenizer.encode(text).ids
    found = token_identifiers(ids, "python", token_bytes)
    assert [n.decode() for n in found.names] == ["area", "width", "height", "width", "height"]


def _chunks(t5_study, lang: str, n: int) -> list[np.ndarray]:
    stream = TokenStream(t5_study[1].stream_dir(lang))
    tokens = np.asarray(stream.tokens, dtype=np.int64)
    step = len(tokens) // SEQ_LEN // n
    return [tokens[k * step * SEQ_LEN:(k * step + 1) * SEQ_LEN] for k in range(n)]


@pytest.mark.parametrize("lang", ["python", "rust", "go"])
def test_masked_identifier_prediction_hides_every_occurrence_and_nothing_else(t5_study, tokenizer, token_bytes,
                                                                              lang):
    sentinels = [tokenizer.token_to_id(t) for t in SENTINELS]
    eos = tokenizer.token_to_id(EOS)
    masked_any = 0
    for chunk in _chunks(t5_study, lang, 8):
        found = token_identifiers(chunk, lang, token_bytes)
        inputs, targets, names = mask_identifiers(chunk, found, sentinels=sentinels, eos_id=eos, max_target=1000)
        masked_any += len(names)
        sentinel_of = dict(zip(names, sentinels))
        occurrences = {name: {k for k, n in enumerate(found.names) if n == name} for name in names}
        # one sentinel per name, once per occurrence
        for name, s in sentinel_of.items():
            assert int((inputs == s).sum()) == len(occurrences[name])
        # removing the sentinels leaves exactly the unmasked tokens, unchanged and in order
        hidden = np.isin(found.occurrence, [k for ks in occurrences.values() for k in ks])
        np.testing.assert_array_equal(inputs[~np.isin(inputs, sentinels)], chunk[~hidden])
        # every maskable identifier was masked (the target budget is large here)
        assert set(names) == {n for n, ok in zip(found.names, found.maskable) if ok} - \
            {n for n, ok in zip(found.names, found.maskable) if not ok}
        # the target is `sentinel name` pairs, then <eos>
        assert targets[-1] == eos
        if not names:
            assert len(targets) == 1
            continue
        pairs = np.split(targets[:-1], np.flatnonzero(np.isin(targets[:-1], sentinels))[1:])
        assert [int(p[0]) for p in pairs] == sentinels[:len(names)]
        assert [tokenizer.decode(p[1:].tolist()).strip() for p in pairs] == [n.decode() for n in names]
    assert masked_any > 20


def test_masked_identifier_targets_respect_the_budget(t5_study, tokenizer, token_bytes):
    sentinels = [tokenizer.token_to_id(t) for t in SENTINELS]
    eos = tokenizer.token_to_id(EOS)
    chunk = _chunks(t5_study, "python", 1)[0]
    found = token_identifiers(chunk, "python", token_bytes)
    _, targets, names = mask_identifiers(chunk, found, sentinels=sentinels, eos_id=eos, max_target=12)
    assert len(targets) <= 12 and names
    full, _, all_names = mask_identifiers(chunk, found, sentinels=sentinels, eos_id=eos, max_target=1000)
    assert names == all_names[:len(names)]
    # a fixed input length: names are masked only while the input keeps it, then the input is cut
    floor = (len(chunk) + len(full)) // 2
    inputs, targets, some_names = mask_identifiers(chunk, found, sentinels=sentinels, eos_id=eos, max_target=1000,
                                                   input_len=floor)
    assert len(inputs) == floor and 0 < len(some_names) < len(all_names)
    assert set(some_names) <= set(all_names)
    predicted = [t for t in targets.tolist() if t in sentinels]  # every predicted name is still in the input
    assert len(predicted) == len(some_names) and set(predicted) <= set(inputs.tolist())


def test_unknown_language_and_non_byte_level_tokenizer_are_clear_errors():
    from tokenizers import Tokenizer, models

    with pytest.raises(CodemixError, match="no tree-sitter grammar for language 'java'"):
        find_identifiers("class A {}", "java")
    with pytest.raises(CodemixError, match="byte-level BPE"):
        TokenBytes(Tokenizer(models.WordLevel({"a": 0}, unk_token="a")))


def test_documents_joined_by_eos_are_parsed_separately(data_dir, tokenizer, token_bytes):
    # a stream chunk crosses document boundaries; each document is its own parse
    eos = tokenizer.token_to_id(EOS)
    first = _snippet(data_dir, "go", *SNIPPETS["go"][0])
    second = "x = compute(total)\n"  # parsed from its own first byte, not as the end of the first document
    ids = tokenizer.encode(first).ids + [eos] + tokenizer.encode(second).ids
    found = token_identifiers(ids, "go", token_bytes)
    assert not found.tagged[len(tokenizer.encode(first).ids)]  # the <eos> itself
    assert [n.decode() for n in found.names] == SNIPPETS["go"][1] + ["x", "compute", "total"]
