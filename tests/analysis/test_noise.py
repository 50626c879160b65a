"""Seed noise on synthetic studies with known slopes and known seed noise.

Every study here is ``value = 0.4 + β·m + N(0, σ²)``, one independent draw per (m, seed), on the
competitive design m ∈ {0, 0.25, 0.5, 0.75, 0.9} (range 0.9). Each test states the value the
statistic should take and why; tolerances are several standard errors of the Monte Carlo.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats
from statsmodels.stats.power import TTestPower

from codemix.analysis.noise import constant_units, min_detectable_slope, seed_noise
from codemix.analysis.permutation import code_effect_test
from codemix.analysis.regression import fit_regressions
from codemix.errors import ConfigError

from .helpers import make_results

M = np.array([0.0, 0.25, 0.5, 0.75, 0.9])


def _study(slopes, *, seeds: int, sigma: float, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit, m, value) arrays: every unit measured at every m with ``seeds`` seeds."""
    rng = np.random.default_rng(rng)
    slopes = np.asarray(slopes, dtype=float)
    unit = np.repeat(np.arange(len(slopes)), len(M) * seeds)
    m = np.tile(np.repeat(M, seeds), len(slopes))
    return unit, m, 0.4 + slopes[unit] * m + rng.normal(0, sigma, len(m))


def test_snr_of_a_known_slope_is_its_range_over_the_seed_sd():
    # Per-m means ≈ 0.4 + β·m (200 seeds: their own noise is σ/√200), so their spread (max − min)
    # is ≈ |β|·0.9; the mean seed sd is ≈ σ. SNR ≈ 0.3 · 0.9 / 0.03 = 9 and 0.1 · 0.9 / 0.03 = 3.
    unit, m, y = _study([0.3, -0.1], seeds=200, sigma=0.03, rng=0)
    res = seed_noise(unit, m, y, n_bootstrap=10, rng=0)
    np.testing.assert_allclose(res.snr, [9.0, 3.0], rtol=0.05)
    np.testing.assert_allclose(res.seed_sd, 0.03, rtol=0.05)
    np.testing.assert_allclose(res.pooled_sd, 0.03, rtol=0.03)


def test_snr_without_an_effect_is_the_range_of_noisy_means():
    # β = 0: the per-m means are 5 draws of N(0.4, σ²/n), whose expected range is d₂(5)·σ/√n with
    # d₂(5) = 2.326 (the range of 5 standard normals); the mean seed sd is ≈ c₄(n)·σ. With n = 10
    # seeds: SNR ≈ 2.326 / √10 / 0.9727 = 0.756 on average over 400 units (sd of that average ≈ 1.5%).
    unit, m, y = _study(np.zeros(400), seeds=10, sigma=0.05, rng=1)
    res = seed_noise(unit, m, y, n_bootstrap=10, rng=0)
    c4 = np.sqrt(2 / 9) * np.exp(special.gammaln(5) - special.gammaln(4.5))  # E[s] / σ with 10 seeds
    assert res.snr.mean() == pytest.approx(2.326 / np.sqrt(10) / c4, rel=0.06)
    assert (res.snr < 2).mean() > 0.95  # a metric with no signal rarely looks like one


def test_sign_stability_is_the_normal_probability_of_keeping_the_sign():
    # A stratified bootstrap over seeds draws β* ≈ N(β̂, se²) (se: the slope's standard error), so
    # the share keeping the sign is ≈ Φ(|β̂| / se). Slopes spread from 0.02 to 0.06 with σ = 0.2 and
    # 20 seeds (se ≈ 0.031) cover shares from about 0.7 to 0.97; each estimate from 2,000
    # resamples has sd ≤ 0.011, the plug-in variance of the bootstrap is (n−1)/n = 0.95 of se².
    slopes = np.linspace(0.02, 0.06, 24)
    unit, m, y = _study(slopes, seeds=20, sigma=0.2, rng=2)
    res = seed_noise(unit, m, y, n_bootstrap=2000, rng=0)
    table = fit_regressions(pd.DataFrame({"study": "s", "setting": "competitive", "m": m, "baseline": False,
                                          "seed": np.arange(len(m)) % 20, "task": unit.astype(str), "subtask": "",
                                          "metric": "acc", "value": y, "n": 1}))
    fit = table.table.set_index("task").loc[[str(u) for u in range(len(slopes))]]
    expected = stats.norm.cdf(np.abs(fit["beta"]) / (fit["se_beta"] * np.sqrt(0.95)))
    np.testing.assert_allclose(res.sign_stability, expected, atol=0.05)
    assert res.sign_stability.min() < 0.85 < res.sign_stability.max()


