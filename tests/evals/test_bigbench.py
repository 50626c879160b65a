"""BIG-bench: loading the mirror's tasks, prompt rendering, scores vs a direct computation, metrics, bad input."""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from codemix.config import BigbenchEvalConfig, DataConfig
from codemix.data.tokenizer import build_tokenizer, hf_tokenizer
from codemix.errors import DataError
from codemix.evals import bigbench as bb
from codemix.evals.benchmark import EvalContext
from codemix.evals.handle import load_handle, save_tiny_model
from codemix.evals.registry import BENCHMARKS
from codemix.evals.rows import COLUMNS

# One worker per module under `pytest -n 2 --dist loadgroup`: the module's fixtures are built once.
pytestmark = pytest.mark.xdist_group("evals-bigbench")

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, data_dir) -> Path:
    """A random tiny Llama with a real BPE tokenizer (vocab 512) trained on mirror text; 96-token context."""
    cfg = DataConfig.model_validate({
        "heldout_docs": 5, "tokenizer": {"vocab_size": 512, "sample_bytes_per_source": 100_000},
        "sources": [{"name": "c4", "paths": ["nl_text/c4_sample_1000docs.json.gz"], "max_docs": 100},
                    {"name": "python", "lang": "python", "code": True, "paths": ["code/code_python.jsonl.gz"],
                     "max_docs": 60}]})
    tok = hf_tokenizer(build_tokenizer(cfg, tmp_path_factory.mktemp("tok") / "tokenizer.json"))
    return save_tiny_model(tmp_path_factory.mktemp("gpt"), tok, arch="gpt", max_length=96, seed=3)


@pytest.fixture(scope="module")
def handle(model_dir):
    return load_handle(model_dir, device="cpu", batch_size=8)


def test_every_mirror_task_loads_with_the_files_example_counts(data_dir):
    expected: Counter = Counter()
    with gzip.open(data_dir / "bigbench" / "bigbench_tasks.jsonl.gz", "rt") as f:
        for line in f:
            record = json.loads(line)
            n = len(record["task_json"].get("examples", []))
            if n:
                expected[(record["task"], record["subtask"] or record["task"])] += n
    tasks = bb.load_tasks()
    assert {(t.task, t.subtask): len(t.examples) for t in tasks} == dict(expected)
    assert len({t.task for t in tasks}) == 24
    assert len(bb.select_tasks(tasks, ["arithmetic"])) == 20
    assert [t.key for t in bb.select_tasks(tasks, ["arithmetic:2_digit_addition"])] == ["arithmetic:2_digit_addition"]
    # Every example of every task renders a prompt, and MC / generative examples are where the metrics say.
    for t in tasks:
        for i, ex in enumerate(t.examples):
            assert t.prompt(i, ex).endswith(t.output_prefix)
        assert len(t.mc_examples()) == (len(t.examples) if "multiple_choice_grade" in t.metrics else 0)


def write_task(path: Path, **fields) -> Path:
    task = {"name": "toy", "description": "d", "keywords": ["logical reasoning"], "metrics": ["multiple_choice_grade"],
            "examples": [{"input": "Is fire hot?", "target_scores": {"yes": 1, "no": 0}}], **fields}
    path.mkdir(parents=True, exist_ok=True)
    (path / "task.json").write_text(json.dumps(task))
    return path / "task.json"


def test_prompt_follows_bigbench_formatting(tmp_path):
    (default,) = bb.load_tasks(write_task(tmp_path / "a"))
    prompt = default.prompt(0, default.examples[0])
    # Defaults: "\nQ: " input prefix, choices appended with "\n  choice: " in a seeded order, "\nA: " output prefix.
    assert prompt in ("\nQ: Is fire hot?\n  choice: no\n  choice: yes\nA: ",
                      "\nQ: Is fire hot?\n  choice: yes\n  choice: no\nA: ")
    assert prompt == default.prompt(0, default.examples[0])  # deterministic
    (custom,) = bb.load_tasks(write_task(tmp_path / "b", task_prefix="Answer yes or no.", example_input_prefix="\nQ- ",
                                         example_output_prefix="\nAns: ", append_choices_to_input=False))
    assert custom.prompt(0, custom.examples[0]) == "Answer yes or no.\nQ- Is fire hot?\nAns: "
    (choice,) = bb.load_tasks(write_task(tmp_path / "c", choice_prefix=" | ", example_input_prefix="",
                                         example_output_prefix=" ="))
    assert choice.prompt(0, choice.examples[0]) in ("Is fire hot? | no | yes =", "Is fire hot? | yes | no =")


