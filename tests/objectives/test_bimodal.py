"""Bimodal dual generation: documented functions from real Python, Rust and Go files."""

from __future__ import annotations

import numpy as np
import pytest

from codemix.data.identifiers import find_doc_pairs, token_doc_pairs
from codemix.data.streams import TokenStream
from codemix.data.tokenizer import EOS
from codemix.objectives.bimodal import dual_generation

from .conftest import SEQ_LEN, corpus_doc, corpus_docs

# (file, function, first words of its documentation, text its code starts with)
KNOWN = {
    "python": ("Lib/gettext.py", "c2py", "Gets a C expression as used in PO files", "def c2py(plural):"),
    "rust": ("library/core/src/num/dec2flt/number.rs", "try_fast_path",
             "The fast path algorithm using machine-sized integers and floats.",
             "pub fn try_fast_path<F: RawFloat>(&self) -> Option<F> {"),
    "go": ("src/go/types/instantiate.go", "Instantiate", "Instantiate instantiates the type orig",
           "func Instantiate(ctxt *Context, orig Type"),
}


def _text(data: bytes, ranges) -> str:
    return "".join(data[s:e].decode() for s, e in ranges)


@pytest.mark.parametrize("lang", sorted(KNOWN))
def test_known_documented_function_is_paired_with_its_documentation(data_dir, lang):
    path, name, doc_start, code_start = KNOWN[lang]
    data = corpus_doc(data_dir, lang, path).encode()
    pairs = {p.name.decode(): p for p in find_doc_pairs(data, lang)}
    pair = pairs[name]
    doc, code = _text(data, pair.doc), _text(data, pair.code)
    assert " ".join(doc.split()).startswith(doc_start)
    assert code.startswith(code_start)
    assert doc_start not in code  # the function without its documentation
    assert "///" not in doc and "//" not in doc.split("http")[0]  # comment markers are not documentation


def test_multi_line_rust_doc_comment_keeps_every_line(data_dir):
    data = corpus_doc(data_dir, "rust", KNOWN["rust"][0]).encode()
    pair = {p.name.decode(): p for p in find_doc_pairs(data, "rust")}["try_fast_path"]
    doc = _text(data, pair.doc)
    assert len(pair.doc) == 9  # nine `///` lines, the two blank ones included
    assert "disguised fast-path cases" in doc


@pytest.mark.parametrize("lang", ["python", "rust", "go"])
def test_pairs_are_found_across_real_files(data_dir, lang):
    docs = corpus_docs(data_dir, lang, 15)
    n_pairs = 0
    for record in docs:
        data = record["text"].encode()
        for pair in find_doc_pairs(data, lang):
            n_pairs += 1
            code = _text(data, pair.code)
            assert pair.name.decode() in code.split("(")[0] + code.split("(")[1]  # the name heads the code
            assert _text(data, pair.doc).strip()
    assert n_pairs >= 10


def test_undocumented_and_commented_functions_are_not_pairs():
    python = 'def f(x):\n    return x  # "not a docstring"\n\ndef g():\n    y = 1\n    """too late"""\n'
    rust = "//! inner doc of the module\n// a plain comment\nfn f() {}\n\n/* block */\nfn g() {}\n"
    go = "package p\n\n// Doc of F.\n\nfunc F() {}\n\n/* block */\nfunc G() {}\n"
    assert find_doc_pairs(python, "python") == []
    assert find_doc_pairs(rust, "rust") == []
    assert find_doc_pairs(go, "go") == []
    # Rust's outer doc comments document the next item even across a blank line and attributes
    rust = "/// Doc of f.\n\n#[inline]\nfn f() {}\n"
    assert [p.name for p in find_doc_pairs(rust, "rust")] == [b"f"]


def test_dual_generation_in_both_directions_on_a_token_chunk(t5_study, tokenizer, token_bytes):
    eos = tokenizer.token_to_id(EOS)
    tokens = np.asarray(TokenStream(t5_study[1].stream_dir("go")).tokens, dtype=np.int64)
    found = None
    for k in range(len(tokens) // SEQ_LEN):
        chunk = tokens[k * SEQ_LEN:(k + 1) * SEQ_LEN]
        pairs = token_doc_pairs(chunk, "go", token_bytes)
        if pairs:
            found = chunk, pairs[0]
            break
    assert found is not None, "no complete documented Go function in any chunk"
    chunk, pair = found
    assert not set(pair.doc) & set(pair.code)
    doc_text = tokenizer.decode(chunk[pair.doc].tolist())
    code_text = tokenizer.decode(chunk[pair.code].tolist())
    assert code_text.lstrip().startswith("func") and pair.name.decode() in code_text
    assert "//" not in code_text.split("{")[0]

    inputs, targets = dual_generation(chunk, pair, "nl2code", eos_id=eos, max_target=1000)
    assert tokenizer.decode(inputs.tolist()) == doc_text
    assert targets[-1] == eos and tokenizer.decode(targets[:-1].tolist()) == code_text
    inputs, targets = dual_generation(chunk, pair, "code2nl", eos_id=eos, max_target=4)
    assert tokenizer.decode(inputs.tolist()) == code_text
    assert len(targets) == 4 and targets[-1] == eos  # cut to the target budget
    with pytest.raises(ValueError, match="direction"):
        dual_generation(chunk, pair, "sideways", eos_id=eos, max_target=8)