def test_sign_stability_without_an_effect_is_uniform_between_half_and_one():
    # With β = 0, |β̂| / se is |N(0, 1)|, so Φ(|β̂| / se) is uniform on [0.5, 1]: mean 0.75, and about
    # 5% of units above 0.975 — the units a two-sided test at 0.05 would call significant.
    unit, m, y = _study(np.zeros(300), seeds=8, sigma=0.1, rng=3)
    res = seed_noise(unit, m, y, n_bootstrap=400, rng=0)
    assert res.sign_stability.mean() == pytest.approx(0.75, abs=0.03)
    assert 0.02 <= (res.sign_stability > 0.975).mean() <= 0.10
    assert stats.kstest(res.sign_stability, "uniform", args=(0.5, 0.5)).pvalue > 0.001


def test_sign_stability_of_a_strong_slope_is_one_and_of_a_constant_undefined():
    unit, m, y = _study([0.5], seeds=4, sigma=0.01, rng=4)  # |β̂| / se ≈ 60
    assert seed_noise(unit, m, y, rng=0).sign_stability[0] == 1.0
    flat = seed_noise(np.zeros(10), np.repeat([0.0, 0.5], 5), np.zeros(10), rng=0)
    assert np.isnan(flat.sign_stability[0]) and np.isnan(flat.snr[0]) and np.isnan(flat.min_detectable_slope[0])
    single = seed_noise(np.zeros(3), [0.0, 0.5, 0.9], [0.1, 0.2, 0.4], rng=0)  # one seed per m: no seed noise
    assert np.isnan(single.sign_stability[0]) and np.isnan(single.seed_sd[0])


def test_min_detectable_slope_equals_statsmodels_power_of_a_t_test():
    # The slope's t statistic is noncentral t with n − 2 df and noncentrality β·√Sxx/σ; statsmodels'
    # one-sample t power with nobs = n − 1 has the same df and noncentrality es·√(n − 1), so
    # the detectable slope is es·σ·√((n − 1)/Sxx).
    for seeds in (2, 3, 5, 10):
        m = np.repeat(M, seeds)
        n, sxx = len(m), ((m - m.mean()) ** 2).sum()
        es = TTestPower().solve_power(nobs=n - 1, alpha=0.05, power=0.8, alternative="two-sided")
        assert min_detectable_slope(m, 0.05) == pytest.approx(es * 0.05 * np.sqrt((n - 1) / sxx), rel=1e-5)
        df, crit = n - 2, stats.t.ppf(0.975, n - 2)  # and scipy's noncentral t gives power 0.8 there
        ncp = min_detectable_slope(m, 0.05) * np.sqrt(sxx) / 0.05
        assert stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp) == pytest.approx(0.8, abs=1e-8)


def test_a_slope_at_the_detectable_size_is_found_80_percent_of_the_time():
    # 600 units whose true slope is the detectable slope of their design (3 seeds, σ = 0.05): the
    # t test at 0.05 rejects in 80% of them (binomial sd 1.6%).
    beta = min_detectable_slope(np.repeat(M, 3), 0.05)
    unit, m, y = _study(np.full(600, beta), seeds=3, sigma=0.05, rng=5)
    df = pd.DataFrame({"study": "s", "setting": "competitive", "m": m, "baseline": False,
                       "seed": np.arange(len(m)) % 3, "task": unit.astype(str), "subtask": "", "metric": "acc",
                       "value": y, "n": 1})
    p = fit_regressions(df, n_bootstrap=1).table["p_beta"]
    assert (p < 0.05).mean() == pytest.approx(0.80, abs=0.06)


