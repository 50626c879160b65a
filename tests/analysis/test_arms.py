"""Arms side by side: the m × arm interaction against statsmodels, and `codemix analyze A.csv B.csv`."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pandas as pd
import pytest
import statsmodels.formula.api as smf
from statsmodels.stats.anova import anova_lm

from codemix.analysis.arms import combine_arms, compare_arms
from codemix.cli import main
from codemix.errors import DataError

from .helpers import make_results

UNITS = {("cogs", "gen", "exact_match"): 0.1, ("bigbench", "arithmetic", "acc"): -0.05}


def _arms(slopes_by_arm: dict[str, dict], *, rng: int = 0, noise: float = 0.03) -> pd.DataFrame:
    return pd.concat([make_results(units, rng=rng + k, noise=noise).assign(arm=arm)
                      for k, (arm, units) in enumerate(slopes_by_arm.items())], ignore_index=True)


def test_two_arms_equal_statsmodels_interaction_model():
    df = _arms({"python": UNITS, "mixed": {k: v + 0.2 for k, v in UNITS.items()}})
    res = compare_arms(df)
    assert res.arms == ("python", "mixed") and len(res.table) == len(UNITS) * 3
    for row in res.table.itertuples(index=False):
        g = df[(df["task"] == row.task) & (df["setting"] == row.setting) & (df["baseline"] == row.baseline)]
        fit = smf.ols("value ~ m * C(arm, Treatment('python'))", g).fit()
        term = "m:C(arm, Treatment('python'))[T.mixed]"
        np.testing.assert_allclose([row.diff, row.se_diff, row.p_diff, row.p_interaction, *[row.ci_low, row.ci_high]],
                                   [fit.params[term], fit.bse[term], fit.pvalues[term], fit.pvalues[term],
                                    *fit.conf_int().loc[term]], rtol=1e-8)
        assert row.df == fit.df_resid
        own = [smf.ols("value ~ m", g[g["arm"] == a]).fit().params["m"] for a in ("python", "mixed")]
        np.testing.assert_allclose([row.beta_reference, row.beta_arm], own, rtol=1e-9)


def test_three_arms_f_test_equals_statsmodels_anova():
    df = _arms({"a": UNITS, "b": {k: v + 0.05 for k, v in UNITS.items()}, "c": UNITS}, noise=0.05)
    res = compare_arms(df, reference="b")
    assert res.arms == ("b", "a", "c")
    rows = res.table[(res.table["task"] == "cogs") & (res.table["setting"] == "competitive")]
    assert list(rows["arm"]) == ["a", "c"] and (rows["reference"] == "b").all()
    g = df[(df["task"] == "cogs") & (df["setting"] == "competitive")]
    full, common = smf.ols("value ~ m * C(arm)", g).fit(), smf.ols("value ~ m + C(arm)", g).fit()
    p_f = anova_lm(common, full)["Pr(>F)"].iloc[1]
    np.testing.assert_allclose(rows["p_interaction"], p_f, rtol=1e-8)
    assert rows["p_fdr"].nunique() == 1  # one test per unit, shared by its rows


def _run(args: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, out.getvalue() + err.getvalue()


@pytest.mark.parametrize("planted", [True, False])
def test_analyze_two_arms_recovers_a_planted_interaction_and_none_in_a_null_twin(tmp_path, planted):
    # 8 units × 2 settings (+ the additive baseline), 3 seeds, noise sd 0.01: the difference of two
    # slopes has se ≈ 0.011 on the competitive design (m up to 0.9) and ≈ 0.022 on the additive one
    # (m up to 0.5). Planted: in half of the units the "mixed" arm's slope is 0.15 steeper (≥ 6.8 se:
    # found with power ≈ 1 even after FDR); the null twin gives both arms the same slopes. Under the
    # global null Benjamini–Hochberg finds nothing with probability ≥ 0.95; with 8 true discoveries
    # it allows about 0.05 · 8 = 0.4 false ones (the seed is fixed, so the outcome is too).
    rng = np.random.default_rng(11)
    base = {("bench", f"t{i:02d}", "acc"): s for i, s in enumerate(rng.normal(0, 0.1, 8))}  # one figure per arm
    shift = {k: (0.15 if planted and i % 2 == 0 else 0.0) for i, k in enumerate(base)}
    a = make_results(base, rng=1, noise=0.01).assign(study="python-only")
    b = make_results({k: v + shift[k] for k, v in base.items()}, rng=2, noise=0.01).assign(study="mixed")
    if planted:  # two studies, two files (CSV and Parquet): each file an arm, named by its study
        a.to_csv(tmp_path / "a.csv", index=False)
        b.to_parquet(tmp_path / "b.parquet")
        inputs = [str(tmp_path / "a.csv"), str(tmp_path / "b.parquet")]
    else:  # the null twin as one study with an arm column
        pd.concat([a.assign(study="s", arm="python-only"), b.assign(study="s", arm="mixed")]).to_csv(
            tmp_path / "both.csv", index=False)
        inputs = [str(tmp_path / "both.csv")]
    rc, text = _run(["analyze", *inputs, "--out", str(tmp_path / "out"), "--permutations", "100",
                     "--control-draws", "3"])
    assert rc == 0, text
    arms = pd.read_csv(tmp_path / "out" / "arms.csv", keep_default_na=False, na_values=[""])
    assert set(arms["reference"]) == {"python-only"} and set(arms["arm"]) == {"mixed"}  # named by study
    found = arms["p_fdr"] < 0.05
    # Language-only baselines hold no code, so their slopes do not differ between arms either.
    truth = (arms["subtask"].map({k[1]: shift[k] for k in shift}) > 0) & ~arms["baseline"]
    assert found[truth].all(), arms[["subtask", "setting", "baseline", "diff", "p_fdr"]]
    if planted:
        assert (found & ~truth).sum() <= 1, arms.loc[found & ~truth]
        covered = (arms.loc[truth, "ci_low"] <= 0.15) & (0.15 <= arms.loc[truth, "ci_high"])
        assert covered.mean() >= 0.75  # 95% intervals: 8 cover with probability 0.99 at least 6 of them
    else:
        assert not found.any()
    report = (tmp_path / "out" / "report" / "index.html").read_text()
    assert "Arms side by side" in report
    reg = pd.read_csv(tmp_path / "out" / "regressions.csv")
    assert reg.columns[0] == "arm" and set(reg["arm"]) == {"python-only", "mixed"}
    perm = pd.read_csv(tmp_path / "out" / "permutation.csv")
    assert set(perm["arm"]) == {"python-only", "mixed"}  # §5.1 per arm


def test_combine_arms_names_files():
    t = make_results(UNITS)
    combined = combine_arms([("runs/a.csv", t), ("runs/b.csv", t.assign(study="other")),
                             ("runs/c.csv", t.assign(arm="named"))])
    # a: study "synthetic" (free); b: study "other"; c: its own arm column.
    assert list(pd.unique(combined["arm"])) == ["synthetic", "other", "named"]
    same = combine_arms([("x/first.csv", t), ("y/second.csv", t)])  # one study name for both: the stems
    assert list(pd.unique(same["arm"])) == ["first", "second"]
    with pytest.raises(DataError, match="arm.*named.*another results file"):
        combine_arms([("a.csv", t.assign(arm="named")), ("b.csv", t.assign(arm="named"))])
    with pytest.raises(DataError, match=r"b\.csv lacks column\(s\) value"):
        combine_arms([("a.csv", t), ("b.csv", t.drop(columns="value"))])
