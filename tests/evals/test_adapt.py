"""`adapt`: continued pretraining on K tokens of a low-resource language, measured on held-out files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codemix.cli import main
from codemix.config import AdaptEvalConfig
from codemix.errors import DataError
from codemix.evals.adapt import load_corpus, split_corpus
from codemix.evals.benchmark import EvalContext
from codemix.evals.handle import load_handle
from codemix.evals.perplexity import TextSet, score_texts
from codemix.evals.registry import BENCHMARKS
from codemix.train.finetune import continue_pretraining

from .conftest import read_table
from .test_transfer import STUDY

ADAPT = BENCHMARKS["adapt"]
pytestmark = pytest.mark.xdist_group("evals-adapt")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, train_in_study, data_dir) -> Path:
    """A tiny GPT pretrained on English and Python (no Rust, no Go), 80 steps."""
    root = tmp_path_factory.mktemp("adapt")
    return train_in_study({**STUDY, "name": "adapt"}, root / "study.yaml", root / "out", setting="competitive",
                          m=0.5, steps=80)


def test_adapting_on_rust_beats_no_adaptation_and_adapting_on_go(pretrained, tmp_path):
    """Held-out Rust bits per byte after 20K tokens of Rust < after none, and < after 20K tokens of Go.

    Why: the model never saw Rust. Any finetuning moves it (a new learning rate, code-shaped text),
    so the Go run, with the same tokens, steps and learning rate, is the control: only the Rust
    run saw Rust's syntax and vocabulary (`fn`, `let mut`, `impl`, `&str`), which its held-out
    exercises share; the held-out exercises are whole exercises, so nothing of them was trained on.
    """
    cfg = AdaptEvalConfig(corpora=["exercism_rust"], budgets=[0, 20_000], lr=1e-3, warmup_steps=2, seq_len=128,
                          max_docs=12, next_line_samples=4)
    handle = load_handle(pretrained, device="cpu")
    rows = ADAPT.evaluate(handle, cfg, EvalContext(out_dir=tmp_path / "rust", progress=False))
    value = {(r["subtask"], r["metric"]): r for r in rows}
    none = value[("rust/exercism_rust/0", "bits_per_byte")]
    rust = value[("rust/exercism_rust/20000", "bits_per_byte")]
    assert rust["value"] < none["value"] - 0.05 and rust["primary"] and not none["primary"]
    assert value[("rust/exercism_rust/20000", "solution_bits_per_byte")]["value"] < \
        value[("rust/exercism_rust/0", "solution_bits_per_byte")]["value"]

    # the control: the same budget of Go, measured on the same held-out Rust exercises
    rust_corpus = load_corpus("exercism_rust")
    _, held = split_corpus(rust_corpus, heldout=cfg.heldout, seed=cfg.seed)
    go_train, _ = split_corpus(load_corpus("exercism_go"), heldout=cfg.heldout, seed=cfg.seed)
    fresh = load_handle(pretrained, device="cpu")
    continue_pretraining(fresh, [d.text for d in go_train], tokens=20_000, seq_len=128, batch_size=cfg.batch_size,
                         lr=cfg.lr, warmup_steps=cfg.warmup_steps, seed=cfg.seed, out_dir=tmp_path / "go")
    measured, _ = score_texts(fresh, TextSet("rust", [(d.group, d.text) for d in held[: cfg.max_docs]], "held"),
                              next_line_samples=0, batch_size=8)
    go = next(r["value"] for r in measured if r["metric"] == "bits_per_byte")
    assert rust["value"] < go - 0.02, (rust["value"], go, none["value"])
    # the benchmark put the model back as it came: measuring it again gives the budget-0 numbers
    again, _ = score_texts(handle, TextSet("rust", [(d.group, d.text) for d in held[: cfg.max_docs]], "held"),
                           next_line_samples=0, batch_size=8)
    assert next(r["value"] for r in again if r["metric"] == "bits_per_byte") == pytest.approx(none["value"])


def test_held_out_split_is_by_exercise_and_seeded(data_dir):
    corpus = load_corpus("exercism_go")
    train, held = split_corpus(corpus, heldout=0.2, seed=0)
    assert not {d.group for d in train} & {d.group for d in held}
    assert len({d.group for d in held}) == round(0.2 * len({d.group for d in corpus.docs}))
    assert split_corpus(corpus, heldout=0.2, seed=0)[1] == held != split_corpus(corpus, heldout=0.2, seed=1)[1]
    algo = load_corpus("thealgorithms_rust")
    assert algo.lang == "rust" and all(d.instructions is None for d in algo.docs) and len(algo.docs) == 416


def test_corpora_it_has_never_seen_and_bad_input(pretrained, tmp_path):
    """Any JSONL with a text field and any directory of source files load; bad input is one clear error."""
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    for i in range(4):
        (src / "a" / f"m{i}.rs").write_text(f"fn f{i}(x: i32) -> i32 {{\n    x * {i} + 1\n}}\n" * 30)
    (src / "notes.go").write_text("package main\n")
    with pytest.raises(DataError, match="several languages"):
        load_corpus(str(src))
    rs = load_corpus(str(src), lang="rust")
    assert rs.lang == "rust" and len(rs.docs) == 4 and len({d.group for d in rs.docs}) == 4

    jsonl = tmp_path / "mine.jsonl"
    jsonl.write_text("".join(json.dumps({"id": i, "code": f"def f{i}(): return {i}\n" * 40}) + "\n" for i in range(5)))
    with pytest.raises(DataError, match="lack a text field 'text'"):
        load_corpus(str(jsonl), lang="python")
    with pytest.raises(DataError, match="do not name one language"):
        load_corpus(str(jsonl), text_field="code")
    assert len(load_corpus(str(jsonl), lang="python", text_field="code").docs) == 5
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="holds no documents"):
        load_corpus(str(empty), lang="go")

    out = tmp_path / "r.csv"
    assert main(["eval", "adapt", "--model", str(pretrained), "--corpus", str(src), "--lang", "rust",
                 "--budgets", "0,300", "--out", str(out), "--device", "cpu", "--set", "seq_len=64"]) == 0
    rows = read_table(out)
    assert {r["subtask"] for r in rows} == {"rust/src/0", "rust/src/300"}
    assert all(r["study"] == "adapt" and r["setting"] == "competitive" for r in rows)  # the checkpoint's labels
    # a budget above what the training files hold is refused before anything trains
    assert main(["eval", "adapt", "--model", str(pretrained), "--corpus", str(src), "--lang", "rust",
                 "--budgets", "0,10000000", "--out", str(tmp_path / "x.csv")]) == 2
