"""Vulnerability-classification examples: the `vuln/` sets of the data directory, cleaned and split.

Every set becomes :class:`Example` records ``{id, dataset, lang, cwe, label, group, code}``
(label 1 = vulnerable). The sets (SOURCES.md, ``vuln/``):

- **Juliet C/C++ and Java** (``juliet_c``, ``juliet_java``): functions cut out of each test case
  with tree-sitter (:func:`juliet_functions`); ``bad``-named functions are 1, ``good*``-named 0.
  Juliet writes the label everywhere, so everything that repeats it is removed: comments
  (``FLAW``, ``FIX``, ``POTENTIAL FLAW``, the ``@description`` header), the ``OMITBAD`` /
  ``OMITGOOD`` blocks (only whole functions are kept), the marker parts of identifiers
  (``bad``, ``good``, ``goodG2B``, ``goodB2G``, ``good1``, ``badSink``, ``helperGood1``, ``BadClass``
  lose their ``bad``/``good``/``G2B``/``B2G`` parts: ``func``, ``sink``, ``helper``, ``Class``),
  CWE names in identifiers (``CWE121_..._01_bad`` -> ``func``), the same markers inside string
  literals (``"output_bad.txt"``), and the modifiers that differ between the two (C's ``static``
  on every good function, Java's ``public bad()`` vs ``private goodG2B()``). The wrapper
  ``good()``, which only calls the good variants, is not an example; nor are functions without
  a marker (``main``, class helpers). The group is the test-case family.
- **OWASP Benchmark** Java and Python (``owasp_java``, ``owasp_python``): one example per test
  case, ``vulnerable`` is the label; group = the test case.
- **SVEN** (``sven``): ``func_src_before`` -> 1, ``func_src_after`` -> 0; language from the file
  extension (Python, C, C++); group = the fix (its commit), so both halves stay together.
- **CWEval** (``cweval``): ``insecure`` -> 1, ``secure`` -> 0; group = the task (all its languages);
  the Python ``*_unsafe[_k]`` functions get their entry's name back.
- **gosec** (``gosec``): ``issues > 0`` -> 1; samples with a ``#nosec`` / ``gosec:disable``
  annotation (clean only because of it) are left out; group = the rule.
- **CyberSecEval autocomplete** (``cyberseceval``): rule-flagged code, positives only
  (:data:`POSITIVE_ONLY_SETS`); group = the repository.

Code of every set is cleaned the same way (:func:`clean_code`): LF line ends, comments (and
Python docstrings) removed where a tree-sitter grammar exists, blank lines dropped — so no set
is told apart by its comments. A generic JSONL ``{lang, label, code[, cwe, group, id]}`` reads
any other set (:func:`read_examples`). Splits are by group, seeded (:func:`split_by_group`).
"""

from __future__ import annotations

import functools
import gzip
import json
import random
import re
import textwrap
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tree_sitter
import tree_sitter_c
import tree_sitter_cpp
import tree_sitter_go
import tree_sitter_java
import tree_sitter_python
import tree_sitter_rust

from codemix.config import VULN_LANGUAGES, VULN_SETS, normalize_vuln_language
from codemix.data.fetch import data_path
from codemix.errors import DataError

__all__ = [
    "POSITIVE_ONLY_SETS",
    "SETS",
    "Example",
    "clean_code",
    "drop_conflicts",
    "juliet_functions",
    "load_set",
    "load_sets",
    "neutral_name",
    "normalize_cwe",
    "read_examples",
    "split_by_group",
]


@dataclass(frozen=True)
class Example:
    """One function or file to classify: 1 = vulnerable, 0 = not."""

    id: str
    dataset: str
    lang: str
    cwe: str | None
    label: int
    group: str
    """Examples of one group (a Juliet family, a fix, a task) are never split apart."""
    code: str


# ----------------------------------------------------------------------------- tree-sitter


