"""Mixtures: exact counts against the formulas, nesting, determinism, baselines, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from codemix.config import validate_study
from codemix.data.mixture import MixtureSpec, build_mixture, mixture_name, mixture_specs, stream_budgets
from codemix.data.streams import TokenStream
from codemix.errors import DataError
from codemix.io import sha256_file
from codemix.study.commands import build_data

from .conftest import N_TOKENS, SEQ_LEN, small_study_raw

# Tests sharing the session-built study run in one xdist worker, so it is built once.
pytestmark = pytest.mark.xdist_group("data_built")

CODE_W = {"python": 0.9, "rust": 0.1, "go": 0.0}
LANG_W = {"c4": 0.5, "wiki": 0.5}


def expected_targets(setting: str, m: float, baseline: bool) -> dict[str, float]:
    """DESIGN.md's formulas, written out independently of the implementation."""
    n = N_TOKENS
    if setting == "competitive":
        code, lang = m * n, (1 - m) * n
    elif baseline:
        code, lang = 0.0, n / (1 - m)
    else:
        code, lang = m * n / (1 - m), n
    return {**{s: code * w for s, w in CODE_W.items()}, **{s: lang * w for s, w in LANG_W.items()}}


def load(layout, spec: MixtureSpec) -> tuple[dict, np.ndarray]:
    d = layout.mixture_dir(spec.setting, spec.m, spec.baseline)
    return json.loads((d / "mixture.json").read_text()), np.load(d / "index.npy")


def test_every_mixture_matches_the_formulas(built, study):
    specs = mixture_specs(study.mixtures)
    assert len(specs) == 4 + 4 + 4  # competitive, additive, baselines
    for spec in specs:
        info, index = load(built, spec)
        expected = expected_targets(spec.setting, spec.m, spec.baseline)
        assert info["sources"] == ["c4", "wiki", "python", "rust", "go"]
        for sid, name in enumerate(info["sources"]):
            assert abs(info["tokens"][name] - expected[name]) <= SEQ_LEN / 2, (spec, name)
            assert info["tokens"][name] % SEQ_LEN == 0
            assert int((index[:, 0] == sid).sum()) * SEQ_LEN == info["tokens"][name]
        assert info["tokens"]["go"] == 0  # weight 0: evaluation only
        assert info["n_sequences"] == len(index) == sum(info["tokens"].values()) // SEQ_LEN
        code = info["tokens"]["python"] + info["tokens"]["rust"]
        assert info["realized_m"] == pytest.approx(code / info["tokens_total"])
        assert abs(info["realized_m"] - (0.0 if spec.baseline else spec.m)) < 3 * SEQ_LEN / info["tokens_total"]
        assert index.dtype == np.int64 and index.shape[1] == 2


def test_baselines_are_language_only_twins_of_additive(built, study):
    # at m = 0 the three language-only mixtures have the same content: one job, one directory
    zero = {built.mixture_dir(s, 0.0, b) for s, b in (("competitive", False), ("additive", False), ("additive", True))}
    assert len(zero) == 1
    for m in (0.0, 0.2, 0.4, 0.5):
        base, _ = load(built, MixtureSpec("additive", m, True))
        add, _ = load(built, MixtureSpec("additive", m))
        assert (base["baseline"] or m == 0) and base["realized_m"] == 0
        assert base["tokens"]["python"] == base["tokens"]["rust"] == 0
        assert abs(base["tokens_total"] - add["tokens_total"]) <= 2 * SEQ_LEN


def test_code_of_smaller_m_is_a_prefix_of_larger_m(built):
    """Nested mixtures: the sequences (and so the documents) of m=0.2 are the first ones of m=0.4."""
    for setting in ("competitive", "additive"):
        small = load(built, MixtureSpec(setting, 0.2))[1]
        large = load(built, MixtureSpec(setting, 0.4))[1]
        for sid in (2, 3):  # python, rust
            a = np.sort(small[small[:, 0] == sid, 1])
            b = np.sort(large[large[:, 0] == sid, 1])
            assert len(a) < len(b)
            np.testing.assert_array_equal(a, b[: len(a)])
            np.testing.assert_array_equal(a, np.arange(len(a)) * SEQ_LEN)  # the stream's first windows
    # documents: the python stream's documents covered by m=0.2 are a prefix of m=0.4's
    stream = TokenStream(built.stream_dir("python"))
    docs = lambda idx: set(np.searchsorted(stream.doc_ends, idx[idx[:, 0] == 2, 1], side="right").tolist())
    d_small = docs(load(built, MixtureSpec("competitive", 0.2))[1])
    d_large = docs(load(built, MixtureSpec("competitive", 0.4))[1])
    assert d_small <= d_large and d_small == set(range(max(d_small) + 1))


