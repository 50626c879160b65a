"""Identifiers found with tree-sitter in real Python, Rust and Go, and mapped to tokens."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from codemix.data.identifiers import TokenBytes, find_identifiers, token_identifiers
from codemix.data.tokenizer import EOS, load_tokenizer
from codemix.errors import CodemixError
from codemix.study.commands import StudyData


@pytest.fixture(scope="module")
def tokenizer(built: StudyData):
    """The small study's own byte-level BPE (tests/data/conftest.py)."""
    return load_tokenizer(built.tokenizer_path)


@pytest.fixture(scope="module")
def token_bytes(tokenizer) -> TokenBytes:
    return TokenBytes(tokenizer)


def _snippet(data_dir: Path, lang: str, path: str, start: str, stop: str) -> str:
    """The text from ``start`` up to ``stop`` of the record with ``path`` in a code corpus of the mirror."""
    with gzip.open(data_dir / "code" / f"code_{lang}.jsonl.gz", "rt", encoding="utf-8") as f:
        text = next((r["text"] for r in map(json.loads, f) if r["path"] == path), None)
    assert text is not None, f"{path} is not in code_{lang}.jsonl.gz"
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