_GRAMMARS = {"c": tree_sitter_c, "cpp": tree_sitter_cpp, "java": tree_sitter_java, "python": tree_sitter_python,
             "go": tree_sitter_go, "rust": tree_sitter_rust}
_COMMENTS = {"comment", "line_comment", "block_comment"}
#: Per language: what is removed (comments; Python docstrings) and, in Juliet, renamed (identifiers, string text).
_QUERIES = {
    "comments": {"c": "(comment) @x", "cpp": "(comment) @x", "go": "(comment) @x",
                 "java": "[(line_comment) (block_comment)] @x", "rust": "[(line_comment) (block_comment)] @x",
                 "python": "(comment) @x (module . (expression_statement (string)) @x)"
                           " (block . (expression_statement (string)) @x)"},
    "names": {"c": "[(identifier) (field_identifier) (type_identifier) (statement_identifier)] @x",
              "cpp": "[(identifier) (field_identifier) (type_identifier) (namespace_identifier)"
                     " (statement_identifier)] @x",
              "java": "[(identifier) (type_identifier)] @x"},
    "strings": {"c": "[(string_content) (char_literal)] @x", "cpp": "[(string_content) (char_literal)] @x",
                "java": "(string_fragment) @x"},
}


@functools.cache
def _language(lang: str) -> tree_sitter.Language:
    return tree_sitter.Language(_GRAMMARS[lang].language())


@functools.cache
def _parser(lang: str) -> tree_sitter.Parser:
    return tree_sitter.Parser(_language(lang))


@functools.cache
def _query(kind: str, lang: str) -> tree_sitter.Query:
    return tree_sitter.Query(_language(lang), _QUERIES[kind][lang])


def _captured(kind: str, lang: str, node: Any) -> list[Any]:
    """Nodes of ``node``'s subtree that the query ``kind`` captures (run in C: fast on whole files)."""
    return [n for group in tree_sitter.QueryCursor(_query(kind, lang)).captures(node).values() for n in group]


def _comment_edits(root: Any, lang: str) -> list[tuple[int, int, bytes]]:
    """Byte ranges of comments (and Python docstrings), to be removed."""
    return [(n.start_byte, n.end_byte, b"") for n in _captured("comments", lang, root)]


def _apply(source: bytes, edits: Sequence[tuple[int, int, bytes]], start: int = 0, end: int | None = None) -> bytes:
    """``source[start:end]`` with each (lo, hi, replacement) applied; nested edits inside a larger one are dropped."""
    out, pos = [], start
    for lo, hi, rep in sorted(edits, key=lambda e: (e[0], -e[1])):
        if lo < pos:  # inside a range already replaced (a comment in a removed docstring...)
            continue
        out += [source[pos:lo], rep]
        pos = hi
    out.append(source[pos:end])
    return b"".join(out)


def _tidy(text: str) -> str:
    """Trailing spaces and blank lines (what removing comments leaves behind) removed."""
    return "\n".join(line.rstrip() for line in text.split("\n") if line.strip()) + "\n"


#: Lines of CWEval's reference files that mark the prompt and solution (comments in C, C++, Go, JS, Python).
_CWEVAL_MARKER = re.compile(r"^[ \t]*(//|#)[ \t]*BEGIN (PROMPT|SOLUTION|ENTRYPOINT)[ \t]*$", re.MULTILINE)


def clean_code(code: str, lang: str) -> str:
    """``code`` with LF line ends, without comments (and Python docstrings) and without blank lines.

    Languages without a grammar here (JavaScript, C#, PHP) keep their comments.
    """
    code = _CWEVAL_MARKER.sub("", code.replace("\r\n", "\n").replace("\r", "\n"))
    if lang in _GRAMMARS:
        source = code.encode("utf-8")
        tree = _parser(lang).parse(source)
        code = _apply(source, _comment_edits(tree.root_node, lang)).decode("utf-8")
    return _tidy(code)


