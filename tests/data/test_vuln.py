"""Vulnerability sets: Juliet functions cut out with tree-sitter and cleaned of label leaks; counts; splits."""

from __future__ import annotations

import functools
import gzip
import json
import re
from collections import Counter
from pathlib import Path

import pytest
import tree_sitter

from codemix.data.vuln import _language as language
from codemix.data.vuln import (
    clean_code,
    juliet_functions,
    load_set,
    neutral_name,
    normalize_cwe,
    read_examples,
    split_by_group,
)
from codemix.errors import DataError

pytestmark = pytest.mark.xdist_group("data-vuln")


def _juliet_file(data_dir: Path, name: str, suffix: str) -> dict:
    with gzip.open(data_dir / "vuln" / f"{name}.jsonl.gz", "rt", encoding="utf-8") as f:
        return next(r for r in map(json.loads, f) if r["path"].endswith(suffix))


# ----------------------------------------------------------------------------- hand-checked Juliet files

C_GOOD_G2B = """\
void func()
{
    wchar_t * data;
    wchar_t dataBuffer[100] = L"";
    data = dataBuffer;
    wcscpy(data, L"C:\\\\Windows\\\\System32\\\\winsrv.dll");
    {
        HMODULE hModule;
        hModule = LoadLibraryW(data);
        if (hModule != NULL)
        {
            FreeLibrary(hModule);
            printLine("Library loaded and freed successfully");
        }
        else
        {
            printLine("Unable to load library");
        }
    }
}
"""


def test_juliet_c_file(data_dir):
    """CWE114 listen_socket 01: `..._01_bad()` and `static goodG2B()`; the `good()` wrapper and `main` are no examples.
    The bad function is the same up to its source: a socket read (with `#ifdef _WIN32` kept as code)."""
    record = _juliet_file(data_dir, "juliet_c", "CWE114_Process_Control__w32_wchar_t_listen_socket_01.c")
    assert "\r\n" in record["text"]  # C/C++ text has CRLF line ends; examples have LF
    found = juliet_functions(record["text"], "c")
    assert [(name, label) for name, label, _ in found] == [
        ("CWE114_Process_Control__w32_wchar_t_listen_socket_01_bad", 1), ("goodG2B", 0)]
    bad, good = found[0][2], found[1][2]
    assert good == C_GOOD_G2B
    assert bad.startswith("void func()\n{\n    wchar_t * data;\n    wchar_t dataBuffer[100] = L\"\";\n")
    assert "#ifdef _WIN32\n        WSADATA wsaData;" in bad and "listenSocket = socket(AF_INET, SOCK_STREAM" in bad
    assert bad.endswith(C_GOOD_G2B[C_GOOD_G2B.index("    {\n        HMODULE"):])  # the same sink
    assert "\r" not in bad + good


CPP_EXPECTED = {
    "bad": (("void func()\n{\n    TwoIntsClass * data;\n    data = NULL;\n    data = new TwoIntsClass;\n"
            "    data->intOne = 0;\n    data->intTwo = 0;\n    printIntLine(data->intOne);\n"
            "    printIntLine(data->intTwo);\n    ;\n}\n"), 1),
    "goodG2B": (("void func()\n{\n    TwoIntsClass * data;\n    data = NULL;\n    TwoIntsClass dataBuffer;\n"
                "    data = &dataBuffer;\n    data->intOne = 0;\n    data->intTwo = 0;\n"
                "    printIntLine(data->intOne);\n    printIntLine(data->intTwo);\n    ;\n}\n"), 0),
    "goodB2G": (("void func()\n{\n    TwoIntsClass * data;\n    data = NULL;\n    data = new TwoIntsClass;\n"
                "    data->intOne = 0;\n    data->intTwo = 0;\n    printIntLine(data->intOne);\n"
                "    printIntLine(data->intTwo);\n    delete data;\n}\n"), 0),
}


def test_juliet_cpp_file(data_dir):
    """CWE401 new TwoIntsClass 01 (functions in a namespace): the leak differs from the fix by `delete data;`,
    `dataGoodBuffer` loses its marker, and `static` (good functions only) is gone with its space."""
    record = _juliet_file(data_dir, "juliet_c", "CWE401_Memory_Leak__new_TwoIntsClass_01.cpp")
    assert record["lang"] == "cpp"
    found = {name: (code, label) for name, label, code in juliet_functions(record["text"], "cpp")}
    assert found == CPP_EXPECTED


