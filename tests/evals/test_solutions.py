"""`solutions`: likelihood of correct solutions per language, against direct log-probabilities."""

from __future__ import annotations

import json
import math

import pytest

from codemix.cli import main
from codemix.config import SolutionsEvalConfig
from codemix.data.tokenizer import hf_tokenizer
from codemix.errors import DataError
from codemix.evals.benchmark import EvalContext
from codemix.evals.handle import load_handle, save_tiny_model
from codemix.evals.registry import BENCHMARKS
from codemix.evals.solutions import load_problems_file, load_solutions

from .conftest import read_table

SOLUTIONS = BENCHMARKS["solutions"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, data_dir):
    """A random tiny Llama with a codemix byte-level BPE (every solution is scorable)."""
    from codemix.config import validate_study
    from codemix.study.commands import build_data

    root = tmp_path_factory.mktemp("solutions")
    cfg = validate_study({"name": "sol", "out": str(root / "study"),
                          "data": {"seq_len": 64, "heldout_docs": 1,
                                   "tokenizer": {"vocab_size": 512, "sample_bytes_per_source": 30_000},
                                   "sources": [{"name": "c4", "paths": ["nl_text/c4_sample_1000docs.json.gz"],
                                                "max_docs": 20},
                                               {"name": "python", "lang": "python", "code": True, "max_docs": 10,
                                                "paths": ["code/code_python.jsonl.gz"]}]},
                          "mixtures": {"settings": ["competitive"], "m": [0.0], "baselines": False,
                                       "n_tokens": 640}})
    tokenizer = hf_tokenizer(build_data(cfg).tokenizer_path)
    return save_tiny_model(root / "model", tokenizer, max_length=2048)


def test_builtin_sets_align_humaneval_x_problems_across_languages(data_dir):
    sols = load_solutions(SolutionsEvalConfig(langs=["python", "rust", "go", "java"]))
    by = {}
    for s in sols:
        by.setdefault((s.set, s.lang), []).append(s.name)
    assert {k: len(v) for k, v in by.items()} == {("humaneval_x", "python"): 164, ("humaneval_x", "rust"): 164,
                                                  ("humaneval_x", "go"): 164, ("humaneval_x", "java"): 164,
                                                  ("mbpp", "python"): 500}
    assert by[("humaneval_x", "rust")] == by[("humaneval_x", "python")]  # the same problems, in order
    limited = load_solutions(SolutionsEvalConfig(langs=["rs"], sets=["humaneval_x"], limit=3))
    assert [(s.lang, s.name) for s in limited] == [("rust", f"humaneval_{i}") for i in range(3)]


def test_rows_equal_direct_log_probabilities_and_the_paired_gap(tiny, tmp_path, data_dir):
    """bits per byte = -Σ log p(solution | prompt) / ln 2 / bytes, from the handle's own scores; the gap is
    the mean per-problem difference to Python."""
    handle = load_handle(tiny, device="cpu")
    cfg = SolutionsEvalConfig(langs=["python", "go"], limit=4)
    rows = SOLUTIONS.evaluate(handle, cfg, EvalContext(out_dir=tmp_path, progress=False))
    value = {(r["subtask"], r["metric"]): r for r in rows}
    sols = load_solutions(cfg)
    for set_name, lang in (("humaneval_x", "python"), ("humaneval_x", "go"), ("mbpp", "python")):
        group = [s for s in sols if (s.set, s.lang) == (set_name, lang)]
        lp = [handle.score([s.prompt], [s.solution])[0] for s in group]
        n_bytes = sum(len(s.solution.encode()) for s in group)
        row = value[(f"{set_name}/{lang}", "bits_per_byte")]
        assert row["value"] == pytest.approx(-sum(lp) / math.log(2) / n_bytes, rel=1e-4) and row["n"] == 4
        assert row["primary"]
        tokens = sum(len(handle.encode(s.solution)) for s in group)
        assert value[(f"{set_name}/{lang}", "logprob_per_token")]["value"] == pytest.approx(sum(lp) / tokens, rel=1e-4)
    per = json.loads((tmp_path / "solutions.json").read_text())["problems"]
    bpb = {(p["lang"], p["name"]): p["bits_per_byte"] for p in per if p["set"] == "humaneval_x"}
    gap = sum(bpb[("go", f"humaneval_{i}")] - bpb[("python", f"humaneval_{i}")] for i in range(4)) / 4
    assert value[("humaneval_x/go", "gap_vs_python_bits_per_byte")]["value"] == pytest.approx(gap)
    assert ("humaneval_x/python", "gap_vs_python_bits_per_byte") not in value


def test_any_problems_file_and_clear_errors(tiny, tmp_path):
    """A JSONL it has never seen, with HumanEval-X's fields; bad files are one clear error each."""
    good = tmp_path / "mine.jsonl"
    good.write_text("\n".join(json.dumps(r) for r in [
        {"task_id": "Rust/7", "prompt": "fn add(a: i32, b: i32) -> i32 {\n", "canonical_solution": "    a + b\n}\n"},
        {"task_id": "x1", "language": "Go", "prompt": "func Add(a, b int) int {\n", "canonical_solution": "\treturn a + b\n}\n"},
    ]) + "\n")
    sols = load_problems_file(good)
    assert [(s.set, s.lang, s.name) for s in sols] == [("mine", "rust", "Rust_7"), ("mine", "go", "x1")]
    out = tmp_path / "r.csv"
    assert main(["eval", "solutions", "--model", str(tiny), "--problems", str(good), "--langs", "rust,go",
                 "--out", str(out), "--device", "cpu"]) == 0
    assert {r["subtask"] for r in read_table(out)} == {"mine/rust", "mine/go"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"task_id": "Rust/1", "prompt": "fn f() {"}) + "\n")
    with pytest.raises(DataError, match=r"line 1: missing canonical_solution"):
        load_problems_file(bad)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="holds no problems"):
        load_problems_file(empty)
    assert main(["eval", "solutions", "--model", str(tiny), "--langs", "cobol"]) == 2
