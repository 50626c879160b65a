"""Adjusted p-values and Wilson intervals against statsmodels (the written tables: test_findings.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.proportion import proportion_confint

from codemix.analysis.inference import adjust_pvalues, proportion_units, wilson_interval
from codemix.analysis.regression import fit_regressions
from codemix.errors import ConfigError

from .helpers import make_results


# Few examples: statsmodels' Holm runs a full garbage collection on every call.
@settings(max_examples=12, deadline=None)
@given(st.lists(st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0, 0.05, np.nan])), min_size=1, max_size=40))
def test_adjusted_pvalues_equal_statsmodels(p):
    """Ties, zeros, ones and NaN (a test that was not run: not a member of the family)."""
    p = np.array(p)
    adj = adjust_pvalues(p)
    ok = np.isfinite(p)
    assert adj.n_tests == ok.sum()
    assert np.isnan(adj.holm[~ok]).all() and np.isnan(adj.fdr[~ok]).all()
    if ok.any():
        np.testing.assert_allclose(adj.holm[ok], multipletests(p[ok], method="holm")[1], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(adj.fdr[ok], multipletests(p[ok], method="fdr_bh")[1], rtol=1e-12, atol=1e-15)


def test_adjusted_pvalues_reject_what_is_not_a_pvalue():
    with pytest.raises(ConfigError, match=r"lie in \[0, 1\]"):
        adjust_pvalues([0.1, 1.2])
    with pytest.raises(ConfigError, match="1-D"):
        adjust_pvalues([[0.1]])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 500), st.floats(0, 1), st.sampled_from([0.8, 0.9, 0.95, 0.99]))
def test_wilson_equals_statsmodels(n, share, level):
    count = round(share * n)
    lo, hi = wilson_interval(count / n, n, confidence_level=level)
    ref = proportion_confint(count, n, alpha=1 - level, method="wilson")
    np.testing.assert_allclose([float(lo), float(hi)], ref, rtol=1e-10, atol=1e-12)


def test_wilson_is_nan_for_what_is_not_a_proportion():
    lo, hi = wilson_interval([1.5, 0.5, 0.5, np.nan], [10, 0, np.nan, 10])
    assert np.isnan(lo).all() and np.isnan(hi).all()


def test_proportion_units():
    rows = pd.DataFrame({
        "task": ["a"] * 2 + ["b"] * 2 + ["c"] * 2 + ["d"] * 2,
        "metric": ["acc", "acc", "bits_per_byte", "bits_per_byte", "pass@10", "pass@10", "sim", "sim"],
        "value": [0.25, 0.5, 3.1, 2.9, 0.37, 0.41, 0.333, 0.5],  # pass@10 is not a count of items; sim is not either
        "n": [4, 8, 10, 10, 20, 20, 10, 10]})
    got = proportion_units(rows, ["task", "metric"])
    assert got.to_dict() == {("a", "acc"): True, ("b", "bits_per_byte"): False, ("c", "pass@10"): True,
                             ("d", "sim"): False}


def test_wilson_of_a_proportion_in_points_and_by_m():
    rng = np.random.default_rng(3)
    df = make_results({("t", "", "exact_match"): 0.2}, baselines=False, rng=1)
    df["n"] = 50
    df["value"] = rng.binomial(50, np.clip(df["value"], 0, 1)) / 50  # counts of 50 items
    noisy = make_results({("u", "", "score"): 0.1}, baselines=False, rng=2)  # not a count of n = 100 items
    res = fit_regressions(pd.concat([df, noisy], ignore_index=True), n_bootstrap=1)
    assert res.points.loc[res.points["task"] == "u", ["wilson_low", "wilson_high"]].isna().all(axis=None)
    assert res.by_m.loc[res.by_m["task"] == "u", ["n_items", "wilson_low"]].isna().all(axis=None)
    assert res.table.set_index("task")["proportion"].to_dict() == {"t": True, "u": False}
    pts = res.points[res.points["task"] == "t"]
    ref = proportion_confint(np.round(pts["value"] * 50), 50, method="wilson")
    np.testing.assert_allclose(pts["wilson_low"], ref[0], rtol=1e-10)
    np.testing.assert_allclose(pts["wilson_high"], ref[1], rtol=1e-10)
    by_m = res.by_m
    row = by_m.iloc[0]
    cell = pts[(pts["setting"] == row["setting"]) & (pts["m"] == row["m"])]
    count, items = np.round(cell["value"] * 50).sum(), 50 * len(cell)
    assert row["n_items"] == items
    np.testing.assert_allclose([row["wilson_low"], row["wilson_high"]],
                               proportion_confint(count, items, method="wilson"), rtol=1e-10)


def test_a_unit_of_zeros_is_a_proportion_with_a_wilson_interval():
    # 0 of 100 items at every point: no signal, but the interval says what 0 is compatible with.
    res = fit_regressions(make_results({("z", "", "acc"): 0.0}, noise=0.0, intercept=0.0), n_bootstrap=1)
    assert (res.points["wilson_low"] == 0).all()
    np.testing.assert_allclose(res.points["wilson_high"], proportion_confint(0, 100, method="wilson")[1])
    assert (res.by_m["n_items"] == 300).all()  # 3 seeds × 100 items pooled per m
