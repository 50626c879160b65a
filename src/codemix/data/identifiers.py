"""Identifiers and documented functions in code, found with tree-sitter and mapped to BPE tokens.

CodeT5 (Wang et al., EMNLP 2021, §3.2) needs to know which tokens of a code sequence belong
to identifiers (identifier tagging, masked identifier prediction) and which functions carry
a docstring or doc comment (bimodal dual generation). Both come from a tree-sitter parse
of the code, with the PyPI grammars for Python, Rust and Go. This module holds the parsing
and the mapping to tokens; the objectives built on them are in :mod:`codemix.objectives`
(:mod:`~codemix.objectives.identifiers`, :mod:`~codemix.objectives.bimodal`,
:mod:`~codemix.objectives.codet5`).

Training sequences are ``seq_len`` tokens cut from a stream of documents, so this module
works on *token ids*, not text: with a byte-level BPE every token id decodes to exact
bytes, the concatenation is the chunk's source bytes, and the byte range of every
tree-sitter node maps to tokens through the cumulative token lengths — no re-encoding.
Special tokens (``<eos>`` between documents) carry no bytes and split the chunk into
segments that are parsed separately. A segment may start in the middle of a document
(inside a docstring, for instance); when the plain parse has errors, the parser retries
with the opening of a string or comment in front and keeps the parse with fewer errors.

Parsing costs milliseconds per training row, too slow for a GPU step, so the data stage
runs the same code once per document of a code stream (:func:`token_annotations`, stored by
:mod:`codemix.data.annotations`) and training slices the stored arrays.

Keywords, builtins (Python's ``builtins`` module, Go's predeclared identifiers, Rust's
primitive types, prelude and standard macros) and literals are not identifiers.
"""

from __future__ import annotations

import bisect
import builtins
import functools
import json
import keyword
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tree_sitter
import tree_sitter_go
import tree_sitter_python
import tree_sitter_rust

from codemix.errors import CodemixError

__all__ = [
    "DocPair",
    "Identifier",
    "LANGUAGES",
    "TokenBytes",
    "TokenDocPair",
    "TokenIdentifiers",
    "check_language",
    "find_doc_pairs",
    "find_identifiers",
    "token_annotations",
    "token_doc_pairs",
    "token_identifiers",
]

#: Languages with a tree-sitter grammar here (the `lang` of a code source).
LANGUAGES = ("python", "rust", "go")

# Node types that name something the programmer chose.
_IDENTIFIER_NODES = {
    "python": ("identifier",),
    "rust": ("identifier", "type_identifier", "field_identifier", "shorthand_field_identifier"),
    "go": ("identifier", "type_identifier", "field_identifier", "package_identifier", "label_name"),
}

_RUST_KEYWORDS = set(
    "as async await break const continue crate dyn else enum extern false fn for if impl in let loop match mod "
    "move mut pub ref return self Self static struct super trait true type union unsafe use where while "
    "abstract become box do final macro override priv try typeof unsized virtual yield".split()
)
_RUST_BUILTINS = set(
    # primitive types (usually their own node type, but not inside macros) and the std prelude
    "bool char str u8 u16 u32 u64 u128 usize i8 i16 i32 i64 i128 isize f32 f64 "
    "Option Some None Result Ok Err Vec String Box ToString ToOwned Clone Copy Send Sync Sized Unpin Drop "
    "Fn FnMut FnOnce Iterator IntoIterator DoubleEndedIterator ExactSizeIterator Extend Default Eq PartialEq "
    "Ord PartialOrd AsRef AsMut Into From TryFrom TryInto FromIterator Debug Display Hash "
    # standard macros (the identifier before `!`)
    "println print eprintln eprint format write writeln panic assert assert_eq assert_ne debug_assert "
    "debug_assert_eq debug_assert_ne vec unreachable unimplemented todo matches cfg env concat stringify "
    "include include_str include_bytes line column file module_path format_args compile_error dbg "
    "macro_rules "
    # built-in attributes (the identifier inside `#[...]`)
    "derive inline allow deny warn forbid doc test cfg_attr must_use repr deprecated non_exhaustive".split()
)
_GO_KEYWORDS = set(
    "break case chan const continue default defer else fallthrough for func go goto if import interface map "
    "package range return select struct switch type var".split()
)
_GO_BUILTINS = set(  # the Go spec's predeclared identifiers
    "any bool byte comparable complex64 complex128 error float32 float64 int int8 int16 int32 int64 rune string "
    "uint uint8 uint16 uint32 uint64 uintptr true false iota nil append cap clear close complex copy delete imag "
    "len make max min new panic print println real recover".split()
)
_NOT_IDENTIFIERS = {  # `_` is a placeholder in all three languages, not a name
    # Python's builtins module also lists dunders (`__name__`, `__doc__`): as attributes they are names
    "python": set(keyword.kwlist) | {n for n in dir(builtins) if not n.startswith("__")} | {"_"},
    "rust": _RUST_KEYWORDS | _RUST_BUILTINS | {"_"},
    "go": _GO_KEYWORDS | _GO_BUILTINS | {"_"},
}
_NAME = re.compile(r"^[^\W\d]\w*$")