# ----------------------------------------------------------------------------- Juliet


#: The label markers of Juliet's names: ``bad``, ``good``, ``goodG2B2``, ``G2B``, ``B2G1``, ``good1``.
_MARKER = re.compile(r"(?i)(?:bad|good)(?:g2b|b2g)?\d*|g2b\d*|b2g\d*")
#: A Juliet test-case name inside an identifier: up to its flow variant (``CWE121_..._01``, ``_01a``), else up to
#: its functional variant (``CWE690_NULL_Deref_From_Return__`` of ``..._Class_Helper``), else all of it.
_CASE_NAME = re.compile(r"CWE\d+\w*?_\d\d[a-z]?(?=_|$)|CWE\d+\w*?__|CWE\d+\w*")
_FUNCTIONS = {"function_definition", "method_declaration", "constructor_declaration"}


def neutral_name(name: str) -> str:
    """An identifier without Juliet's label markers and test-case names (``func`` when nothing is left).

    ``CWE121_Stack_Based_Buffer_Overflow__CWE129_large_01_bad`` -> ``func``, ``goodG2BSink`` -> ``sink``,
    ``helperGood1`` -> ``helper``, ``dataGoodBuffer`` -> ``dataBuffer``, ``BadClass`` -> ``Class``;
    other names are kept as they are.
    """
    if not (_MARKER.search(name) or _CASE_NAME.search(name)):
        return name
    rest = re.sub(r"_+", "_", _MARKER.sub("", _CASE_NAME.sub("", name)))
    rest = ("_" if name.startswith("_") else "") + rest.strip("_")
    if not rest.strip("_"):
        return "func"
    if name[:1].islower() and rest[:1].isupper() and not rest.isupper():
        rest = rest[0].lower() + rest[1:]  # badSink -> sink, not Sink
    return rest


def _neutral_text(text: str) -> str:
    """String-literal content without the markers (``output_bad.txt`` -> ``output_.txt``, ``cwe617`` -> ``)."""
    return _MARKER.sub("", re.sub(r"(?i)cwe\d+[A-Za-z0-9_]*", "", text))


def _function_name(node: Any, lang: str) -> str:
    if lang == "java":
        return node.child_by_field_name("name").text.decode()
    d = node.child_by_field_name("declarator")
    while d is not None and d.child_by_field_name("declarator") is not None:
        d = d.child_by_field_name("declarator")
    return d.text.decode() if d is not None else ""


def _label_of(name: str) -> int | None:
    """1 for a ``bad`` name, 0 for a ``good`` one, None for neither (or both)."""
    bare = _CASE_NAME.sub("", name.split("::")[-1])
    if re.search(r"(?i)g2b|b2g", bare) and re.search(r"(?i)sink|source", bare):
        return None  # a G2B sink is the bad sink (B2G source: the bad source), safe only through its caller
    bad, good = re.search(r"(?i)bad", bare), re.search(r"(?i)good", bare)
    return None if bool(bad) == bool(good) else int(bool(bad))


def _functions(root: Any) -> list[Any]:
    """Outermost function definitions (a Java anonymous class's `run` stays inside its method)."""
    found, stack = [], [root]
    while stack:
        n = stack.pop()
        if n.type in _FUNCTIONS:
            found.append(n)
        else:
            stack.extend(reversed(n.children))
    return found


def _is_good_wrapper(name: str, node: Any) -> bool:
    """Juliet's ``good()``: it calls the good variants and holds no code of its own."""
    if _CASE_NAME.sub("", name).strip("_").lower() != "good":
        return False
    body = node.child_by_field_name("body")
    statements = [c for c in (body.named_children if body is not None else []) if c.type not in _COMMENTS]
    return all(s.type == "expression_statement" and s.named_children
               and s.named_children[0].type in ("call_expression", "method_invocation") for s in statements)