JAVA_EXPECTED = {
    "bad": (('void func(HttpServletRequest request, HttpServletResponse response) throws Throwable\n{\n'
            '    String data;\n    data = System.getenv("ADD");\n    if (data != null)\n    {\n'
            '        Cookie cookieSink = new Cookie("lang", data);\n        response.addCookie(cookieSink);\n'
            '    }\n}\n'), 1),
    "goodG2B": (('void func(HttpServletRequest request, HttpServletResponse response) throws Throwable\n{\n'
                '    String data;\n    data = "foo";\n    if (data != null)\n    {\n'
                '        Cookie cookieSink = new Cookie("lang", data);\n        response.addCookie(cookieSink);\n'
                '    }\n}\n'), 0),
    "goodB2G": (('void func(HttpServletRequest request, HttpServletResponse response) throws Throwable\n{\n'
                '    String data;\n    data = System.getenv("ADD");\n    if (data != null)\n    {\n'
                '        Cookie cookieSink = new Cookie("lang", URLEncoder.encode(data, "UTF-8"));\n'
                '        response.addCookie(cookieSink);\n    }\n}\n'), 0),
}


def test_juliet_java_file(data_dir):
    """CWE113 addCookieServlet 01: `public bad` vs `private goodG2B` lose their modifiers; methods are dedented."""
    record = _juliet_file(data_dir, "juliet_java", "CWE113_HTTP_Response_Splitting__Environment_addCookieServlet_01.java")
    found = {name: (code, label) for name, label, code in juliet_functions(record["text"], "java")}
    assert found == JAVA_EXPECTED


def test_marker_names_become_neutral_and_distinct_ones_stay_distinct(data_dir):
    assert neutral_name("CWE121_Stack_Based_Buffer_Overflow__CWE129_large_01_bad") == "func"
    assert neutral_name("CWE690_NULL_Deref_From_Return__Class_Helper") == "Class_Helper"
    assert [neutral_name(n) for n in ("goodG2BSink", "helperGood1", "getStringBad", "BadClass", "badData")] == [
        "sink", "helper", "getString", "Class", "data"]
    assert [neutral_name(n) for n in ("_WIN32", "data", "printLine")] == ["_WIN32", "data", "printLine"]
    # CWE121 alloca memmove 01: bad uses the 50-char buffer, goodG2B the 100-char one; both declare both
    record = _juliet_file(data_dir, "juliet_c", "CWE121_Stack_Based_Buffer_Overflow__CWE805_char_alloca_memmove_01.c")
    (_, _, bad), (_, _, good) = juliet_functions(record["text"], "c")
    for code in (bad, good):
        assert "char * dataBuffer = (char *)ALLOCA(50*sizeof(char));\n" in code
        assert "char * dataBuffer2 = (char *)ALLOCA(100*sizeof(char));\n" in code
    assert "data = dataBuffer;" in bad and "data = dataBuffer2;" in good


# ----------------------------------------------------------------------------- no leak survives

#: What must not survive cleaning: Juliet's comment markers and preprocessor guards anywhere in the code,
#: label words and CWE names in identifiers and strings, CWEval's markers and unsafe names, gosec's nosec.
_TEXT_MARKERS = re.compile(r"FLAW|FIX:|INCIDENTAL|OMITBAD|OMITGOOD|@description|BadSource|GoodSink|Template File"
                           r"|BEGIN (PROMPT|SOLUTION|ENTRYPOINT)|#nosec|gosec:disable")


def _comments(code: str, lang: str) -> list[str]:
    """Comments tree-sitter finds in ``code``."""
    return _captured(code, lang, "comments")
_WORD_MARKERS = re.compile(r"(?i)bad|good|g2b|b2g|cwe\d")


_NAMES_AND_STRINGS = {
    "c": "[(identifier) (field_identifier) (type_identifier) (string_content)] @x",
    "cpp": "[(identifier) (field_identifier) (type_identifier) (namespace_identifier) (string_content)] @x",
    "java": "[(identifier) (type_identifier) (string_fragment)] @x"}


@functools.cache
def _query(lang: str, what: str) -> tree_sitter.Query:
    if what == "comments":
        return tree_sitter.Query(language(lang), "[(line_comment) (block_comment)] @x" if lang == "java"
                                 else "(comment) @x")
    return tree_sitter.Query(language(lang), _NAMES_AND_STRINGS[lang])