# Openings tried in front of a segment that starts inside a string or comment.
_REOPENERS = {"python": (b'"""', b"'''"), "rust": (b"/*", b'"'), "go": (b"/*", b"`")}
# ... and closings tried after a segment that ends inside one.
_CLOSERS = {"python": (b'"""', b"'''"), "rust": (b"*/", b'"'), "go": (b"*/", b"`")}
# Share of a segment's bytes in error nodes above which those repairs are tried.
_RETRY_ERROR_SHARE = 0.05


@dataclass(frozen=True)
class Identifier:
    """One occurrence of an identifier: its byte range in the source and its name."""

    start: int
    end: int
    name: bytes


@dataclass(frozen=True)
class DocPair:
    """A function with its documentation, as byte ranges of the source.

    ``doc`` holds the documentation text (docstring content, or each doc-comment line
    without its ``///`` / ``//`` marker); ``code`` the function without that documentation.
    """

    name: bytes
    doc: tuple[tuple[int, int], ...]
    code: tuple[tuple[int, int], ...]


def check_language(lang: str) -> str:
    """``lang`` if it has a grammar here; else a CodemixError that says what to change."""
    if lang not in LANGUAGES:
        raise CodemixError(
            f"no tree-sitter grammar for language {lang!r}; identifier-aware objectives support {list(LANGUAGES)}. "
            "Set the source's `lang` to one of them, or give that source span corruption only (code: false)."
        )
    return lang


@functools.cache
def _language(lang: str):  # -> tree_sitter.Language

    grammar = {"python": tree_sitter_python, "rust": tree_sitter_rust, "go": tree_sitter_go}[lang]
    return tree_sitter.Language(grammar.language())


@functools.cache
def _parser(lang: str):  # -> tree_sitter.Parser

    return tree_sitter.Parser(_language(lang))


@functools.cache
def _query(lang: str, pattern: str):  # -> tree_sitter.Query

    return tree_sitter.Query(_language(lang), pattern)


def _captures(lang: str, pattern: str, node) -> list:
    found = tree_sitter.QueryCursor(_query(lang, pattern)).captures(node)
    nodes = [n for group in found.values() for n in group]
    return sorted(nodes, key=lambda n: (n.start_byte, n.end_byte))


def _error_bytes(lang: str, tree) -> int:
    if not tree.root_node.has_error:
        return 0
    return sum(n.end_byte - n.start_byte + 1 for n in _captures(lang, "(ERROR) @e", tree.root_node))


