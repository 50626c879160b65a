"""The §5.1 permutation test against scipy.stats.permutation_test, and the slope procedure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from codemix.analysis.permutation import (
    STATISTICS,
    _shuffle_within,
    code_effect_test,
    slope_permutation_test,
    task_slopes,
)
from codemix.analysis.regression import fit_regressions
from codemix.errors import ConfigError, DataError

from .helpers import make_results

# Independent definitions of each statistic, written against scipy/numpy directly.
REFERENCE = {
    "mean": lambda x, axis: np.mean(x, axis=axis),
    "variance": lambda x, axis: np.var(x, axis=axis, ddof=1),
    "skewness": lambda x, axis: stats.skew(x, axis=axis, bias=True),
    "upper_quartile": lambda x, axis: np.percentile(x, 75, axis=axis),
    "lower_quartile": lambda x, axis: np.percentile(x, 25, axis=axis),
}


def _scipy_test(t, c, name, n_resamples, seed):
    f = REFERENCE[name]
    return stats.permutation_test((t, c), lambda x, y, axis: f(x, axis) - f(y, axis), vectorized=True,
                                  permutation_type="independent", alternative="two-sided",
                                  n_resamples=n_resamples, rng=seed)


def test_exact_test_equals_scipy():
    # 6 + 5 slopes: C(11, 6) = 462 partitions <= n_resamples, so both enumerate them all.
    rng = np.random.default_rng(0)
    t, c = rng.normal(0.4, 1, 6), rng.normal(0, 1, 5)
    res = slope_permutation_test(t, c, n_resamples=1000, rng=1)
    assert res.exact and res.n_resamples == 462
    for i, name in enumerate(STATISTICS):
        ref = _scipy_test(t, c, name, 1000, 0)
        assert res.observed[i] == pytest.approx(ref.statistic, rel=1e-12)
        assert res.pvalues[i] == pytest.approx(ref.pvalue, abs=1e-12), name
        np.testing.assert_allclose(np.sort(res.null_distribution[i]), np.sort(ref.null_distribution),
                                   rtol=1e-10, atol=1e-12)


def test_randomized_test_agrees_with_scipy_within_monte_carlo_error():
    # Each p-value is estimated from N = 4000 random partitions, independently by scipy and by us,
    # so their difference has sd ≈ sqrt(2·p(1−p)/N) (≤ 0.0112). Allow 4.5 sd plus the 1/(N+1)
    # granularity; a wrong null (e.g. one-sided, or Δ of the wrong sign) misses by far more.
    rng = np.random.default_rng(1)
    t, c = rng.normal(0.2, 1.3, 25), rng.normal(0, 1, 25)
    n = 4000
    res = slope_permutation_test(t, c, n_resamples=n, rng=2)
    assert not res.exact and res.null_distribution.shape == (len(STATISTICS), n)
    pvalues = []
    for i, name in enumerate(STATISTICS):
        ref = _scipy_test(t, c, name, n, 3)
        assert res.observed[i] == pytest.approx(ref.statistic, rel=1e-12)
        tol = 4.5 * np.sqrt(2 * ref.pvalue * (1 - ref.pvalue) / n) + 2 / (n + 1)
        assert abs(res.pvalues[i] - ref.pvalue) <= tol, (name, res.pvalues[i], ref.pvalue)
        pvalues.append(ref.pvalue)
    assert min(pvalues) < 0.2 < max(pvalues)  # the comparison covers small and large p-values


def test_rng_fixes_the_result():
    t, c = np.linspace(0, 1, 12), np.linspace(-0.5, 0.7, 12) ** 2
    a = slope_permutation_test(t, c, n_resamples=300, rng=7)
    b = slope_permutation_test(t, c, n_resamples=300, rng=np.random.default_rng(7))
    d = slope_permutation_test(t, c, n_resamples=300, rng=8)
    np.testing.assert_array_equal(a.null_distribution, b.null_distribution)
    assert not np.array_equal(a.null_distribution, d.null_distribution)


def test_batches_give_the_same_null_as_one_batch(monkeypatch):
    import codemix.analysis.permutation as perm

    t, c = np.arange(10.0), np.arange(10.0) ** 1.5
    whole = slope_permutation_test(t, c, n_resamples=500, rng=3)
    monkeypatch.setattr(perm, "_BATCH_ELEMENTS", 7 * 20)  # 7 resamples per batch
    split = slope_permutation_test(t, c, n_resamples=500, rng=3)
    # Different batch shapes draw different permutations, but the p-values estimate the same thing
    # (N = 500 each: |Δp| ≤ 4.5·sqrt(2·0.25/500) ≈ 0.14).
    assert split.null_distribution.shape == whole.null_distribution.shape
    assert np.all(np.abs(split.pvalues - whole.pvalues) <= 0.15)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"treatment": [1.0], "control": [1.0, 2.0]}, "at least 2"),
    ({"statistics": ["median"]}, "subset of mean"),
    ({"n_resamples": 0}, "positive integer"),
    ({"treatment": [1.0, np.nan, 2.0]}, "finite"),
])
def test_bad_arguments_raise_config_error(kwargs, match):
    args = {"treatment": [0.1, 0.2, 0.3], "control": [0.0, 0.1, 0.05]} | kwargs
    with pytest.raises(ConfigError, match=match):
        slope_permutation_test(args.pop("treatment"), args.pop("control"), **args)


def test_shuffle_within_keeps_each_group_multiset():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 20, 500)
    values = rng.normal(size=500)
    out = _shuffle_within(codes, values, rng)
    assert not np.array_equal(out, values)
    for g in range(20):
        np.testing.assert_array_equal(np.sort(out[codes == g]), np.sort(values[codes == g]))


def test_treatment_slopes_are_the_regression_slopes_and_exclude_baselines():
    qt = {"cogs": "generative", "bigbench": "multiple_choice"}
    units = {("cogs", "lex", "em"): 0.3, ("bigbench", "a", "mcg"): 0.1, ("bigbench", "b", "mcg"): -0.1}
    df = make_results(units, question_types=qt, rng=0)
    slopes = task_slopes(df, rng=0)
    reg = fit_regressions(df).table
    reg = reg[~reg["baseline"]]
    assert len(slopes) == len(reg) == 6  # baselines excluded
    merged = slopes.merge(reg, on=["setting", "task", "subtask", "metric"])
    np.testing.assert_allclose(merged["treatment"], merged["beta"], rtol=1e-12)
    assert (merged["question_type"] == merged["task"].map(qt)).all()


def test_control_slope_is_ols_on_shuffled_m():
    df = make_results({("t", "", "acc"): 0.5}, baselines=False, rng=0)
    df = df[df["setting"] == "competitive"].reset_index(drop=True)
    got = task_slopes(df, rng=11)["control"].iloc[0]
    # Same shuffle as task_slopes draws for a single group: argsort of uniform keys.
    keys = np.random.default_rng(11).random(len(df))
    m_shuffled = df["m"].to_numpy()[np.lexsort((keys, np.zeros(len(df), int)))]
    assert got == pytest.approx(np.polyfit(m_shuffled, df["value"], 1)[0], rel=1e-10)
    assert abs(got) < 0.2  # the true slope (0.5) is gone after shuffling


def test_detects_a_real_effect():
    rng = np.random.default_rng(0)
    units = {(f"t{i}", "", "acc"): s for i, s in enumerate(rng.normal(0.3, 0.1, 15))}
    res = code_effect_test(make_results(units, baselines=False, rng=1), n_resamples=500, rng=0)
    table = res.table.set_index(["setting", "statistic"])
    # Slopes ~0.3 vs control ~0: 15 vs 15 values separate completely, p = 1/501 * 2.
    assert table.loc[("competitive", "mean"), "p_value"] < 0.01
    assert table.loc[("additive", "mean"), "p_value"] < 0.01
    assert (res.table["question_type"] == "all").all()


def test_no_effect_gives_uniform_looking_p_values():
    # 80 independent no-effect experiments of 12 tasks each, run as 80 "settings" of one table.
    # Their Δmean p-values (199 resamples each) should look uniform: KS at level 0.01 with a
    # fixed seed; the p granularity (1/200) is far below the KS scale.
    units = {(f"t{i}", "", "acc"): 0.0 for i in range(12)}
    rng = np.random.default_rng(123)
    df = pd.concat([make_results(units, baselines=False, seeds=2, rng=rng).query("setting == 'competitive'")
                    .assign(setting=f"s{k:02d}") for k in range(80)], ignore_index=True)
    res = code_effect_test(df, n_resamples=199, statistics=["mean"], control_draws=1, rng=0)
    pvals = res.table["p_value"].to_numpy()
    assert len(pvals) == 80
    assert stats.kstest(pvals, "uniform").pvalue > 0.01
    assert np.mean(pvals < 0.05) <= 0.15
    # The median over 21 control draws is no longer uniform: the draws share the treatment slopes,
    # and their median concentrates towards 1/2, so small medians are rarer than under one draw.
    # P(median ≤ α) ≤ 2α always (Markov on the count of draws with p ≤ α); here well below α.
    many = code_effect_test(df, n_resamples=199, statistics=["mean"], control_draws=21, rng=0)
    median = many.table["p_value"].to_numpy()
    assert np.mean(median < 0.05) <= np.mean(pvals < 0.05) + 0.0125  # at most one more of 80
    assert np.std(median) < np.std(pvals)
    assert ((many.table["p_q25"] <= median) & (median <= many.table["p_q75"])).all()


def test_per_question_type_cells_and_too_few_tasks():
    qt = {"cogs": "generative", "bigbench": "multiple_choice"}
    units = {("cogs", "lex", "em"): 0.3, ("bigbench", "a", "mcg"): 0.1, ("bigbench", "b", "mcg"): -0.1}
    res = code_effect_test(make_results(units, question_types=qt), n_resamples=100, rng=0)
    cells = set(zip(res.table["setting"], res.table["question_type"], strict=True))
    assert cells == {(s, q) for s in ("additive", "competitive") for q in ("all", "multiple_choice")}
    assert any("generative: 1 task(s)" in n for n in res.notes)
    assert list(res.table.columns[:8]) == ["arm", "setting", "question_type", "statistic", "observed", "p_value",
                                           "p_holm", "p_fdr"]
    exact = res.table[res.table["question_type"] == "multiple_choice"]
    assert exact["exact"].all() and (exact["n_permutations"] == 6).all()  # C(4, 2) partitions


def test_question_type_must_be_constant_within_a_task():
    df = make_results({("cogs", "lex", "em"): 0.3}, question_types={"cogs": "generative"})
    df.loc[0, "question_type"] = "multiple_choice"
    with pytest.raises(DataError, match="one question_type"):
        task_slopes(df)


def test_units_with_one_distinct_m_are_left_out():
    df = make_results({("a", "", "acc"): 0.1, ("b", "", "acc"): 0.2, ("c", "", "acc"): 0.0}, baselines=False)
    df = df[~((df["task"] == "c") & (df["m"] != 0.25)) | (df["setting"] == "competitive")]
    slopes = task_slopes(df)
    assert set(slopes.loc[slopes["setting"] == "additive", "task"]) == {"a", "b"}
    assert set(slopes.loc[slopes["setting"] == "competitive", "task"]) == {"a", "b", "c"}


def test_empty_after_filtering_gives_empty_tables():
    df = make_results({("a", "", "acc"): 0.1})
    df = df[df["baseline"]]  # only language-only baselines: nothing to test
    res = code_effect_test(df, n_resamples=10)
    assert len(res.table) == 0 and len(res.slopes) == 0 and res.tests == {}
    assert isinstance(res.slopes, pd.DataFrame)


# ---------------------------------------------------------------- control draws (issue 17)


def test_each_control_draw_is_the_test_of_that_draw():
    # 5 + 5 slopes: C(10, 5) = 252 partitions, enumerated, so every draw's test is exact and must
    # equal slope_permutation_test on that draw alone (which scipy's test is checked against above).
    from codemix.analysis.permutation import _draws_test

    rng = np.random.default_rng(4)
    t, controls = rng.normal(0.3, 1, 5), rng.normal(0, 1, (7, 5))
    observed, pvalues, null, exact = _draws_test(t, controls, STATISTICS, 1000, np.random.default_rng(0))
    assert exact and pvalues.shape == (len(STATISTICS), 7) and null.shape == (len(STATISTICS), 7, 252)
    for r, c in enumerate(controls):
        one = slope_permutation_test(t, c, n_resamples=1000)
        np.testing.assert_allclose(observed[:, r], one.observed, rtol=1e-12)
        np.testing.assert_allclose(pvalues[:, r], one.pvalues, atol=1e-12)
        np.testing.assert_allclose(np.sort(null[:, r], axis=1), np.sort(one.null_distribution, axis=1),
                                   rtol=1e-9, atol=1e-12)


def test_control_draws_share_their_partitions():
    # Randomized test, identical control draws: with common re-partitions every draw gets the same p.
    from codemix.analysis.permutation import _draws_test

    rng = np.random.default_rng(5)
    t, c = rng.normal(0.3, 1, 30), rng.normal(0, 1, 30)
    _, pvalues, _, exact = _draws_test(t, np.stack([c, c, c]), STATISTICS, 300, np.random.default_rng(1))
    assert not exact and (pvalues == pvalues[:, :1]).all()


def test_table_reports_the_median_draw_and_the_spread():
    units = {(f"t{i}", "", "acc"): s for i, s in enumerate(np.linspace(-0.05, 0.15, 12))}
    res = code_effect_test(make_results(units, baselines=False, rng=3), n_resamples=300, control_draws=9, rng=0)
    for (arm, setting, qtype), draws in res.draw_pvalues.items():
        assert draws.shape == (9, len(STATISTICS))
        rows = res.table[(res.table["setting"] == setting) & (res.table["question_type"] == qtype)]
        np.testing.assert_allclose(rows["p_value"], np.median(draws, axis=0))
        np.testing.assert_allclose(rows["p_q25"], np.quantile(draws, 0.25, axis=0))
        np.testing.assert_allclose(rows["p_q75"], np.quantile(draws, 0.75, axis=0))
        test = res.tests[(arm, setting, qtype)]
        np.testing.assert_array_equal(test.pvalues, rows["p_value"])  # the figure shows the median draw
        assert (rows["control_draws"] == 9).all()


def test_median_p_moves_less_with_the_seed_than_one_draw():
    # One control shuffle per task makes p depend on --seed; the median over 21 draws much less so.
    units = {(f"t{i}", "", "acc"): s for i, s in enumerate(np.linspace(-0.02, 0.06, 10))}
    df = make_results(units, baselines=False, seeds=2, noise=0.05, rng=8).query("setting == 'competitive'")
    spread = {}
    for draws in (1, 21):
        p = [code_effect_test(df, n_resamples=400, statistics=["mean"], control_draws=draws, rng=s)
             .table["p_value"].iloc[0] for s in range(12)]
        spread[draws] = np.std(p)
    assert spread[21] < 0.6 * spread[1], spread
