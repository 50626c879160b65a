"""The answer first: headline units, sentences, the transfer panel, and the report that opens with them."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from statsmodels.stats.multitest import multipletests

from codemix.analysis.findings import findings, language_of, unit_sentence
from codemix.analysis.regression import fit_regressions
from codemix.analysis.report import analyze

from .helpers import make_results


def _study() -> pd.DataFrame:
    """Perplexity (no primary rows) per language, MBPP pass@1 (primary) per language, arithmetic (primary, 5 subtasks)."""
    ppl = {("perplexity", lang, metric): slope * (3 if metric == "perplexity" else 1)
           for lang, slope in (("c4", 0.1), ("python", -0.8), ("rust", -0.6), ("go", 0.0))
           for metric in ("bits_per_byte", "perplexity")}
    mbpp = {("mbpp", lang, "pass@1"): 0.0 for lang in ("py", "rs", "go")} | {("mbpp", "py", "frac_passed"): 0.0}
    arith = {("arithmetic", f"{d}_digit_addition", "exact_match"): 0.02 * d for d in range(1, 6)}
    df = pd.concat([make_results(ppl, intercept=3.0, noise=0.05, rng=0),
                    make_results(arith, noise=0.02, rng=1),
                    make_results(mbpp, noise=0.0, intercept=0.0, rng=2)], ignore_index=True)
    df["primary"] = (df["task"] == "arithmetic") | ((df["task"] == "mbpp") & (df["metric"] == "pass@1"))
    return df


@pytest.fixture(scope="module")
def found():
    return findings(_study(), rng=0)


def test_headline_units(found):
    t = found.table
    assert set(t["setting"]) == {"competitive", "additive"}  # baselines are not findings
    units = set(zip(t["task"], t["subtask"], t["metric"], strict=True))
    assert units == {("perplexity", s, "bits_per_byte") for s in ("c4", "python", "rust", "go")} | {
        ("mbpp", s, "pass@1") for s in ("py", "rs", "go")} | {("arithmetic", "mean of 5 subtasks", "exact_match")}
    assert dict(zip(t["subtask"], t["language"], strict=False)) == {
        "c4": "", "python": "Python", "rust": "Rust", "go": "Go", "py": "Python", "rs": "Rust",
        "mean of 5 subtasks": ""}
    assert t.loc[t["task"] == "mbpp", "no_signal"].all() and not t.loc[t["task"] != "mbpp", "no_signal"].any()


def test_a_mean_of_subtasks_has_the_mean_slope(found):
    # OLS is linear in the values and the subtasks share their (m, seed) design, so the slope of the
    # per-point mean is the mean of the subtasks' slopes, exactly.
    reg = fit_regressions(_study()).table
    arith = reg[(reg["task"] == "arithmetic") & ~reg["baseline"]].groupby("setting")["beta"].mean()
    got = found.table[found.table["task"] == "arithmetic"].set_index("setting")["beta"]
    np.testing.assert_allclose(got.sort_index(), arith.sort_index(), rtol=1e-10)
    assert (found.table.loc[found.table["task"] == "arithmetic", "n_subtasks"] == 5).all()


def test_findings_match_their_regressions(found):
    reg = fit_regressions(_study()).table.set_index(["task", "subtask", "metric", "setting", "baseline"])
    for row in found.table[found.table["task"] == "perplexity"].itertuples(index=False):
        ref = reg.loc[(row.task, row.subtask, row.metric, row.setting, False)]
        np.testing.assert_allclose([row.beta, row.ci_low, row.ci_high, row.p_beta],
                                   [ref["beta"], ref["ci_low"], ref["ci_high"], ref["p_beta"]], rtol=1e-10)


def test_transfer_panel(found):
    tr = found.transfer
    assert set(tr["task"]) == {"perplexity", "mbpp"}
    ppl = tr[tr["task"] == "perplexity"].set_index("setting")
    t = found.table[found.table["task"] == "perplexity"].set_index(["subtask", "setting"])
    for setting in ("competitive", "additive"):
        for lang, sub in (("python", "python"), ("rust", "rust"), ("go", "go")):
            assert ppl.loc[setting, f"{lang}_beta"] == t.loc[(sub, setting), "beta"]
    assert tr.loc[tr["task"] == "mbpp", ["python_no_signal", "rust_no_signal", "go_no_signal"]].all(axis=None)


def test_sentences_say_what_changed(found):
    t = found.table.set_index(["task", "subtask", "setting"])
    rust = t.loc[("perplexity", "rust", "competitive"), "sentence"]
    assert re.match(r"Rust bits per byte \(perplexity\) falls by 0\.\d+ per unit of m in the competitive setting "
                    r"\(0\.\d+ from m = 0 to 0\.9; 95% CI −0\.\d+ to −0\.\d+\), sign stable in 100% of seed "
                    r"resamples; FDR-adjusted p = ", rust), rust
    go = t.loc[("perplexity", "go", "additive"), "sentence"]  # true slope 0
    assert "no change detected in the additive setting" in go and "would be detected 80% of the time" in go
    mbpp = t.loc[("mbpp", "rs", "competitive"), "sentence"]
    assert mbpp.startswith("Rust pass@1 (mbpp) is 0 at every m and seed") and "no signal" in mbpp
    assert "Wilson interval is 0–0.0" in mbpp  # 0 of 100 items: at most 3.7%
    both = unit_sentence(found.table[(found.table["task"] == "perplexity") & (found.table["subtask"] == "python")])
    assert both.startswith("Python bits per byte (perplexity) falls with m in both settings: by ")


def test_language_of():
    assert [language_of(s) for s in ("python", "rs", "humaneval_x/rust", "Go", "golang", "c4", "gen/lexical",
                                     "cpp", "")] == ["Python", "Rust", "Rust", "Go", "Go", "", "", "", ""]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("findings") / "out"
    # Many null units make raw p < 0.05 in some regressions that the adjustment does not keep.
    nulls = make_results({("null", f"s{i:02d}", "acc"): 0.0 for i in range(6)}, noise=0.05, rng=5)
    res = analyze(pd.concat([_study(), nulls], ignore_index=True), out, permutations=100, control_draws=3, seed=0)
    return out, res


def test_written_families_are_adjusted_like_statsmodels(report):
    out, _ = report
    for name, p_col, n_untested in (("regressions.csv", "p_beta", 4 * 3), ("permutation.csv", "p_value", 0),
                                    ("findings.csv", "p_beta", 6)):
        table = pd.read_csv(out / name)
        cols = list(table.columns)
        assert cols[cols.index(p_col) + 1:cols.index(p_col) + 3] == ["p_holm", "p_fdr"], name  # beside the p
        tested = table[p_col].notna()
        assert (~tested).sum() == n_untested, name  # the no-signal units (mbpp: 4 units, 3 groups each)
        p = table.loc[tested, p_col].to_numpy()
        np.testing.assert_allclose(table.loc[tested, "p_holm"], multipletests(p, method="holm")[1], rtol=1e-12)
        np.testing.assert_allclose(table.loc[tested, "p_fdr"], multipletests(p, method="fdr_bh")[1], rtol=1e-12)
        assert table.loc[~tested, ["p_holm", "p_fdr"]].isna().all(axis=None)


def test_report_opens_with_the_answer(report):
    out, _ = report
    page = (out / "report" / "index.html").read_text()
    order = [page.index(x) for x in ("What changed with m", "Findings: each benchmark", "Transfer: Python, Rust",
                                     "<h2>Details</h2>", "Does code change task performance", "Regressions on the code")]
    assert order == sorted(order)
    answer = page[page.index("What changed with m"):page.index("Findings: each benchmark")]
    assert "Python bits per byte (perplexity) falls with m in both settings" in answer
    assert "No signal" in answer and "Rust pass@1 (mbpp)" in answer
    found = pd.read_csv(out / "findings.csv")
    assert list(found.columns[:6]) == ["task", "subtask", "metric", "setting", "subject", "language"]
    md = (out / "report" / "report.md").read_text()
    assert md.index("## What changed with m") < md.index("## Details")


def test_stars_and_bold_come_from_adjusted_p_only(report):
    out, res = report
    reg = res.regressions.table
    raw_only = (reg["p_beta"] < 0.05) & ~(reg["p_fdr"] < 0.05)
    assert raw_only.any()  # the case this test is about
    stars = sum(pd.read_csv(p, dtype=str, keep_default_na=False)["β̂"].str.endswith("*").sum()
                for p in (out / "tables").glob("*.csv"))
    assert stars == (reg["p_fdr"] < 0.05).sum()
    page = (out / "report" / "index.html").read_text()
    perm = page[page.index("Does code change task performance"):page.index("Regressions on the code")]
    header = re.search(r"<thead><tr>(.*?)</tr></thead>", perm).group(1)
    columns = re.findall(r"<th>(.*?)</th>", header)
    for row in re.findall(r"<tr>(<td.*?)</tr>", perm):
        cells = re.findall(r"<td([^>]*)>", row)
        for col, attrs in zip(columns, cells, strict=True):
            if "sig" in attrs:
                assert col in ("p (Holm)", "p (FDR)"), col