def _parse(source: bytes, lang: str) -> tuple[object, int]:
    """Parse ``source``; return the tree and the byte shift of a re-opening prefix (0 if none).

    A fragment cut from a document may start inside a string or comment (a prefix that
    opens one repairs it) and end inside one (a suffix that closes it repairs that). When
    errors cover more than :data:`_RETRY_ERROR_SHARE` of the plain parse (prose read as
    code; a fragment merely cut mid-statement has a small error and is kept as it is), each
    prefix and each suffix is tried, then the best of both together, and the parse with the
    fewest bytes in error nodes wins. Node offsets minus the shift are offsets into
    ``source``; nodes past its end belong to the suffix.
    """
    parser = _parser(lang)
    best = parser.parse(source)
    best_shift, best_err = 0, _error_bytes(lang, best)
    if best_err <= _RETRY_ERROR_SHARE * len(source):
        return best, 0
    best_prefix, best_suffix = b"", b""
    prefix_err = suffix_err = best_err
    for prefix in _REOPENERS[lang]:
        tree = parser.parse(prefix + source)
        err = _error_bytes(lang, tree)
        if err < prefix_err:
            best_prefix, prefix_err = prefix, err
        if err < best_err:
            best, best_shift, best_err = tree, len(prefix), err
        if not err:
            return best, best_shift
    for suffix in _CLOSERS[lang]:
        tree = parser.parse(source + suffix)
        err = _error_bytes(lang, tree)
        if err < suffix_err:
            best_suffix, suffix_err = suffix, err
        if err < best_err:
            best, best_shift, best_err = tree, 0, err
        if not err:
            return best, best_shift
    if best_err and best_prefix and best_suffix:
        tree = parser.parse(best_prefix + source + best_suffix)
        if _error_bytes(lang, tree) < best_err:
            best, best_shift = tree, len(best_prefix)
    return best, best_shift


def _identifiers_in_tree(tree, shift: int, source: bytes, lang: str) -> list[Identifier]:
    pattern = "[" + " ".join(f"({t})" for t in _IDENTIFIER_NODES[lang]) + "] @id"
    excluded = _NOT_IDENTIFIERS[lang]
    out = []
    for node in _captures(lang, pattern, tree.root_node):
        start, end = node.start_byte - shift, node.end_byte - shift
        if start < 0 or end > len(source):  # inside the re-opening prefix or closing suffix
            continue
        name = source[start:end]
        text = name.decode("utf-8", "replace")
        if not _NAME.match(text) or text in excluded:
            continue
        out.append(Identifier(start, end, name))
    return out


def find_identifiers(source: bytes | str, lang: str) -> list[Identifier]:
    """Every identifier occurrence in ``source`` (a document or a fragment of one), in order."""
    lang = check_language(lang)
    data = source.encode("utf-8") if isinstance(source, str) else source
    tree, shift = _parse(data, lang)
    return _identifiers_in_tree(tree, shift, data, lang)


# ----------------------------------------------------------------------------- documented functions


def _python_pairs(tree, shift: int, size: int) -> list[DocPair]:
    pairs = []
    for fn in _captures("python", "(function_definition) @fn", tree.root_node):
        body = fn.child_by_field_name("body")
        name = fn.child_by_field_name("name")
        if body is None or name is None or body.named_child_count == 0:
            continue
        first = body.named_children[0]
        if first.type != "expression_statement" or first.named_child_count != 1:
            continue
        string = first.named_children[0]
        if string.type != "string":
            continue
        content = [c for c in string.named_children if c.type == "string_content"]
        if not content:
            continue
        doc = ((content[0].start_byte, content[-1].end_byte),)
        code = ((fn.start_byte, first.start_byte), (first.end_byte, fn.end_byte))
        pairs.append(DocPair(name.text, doc, code))
    return _shifted(pairs, shift, size)


