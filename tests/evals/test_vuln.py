"""`vuln`: metrics against scikit-learn, splits, the shortcut reference, tiny GPT/T5 runs, variants, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

from codemix.cli import main
from codemix.config import SourceConfig, VulnEvalConfig, configure
from codemix.data.vuln import Example, load_set
from codemix.errors import CodemixError, ConfigError, DataError
from codemix.evals.benchmark import EvalContext
from codemix.evals.handle import load_handle, save_tiny_model
from codemix.evals.registry import BENCHMARKS
from codemix.evals.vuln import classification_metrics, encode_examples, make_splits, shortcut_scores

from .conftest import read_table

VULN = BENCHMARKS["vuln"]
#: Juliet C and Java to train on (and their held-out families), OWASP Python and gosec to test on.
SMALL = ["sets=[juliet_c,juliet_java,owasp_python,gosec]", "train_langs=[c,java]"]
#: Enough finetuning for a tiny random model to separate held-out Juliet functions (measured: balanced
#: accuracy 0.60 with GPT), 96 tokens of each function, 200 held-out examples per train language.
QUICK = [*SMALL, "finetune.steps=60", "finetune.batch_size=16", "finetune.lr=1e-3", "finetune.warmup_steps=3",
         "max_tokens=96", "limit=200"]

pytestmark = pytest.mark.xdist_group("evals-vuln")


@pytest.fixture(scope="module")
def models(tokenizer, tmp_path_factory) -> dict[str, Path]:
    """Random tiny models (Hugging Face directories) with that tokenizer, 128 positions."""
    root = tmp_path_factory.mktemp("vuln-models")
    return {arch: save_tiny_model(root / arch, tokenizer, arch=arch, max_length=128) for arch in ("gpt", "t5")}


@pytest.fixture(scope="module")
def gpt_run(models, tmp_path_factory):
    """The tiny GPT finetuned on Juliet C and Java (QUICK): (rows, output directory, handle)."""
    out = tmp_path_factory.mktemp("vuln-gpt")
    handle = load_handle(models["gpt"], device="cpu")
    rows = VULN.evaluate(handle, configure(VulnEvalConfig, None, QUICK), EvalContext(out_dir=out, progress=False))
    return rows, out, handle


def _values(rows) -> dict[tuple[str, str], float]:
    return {(r["subtask"], r["metric"]): r["value"] for r in rows}


# ----------------------------------------------------------------------------- metrics


def test_metrics_equal_scikit_learn():
    labels = [1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0]
    scores = [0.9, 0.1, 0.5, 0.3, 0.5, 0.7, 0.8, 0.2, 0.5, 0.49, 0.3, 0.3]  # ties, and scores at the threshold
    pred = [int(s >= 0.5) for s in scores]
    got = classification_metrics(labels, scores)
    assert got == pytest.approx({
        "f1": f1_score(labels, pred), "precision": precision_score(labels, pred),
        "recall": recall_score(labels, pred), "balanced_accuracy": balanced_accuracy_score(labels, pred),
        "auroc": roc_auc_score(labels, scores)}, abs=1e-12)
    # no positive prediction: precision and F1 are 0 (scikit-learn's zero_division=0)
    low = [0.1] * len(labels)
    got = classification_metrics(labels, low)
    assert got["precision"] == precision_score(labels, [0] * len(labels), zero_division=0) == 0.0
    assert got["f1"] == 0.0 and got["auroc"] == roc_auc_score(labels, low) == 0.5
    rng = np.random.default_rng(0)
    y, s = rng.integers(0, 2, 500), rng.random(500).round(2)
    got = classification_metrics(y, s, threshold=0.3)
    assert got["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, s >= 0.3), abs=1e-12)
    assert classification_metrics([1, 1, 1], [0.9, 0.2, 0.6]) == {"recall": 2 / 3}  # positives only
    with pytest.raises(ValueError, match="no vulnerable example"):
        classification_metrics([0, 0], [0.1, 0.9])


# ----------------------------------------------------------------------------- splits and the shortcut


def test_splits_never_share_a_group(data_dir):
    """Train, held-out and test groups are disjoint; CWEval's C tasks, which the Python test also holds, leave
    training; CyberSecEval's positives serve only Rust (Python has two-class sets)."""
    cfg = configure(VulnEvalConfig, None, ["sets=[juliet_c,cweval,owasp_python,cyberseceval]",
                                           "train_langs=[c,cpp]", "test_langs=[python,rust]"])
    splits = make_splits(cfg)
    train = {e.group for e in splits.train}
    held = {e.group for v in splits.heldout.values() for e in v}
    test = {e.group for v in splits.test.values() for e in v}
    assert not train & held and not train & test and not held & test
    assert splits.left_out == sum(1 for e in load_set("cweval") if e.lang in ("c", "cpp"))  # every task has Python
    assert {e.dataset for e in splits.test["python"]} == {"cweval", "owasp_python"}
    assert {e.dataset for e in splits.test["rust"]} == {"cyberseceval"}
    assert {e.lang for e in splits.train} == {"c", "cpp"} and set(splits.heldout) == {"c", "cpp"}