def test_same_config_gives_identical_artifacts_with_any_worker_count(built, study, tmp_path):
    """Determinism: a fresh build (one worker instead of two) writes byte-identical files."""
    raw = small_study_raw()
    raw["data"]["workers"] = 1
    again = build_data(validate_study({**raw, "out": str(tmp_path / "again")}))
    assert sha256_file(again.tokenizer_path) == sha256_file(built.tokenizer_path)
    for s in study.data.sources:
        for rel in ("tokens.bin", "docs.npy", "heldout/tokens.bin", "heldout/docs.jsonl.gz"):
            assert sha256_file(again.stream_dir(s.name) / rel) == sha256_file(built.stream_dir(s.name) / rel), rel
    for spec in mixture_specs(study.mixtures):
        a = again.mixture_dir(spec.setting, spec.m, spec.baseline) / "index.npy"
        b = built.mixture_dir(spec.setting, spec.m, spec.baseline) / "index.npy"
        assert sha256_file(a) == sha256_file(b), spec


def test_rebuilding_is_a_no_op(built, study):
    files = sorted(p for p in (built.root / "jobs").rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    build_data(study.model_copy(update={"out": str(built.root)}))
    assert {p: p.stat().st_mtime_ns for p in files} == before


def test_streams_hold_only_what_the_largest_mixture_needs(built, study):
    budgets = stream_budgets(study.mixtures, study.data)
    assert budgets["go"] == 0
    assert budgets["python"] == round(0.9 * N_TOKENS / SEQ_LEN) * SEQ_LEN  # additive m=0.5: N_code = N
    for name, budget in budgets.items():
        stream = TokenStream(built.stream_dir(name))
        assert stream.n_tokens >= budget
        if stream.n_docs:  # stops at the first document that reaches the budget
            assert int(stream.doc_ends[-2] if stream.n_docs > 1 else 0) < budget
    go = TokenStream(built.stream_dir("go"))
    assert go.n_tokens == 0 and TokenStream(built.heldout_dir("go")).n_docs == 5


def test_insufficient_tokens_names_source_need_and_have(built, study, tmp_path):
    streams = {s.name: built.stream_dir(s.name) for s in study.data.sources}
    have = TokenStream(streams["python"]).n_tokens
    big = study.mixtures.model_copy(update={"n_tokens": 10 * N_TOKENS})
    need = round(0.5 * 10 * N_TOKENS * 0.9 / SEQ_LEN) * SEQ_LEN
    with pytest.raises(DataError, match=rf"insufficient tokens for source python: need {need}, have {have}"):
        build_mixture(MixtureSpec("competitive", 0.5), big, study.data, streams, tmp_path / "mix")
    assert not (tmp_path / "mix").exists()  # nothing half-written

    allowed = big.model_copy(update={"max_repetition": 20.0})
    info = build_mixture(MixtureSpec("competitive", 0.5), allowed, study.data, streams, tmp_path / "mix")
    assert info["tokens"]["python"] == need
    available = have // SEQ_LEN
    assert info["repetition"]["python"] == pytest.approx(need / SEQ_LEN / available, rel=1e-3) and info["repetition"]["python"] > 1
    assert info["repeated_sequences"]["python"] == need // SEQ_LEN - available
    index = np.load(tmp_path / "mix" / "index.npy")
    assert index[index[:, 0] == 2, 1].max() < have


def test_competitive_high_m_and_names(built, study, tmp_path):
    streams = {s.name: built.stream_dir(s.name) for s in study.data.sources}
    info = build_mixture(MixtureSpec("competitive", 0.9), study.mixtures, study.data, streams, tmp_path / "c9")
    expected = expected_targets("competitive", 0.9, False)
    assert all(abs(info["tokens"][n] - expected[n]) <= SEQ_LEN / 2 for n in expected)
    per_setting = study.mixtures.model_copy(update={"m_by_setting": {"competitive": [0.9]}})
    assert [s.name for s in mixture_specs(per_setting) if s.setting == "competitive"] == ["competitive-m0.9"]
    assert stream_budgets(per_setting, study.data)["python"] == stream_budgets(study.mixtures, study.data)["python"]
    assert mixture_name("competitive", 0.25, False) == "competitive-m0.25"
    assert mixture_name("additive", 0.5, True) == "baseline-m0.5"
    assert mixture_name("additive", 0, False) == "additive-m0"
    assert Path(built.mixture_dir("additive", 0.5, True)).name.startswith("baseline-m0.5-")  # + its key


def test_codemix_mix_prints_target_vs_realized(built, study, tmp_path, capsys, monkeypatch):
    """`codemix mix` on an already built study: reuses everything and prints the table."""
    import yaml

    from codemix.cli import main

    monkeypatch.setenv("COLUMNS", "200")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study.model_dump(mode="json")))
    index = built.mixture_dir("additive", 0.4) / "index.npy"
    before = index.stat().st_mtime_ns
    assert main(["mix", str(path), "--set", f"out={built.root}"]) == 0
    out = capsys.readouterr().out
    assert index.stat().st_mtime_ns == before
    info = json.loads((built.mixture_dir("additive", 0.4) / "mixture.json").read_text())
    row = next(line for line in out.splitlines() if "additive-m0.4" in line and "python" in line)
    assert f"{round(info['target_tokens']['python']):,}" in row and f"{info['tokens']['python']:,}" in row
    assert "baseline-m0.5" in out and f"data ready in {built.root / 'jobs'}" in out
    assert main(["mix", str(path), "--set", f"out={built.root}", "--set", "mixtures.m=[0.7]"]) == 2
    assert "m=0.7 is above 0.5, the maximum for the additive setting" in capsys.readouterr().err