def _preceding_docs(fn, is_doc, *, adjacent: bool) -> list:
    """Doc comments above ``fn`` (Rust attributes in between are skipped), top to bottom.

    With ``adjacent`` (Go's rule) each must end on the line right above what follows it;
    without it (Rust's rule: an outer doc comment documents the next item) blank lines may
    separate them.
    """
    docs, node = [], fn.prev_named_sibling
    row = fn.start_point[0]
    while node is not None:
        last_row = node.end_point[0] - (1 if node.end_point[1] == 0 else 0)  # a line comment may end at column 0
        if adjacent and last_row != row - 1:
            break
        if node.type == "attribute_item" or is_doc(node):
            if is_doc(node):
                docs.append(node)
            row = node.start_point[0]
        else:
            break
        node = node.prev_named_sibling
    return docs[::-1]


def _rust_pairs(tree, shift: int, size: int) -> list[DocPair]:
    def is_doc(node) -> bool:
        return node.type in ("line_comment", "block_comment") and any(
            c.type == "outer_doc_comment_marker" for c in node.children
        )

    pairs = []
    for fn in _captures("rust", "(function_item) @fn", tree.root_node):
        name = fn.child_by_field_name("name")
        docs = _preceding_docs(fn, is_doc, adjacent=False)
        texts = [c for d in docs for c in d.named_children if c.type == "doc_comment"]
        if name is None or not texts:
            continue
        doc = tuple((t.start_byte, t.end_byte) for t in texts)
        pairs.append(DocPair(name.text, doc, ((fn.start_byte, fn.end_byte),)))
    return _shifted(pairs, shift, size)


def _go_pairs(tree, shift: int, size: int) -> list[DocPair]:
    def is_doc(node) -> bool:
        return node.type == "comment" and node.text.startswith(b"//")

    pairs = []
    for fn in _captures("go", "[(function_declaration) (method_declaration)] @fn", tree.root_node):
        name = fn.child_by_field_name("name")
        docs = _preceding_docs(fn, is_doc, adjacent=True)
        if name is None or not docs:
            continue
        doc = tuple((d.start_byte + 2, d.end_byte) for d in docs)  # without the `//`
        pairs.append(DocPair(name.text, doc, ((fn.start_byte, fn.end_byte),)))
    return _shifted(pairs, shift, size)