def test_shortcut_reference_on_the_same_splits(data_dir):
    toy = [Example(str(i), "toy", "c", None, int(i % 2 == 0), str(i), f"x = {'strcpy' if i % 2 == 0 else 'strncpy'}"
                   f"(a, b{i});") for i in range(20)]
    (scores,) = shortcut_scores(toy[:16], [toy[16:]])
    assert ((scores >= 0.5) == np.array([e.label for e in toy[16:]], bool)).all()
    # on Juliet's held-out families the surface form alone goes far (measured: 0.85 balanced accuracy)
    splits = make_splits(configure(VulnEvalConfig, None, [*SMALL, "test_langs=[python]"]))
    held = splits.heldout["c"] + splits.heldout["java"]
    (scores,) = shortcut_scores(splits.train, [held])
    assert classification_metrics([e.label for e in held], scores)["balanced_accuracy"] > 0.75


def test_encoding_keeps_the_start_of_long_code(models, data_dir):
    """Only a prefix of each text is tokenized; the tokens kept are those of the whole text."""
    handle = load_handle(models["gpt"], device="cpu")
    examples = load_set("owasp_python")[:40] + load_set("juliet_c")[:40]
    for max_tokens in (16, 96):
        got = encode_examples(handle, examples, max_tokens)
        full = handle.tokenizer([e.code for e in examples], add_special_tokens=False)["input_ids"]
        assert got == [[handle.start_id, *x[: max_tokens - 2], handle.eos_id] for x in full]


# ----------------------------------------------------------------------------- tiny models end to end


def test_tiny_gpt_finetuned_on_juliet_is_above_chance_in_language(gpt_run):
    """Held-out Juliet families of C and Java (200 functions each, never trained on): a classifier at chance has
    balanced accuracy 0.5 with a standard deviation of about 0.025 on 400 examples, so 0.56 is more than two
    standard deviations above it (the run measures 0.60; the seeds are fixed, so it is the same every time)."""
    rows, _, _ = gpt_run
    value = _values(rows)
    assert value[("base/seen", "balanced_accuracy")] >= 0.56
    assert value[("base/seen", "auroc")] >= 0.6