def _captured(code: str, lang: str, what: str) -> list[str]:
    tree = tree_sitter.Parser(language(lang)).parse(code.encode())
    found = tree_sitter.QueryCursor(_query(lang, what)).captures(tree.root_node)
    return [n.text.decode() for nodes in found.values() for n in nodes]


def _identifiers_and_strings(code: str, lang: str) -> list[str]:
    return _captured(code, lang, "names")


def test_no_stripped_marker_survives_in_any_juliet_example(data_dir):
    for name in ("juliet_c", "juliet_java"):
        for e in load_set(name):
            assert not _TEXT_MARKERS.search(e.code), (e.id, _TEXT_MARKERS.search(e.code))
            assert not _comments(e.code, e.lang), (e.id, _comments(e.code, e.lang))
            leaks = [t for t in _identifiers_and_strings(e.code, e.lang) if _WORD_MARKERS.search(t)]
            assert not leaks, (e.id, leaks)
            head = e.code.split("(")[0]
            assert not re.search(r"\b(static|public|private|protected)\b", head), (e.id, head)
            assert e.code == e.code.lstrip() and "\r" not in e.code


def test_other_sets_are_cleaned_too(data_dir):
    for name in ("owasp_python", "cweval", "gosec"):
        for e in load_set(name):
            assert not _TEXT_MARKERS.search(e.code), (e.id, _TEXT_MARKERS.search(e.code))
            if e.lang in ("c", "cpp", "go", "python"):
                assert not _comments(e.code, e.lang), (e.id, _comments(e.code, e.lang))
            assert "_unsafe" not in e.code, e.id  # CWEval's Python insecure functions carry the entry's name
    owasp = load_set("owasp_python")[0]
    assert not owasp.code.startswith("'''") and "OWASP Benchmark for Python" not in owasp.code  # docstring header


def test_clean_code_removes_comments_and_docstrings_only():
    py = 'def f(x):\n    """Doc."""\n    # note\n    return x  # trailing\n\n\ns = "# not a comment"\n'
    assert clean_code(py, "python") == 'def f(x):\n    return x\ns = "# not a comment"\n'
    go = "package main\r\n// hi\r\nfunc f() { /* x */ return }\r\n"
    assert clean_code(go, "go") == "package main\nfunc f() {  return }\n"
    assert clean_code("// BEGIN SOLUTION\nlet a = 1; // js keeps comments\n", "javascript") == \
        "let a = 1; // js keeps comments\n"


# ----------------------------------------------------------------------------- counts (SOURCES.md)


def _raw(name: str):
    """A set's examples before code that occurs with both labels is dropped."""
    return load_set(name, conflicts=True)


def _by_lang_label(examples) -> dict[tuple[str, int], int]:
    return dict(Counter((e.lang, e.label) for e in examples))


def test_counts_equal_sources_md(data_dir):
    """Per set, language and label, before the conflict filter, as SOURCES.md states them."""
    assert _by_lang_label(_raw("owasp_java")) == {("java", 1): 1415, ("java", 0): 1325}
    assert _by_lang_label(_raw("owasp_python")) == {("python", 1): 457, ("python", 0): 786}
    # SVEN: 803 pairs, 380 Python and 423 C/C++ (.c 365 + .h 1 = C, .cpp 34 + .cc 22 + .C 1 = C++)
    assert _by_lang_label(_raw("sven")) == {("python", 1): 380, ("python", 0): 380, ("c", 1): 366, ("c", 0): 366,
                                           ("cpp", 1): 57, ("cpp", 0): 57}
    # CWEval: one record per task and language; Python cwe_113_0 has no insecure version
    cweval = _by_lang_label(_raw("cweval"))
    assert cweval == {("c", 0): 20, ("c", 1): 20, ("cpp", 0): 21, ("cpp", 1): 21, ("go", 0): 19, ("go", 1): 19,
                      ("javascript", 0): 23, ("javascript", 1): 23, ("python", 0): 25, ("python", 1): 24}
    assert len({e.group for e in _raw("cweval")}) == 25
    # gosec: 909 samples (484 flagged, 425 clean); 24 with a suppression annotation are left out: the 22 clean
    # only because of it, and 2 flagged
    assert _by_lang_label(_raw("gosec")) == {("go", 1): 484 - 2, ("go", 0): 425 - 22}
    assert len({e.group for e in _raw("gosec")}) == 61  # G101..G710
    assert _by_lang_label(_raw("cyberseceval")) == {
        ("python", 1): 351, ("cpp", 1): 259, ("javascript", 1): 249, ("csharp", 1): 235, ("java", 1): 229,
        ("c", 1): 227, ("rust", 1): 204, ("php", 1): 162}
    # Juliet: every test-case file of C/C++ (777 .c, 233 .cpp, 997 families) gives functions; of Java's 634 files
    # (617 families), CWE499's three (a class-level flaw) and CWE580's part `a` hold no labelled function
    files = Counter(e.id.split(":")[1].rsplit(".")[-1] for e in {e.id.rsplit(":", 1)[0]: e for e in _raw("juliet_c")}
                    .values())
    assert files == {"c": 777, "cpp": 233}
    assert len({e.group for e in _raw("juliet_c")}) == 997
    assert len({e.id.split(":")[1] for e in _raw("juliet_java")}) == 634 - 4
    assert len({e.group for e in _raw("juliet_java")}) == 617 - 1
    # functions per language and label: this extraction's numbers (SOURCES.md counts files)
    assert _by_lang_label(_raw("juliet_c")) == {("c", 1): 805, ("c", 0): 992, ("cpp", 1): 252, ("cpp", 0): 336}
    assert _by_lang_label(_raw("juliet_java")) == {("java", 1): 645, ("java", 0): 899}