def direct_logprob(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context), one example, no padding, no cache (the handle's documented convention)."""
    stripped = context.rstrip(" ")
    continuation = context[len(stripped):] + continuation
    ctx = [tok.eos_token_id] + tok(stripped, add_special_tokens=False)["input_ids"]
    cont = tok(continuation, add_special_tokens=False)["input_ids"]
    ids = (ctx + cont)[-96:]
    n_ctx = len(ids) - len(cont)
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
    return sum(float(logp[n_ctx - 1 + k, t]) for k, t in enumerate(cont))


def test_multiple_choice_scores_equal_direct_log_probs(handle, tmp_path):
    cfg = BigbenchEvalConfig(tasks=["general_knowledge", "cause_and_effect:one_sentence"], limit=4, batch_size=5)
    rows = BENCHMARKS["bigbench"].evaluate(handle, cfg, EvalContext(out_dir=tmp_path, progress=False))
    outputs = json.loads((tmp_path / "predictions.json").read_text())
    tasks = {t.key: t for t in bb.load_tasks()}
    for key, examples in outputs.items():
        grades = []
        for ex in examples:
            task = tasks[key]
            assert ex["prompt"] == task.prompt(ex["index"], task.examples[ex["index"]])
            direct = [direct_logprob(handle.model, handle.tokenizer, ex["prompt"], c) for c in ex["choices"]]
            np.testing.assert_allclose(ex["log_probs"], direct, atol=1e-3)
            grades.append(task.examples[ex["index"]]["target_scores"][ex["choices"][int(np.argmax(direct))]])
        task = tasks[key]
        (row,) = [r for r in rows if (r["task"], r["subtask"], r["metric"]) ==
                  (task.task, task.subtask, "multiple_choice_grade")]
        assert row["value"] == pytest.approx(np.mean(grades)) and row["n"] == 4
        assert row["question_type"] == "multiple_choice"
    assert {r["metric"] for r in rows} == {"multiple_choice_grade", "multiple_choice_grade_norm"}


def test_metrics_on_hand_made_generations():
    # multiple_choice_grade takes the target score of the arg-max option (weighted, not 0/1).
    assert bb.multiple_choice_grade([[-1.0, -0.5, -3.0], [-2.0, -1.0]], [[1.0, 0.5, 0.0], [1.0, 0.0]]) == 0.25
    assert bb.exact_str_match(["42", " 7 ", "cat"], [["42"], ["7", "seven"], ["dog"]]) == pytest.approx(2 / 3)
    assert bb.exact_str_match([""], [["0"]]) == 0.0
    refs = [["the cat sat on the mat today"], ["a quick brown fox jumps high"]]
    assert bb.bleu(["the cat sat on the mat today", "a quick brown fox jumps high"], refs) == pytest.approx(100.0)
    assert bb.bleu(["zzz yyy xxx www", "qqq rrr sss ttt"], refs) == pytest.approx(0.0, abs=1e-6)
    # A second reference only helps when it matches better.
    assert bb.bleu(["hello there my good friend"], [["hello there my good friend", "goodbye"]]) == pytest.approx(100)
    r = bb.rouge(["the cat sat", "a dog"], [["the cat ran"], ["the dog", "a dog"]])
    # rouge1: "the cat sat" vs "the cat ran": 2 of 3 unigrams on each side -> F = 2/3; "a dog" matches exactly.
    assert r["rouge1"] == pytest.approx(100 * (2 / 3 + 1) / 2)
    # rouge2: bigram "the cat" matches of 2 -> F = 1/2; "a dog" -> 1.
    assert r["rouge2"] == pytest.approx(100 * (0.5 + 1) / 2)
    assert set(r) == {"rouge1", "rouge2", "rougeLsum"}


def test_generative_tasks_use_declared_metrics_and_output_regex(handle, tmp_path):
    cfg = BigbenchEvalConfig(tasks=["arithmetic:1_digit_addition", "conlang_translation:vaomi_from"], limit=3)
    rows = BENCHMARKS["bigbench"].evaluate(handle, cfg, EvalContext(out_dir=tmp_path, progress=False))
    by = {(r["subtask"], r["metric"]): r for r in rows}
    assert set(by) == {("1_digit_addition", m) for m in ("multiple_choice_grade", "multiple_choice_grade_norm",
                                                          "exact_str_match")} | \
        {("vaomi_from", m) for m in ("exact_str_match", "bleu", "rouge1", "rouge2", "rougeLsum")}
    assert by[("vaomi_from", "bleu")]["question_type"] == "generative"
    outputs = json.loads((tmp_path / "predictions.json").read_text())
    for ex in outputs["arithmetic:1_digit_addition"]:
        if ex["question_type"] == "generative":
            assert "\n" not in ex["completion"]
            # output_regex [-+]?\d+ keeps the first number, or nothing.
            assert ex["prediction"] == "" or ex["prediction"].lstrip("+-").isdigit()
    summary = json.loads((tmp_path / "summary.json").read_text())
    # conlang prompts (a long task prefix) exceed the 96-token context: cut from the left and counted.
    assert summary["truncated_inputs"] >= 3


def test_malformed_task_json_is_a_clear_error(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "task.json").write_text('{"name": "bad", "examples": [}')
    with pytest.raises(DataError, match=r"not valid JSON.*line 1"):
        bb.load_tasks(tmp_path / "bad")
    write_task(tmp_path / "bad2", metrics=["multiple_choice_grade", "telepathy"],
               examples=[{"input": "x"}, {"target": "y"}, {"input": "z", "target_scores": {"a": "high"}}])
    with pytest.raises(DataError) as err:
        bb.load_tasks(tmp_path / "bad2" / "task.json")
    message = str(err.value)
    for expected in ("unsupported metrics ['telepathy']", "examples[0] has neither 'target' nor 'target_scores'",
                     "examples[1] has no 'input'", "examples[2].target_scores must map each option to a number"):
        assert expected in message


def test_unknown_task_lists_known_ones():
    with pytest.raises(DataError, match=r"unknown BIG-bench task\(s\) \['arithmetics'\]; known tasks: .*arithmetic"):
        bb.select_tasks(bb.load_tasks(), ["arithmetics"])


def test_directory_with_subtasks_and_code_tasks(tmp_path):
    # BIG-bench's layout: a metadata-only parent task.json lends its keywords to subtask directories.
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "task.json").write_text(json.dumps({"name": "toy", "keywords": ["computer code"]}))
    write_task(tmp_path / "toy" / "easy", keywords=[])
    write_task(tmp_path / "toy" / "hard", examples=[{"input": "2+2?", "target_scores": {"4": 1, "5": 0}},
                                                   {"input": "3+3?", "target_scores": {"6": 1, "7": 0}}])
    write_task(tmp_path / "pycode", keywords=["computer code"])
    inline = {"name": "inline", "description": "d", "keywords": ["arithmetic"], "subtasks": [
        {"name": "inline:one", "metrics": ["exact_str_match"], "examples": [{"input": "1+1=", "target": "2"}]},
        {"name": "inline:two", "metrics": ["exact_str_match"],
         "examples": [{"input": "2+2=", "target": ["4", "four"]}]}]}
    (tmp_path / "inline").mkdir()
    (tmp_path / "inline" / "task.json").write_text(json.dumps(inline))
    tasks = bb.load_tasks(tmp_path)
    assert sorted(t.key for t in tasks) == ["inline:one", "inline:two", "pycode", "toy:easy", "toy:hard"]
    # Code tasks are left out by default: toy:easy inherits "computer code" from its parent, toy:hard has its own.
    assert sorted(t.key for t in bb.select_tasks(tasks)) == ["inline:one", "inline:two", "toy:hard"]
    assert len(bb.select_tasks(tasks, include_code_tasks=True)) == 5
    assert [len(t.examples) for t in bb.select_tasks(tasks, ["toy:hard"])] == [2]
    assert [t.key for t in bb.load_tasks(tmp_path / "toy")] == ["toy:easy", "toy:hard"]  # one task's directory
    assert [t.key for t in bb.load_tasks(tmp_path / "toy" / "hard" / "task.json")] == ["toy"]  # a lone file: its name
    with pytest.raises(DataError, match="pass the directory"):
        bb.load_tasks(tmp_path / "toy" / "task.json")