def test_rows_name_every_scope_and_one_primary(gpt_run, data_dir):
    rows, out, _ = gpt_run
    subtasks = {r["subtask"] for r in rows}
    for variant in ("base", "shortcut"):
        for scope in ("python", "go", "unseen", "seen/c", "seen/java", "seen"):
            assert {(f"{variant}/{scope}", m) for m in
                    ("f1", "precision", "recall", "balanced_accuracy", "auroc")} <= set(_values(rows))
    cwe_rows = {s for s in subtasks if s.startswith("base/python/CWE-")}
    assert cwe_rows and all(r["n"] >= 20 for r in rows if r["subtask"] in cwe_rows)
    assert all(r["task"] == "vuln" and 0.0 <= r["value"] <= 1.0 for r in rows)
    (primary,) = [r for r in rows if r["primary"]]
    assert (primary["subtask"], primary["metric"], primary["n"]) == ("base/unseen", "f1", 400)
    assert {r["n"] for r in rows if r["subtask"] in ("base/python", "base/go")} == {200}
    details = json.loads((out / "vuln.json").read_text())
    assert set(details["test"]) == {"owasp_python", "gosec"} and details["groups"]["heldout"] > 0
    lines = (out / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 2 * (400 + 400)  # base and shortcut, each over test and held-out examples
    assert (out / "base" / "classify" / "log.jsonl").is_file()


def test_model_weights_are_restored(gpt_run, models):
    """The benchmark finetunes the handle's model in place and gives it back as it came."""
    _, _, handle = gpt_run
    fresh = load_handle(models["gpt"], device="cpu").model.state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in handle.model.state_dict().items())


def test_tiny_t5_and_a_frozen_probe_produce_rows(models, tmp_path, data_dir):
    """T5 pools its encoder states; the probe trains the head alone and leaves the model's weights as they are."""
    quick = [*SMALL, "finetune.steps=10", "finetune.batch_size=8", "max_tokens=48", "limit=30", "shortcut=false",
             "min_cwe_examples=1000"]
    t5 = load_handle(models["t5"], device="cpu")
    rows = VULN.evaluate(t5, configure(VulnEvalConfig, None, quick), EvalContext(out_dir=tmp_path / "t5",
                                                                                 progress=False))
    assert {r["subtask"] for r in rows} == {"base/python", "base/go", "base/unseen", "base/seen/c", "base/seen/java",
                                            "base/seen"}
    gpt = load_handle(models["gpt"], device="cpu")
    before = {k: v.clone() for k, v in gpt.model.state_dict().items()}
    probe = configure(VulnEvalConfig, None, [*quick, "probe=true", "finetune.steps=30", "balance=sample"])
    rows = VULN.evaluate(gpt, probe, EvalContext(out_dir=tmp_path / "probe", progress=False,
                                                 finetuned_out=tmp_path / "probe-model"))
    assert len(rows) == 30 and all(0.0 <= r["value"] <= 1.0 for r in rows)
    assert all(torch.equal(v, before[k]) for k, v in gpt.model.state_dict().items())
    head = torch.load(tmp_path / "probe-model" / "classifier_head.pt")
    assert set(head) == {"mean", "std", "head.weight", "head.bias"}


def test_security_and_general_continued_pretraining(models, tmp_path, data_dir):
    """Both variants train on exactly K tokens in the same number of steps, from the same weights; the general code
    is the study's code sources when given; rows carry the variant and the F1 difference."""
    cfg = configure(VulnEvalConfig, None, [
        *SMALL, "finetune.steps=4", "finetune.batch_size=8", "max_tokens=48", "limit=20", "shortcut=false",
        "variants=[base,security,general]", "pretrain_tokens=1500", "pretrain_seq_len=64", "pretrain_batch_size=4"])
    go = SourceConfig(name="go", lang="go", code=True, paths=["code/code_go.jsonl.gz"])
    english = SourceConfig(name="c4", paths=["nl_text/c4_sample_1000docs.json.gz"])
    handle = load_handle(models["gpt"], device="cpu")
    rows = VULN.evaluate(handle, cfg, EvalContext(out_dir=tmp_path, progress=False, sources=[english, go]))
    value = _values(rows)
    for scope in ("python", "go", "unseen"):
        assert value[(f"security-general/{scope}", "f1_diff")] == pytest.approx(
            value[(f"security/{scope}", "f1")] - value[(f"general/{scope}", "f1")])
    assert [r["subtask"] for r in rows if r["primary"]] == ["base/unseen"]
    starts = {v: json.loads((tmp_path / v / "pretrain" / "log.jsonl").read_text().splitlines()[0])
              for v in ("security", "general")}
    assert starts["security"]["config"]["tokens"] == starts["general"]["config"]["tokens"] == 1500
    assert starts["security"]["steps"] == starts["general"]["steps"] == 6  # 24 sequences of 64 tokens (the last 28)
    assert not (tmp_path / "base" / "pretrain").exists()
    # a budget above a corpus is refused before anything trains
    with pytest.raises(DataError, match="security corpus .* fewer than pretrain_tokens"):
        VULN.evaluate(handle, cfg.model_copy(update={"pretrain_tokens": 10**9}),
                      EvalContext(out_dir=tmp_path / "big", progress=False))
    assert not (tmp_path / "big").exists()


