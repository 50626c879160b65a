"""Perplexity and next-line completion: a direct check of the numbers, and a Python-only model's languages."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from codemix.checkpoint import checkpoint_info
from codemix.cli import main
from codemix.config import PerplexityEvalConfig, StudyConfig, validate_study
from codemix.errors import CodemixError, DataError
from codemix.evals import perplexity as pp
from codemix.evals.benchmark import EvalContext
from codemix.evals.handle import load_handle
from codemix.evals.registry import BENCHMARKS
from codemix.study.commands import build_data

from .conftest import read_table

#: Python is the only code in the training mixture (90% of its tokens); Rust and Go are held out
#: for evaluation only. English is there because every mixture needs language tokens. 300 steps of
#: 8 x 128 tokens are about two passes over the 150K-token mixture: a tiny model leaves its unigram
#: plateau after ~100 steps, and repetition gets it further within the test's time budget.
#: (Seed 0 on CPU gives about 3.39 bits/byte on Python, 3.79 on Rust, 5.19 on Go.)
PY_ONLY_STUDY = {
    "name": "py-only",
    "data": {
        "seq_len": 128, "heldout_docs": 4,
        "tokenizer": {"vocab_size": 512, "sample_bytes_per_source": 100_000},
        "sources": [
            {"name": "c4", "paths": ["nl_text/c4_sample_1000docs.json.gz"], "max_docs": 60},
            {"name": "python", "lang": "python", "code": True, "paths": ["code/code_python.jsonl.gz"], "max_docs": 80},
            {"name": "rust", "lang": "rust", "code": True, "paths": ["code/code_rust.jsonl.gz"], "max_docs": 8},
            {"name": "go", "lang": "go", "code": True, "paths": ["code/code_go.jsonl.gz"], "max_docs": 8},
        ],
    },
    "mixtures": {"settings": ["competitive"], "m": [0.9], "baselines": False, "n_tokens": 150_000,
                 "code_weights": {"python": 1.0}},
    "model": {"arch": "gpt", "preset": "tiny"},
    "pretrain": {"batch_size": 8, "lr": 3.0e-3, "warmup_steps": 10, "max_steps": 300, "eval_every": 1000,
                 "eval_batches": 1, "log_every": 50, "device": "cpu"},
}


# One worker per module under `pytest -n 2 --dist loadgroup`: the module's fixtures are built once.
pytestmark = pytest.mark.xdist_group("evals-perplexity")

PERPLEXITY = BENCHMARKS["perplexity"]
#: The same study, warmed up in one step: `codemix train --set pretrain.max_steps=4` trains its model in seconds.
QUICK_STUDY = {**PY_ONLY_STUDY, "pretrain": {**PY_ONLY_STUDY["pretrain"], "warmup_steps": 1}}


@pytest.fixture(scope="module")
def py_only(tmp_path_factory, data_dir, pretrain_study):
    """(study config, run directory) of a tiny GPT pretrained with codemix on the Python-only mixture."""
    return pretrain_study(PY_ONLY_STUDY, tmp_path_factory.mktemp("py-only"), heldout=True)


@pytest.fixture(scope="module")
def study_run(py_only, tmp_path_factory, train_in_study):
    """The run directory of a model of QUICK_STUDY trained for 4 steps by `codemix train` (its data: py_only's)."""
    cfg, _ = py_only
    return train_in_study(QUICK_STUDY, tmp_path_factory.mktemp("study") / "study.yaml", Path(cfg.out),
                          setting="competitive", m=0.9, steps=4)


def heldout(cfg: StudyConfig) -> dict[str, Path]:
    """Source -> held-out stream directory of the study's data (built already: reused)."""
    data = build_data(cfg)
    return {s.name: data.heldout_dir(s.name) for s in cfg.data.sources}


def write_study(cfg: StudyConfig, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return path


def test_python_only_model_has_lower_bits_per_byte_on_python(py_only, tmp_path):
    """Why this must hold: 90% of the model's training tokens are Python and it never saw Rust or Go.

    Code languages share a lot (brackets, operators, English identifiers), but what a small model learns
    first is the frequent surface of its training language — Python keywords, ``self.``, indentation
    blocks — so held-out Python is far more predictable to it, per byte, than Rust or Go. Bits-per-byte
    (not perplexity) makes the comparison fair although the tokenizer splits the languages differently.
    """
    cfg, run_dir = py_only
    held = heldout(cfg)
    rows = PERPLEXITY.evaluate(load_handle(run_dir, device="cpu"),
                               PerplexityEvalConfig(sources=["python", "rust", "go"], next_line_samples=4),
                               EvalContext(out_dir=tmp_path, heldout=held, device="cpu", progress=False))
    bpb = {r["subtask"]: r["value"] for r in rows if r["metric"] == "bits_per_byte"}
    assert bpb["python"] < bpb["rust"] and bpb["python"] < bpb["go"], bpb
    assert all(0 < v < 8 for v in bpb.values())  # a trained model beats 8 bits per byte
    assert {r["n"] for r in rows if r["metric"] == "bits_per_byte"} == {4}  # the study's held-out documents
    details = json.loads((tmp_path / "perplexity.json").read_text())
    assert details["python"]["origin"] == str(held["python"] / "docs.jsonl.gz")
    # Next-line rows agree with the per-probe details, whose predictions are the handle's greedy lines.
    probes = details["python"]["next_line"]
    exact = [r["value"] for r in rows if (r["subtask"], r["metric"]) == ("python", "next_line_exact_match")]
    assert exact == [pytest.approx(np.mean([(p["predicted"] or "").rstrip() == p["real"].rstrip() for p in probes]))]
    assert all(p["predicted"] is None or p["completion"].startswith("\n" + p["predicted"]) for p in probes)


def test_bits_per_byte_perplexity_and_accuracy_match_direct_computation(py_only, tmp_path):
    _, run_dir = py_only
    handle = load_handle(run_dir, device="cpu")
    texts = ["def add(a, b):\n    return a + b\n", "fn main() {\n    println!(\"hi\");\n}\n", "Hello world."]
    doc_file = tmp_path / "docs.jsonl"
    doc_file.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    rows = PERPLEXITY.evaluate(handle, PerplexityEvalConfig(files=[str(doc_file)], next_line_samples=2),
                               EvalContext(out_dir=tmp_path, progress=False))
    nats, tokens, correct = 0.0, 0, 0
    tok = handle.tokenizer
    for t in texts:
        ids = [tok.eos_token_id] + tok(t, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(handle.model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        target = torch.tensor(ids[1:])
        nats -= float(logp[torch.arange(len(ids) - 1), target].sum())
        correct += int((logp[:-1].argmax(-1) == target).sum())
        tokens += len(ids) - 1
    n_bytes = sum(len(t.encode()) for t in texts)
    got = {r["metric"]: r for r in rows}
    assert got["bits_per_byte"]["value"] == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    assert got["perplexity"]["value"] == pytest.approx(math.exp(nats / tokens), rel=1e-5)
    assert got["token_accuracy"]["value"] == pytest.approx(correct / tokens)
    assert got["bits_per_byte"]["subtask"] == "docs" and got["bits_per_byte"]["n"] == 3
    assert got["next_line_exact_match"]["n"] == 2


def test_next_line_probes_are_line_boundaries_spread_over_documents():
    docs = [("a", "first\nsecond\n\nthird\n"), ("b", "x = 1\ny = 2\n"), ("c", "single line")]
    probes = pp.next_line_probes(docs, 10, seed="s")
    assert sorted((d, k) for d, k, _, _ in probes) == [("a", 1), ("a", 3), ("b", 1)]
    for doc_id, k, context, line in probes:
        text = dict(docs)[doc_id]
        assert context.endswith("\n") and text.startswith(context + line) and line.strip()
        assert context.count("\n") == k
    assert pp.next_line_probes(docs, 10, seed="s") == probes  # reproducible
    two = pp.next_line_probes(docs, 2, seed="s")
    assert {d for d, *_ in two} == {"a", "b"}  # round-robin over documents first


def test_files_of_any_format_and_bad_input(tmp_path, py_only):
    cfg, run_dir = py_only
    handle = load_handle(run_dir, device="cpu")
    src = tmp_path / "lib.rs"
    src.write_text("fn add(a: i32, b: i32) -> i32 {\n    a + b\n}\n")
    (doc,) = pp.file_texts(str(src)).docs  # any text file is one document
    assert doc[1] == src.read_text()
    ctx = EvalContext(out_dir=tmp_path, progress=False)
    with pytest.raises(CodemixError, match="nothing to score"):
        PERPLEXITY.evaluate(handle, PerplexityEvalConfig(), ctx)
    with pytest.raises(CodemixError, match="need the held-out documents of a study"):
        PERPLEXITY.evaluate(handle, PerplexityEvalConfig(sources=["python"]), ctx)
    with pytest.raises(DataError, match=r"unknown source\(s\) \['cobol'\].*python"):
        PERPLEXITY.evaluate(handle, PerplexityEvalConfig(sources=["cobol"]),
                            EvalContext(out_dir=tmp_path, heldout=heldout(cfg), progress=False))
    with pytest.raises(DataError, match="missing data file"):
        PERPLEXITY.evaluate(handle, PerplexityEvalConfig(files=["no/such/file.jsonl"]), ctx)
    # `--study` finds the study's held-out documents; a caller passing the directories explicitly (the
    # study's eval stage) scores the same documents: same numbers.
    out = tmp_path / "a.csv"
    assert main(["eval", "perplexity", "--model", str(run_dir), "--study", str(write_study(cfg, tmp_path / "s.yaml")),
                 "--sources", "python", "--set", "next_line_samples=0", "--out", str(out), "--device", "cpu"]) == 0
    via_study = [(r["task"], r["subtask"], r["metric"], float(r["value"]), int(r["n"])) for r in read_table(out)]
    one = PerplexityEvalConfig(sources=["python"], next_line_samples=0)
    via_dirs = PERPLEXITY.evaluate(handle, one, EvalContext(out_dir=tmp_path / "b", progress=False,
                                                            heldout={"python": heldout(cfg)["python"]}))
    assert via_study == [(r["task"], r["subtask"], r["metric"], r["value"], r["n"]) for r in via_dirs]
    assert [r["metric"] for r in via_dirs] == ["bits_per_byte", "perplexity", "token_accuracy"]
    with pytest.raises(DataError, match="no held-out documents for source 'python'"):
        PERPLEXITY.evaluate(handle, one, EvalContext(out_dir=tmp_path, heldout={"python": tmp_path / "nowhere"},
                                                     progress=False))


def test_cli_with_study_and_files(py_only, tmp_path):
    cfg, run_dir = py_only
    study_file = write_study(cfg, tmp_path / "study.yaml")
    snippet = tmp_path / "snippet.py"
    snippet.write_text("import os\n\nprint(os.getcwd())\n")
    out = tmp_path / "ppl.csv"
    assert main(["eval", "perplexity", "--model", str(run_dir), "--study", str(study_file), "--sources", "go",
                 "--files", str(snippet), "--limit", "2", "--set", "next_line_samples=2", "--out", str(out),
                 "--device", "cpu"]) == 0
    rows = read_table(out)
    assert {r["subtask"] for r in rows} == {"go", "snippet"}
    assert {r["metric"] for r in rows} >= {"bits_per_byte", "perplexity", "token_accuracy", "next_line_exact_match"}
    assert [r["n"] for r in rows if r["subtask"] == "go" and r["metric"] == "bits_per_byte"] == ["2"]
    assert (tmp_path / "ppl" / "perplexity.json").is_file()


def test_codemix_t5_checkpoint_scores_as_seq2seq(py_only, tmp_path):
    """A CodeT5-style codemix run loads through the same handle (encoder reads the context, decoder predicts)."""
    from codemix.train.pretrain import train

    cfg, _ = py_only
    t5_cfg = validate_study({**PY_ONLY_STUDY, "out": cfg.out, "model": {"arch": "t5", "preset": "tiny"},
                             "pretrain": {**PY_ONLY_STUDY["pretrain"], "max_steps": 2, "warmup_steps": 1}})
    data = build_data(t5_cfg)  # the data is the GPT run's, reused
    run_dir = train(t5_cfg, mixture_dir=data.mixture_dir("competitive", 0.9), tokenizer_path=data.tokenizer_path,
                    seed=0, heldout={}, out_dir=tmp_path / "t5")
    handle = load_handle(run_dir, device="cpu")
    assert handle.is_seq2seq and handle.train_length == 128
    rows = PERPLEXITY.evaluate(handle, PerplexityEvalConfig(sources=["rust"], max_docs=1, next_line_samples=1),
                               EvalContext(out_dir=tmp_path, heldout=heldout(t5_cfg), progress=False))
    bpb = [r["value"] for r in rows if r["metric"] == "bits_per_byte"]
    assert len(bpb) == 1 and 0 < bpb[0] < 20


def test_eval_of_a_study_checkpoint_alone_scores_its_own_heldout_documents(py_only, study_run, tmp_path):
    """No --study: the checkpoint records its study's held-out documents and its labels; rows carry both."""
    cfg, _ = py_only
    out = tmp_path / "r.csv"
    assert main(["eval", "perplexity", "--model", str(study_run), "--out", str(out), "--device", "cpu",
                 "--set", "next_line_samples=2"]) == 0
    rows = read_table(out)
    sources = [s.name for s in cfg.data.sources]
    assert sorted({r["subtask"] for r in rows}) == sorted(sources)  # one row group per study source
    for source in sources:
        got = {r["metric"]: r["n"] for r in rows if r["subtask"] == source}
        assert set(got) >= {"bits_per_byte", "perplexity", "token_accuracy", "next_line_exact_match"}
        assert got["bits_per_byte"] == str(cfg.data.heldout_docs)  # every held-out document of the source
    details = json.loads((tmp_path / "r" / "perplexity.json").read_text())
    assert {s: Path(details[s]["origin"]).resolve() for s in sources} == \
        {s: (d / "docs.jsonl.gz").resolve() for s, d in heldout(cfg).items()}
    (label,) = checkpoint_info(study_run).labels
    assert (label.study, label.setting, label.m, label.seed) == ("py-only", "competitive", 0.9, 0)
    assert {(r["study"], r["setting"], float(r["m"]), int(r["seed"])) for r in rows} == {("py-only", "competitive",
                                                                                          0.9, 0)}


def test_eval_of_a_study_model_with_its_study_is_a_job_of_the_graph(py_only, study_run, tmp_path):
    """--study of the model's own study: the eval runs as the study's eval job, kept and reused."""
    cfg, _ = py_only
    # the study whose job study_run is: `codemix train --set pretrain.max_steps=4`, written into the file
    study = validate_study({**QUICK_STUDY, "out": cfg.out, "pretrain": {**QUICK_STUDY["pretrain"], "max_steps": 4}})
    out = tmp_path / "r.csv"
    argv = ["eval", "perplexity", "--model", str(study_run), "--study", str(write_study(study, tmp_path / "s.yaml")),
            "--out", str(out), "--limit", "2", "--set", "next_line_samples=2", "--device", "cpu"]
    assert main(argv) == 0
    prefix = study_run.name.rsplit("-", 1)[0] + "-perplexity-"  # <pretrain job name>-perplexity-<hash>
    (job_dir,) = [d for d in (Path(cfg.out) / "jobs" / "eval").iterdir() if d.name.startswith(prefix)]
    assert (job_dir / "DONE").is_file()
    kept = [json.loads(line) for line in (job_dir / "rows.jsonl").read_text().splitlines()]
    rows = read_table(out)
    assert [(r["subtask"], r["metric"], float(r["value"])) for r in rows] == \
        [(r["subtask"], r["metric"], r["value"]) for r in kept]
    assert {r["subtask"] for r in rows} == {s.name for s in cfg.data.sources}
    assert {r["n"] for r in rows if r["metric"] == "bits_per_byte"} == {"2"}
    assert {(r["study"], r["setting"], float(r["m"]), int(r["seed"])) for r in rows} == {("py-only", "competitive",
                                                                                          0.9, 0)}

    def stamps():
        return {name: ((job_dir / name).stat().st_mtime_ns, (job_dir / name).read_bytes())
                for name in ("DONE", "rows.jsonl", "perplexity.json")}

    before, table = stamps(), out.read_text()
    out.unlink()
    assert main(argv) == 0  # done: the job is reused, the benchmark does not run again
    assert stamps() == before
    assert out.read_text() == table
    assert [d for d in (Path(cfg.out) / "jobs" / "eval").iterdir() if d.name.startswith(prefix)] == [job_dir]