def test_code_with_both_labels_is_left_out(data_dir):
    """Juliet's bad() and goodB2G() that differ only in which sink they call are the same code: no example."""
    for name in ("juliet_c", "sven", "gosec"):
        examples = load_set(name)
        labels: dict = {}
        for e in examples:
            labels.setdefault((e.lang, e.code), set()).add(e.label)
        assert all(len(v) == 1 for v in labels.values())
        assert len(examples) < len(_raw(name))


def test_cwe_spellings_are_one():
    assert [normalize_cwe(c) for c in ("CWE121", "cwe-022", "CWE-680", "CWE_89", None, "n/a")] == [
        "CWE-121", "CWE-22", "CWE-680", "CWE-89", None, None]


# ----------------------------------------------------------------------------- splits


def test_splits_are_by_group_disjoint_and_seeded(data_dir):
    examples = load_set("juliet_c") + load_set("sven")
    train, held = split_by_group(examples, heldout=0.2, seed=0)
    assert len(train) + len(held) == len(examples)
    assert not {e.group for e in train} & {e.group for e in held}
    for name in ("juliet_c", "sven"):  # about 20% of each set's groups
        groups = {e.group for e in examples if e.dataset == name}
        share = len({e.group for e in held if e.dataset == name}) / len(groups)
        assert abs(share - 0.2) < 0.01
    again, _ = split_by_group(list(reversed(examples)), heldout=0.2, seed=0)
    assert {e.id for e in again} == {e.id for e in train}  # order does not matter
    other, _ = split_by_group(examples, heldout=0.2, seed=1)
    assert {e.id for e in other} != {e.id for e in train}
    # both halves of every SVEN pair stay together
    pairs = Counter(e.group for e in held if e.dataset == "sven")
    assert all(n % 2 == 0 for n in pairs.values())


# ----------------------------------------------------------------------------- the generic JSONL


def test_read_examples_and_its_errors(tmp_path):
    good = tmp_path / "t.jsonl"
    good.write_text('{"lang": "py", "label": 1, "code": "os.system(x)  # bad", "cwe": "CWE-78"}\n\n'
                    '{"lang": "golang", "label": false, "code": "fmt.Println(1)", "group": "g"}\n')
    a, b = read_examples(good)
    assert (a.lang, a.label, a.cwe, a.code) == ("python", 1, "CWE-78", "os.system(x)\n")
    assert (b.lang, b.label, b.group) == ("go", 0, "t:g")
    cases = {'{"lang": "python", "code": "x"}': r"line 1 has no label field",
             '{"lang": "klingon", "label": 1, "code": "x"}': r"line 1: unknown language 'klingon'",
             '{"lang": "python", "label": 2, "code": "x"}': r"line 1: label is 2",
             "not json": r"line 1 is not JSON", "": r"holds no examples"}
    for text, message in cases.items():
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text + "\n")
        with pytest.raises(DataError, match=message) as err:
            read_examples(bad)
        assert "\n" not in str(err.value)