# ----------------------------------------------------------------------------- the command and bad input


def test_command_with_a_test_file(models, tmp_path, data_dir):
    test = tmp_path / "mine.jsonl"
    lines = [{"lang": "python", "label": i % 2, "code": f"import os\nos.system(cmd{i})\n" if i % 2 else f"print({i})\n",
              "cwe": "CWE-78"} for i in range(24)]
    test.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = tmp_path / "r.csv"
    assert main(["eval", "vuln", "--model", str(models["gpt"]), "--device", "cpu", "--test-data", str(test),
                 "--train-langs", "c,java", "--limit", "20", "--out", str(out),
                 "--set", "sets=[juliet_c,juliet_java]", "--set", "finetune.steps=3", "--set", "max_tokens=32"]) == 0
    rows = read_table(out)
    value = {(r["subtask"], r["metric"]): r for r in rows}
    assert value[("base/python", "f1")]["n"] == "20" and value[("base/python/CWE-78", "auroc")]["n"] == "20"
    assert [r["subtask"] for r in rows if r["primary"] == "True"] == ["base/unseen"]


def _error(tmp_path: Path, lines: list[dict] | None, *options: str) -> str:
    """The message `codemix eval vuln` (and the benchmark itself) stops with."""
    args = ["sets=[juliet_c,juliet_java,gosec]", "train_langs=[c,java]", *options]
    if lines is not None:
        path = tmp_path / "t.jsonl"
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        args.append(f"test_data={path}")
    with pytest.raises(CodemixError) as err:
        make_splits(configure(VulnEvalConfig, None, args))
    return str(err.value)


def test_bad_input_is_one_clear_error(tmp_path, models, capsys, data_dir):
    ok = {"lang": "python", "label": 1, "code": "eval(x)"}
    assert "line 2 has no label field" in _error(tmp_path, [ok, {"lang": "python", "code": "x"}])
    assert "one class only" in _error(tmp_path, [{**ok, "label": 0}, {**ok, "label": 0}])
    assert "holds no examples" in _error(tmp_path, [])
    assert "no examples for test language javascript" in _error(tmp_path, None, "test_langs=[go,javascript]")
    assert "all of one class" in _error(tmp_path, None, "sets=[cyberseceval,gosec]", "train_langs=[rust]",
                                        "test_langs=[go]")
    assert "both trained on and tested on" in _error(tmp_path, [{**ok, "lang": "c"}])
    with pytest.raises(ConfigError, match="unknown language 'klingon'"):
        configure(VulnEvalConfig, None, ["test_langs=[python,klingon]"])
    with pytest.raises(ConfigError, match="c both trained on and tested on"):
        configure(VulnEvalConfig, None, ["test_langs=[c,go]"])
    # the command prints it as one error and exits 2, before loading or training anything
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"lang": "python", "code": "x"}\n')
    capsys.readouterr()
    assert main(["eval", "vuln", "--model", str(models["gpt"]), "--test-data", str(bad),
                 "--out", str(tmp_path / "x.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "line 1 has no label field" in " ".join(err.split())
    assert not (tmp_path / "x.csv").exists()