def _shifted(pairs: list[DocPair], shift: int, size: int) -> list[DocPair]:
    def move(ranges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
        return tuple((s - shift, e - shift) for s, e in ranges if e > s)

    out = []
    for p in pairs:
        doc, code = move(p.doc), move(p.code)
        if doc and code and min(s for s, _ in doc + code) >= 0 and max(e for _, e in doc + code) <= size:
            out.append(DocPair(p.name, doc, code))
    return out


_PAIR_FINDERS = {"python": _python_pairs, "rust": _rust_pairs, "go": _go_pairs}


def _pairs_in_tree(tree, shift: int, source: bytes, lang: str) -> list[DocPair]:
    out = []
    for pair in _PAIR_FINDERS[lang](tree, shift, len(source)):
        # A function cut off at the end of a chunk parses with errors: not a usable pair.
        lo, hi = pair.code[0][0] + shift, pair.code[-1][1] + shift
        fn = tree.root_node.named_descendant_for_byte_range(lo, hi)
        if fn is not None and fn.has_error:
            continue
        if any(source[s:e].strip() for s, e in pair.doc):
            out.append(pair)
    return out


def find_doc_pairs(source: bytes | str, lang: str) -> list[DocPair]:
    """Functions of ``source`` that carry a docstring (Python) or doc comment (Rust ``///``, Go ``//``)."""
    lang = check_language(lang)
    data = source.encode("utf-8") if isinstance(source, str) else source
    tree, shift = _parse(data, lang)
    return _pairs_in_tree(tree, shift, data, lang)


# ----------------------------------------------------------------------------- token level


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet (GPT-2): every byte as a printable character."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


class TokenBytes:
    """Token id -> the exact bytes it stands for, for a byte-level BPE tokenizer.

    Special tokens (``<eos>``, ``<pad>``, sentinels) map to ``None``: they carry no source bytes.
    """

    def __init__(self, tokenizer) -> None:  # tokenizers.Tokenizer
        spec = json.loads(tokenizer.to_str())
        decoder = (spec.get("decoder") or {}).get("type")
        if decoder != "ByteLevel":
            raise CodemixError(
                f"identifier-aware objectives need a byte-level BPE tokenizer (decoder ByteLevel); this tokenizer's "
                f"decoder is {decoder!r}. Train the study's own tokenizer (data.tokenizer without `path`) or give "
                "a byte-level BPE tokenizer.json."
            )
        to_byte = {c: b for b, c in _bytes_to_unicode().items()}
        special = {t["id"] for t in spec.get("added_tokens", []) if t.get("special")}
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.table: list[bytes | None] = [None] * (max(vocab.values()) + 1)
        for token, i in vocab.items():
            if i in special or any(c not in to_byte for c in token):
                continue
            self.table[i] = bytes(to_byte[c] for c in token)
        self.lengths = np.array([-1 if b is None else len(b) for b in self.table], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.table)

    def layout(self, ids: Sequence[int] | np.ndarray) -> tuple[bytes, np.ndarray, np.ndarray, list[tuple[int, int]]]:
        """The chunk's bytes, each token's [start, end) byte offsets, and the token ranges of its segments.

        A segment is a maximal run of byte-carrying tokens (documents are separated by special tokens).
        """
        ids = np.asarray(ids, dtype=np.int64)
        lengths = self.lengths[ids]
        special = lengths < 0
        lengths = np.where(special, 0, lengths)
        ends = np.cumsum(lengths)
        starts = ends - lengths
        data = b"".join(self.table[i] or b"" for i in ids.tolist())
        segments, begin = [], 0
        for pos in np.flatnonzero(special).tolist() + [len(ids)]:
            if pos > begin:
                segments.append((begin, pos))
            begin = pos + 1
        return data, starts, ends, segments


def _token_span(starts: np.ndarray, ends: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """Token indices [first, last) of the tokens overlapping bytes [lo, hi)."""
    return int(np.searchsorted(ends, lo, "right")), int(np.searchsorted(starts, hi, "left"))


@dataclass(frozen=True)
class TokenIdentifiers:
    """Identifiers of a token chunk.

    ``tagged``: per token, whether it overlaps an identifier (identifier-tagging labels).
    ``occurrence``: per token, the index of the identifier occurrence it belongs to, or -1
    (a token shared by two occurrences belongs to the first). ``names``: the name of each
    occurrence — its bytes, or, from :class:`codemix.data.annotations.StreamAnnotations`, a
    64-bit key of them (equal names, equal keys). ``maskable``: per occurrence, whether its
    tokens hold nothing but that identifier and whitespace, and hold no other occurrence —
    only then can masked identifier prediction hide it without hiding anything else.
    ``spans``: (occurrences, 2), the token range [start, end) each occurrence overlaps.
    """

    tagged: np.ndarray
    occurrence: np.ndarray
    names: list[bytes] | list[int]
    maskable: list[bool]
    spans: np.ndarray


@dataclass(frozen=True)
class TokenDocPair:
    """A documented function of a token chunk: token indices of its documentation and of its code."""

    name: bytes
    doc: np.ndarray
    code: np.ndarray


class _Occurrences:
    """Identifier occurrences of a chunk, added as byte ranges in order, mapped to the tokens that hold them."""

    def __init__(self, data: bytes, starts: np.ndarray, ends: np.ndarray) -> None:
        self.data = data
        self.starts, self.ends = starts.tolist(), ends.tolist()  # plain lists: add() runs per identifier
        self.occurrence = [-1] * len(self.starts)
        self.names: list[bytes] = []
        self.maskable: list[bool] = []
        self.spans: list[tuple[int, int]] = []

    def add(self, start: int, end: int, name: bytes) -> None:
        lo = bisect.bisect_right(self.ends, start)  # first token ending after the start
        hi = bisect.bisect_left(self.starts, end)  # tokens starting before the end
        if lo >= hi:
            return
        k = len(self.names)
        self.names.append(name)
        self.spans.append((lo, hi))
        shared = {self.occurrence[t] for t in range(lo, hi) if self.occurrence[t] >= 0}
        for j in shared:
            self.maskable[j] = False  # a token shared by two occurrences
        outside = self.data[self.starts[lo] : start] + self.data[end : self.ends[hi - 1]]
        self.maskable.append(not shared and not outside.strip())
        for t in range(lo, hi):
            if self.occurrence[t] < 0:
                self.occurrence[t] = k

    def result(self) -> TokenIdentifiers:
        occ = np.asarray(self.occurrence, dtype=np.int64)
        spans = np.asarray(self.spans, dtype=np.int64).reshape(-1, 2)
        return TokenIdentifiers(occ >= 0, occ, self.names, self.maskable, spans)


def _token_pairs(pairs: list[DocPair], base: int, size: int, starts: np.ndarray, ends: np.ndarray,
                 ) -> list[TokenDocPair]:
    """The pairs found in a segment of ``size`` bytes at byte ``base`` of the chunk, as token indices."""

    def tokens(ranges: tuple[tuple[int, int], ...]) -> np.ndarray:
        idx = [np.arange(*_token_span(starts, ends, base + s, base + e)) for s, e in ranges]
        return np.unique(np.concatenate(idx)) if idx else np.zeros(0, dtype=np.int64)

    out = []
    for pair in pairs:
        if pair.code[-1][1] >= size:  # may continue past the chunk
            continue
        doc, code = tokens(pair.doc), tokens(pair.code)
        code = np.setdiff1d(code, doc)
        if len(doc) and len(code):
            out.append(TokenDocPair(pair.name, doc, code))
    return out


def _annotate(ids: Sequence[int] | np.ndarray, lang: str, token_bytes: TokenBytes, *, identifiers: bool,
              doc_pairs: bool) -> tuple[TokenIdentifiers, list[TokenDocPair]]:
    """Parse each segment of a chunk once; map what is asked for (identifiers, documented functions) to tokens."""
    lang = check_language(lang)
    data, starts, ends, segments = token_bytes.layout(ids)
    found = _Occurrences(data, starts, ends)
    pairs: list[TokenDocPair] = []
    for tok_lo, tok_hi in segments:
        base = int(starts[tok_lo])
        seg = data[base : int(ends[tok_hi - 1])]
        tree, shift = _parse(seg, lang)
        if identifiers:
            for ident in _identifiers_in_tree(tree, shift, seg, lang):
                found.add(base + ident.start, base + ident.end, ident.name)
        if doc_pairs:
            pairs += _token_pairs(_pairs_in_tree(tree, shift, seg, lang), base, len(seg), starts, ends)
    return found.result(), pairs


def token_identifiers(ids: Sequence[int] | np.ndarray, lang: str, token_bytes: TokenBytes) -> TokenIdentifiers:
    """Find the identifiers of a chunk of token ids of code in ``lang``."""
    return _annotate(ids, lang, token_bytes, identifiers=True, doc_pairs=False)[0]


def token_doc_pairs(ids: Sequence[int] | np.ndarray, lang: str, token_bytes: TokenBytes) -> list[TokenDocPair]:
    """Documented functions that lie wholly inside a chunk of token ids, as token indices."""
    return _annotate(ids, lang, token_bytes, identifiers=False, doc_pairs=True)[1]


def token_annotations(ids: Sequence[int] | np.ndarray, lang: str, token_bytes: TokenBytes,
                      ) -> tuple[TokenIdentifiers, list[TokenDocPair]]:
    """:func:`token_identifiers` and :func:`token_doc_pairs` of a chunk, from one parse of each segment.

    Segments (the documents of a stream, split at ``<eos>``) are parsed one at a time, so
    a chunk of many documents needs memory for one parse tree only.
    """
    return _annotate(ids, lang, token_bytes, identifiers=True, doc_pairs=True)
