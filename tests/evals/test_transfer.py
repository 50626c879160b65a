"""`mbpp_transfer`: finetune on Python MBPP, test in Python, Rust and Go; pairs formatted as MultiPL-E's."""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

import pytest

from codemix.cli import main
from codemix.config import MbppTransferEvalConfig, configure
from codemix.evals.benchmark import EvalContext
from codemix.evals.handle import load_handle
from codemix.evals.mbpp import read_jsonl
from codemix.evals.registry import BENCHMARKS
from codemix.evals.transfer import MBPP_TRAIN_IDS, MBPP_VALID_IDS, mbpp_pairs, python_pair

from .conftest import read_table

#: A tiny model pretrained on a real mixture: half Python, half English, 80 steps of 8 × 128 tokens.
STUDY = {
    "name": "transfer",
    "data": {"seq_len": 128, "heldout_docs": 2, "workers": 1,
             "tokenizer": {"vocab_size": 512, "sample_bytes_per_source": 60_000},
             "sources": [{"name": "c4", "paths": ["nl_text/c4_sample_1000docs.json.gz"], "max_docs": 40},
                         {"name": "python", "lang": "python", "code": True, "paths": ["code/code_python.jsonl.gz"],
                          "max_docs": 40}]},
    "mixtures": {"settings": ["competitive"], "m": [0.5], "baselines": False, "n_tokens": 40_000},
    "model": {"arch": "gpt", "preset": "tiny"},
    "pretrain": {"batch_size": 8, "lr": 3.0e-3, "warmup_steps": 5, "eval_every": 1000, "eval_batches": 1,
                 "log_every": 20, "device": "cpu"},
    "seeds": [0],
}

#: Enough finetuning for a tiny model to learn the shape of a Python function body.
QUICK = ["finetune.steps=40", "finetune.batch_size=8", "finetune.lr=1e-3", "finetune.warmup_steps=4",
         "finetune.eval_every=20", "finetune.max_train_examples=200", "test.limit=2", "test.max_new_tokens=32",
         "solutions.sets=[mbpp]", "solutions.limit=16"]

pytestmark = pytest.mark.xdist_group("evals-transfer")


@pytest.fixture(scope="module", params=["gpt", "t5"])
def pretrained(request, tmp_path_factory, train_in_study, data_dir) -> Path:
    root = tmp_path_factory.mktemp(f"transfer-{request.param}")
    raw = {**STUDY, "name": f"transfer-{request.param}", "model": {"arch": request.param, "preset": "tiny"}}
    return train_in_study(raw, root / "study.yaml", root / "out", setting="competitive", m=0.5, steps=80)


def test_pairs_are_formatted_like_multipl_e_python_prompts(data_dir):
    """Imports/helpers + def line + a tab-led docstring of the problem statement; the body follows it."""
    # 10 references hold escapes such as "\d" that Python warns about: under any warning filter
    # (here: warnings are errors) they parse, silently, and keep their pairs
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, valid = mbpp_pairs(MBPP_TRAIN_IDS), mbpp_pairs(MBPP_VALID_IDS)
    rows = {r["task_id"]: r for r in read_jsonl(data_dir / "mbpp" / "mbpp.jsonl.gz")}
    assert len(train) >= 365 and len(valid) >= 85  # of 374 and 90: only unparsable references are left out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the escapes again)
        for prompt, body in train + valid:
            ast.parse(prompt + body)  # every pair is one valid Python program
            assert prompt.endswith('"""\n') and '    """\t' in prompt and not body.startswith('    """')
    prompt, body = python_pair(rows[602]["text"], rows[602]["code"], rows[602]["test_list"])
    assert prompt == ('def first_repeated_char(str1):\n'
                      '    """\tWrite a python function to find the first repeated character in a given string."""\n')
    assert body.startswith("    for index,c in enumerate(str1):\n        if ")  # 2-space indents became 4
    # a reference whose tested function is not its last code, or that does not parse, gives no pair
    assert python_pair("t", "def f(x):\n    return x\nprint(f(1))\n", ["assert f(1) == 1"]) is None
    assert python_pair("t", "def f(x):\n  print x\n", ["assert f(1) == 1"]) is None


def test_python_finetune_lowers_python_solution_bits_and_tests_every_language(pretrained, tmp_path):
    """Why the margin is meaningful: MBPP's test-split solutions (task ids 11-510) are held out from the
    finetune (601-974) and from model selection (511-600), and measuring twice gives the same number
    exactly, so any decrease is learned; 0.1 bits per byte (about 2-3% here) is a change in how likely
    the model finds correct Python function bodies in general, not noise."""
    cfg = configure(MbppTransferEvalConfig, None, QUICK)
    rows = BENCHMARKS["mbpp_transfer"].evaluate(load_handle(pretrained, device="cpu"), cfg,
                                                EvalContext(out_dir=tmp_path, progress=False))
    value = {(r["subtask"], r["metric"]): r["value"] for r in rows}
    before, after = value[("mbpp/python", "bits_per_byte_zero_shot")], value[("mbpp/python", "bits_per_byte")]
    assert after < before - 0.1, (before, after)
    passes = [r for r in rows if r["metric"] == "pass@1"]
    assert sorted(r["subtask"] for r in passes) == ["go", "py", "rs"]
    assert all(0.0 <= r["value"] <= 1.0 and r["n"] == 2 and r["primary"] for r in passes)
    assert not any(r.get("primary") for r in rows if r not in passes)  # pass@1 is the headline
    assert (tmp_path / "mbpp_samples.jsonl").is_file() and (tmp_path / "finetune" / "summary.json").is_file()


def test_transfer_command_line(pretrained, tmp_path):
    out = tmp_path / "transfer.csv"
    args = ["eval", "mbpp_transfer", "--model", str(pretrained), "--langs", "py,go", "--limit", "1", "--out", str(out)]
    for item in QUICK + ["finetune.steps=4", "finetune.eval_every=2"]:
        args += ["--set", item]
    assert main(args) == 0
    rows = read_table(out)
    assert {r["subtask"] for r in rows if r["metric"] == "pass@1"} == {"py", "go"}
    assert all(r["study"].startswith("transfer-") and r["m"] == "0.5" for r in rows)  # the checkpoint's labels
    assert main(["eval", "mbpp_transfer", "--model", str(pretrained), "--set", "finetune.steps=0"]) == 2
