"""COGS / COGS-vf / passivization: data against the published counts, metrics on hand-made
outputs, and `codemix eval` end to end on tiny decoder-only and T5 models."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from codemix.checkpoint import checkpoint_info
from codemix.cli import main
from codemix.config import CogsEvalConfig, load_study
from codemix.data.tokenizer import SPECIAL_TOKENS, hf_tokenizer
from codemix.errors import DataError
from codemix.evals.benchmark import EvalContext
from codemix.evals.cogs import (
    COGS,
    COGS_VF,
    PASSIVIZATION,
    Example,
    exact_match,
    gen_categories,
    is_well_formed,
    load_split,
    score,
    select,
    summarize,
    token_accuracy,
)
from codemix.evals.handle import load_handle, save_tiny_model
from codemix.evals.registry import BENCHMARKS

from .conftest import read_table

STRUCTURAL = {"cp_recursion", "pp_recursion", "obj_pp_to_subj_pp"}


# ----------------------------------------------------------------------------- data


@pytest.mark.parametrize("spec", [COGS, COGS_VF], ids=["cogs", "cogs_vf"])
def test_cogs_split_sizes_and_gen_types_match_the_published_counts(spec):
    sizes = {split: len(load_split(spec, split)) for split in ("train", "dev", "test", "gen")}
    assert sizes == {"train": 24155, "dev": 3000, "test": 3000, "gen": 21000}
    gen = load_split(spec, "gen")
    counts = {kind: sum(1 for ex in gen if ex.type == kind) for kind in {ex.type for ex in gen}}
    assert len(counts) == 21 and set(counts.values()) == {1000}
    assert set(counts) == set(gen_categories())
    train_types = [ex.type for ex in load_split(spec, "train")]
    assert train_types.count("in_distribution") == 24000 and train_types.count("primitive") == 143
    assert {ex.type for ex in load_split(spec, "dev")} == {"in_distribution"}


def test_cogs_vf_is_row_aligned_with_cogs():
    for split in ("dev", "gen"):
        cogs, vf = load_split(COGS, split), load_split(COGS_VF, split)
        assert [(e.input, e.type) for e in cogs] == [(e.input, e.type) for e in vf]
        assert cogs[0].target != vf[0].target  # different logical-form formats of the same sentence


def test_passivization_splits_and_tags():
    sizes = {split: len(load_split(PASSIVIZATION, split)) for split in ("train", "dev", "test", "gen")}
    assert sizes == {"train": 100000, "dev": 1000, "test": 10000, "gen": 10000}
    dev = load_split(PASSIVIZATION, "dev")
    assert {ex.type for ex in dev} == {"decl", "passiv"}
    assert all(ex.input.endswith(" " + ex.type) for ex in dev)
    assert {ex.type for ex in load_split(PASSIVIZATION, "gen")} == {"passiv"}
    copy = next(ex for ex in dev if ex.type == "decl")
    assert copy.target == copy.input.removesuffix(" decl")


def test_gen_types_split_into_18_lexical_and_3_structural():
    categories = gen_categories()
    assert {k for k, v in categories.items() if v == "structural"} == STRUCTURAL
    assert sum(v == "lexical" for v in categories.values()) == 18


def test_gold_targets_are_well_formed_and_score_perfectly():
    """Scoring the gold outputs themselves: 1.0 everywhere, over every one of the 21 types."""
    gen, dev = load_split(COGS_VF, "gen"), select(load_split(COGS_VF, "dev"), 200)
    examples = dev + gen
    rows = score("cogs_vf", COGS_VF, examples, [ex.target for ex in examples])
    assert all(r["value"] == 1.0 for r in rows)
    by = {(r["subtask"], r["metric"]): r["n"] for r in rows}
    assert by[("dev", "exact_match")] == 200
    assert by[("gen", "exact_match")] == 21000 and by[("gen", "well_formed")] == 21000
    assert by[("gen/structural", "exact_match")] == 3000 and by[("gen/lexical", "well_formed")] == 18000
    assert sum(1 for (s, m) in by if s.startswith("gen/") and m == "exact_match") == 21 + 2
    assert all(is_well_formed(ex.target) for ex in load_split(COGS, "gen"))


def test_select_caps_each_type_in_file_order():
    gen = load_split(COGS, "gen")
    picked = select(gen, 3)
    assert len(picked) == 63
    assert [ex.index for ex in picked if ex.type == "cp_recursion"] == \
        [ex.index for ex in gen if ex.type == "cp_recursion"][:3]
    assert select(gen, None) == gen


def test_missing_split_and_unknown_split_are_clear_errors(tmp_path, monkeypatch, capsys):
    with pytest.raises(DataError, match="no split 'valid'.*train, dev, test, gen"):
        load_split(COGS, "valid")
    monkeypatch.setenv("CODEMIX_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"cogs_vf_gen\.tsv\.gz.*codemix data fetch cogs_vf"):
        load_split(COGS_VF, "gen")
    # A task is a registered benchmark: an unknown one is refused, naming the known ones.
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "scan", "--model", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'scan'" in err and all(name in err for name in ("cogs", "cogs_vf", "passivization"))


# ----------------------------------------------------------------------------- metrics


def test_exact_match_requires_every_token():
    gold = "help ( theme = rose , agent = dog )"
    assert exact_match(gold, gold)
    assert exact_match("help  ( theme = rose ,\tagent = dog ) ", gold)  # spacing is not content
    assert not exact_match("", gold)
    assert not exact_match("help ( theme = rose , agent = dog", gold)  # truncated
    assert not exact_match(gold + " )", gold)  # one token too many
    assert not exact_match("help ( theme = rose , agent = cat )", gold)


def test_well_formedness_is_balanced_parentheses():
    assert is_well_formed("help ( theme = rose , agent = dog )")
    assert is_well_formed("* cake ( x _ 4 ) ; like . agent ( x _ 1 , Mila )")
    assert not is_well_formed("")  # an empty output is not a logical form
    assert not is_well_formed("   ")
    assert not is_well_formed("think ( agent = Zoe , ccomp = clean ( agent = hippo )")  # truncated
    assert not is_well_formed("help ( theme = rose ) )")  # one too many
    assert not is_well_formed(") help (")  # closes before opening


def test_token_accuracy_counts_positions_over_the_longer_sequence():
    assert token_accuracy("a b c", "a b c") == 1.0
    assert token_accuracy("a x c", "a b c") == pytest.approx(2 / 3)
    assert token_accuracy("a b", "a b c d") == 0.5  # truncated
    assert token_accuracy("a b c d", "a b") == 0.5  # too long
    assert token_accuracy("", "a b") == 0.0
    assert summarize(["a ( b )", "a ( b"], ["a ( b )", "a ( b )"]) == \
        {"exact_match": 0.5, "token_accuracy": pytest.approx((1 + 3 / 4) / 2), "well_formed": 0.5}


def test_score_on_hand_made_outputs():
    def ex(kind, split, target="f ( a = b )", i=0):
        return Example("a sentence .", target, kind, split, i)

    examples = [ex("in_distribution", "dev"), ex("in_distribution", "dev"),
                ex("subj_to_obj_common", "gen"), ex("subj_to_obj_common", "gen"), ex("prim_to_inf_arg", "gen"),
                ex("cp_recursion", "gen"), ex("pp_recursion", "gen")]
    predictions = ["f ( a = b )", "",                    # dev: one right, one empty
                   "f ( a = b )", "f ( a = c )",         # lexical: right; wrong but well-formed
                   "f ( a = b",                          # lexical: truncated
                   "f ( a = b ) )", "f ( a = b )"]       # structural: unbalanced; right
    rows = {(r["subtask"], r["metric"]): (r["value"], r["n"]) for r in score("cogs", COGS, examples, predictions)}
    assert rows[("dev", "exact_match")] == (0.5, 2)
    assert ("dev", "well_formed") not in rows  # well-formedness is a gen metric
    assert rows[("gen", "exact_match")] == (0.4, 5)
    assert rows[("gen", "well_formed")] == (0.6, 5)
    assert rows[("gen/lexical", "exact_match")] == (pytest.approx(1 / 3), 3)
    assert rows[("gen/lexical", "well_formed")] == (pytest.approx(2 / 3), 3)
    assert rows[("gen/structural", "exact_match")] == (0.5, 2)
    assert rows[("gen/structural", "well_formed")] == (0.5, 2)
    assert rows[("gen/subj_to_obj_common", "exact_match")] == (0.5, 2)
    assert rows[("gen/prim_to_inf_arg", "well_formed")] == (0.0, 1)
    with pytest.raises(ValueError, match="7 examples but 6 predictions"):
        score("cogs", COGS, examples, predictions[:-1])


def test_passivization_scores_by_tag_without_well_formedness():
    examples = [Example("x y . decl", "x y .", "decl", "dev", 0),
                Example("x y z . passiv", "z was y by x .", "passiv", "dev", 1),
                Example("x y z . passiv", "z was y by x .", "passiv", "gen", 0)]
    predictions = ["x y .", "x y z .", "z was y by x ."]
    rows = {(r["subtask"], r["metric"]): r["value"]
            for r in score("passivization", PASSIVIZATION, examples, predictions)}
    assert rows == {("dev", "exact_match"): 0.5, ("dev/decl", "exact_match"): 1.0,
                    ("dev/passiv", "exact_match"): 0.0, ("gen", "exact_match"): 1.0}


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_gpt(tmp_path_factory) -> Path:
    """A random tiny HF decoder-only model with a BPE trained on a COGS-vf slice."""
    root = tmp_path_factory.mktemp("cogs_models")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [f"{ex.input}\n{ex.target}" for ex in itertools.islice(load_split(COGS_VF, "train"), 300)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tok.save(str(root / "tokenizer.json"))
    hf = hf_tokenizer(root / "tokenizer.json")
    return save_tiny_model(root / "gpt", hf, arch="gpt", d_model=32, n_layers=1, n_heads=2, max_length=256)


#: A tiny study: one competitive mixture at m = 0.5 of English and Python, two pretraining steps.
TINY_STUDY = {
    "name": "cogs-t5",
    "data": {"seq_len": 64, "heldout_docs": 2, "workers": 1,
             "tokenizer": {"vocab_size": 512, "sample_bytes_per_source": 30_000},
             "sources": [{"name": "c4", "kind": "jsonl", "lang": "en", "max_docs": 40,
                          "paths": ["nl_text/c4_sample_1000docs.json.gz"]},
                         {"name": "python", "kind": "jsonl", "lang": "python", "code": True, "max_docs": 10,
                          "paths": ["code/code_python.jsonl.gz"]}]},
    "mixtures": {"settings": ["competitive"], "m": [0.5], "baselines": False, "n_tokens": 2000},
    "model": {"arch": "t5", "preset": "tiny"},
    "pretrain": {"batch_size": 4, "warmup_steps": 1, "max_steps": 2, "eval_every": 2, "eval_batches": 1,
                 "device": "cpu"},
    "seeds": [0],
}


@pytest.fixture(scope="module")
def codemix_t5(tmp_path_factory, pretrain_study) -> Path:
    """A tiny CodeT5-style model pretrained for two steps by codemix (its run directory)."""
    _, run = pretrain_study(TINY_STUDY, tmp_path_factory.mktemp("codemix_t5"))
    return run


@pytest.fixture(scope="module")
def study_gpt(tmp_path_factory, train_in_study) -> Path:
    """A tiny GPT of the study ``cogs-gpt`` (competitive, m = 0.5, seed 0), trained by `codemix train`."""
    root = tmp_path_factory.mktemp("cogs_gpt")
    return train_in_study({**TINY_STUDY, "name": "cogs-gpt", "model": {"arch": "gpt", "preset": "tiny"}},
                          root / "study.yaml", root / "out", setting="competitive", m=0.5, steps=2)


@pytest.mark.parametrize("arch", ["gpt", "t5"])
def test_eval_command_writes_rows_outputs_and_checkpoints_of_outputs(arch, request, tmp_path):
    """On a random HF Llama directory, and on a codemix T5 run directory."""
    model = request.getfixturevalue("tiny_gpt") if arch == "gpt" else request.getfixturevalue("codemix_t5")
    out = tmp_path / "results.csv"
    code = main(["eval", "cogs_vf", "--model", str(model), "--limit", "2", "--out", str(out),
                 "--device", "cpu", "--finetuned-out", str(tmp_path / "finetuned"),
                 "--set", "finetune.steps=4", "--set", "finetune.batch_size=4", "--set", "finetune.eval_every=2",
                 "--set", "finetune.max_train_examples=64", "--set", "max_new_tokens=12", "--set", "batch_size=16"])
    assert code == 0
    rows = read_table(out)
    assert {r["task"] for r in rows} == {"cogs_vf"}
    by = {(r["subtask"], r["metric"]): r for r in rows}
    assert by[("dev", "exact_match")]["n"] == "2"
    assert by[("gen", "well_formed")]["n"] == "42"
    assert by[("gen/structural", "exact_match")]["n"] == "6"
    assert by[("gen/cp_recursion", "well_formed")]["n"] == "2"
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in rows)
    records = json.loads((tmp_path / "results" / "predictions.json").read_text())
    assert len(records) == 44
    assert {r["split"] for r in records} == {"dev", "gen"}
    assert all(isinstance(r["prediction"], str) and "well_formed" in r for r in records)
    saved = sorted(p.name for p in (tmp_path / "results" / "finetune" / "evals").iterdir())
    assert saved == ["step-0000002.json", "step-0000004.json"]  # decoded outputs at every evaluation
    assert len(json.loads((tmp_path / "results" / "finetune" / "evals" / saved[0]).read_text())["gen"]) == 42
    assert load_handle(tmp_path / "finetuned", device="cpu").is_seq2seq == (arch == "t5")


def test_eval_command_on_passivization(tiny_gpt, tmp_path):
    out = tmp_path / "passiv.csv"
    assert main(["eval", "passivization", "--model", str(tiny_gpt), "--limit", "3", "--out", str(out),
                 "--device", "cpu", "--set", "finetune.steps=2", "--set", "finetune.batch_size=4",
                 "--set", "finetune.max_train_examples=32", "--set", "max_new_tokens=8"]) == 0
    rows = {(r["subtask"], r["metric"]): r["n"] for r in read_table(out)}
    assert rows == {("dev", "exact_match"): "6", ("dev/decl", "exact_match"): "3",
                    ("dev/passiv", "exact_match"): "3", ("gen", "exact_match"): "3"}


def test_eval_command_bad_inputs_are_clear_errors(tiny_gpt, tmp_path, capsys, monkeypatch):
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("hello")
    out = tmp_path / "r.csv"
    assert main(["eval", "cogs", "--model", str(not_a_model), "--out", str(out)]) == 2
    assert "neither a codemix checkpoint" in capsys.readouterr().err
    assert main(["eval", "cogs", "--model", str(not_a_model), "--set", "finetune.steps=0", "--out", str(out)]) == 2
    assert "finetune.steps=0: Input should be greater than 0" in capsys.readouterr().err
    monkeypatch.setenv("CODEMIX_DATA", str(tmp_path / "empty"))
    assert main(["eval", "passivization", "--model", str(tiny_gpt), "--out", str(out)]) == 2
    assert "passiv_en_nps_train.tsv.gz" in " ".join(capsys.readouterr().err.split())
    assert not out.exists() and not (tmp_path / "r").exists()


def test_evaluate_with_a_config_of_a_study(tiny_gpt, tmp_path):
    """The study's eval stage calls the registry entry: evaluate(handle, cfg, ctx) returns tidy rows."""
    cfg = CogsEvalConfig.model_validate({"finetune": {"steps": 1, "batch_size": 2, "max_train_examples": 8},
                                         "limit": 1, "max_new_tokens": 6})
    rows = BENCHMARKS["cogs"].evaluate(load_handle(tiny_gpt, device="cpu"), cfg,
                                       EvalContext(out_dir=tmp_path / "e", device="cpu", progress=False))
    assert {tuple(sorted(r)) for r in rows} == {("metric", "n", "primary", "question_type", "subtask", "task", "value")}
    assert [(r["subtask"], r["metric"]) for r in rows if r["primary"]] == [("gen", "exact_match")]
    assert {r["n"] for r in rows if r["subtask"] == "gen"} == {21}
    assert json.loads((tmp_path / "e" / "results.json").read_text()) == rows