def _juliet_edits(fn: Any, lang: str) -> list[tuple[int, int, bytes]]:
    """Comments out, identifiers and strings neutralized, label-revealing modifiers dropped."""
    edits = _comment_edits(fn, lang)
    names = sorted(_captured("names", lang, fn), key=lambda n: n.start_byte)
    # Distinct marked names stay distinct (`dataBadBuffer`, `dataGoodBuffer` -> `dataBuffer`, `dataBuffer2`,
    # numbered in order of first use): which buffer the code uses is what makes it safe or not.
    used = {n.text.decode() for n in names if neutral_name(n.text.decode()) == n.text.decode()}
    renamed: dict[str, str] = {}
    for n in names:
        name = n.text.decode()
        if name in used and name not in renamed:
            continue
        if name not in renamed:
            base = new = neutral_name(name)
            k = 2
            while new in used:
                new, k = f"{base}{k}", k + 1
            renamed[name] = new
            used.add(new)
        edits.append((n.start_byte, n.end_byte, renamed[name].encode()))
    for n in _captured("strings", lang, fn):
        text = n.text.decode()
        if (new := _neutral_text(text)) != text:
            edits.append((n.start_byte, n.end_byte, new.encode()))
    # the function's own modifiers (and the space after them): `static` on every C good function,
    # `public bad()` vs `private goodG2B()` in Java
    source = fn.text
    for child in fn.children:
        modifiers = [child] if child.type == "storage_class_specifier" else (
            [m for m in child.children if m.type in ("public", "private", "protected", "static")]
            if child.type == "modifiers" else [])
        for m in modifiers:
            end = m.end_byte
            while end - fn.start_byte < len(source) and source[end - fn.start_byte] in b" \t":
                end += 1
            edits.append((m.start_byte, end, b""))
    return edits


def juliet_functions(text: str, lang: str) -> list[tuple[str, int, str]]:
    """``(name, label, cleaned code)`` of every labelled function of a Juliet test-case file.

    ``lang`` is ``c``, ``cpp`` or ``java``. See the module docstring for what is removed.
    """
    source = text.replace("\r\n", "\n").encode("utf-8")
    root = _parser(lang).parse(source).root_node
    out = []
    for fn in _functions(root):
        name = _function_name(fn, lang)
        label = _label_of(name)
        if label is None or _is_good_wrapper(name, fn):
            continue
        code = _apply(source, _juliet_edits(fn, lang), fn.start_byte, fn.end_byte).decode("utf-8")
        line_start = source.rfind(b"\n", 0, fn.start_byte) + 1
        indent = source[line_start:fn.start_byte].decode("utf-8")  # the first line starts mid-line: its indentation
        code = textwrap.dedent((indent if not indent.strip() else "") + code)  # (mixed tabs and spaces: not all)
        out.append((name, label, _tidy(code).lstrip()))
    return out


# ----------------------------------------------------------------------------- the sets