def test_cli_writes_csv_and_outputs(model_dir, tmp_path):
    from codemix.cli import main

    out = tmp_path / "bb.csv"
    assert main(["eval", "bigbench", "--model", str(model_dir), "--tasks", "general_knowledge,implicatures",
                 "--limit", "3", "--out", str(out), "--device", "cpu", "--batch-size", "4"]) == 0
    with open(out) as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == list(COLUMNS)  # the contract columns, labels empty for a foreign HF model
    assert all(r["study"] == r["setting"] == r["m"] == r["seed"] == "" for r in rows)
    assert {(r["task"], r["metric"]) for r in rows} == {(t, m) for t in ("general_knowledge", "implicatures")
                                                       for m in ("multiple_choice_grade", "multiple_choice_grade_norm")}
    assert all(r["n"] == "3" and 0 <= float(r["value"]) <= 1 for r in rows)
    assert (tmp_path / "bb" / "predictions.json").is_file()
    assert main(["eval", "bigbench", "--model", str(model_dir), "--tasks", "nope", "--out", str(out)]) == 2


def test_each_task_marks_its_preferred_score_as_the_primary_row():
    for task in bb.load_tasks():
        metrics = ["multiple_choice_grade", "multiple_choice_grade_norm", "exact_str_match", "bleu",
                   "rouge1", "rouge2", "rougeLsum"]
        primary = [m for m in metrics if bb._row(task, m, 0.5, 1, "generative")["primary"]]
        assert primary == [task.preferred_score], (task.task, task.subtask, primary)