def test_detectable_slope_in_the_table_follows_the_seeds():
    # The table estimates σ by the pooled seed sd, so with 40 seeds its detectable slope is within a
    # few percent of the one for the true σ; 4× the seeds halve it (√4), a little less than half
    # because more seeds also buy degrees of freedom.
    rows = []
    for seeds in (10, 40):
        unit, m, y = _study(np.full(20, 0.1), seeds=seeds, sigma=0.05, rng=seeds)
        rows.append(pd.DataFrame({"study": "s", "setting": "competitive", "m": m, "baseline": False,
                                  "seed": np.arange(len(m)) % seeds, "task": unit.astype(str), "subtask": "",
                                  "metric": "acc", "value": y, "n": 1, "arm": f"s{seeds}"}))
    table = fit_regressions(pd.concat(rows, ignore_index=True), n_bootstrap=1).table
    mds = table.groupby("arm")["min_detectable_slope"].mean()
    truth = {s: min_detectable_slope(np.repeat(M, s), 0.05) for s in (10, 40)}
    assert mds["s40"] == pytest.approx(truth[40], rel=0.03)
    assert mds["s10"] == pytest.approx(truth[10], rel=0.05)
    assert 0.45 < mds["s40"] / mds["s10"] < 0.52


def test_seed_noise_rejects_bad_options():
    with pytest.raises(ConfigError, match="power must"):
        seed_noise([0, 0], [0.0, 1.0], [0.1, 0.2], power=1.5)
    with pytest.raises(ConfigError, match="n_bootstrap"):
        seed_noise([0, 0], [0.0, 1.0], [0.1, 0.2], n_bootstrap=0)


# ---------------------------------------------------------------- units without signal


def test_constant_units():
    units = ["a", "a", "b", "b", "c", "c", "d"]
    got = constant_units(units, [0.0, 0.0, 1.0, 1.0 + 1e-15, 0.0, 0.5, np.nan])
    assert got.to_dict() == {"a": True, "b": True, "c": False, "d": False}


def test_constant_unit_is_flagged_and_left_out_of_the_pooled_tests():
    # "zeros" is 0 at every point of the study; "flat_here" is constant in the competitive setting only
    # (so it has signal across the study and stays in); the others have slopes.
    qt = {t: "generative" for t in ("zeros", "flat_here", "a", "b", "c")}
    df = make_results({("a", "", "em"): 0.2, ("b", "", "em"): -0.1, ("c", "", "em"): 0.05}, question_types=qt, rng=0)
    zeros = make_results({("zeros", "", "em"): 0.0}, noise=0.0, intercept=0.0, question_types=qt)
    flat = make_results({("flat_here", "", "em"): 0.1}, question_types=qt, rng=1)
    flat.loc[flat["setting"] == "competitive", "value"] = 0.25
    df = pd.concat([df, zeros, flat], ignore_index=True)

    table = fit_regressions(df, n_bootstrap=10).table
    flagged = table.groupby("task")["no_signal"].agg(["all", "any"])
    assert flagged.loc["zeros", "all"] and not flagged.drop("zeros")["any"].any()
    z = table[table["task"] == "zeros"]
    assert z[["p_beta", "p_holm", "p_fdr"]].isna().all(axis=None)
    assert z["note"].str.startswith("no signal: 0 at every point").all()
    here = table[(table["task"] == "flat_here") & (table["setting"] == "competitive")].iloc[0]
    assert not here["no_signal"] and np.isnan(here["p_beta"]) and "one value" in here["note"]

    effect = code_effect_test(df, n_resamples=50, control_draws=1, rng=0)
    assert set(effect.slopes["task"]) == {"a", "b", "c", "flat_here"}
    assert (effect.table["n_tasks"] == 4).all()
    assert any("1 task unit(s) without signal" in n for n in effect.notes)


def test_a_constant_group_does_not_get_an_arbitrary_pvalue():
    # 0.1 is not exact in binary: its mean may differ from it in the last bit, and a slope of 1e-18
    # over a residual of 1e-18 would give any p at all. One value at every point: no test.
    df = make_results({("t", "", "acc"): 0.0}, baselines=False, noise=0.0, intercept=0.1)
    df.loc[df["setting"] == "additive", "value"] += np.linspace(0, 0.01, (df["setting"] == "additive").sum())
    row = fit_regressions(df, n_bootstrap=1).table.set_index("setting").loc["competitive"]
    assert row["beta"] == 0 and np.isnan(row["p_beta"]) and np.isnan(row["ci_low"])