def test_eval_command_takes_the_benchmark_config_from_a_study(tiny_gpt, tmp_path, monkeypatch):
    study = Path(__file__).resolve().parents[2] / "studies" / "demo.yaml"
    out = tmp_path / "demo.csv"
    monkeypatch.chdir(tmp_path)  # where the study's relative `out` (runs/demo) would go
    assert main(["eval", "cogs_vf", "--model", str(tiny_gpt), "--study", str(study), "--out", str(out),
                 "--device", "cpu", "--set", "finetune.steps=1", "--set", "limit=1", "--set", "max_new_tokens=4"]) == 0
    assert not (tmp_path / load_study(study).out).exists()  # COGS reads no held-out documents: no study data built
    start = json.loads((tmp_path / "demo" / "finetune" / "log.jsonl").read_text().splitlines()[0])
    assert start["config"]["steps"] == 1  # --set wins over the study
    expected = load_study(study).evals.cogs_vf.finetune
    assert expected.max_train_examples is not None  # else this test checks nothing
    assert start["config"]["max_train_examples"] == expected.max_train_examples  # the rest comes from the study
    assert start["config"]["lr"] == expected.lr
    assert start["train_examples"] == expected.max_train_examples


def test_eval_rows_carry_the_labels_of_a_study_checkpoint_and_none_for_a_foreign_model(study_gpt, tiny_gpt,
                                                                                       tmp_path):
    """Standalone `codemix eval` rows of a codemix checkpoint carry its study, setting, m and seed."""
    (label,) = checkpoint_info(study_gpt).labels
    assert (label.study, label.setting, label.m, label.seed) == ("cogs-gpt", "competitive", 0.5, 0)
    small = ["--limit", "2", "--device", "cpu", "--set", "finetune.steps=2", "--set", "finetune.batch_size=4",
             "--set", "finetune.max_train_examples=32", "--set", "max_new_tokens=8"]
    out = tmp_path / "r.csv"
    assert main(["eval", "cogs_vf", "--model", str(study_gpt), "--out", str(out), *small]) == 0
    rows = read_table(out)
    assert {r["task"] for r in rows} == {"cogs_vf"} and ("gen", "exact_match") in {(r["subtask"], r["metric"])
                                                                                  for r in rows}
    assert {(r["study"], r["setting"], float(r["m"]), int(r["seed"]), r["baseline"]) for r in rows} == \
        {(label.study, label.setting, label.m, label.seed, str(label.baseline))}
    foreign = tmp_path / "foreign.csv"
    assert main(["eval", "cogs_vf", "--model", str(tiny_gpt), "--out", str(foreign), *small]) == 0
    rows = read_table(foreign)
    assert rows and {(r["study"], r["setting"], r["m"], r["baseline"], r["seed"], r["arm"]) for r in rows} == \
        {("", "", "", "", "", "")}