def _read_jsonl(rel: str) -> list[dict[str, Any]]:
    with gzip.open(data_path(rel), "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def normalize_cwe(value: Any) -> str | None:
    """``CWE-<n>`` for any spelling (``CWE121``, ``cwe-022``, ``CWE-680``); None when there is no number."""
    m = re.search(r"(?i)cwe[-_ ]?0*(\d+)", str(value)) if value else None
    return f"CWE-{m.group(1)}" if m else None


def _juliet(name: str, rel: str) -> list[Example]:
    out = []
    for r in _read_jsonl(rel):
        if r["family"] is None:  # support files and helper classes
            continue
        for fn, label, code in juliet_functions(r["text"], r["lang"]):
            out.append(Example(f"{name}:{r['path']}:{fn}", name, r["lang"], normalize_cwe(r["cwe"]), label,
                               f"{name}:{r['family']}", code))
    return out


def _owasp(name: str, rel: str) -> list[Example]:
    return [Example(f"{name}:{r['name']}", name, r["lang"], normalize_cwe(r["cwe"]), int(r["vulnerable"]),
                    f"{name}:{r['name']}", clean_code(r["text"], r["lang"])) for r in _read_jsonl(rel)]


_SVEN_LANGS = {".py": "python", ".c": "c", ".h": "c", ".cpp": "cpp", ".cc": "cpp", ".C": "cpp"}


def _sven(name: str, rel: str) -> list[Example]:
    out = []
    for i, r in enumerate(_read_jsonl(rel)):
        lang = _SVEN_LANGS[Path(r["file_name"]).suffix]
        cwe, group = normalize_cwe(r["cwe"]), f"{name}:{r['commit_link']}"
        out += [Example(f"{name}:{i}:before", name, lang, cwe, 1, group, clean_code(r["func_src_before"], lang)),
                Example(f"{name}:{i}:after", name, lang, cwe, 0, group, clean_code(r["func_src_after"], lang))]
    return out


def _cweval(name: str, rel: str) -> list[Example]:
    out = []
    for r in _read_jsonl(rel):
        lang, cwe, group = r["lang"], normalize_cwe(r["cwe"]), f"{name}:{r['task']}"
        out.append(Example(f"{name}:{r['task']}:{lang}:secure", name, lang, cwe, 0, group,
                           clean_code(r["secure"], lang)))
        if r["insecure"] is not None:
            insecure = re.sub(r"\b(\w+)_unsafe(?:_\d+)?\b", r"\1", r["insecure"])  # the entry's own name back
            out.append(Example(f"{name}:{r['task']}:{lang}:insecure", name, lang, cwe, 1, group,
                               clean_code(insecure, lang)))
    return out


_SUPPRESSED = re.compile(r"#nosec|gosec:disable")


def _gosec(name: str, rel: str) -> list[Example]:
    out = []
    for r in _read_jsonl(rel):
        code = "\n".join(r["code"])
        if _SUPPRESSED.search(code):  # clean only because of the annotation: the code is the vulnerable pattern
            continue
        out.append(Example(f"{name}:{r['var']}:{r['index']}", name, "go", normalize_cwe(r["cwe"]),
                           int(r["issues"] > 0), f"{name}:{r['rule']}", clean_code(code, "go")))
    return out


def _cyberseceval(name: str, rel: str) -> list[Example]:
    with gzip.open(data_path(rel), "rt", encoding="utf-8") as f:
        records = json.load(f)
    return [Example(f"{name}:{r['prompt_id']}:{r['language']}", name, normalize_vuln_language(r["language"]),
                    normalize_cwe(r["cwe_identifier"]), 1, f"{name}:{r['repo']}",
                    clean_code(r["origin_code"], normalize_vuln_language(r["language"]))) for r in records]


#: Set name -> (file in the data directory, loader).
SETS: dict[str, tuple[str, Callable[[str, str], list[Example]]]] = {
    "juliet_c": ("vuln/juliet_c.jsonl.gz", _juliet),
    "juliet_java": ("vuln/juliet_java.jsonl.gz", _juliet),
    "owasp_java": ("vuln/owasp_java.jsonl.gz", _owasp),
    "owasp_python": ("vuln/owasp_python.jsonl.gz", _owasp),
    "sven": ("vuln/sven.jsonl.gz", _sven),
    "cweval": ("vuln/cweval.jsonl.gz", _cweval),
    "gosec": ("vuln/gosec.jsonl.gz", _gosec),
    "cyberseceval": ("vuln/cyberseceval_autocomplete.json.gz", _cyberseceval),
}
#: Sets with vulnerable examples only (rule-flagged, not checked by hand).
POSITIVE_ONLY_SETS = frozenset({"cyberseceval"})


def drop_conflicts(examples: Sequence[Example]) -> list[Example]:
    """``examples`` without code that occurs with both labels (in one language): its label is not in the code.

    Juliet's ``bad()`` and ``goodB2G()`` that differ only in which sink they call, SVEN pairs whose
    fix is a comment, C++ classes whose flaw is a missing operator.
    """
    labels: dict[tuple[str, str], set[int]] = {}
    for e in examples:
        labels.setdefault((e.lang, e.code), set()).add(e.label)
    return [e for e in examples if len(labels[(e.lang, e.code)]) == 1]


@functools.cache
def _load_cached(name: str, path: str) -> tuple[Example, ...]:
    rel, loader = SETS[name]
    return tuple(loader(name, rel))


def load_set(name: str, *, conflicts: bool = False) -> list[Example]:
    """The examples of one built-in set (parsed once per process and data file), without code that occurs
    with both labels (:func:`drop_conflicts`; ``conflicts=True`` keeps it: the set as read, e.g. to count it)."""
    if name not in SETS:
        raise DataError(f"unknown vulnerability set {name!r}; known: {', '.join(SETS)}")
    examples = list(_load_cached(name, str(data_path(SETS[name][0]))))
    return examples if conflicts else drop_conflicts(examples)


def load_sets(names: Iterable[str]) -> list[Example]:
    return [e for name in names for e in load_set(name)]


def read_examples(path: str | Path) -> list[Example]:
    """Examples of a JSONL file (``.gz`` allowed) with ``lang``, ``label`` (0/1 or true/false) and ``code``
    per line, optionally ``cwe``, ``group`` and ``id``; each line is its own group unless it names one.

    Raises a :class:`DataError` naming the first bad line (a missing field, an unknown language,
    a label that is not 0/1) and for a file without examples.
    """
    path = data_path(str(path)) if not Path(path).is_file() else Path(path)
    name = path.name.split(".")[0]
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{path} line {n} is not JSON ({err.msg}); expected one object per line with "
                                "lang, label and code") from None
            missing = [k for k in ("lang", "label", "code") if not isinstance(r, dict) or r.get(k) is None]
            if missing:
                raise DataError(f"{path} line {n} has no {' / '.join(missing)} field; every line needs lang, label "
                                "(1 = vulnerable, 0 = not) and code (optional: cwe, group, id)")
            try:
                lang = normalize_vuln_language(str(r["lang"]))
            except ValueError as err:
                raise DataError(f"{path} line {n}: {err}") from None
            if r["label"] not in (0, 1):  # True/False compare equal to 1/0
                raise DataError(f"{path} line {n}: label is {r['label']!r}; expected 1 (vulnerable) or 0")
            group = f"{name}:{r['group']}" if r.get("group") is not None else f"{name}:{n}"
            out.append(Example(f"{name}:{r.get('id', n)}", name, lang, normalize_cwe(r.get("cwe")), int(r["label"]),
                               group, clean_code(str(r["code"]), lang)))
    if not out:
        raise DataError(f"{path} holds no examples; expected JSONL lines with lang, label and code")
    return out


# ----------------------------------------------------------------------------- splits


def split_by_group(examples: Sequence[Example], *, heldout: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(training, held-out) examples: ``heldout`` of each set's groups drawn with ``seed``, whole groups only.

    A set with a single group stays in training. The draw depends only on the groups of each
    set (not on the order of examples or on the other sets), so it is stable as sets are added.
    """
    groups: dict[str, set[str]] = {}
    for e in examples:
        groups.setdefault(e.dataset, set()).add(e.group)
    held: set[str] = set()
    for dataset, names in groups.items():
        if len(names) < 2:
            continue
        rng = random.Random(f"vuln:{seed}:{dataset}")
        k = min(max(1, round(heldout * len(names))), len(names) - 1)
        held.update(rng.sample(sorted(names), k))
    return [e for e in examples if e.group not in held], [e for e in examples if e.group in held]


assert set(VULN_LANGUAGES) >= set(_GRAMMARS) and tuple(SETS) == VULN_SETS  # the config's names are these
