"""Figures: what they draw (fitted lines, observed statistics) and that they save as PNG and SVG."""

from __future__ import annotations

import numpy as np
import pandas as pd

from codemix.analysis.permutation import code_effect_test
from codemix.analysis.plots import (
    loss_curve_figure,
    null_distribution_figures,
    regression_figures,
    save_figure,
    slope_kde_figure,
)
from codemix.analysis.regression import fit_regressions

from .helpers import make_results

QT = {"cogs": "generative", "bigbench": "multiple_choice"}
UNITS = {("cogs", "lex", "em"): 0.3, ("cogs", "struct", "em"): 0.0, ("bigbench", "a", "mcg"): 0.1,
         ("bigbench", "b", "mcg"): -0.1, ("bigbench", "c", "mcg"): 0.05}


def test_regression_figures_draw_the_fitted_lines():
    reg = fit_regressions(make_results(UNITS, question_types=QT))
    figs = regression_figures(reg, max_panels=2)
    assert [(task, title) for task, title, _ in figs] == [
        ("bigbench", "bigbench (1/2)"), ("bigbench", "bigbench (2/2)"), ("cogs", "cogs")]
    ax = figs[-1][2].axes[0]  # cogs · lex · em
    assert ax.get_title() == "lex · em"
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata()) == 2 and ln.get_linestyle() in ("-", "--")]
    fits = reg.table[(reg.table["task"] == "cogs") & (reg.table["subtask"] == "lex")]
    expected = sorted(np.round(fits["alpha"] + fits["beta"] * 0.5, 9))
    drawn = sorted(np.round(np.interp(0.5, ln.get_xdata(), ln.get_ydata()), 9) for ln in lines)
    assert drawn == expected  # one line per series: competitive, additive, additive baseline
    assert any(ln.get_linestyle() == "--" for ln in lines)  # the language-only baseline is dashed


def test_effect_figures_show_observed_statistics():
    res = code_effect_test(make_results(UNITS, question_types=QT), n_resamples=50, rng=0)
    figs = null_distribution_figures(res)
    assert [t for t, _ in figs] == [f"{s} · {q}" for _, s, q in sorted(res.tests)]
    (_arm, _setting, _qtype), test = min(res.tests.items())
    axes = figs[0][1].axes
    assert len(axes) == 5
    for ax, obs, p in zip(axes, test.observed, test.pvalues, strict=True):
        assert f"p = {p:.3g}" in ax.get_title()
        assert ax.get_lines()[0].get_xdata()[0] == obs  # the red line sits at the observed Δ
    kde = slope_kde_figure(res)
    assert sum(ax.get_visible() for ax in kde.axes) == len(res.tests)


def test_degenerate_slopes_still_plot():
    df = make_results({("a", "", "acc"): 0.0, ("b", "", "acc"): 0.0}, baselines=False, noise=0.0)
    res = code_effect_test(df, n_resamples=10, rng=0)  # every slope is exactly 0
    slope_kde_figure(res)
    null_distribution_figures(res)


def test_save_figure_writes_png_and_svg(tmp_path):
    fig = loss_curve_figure({"run-a": pd.DataFrame({"step": [0, 10, 20], "loss": [9.0, 5.0, 4.0]}),
                             "run-b": pd.DataFrame({"step": [0, 10], "loss": [9.5, 6.0]})})
    assert len(fig.axes[0].get_lines()) == 2
    png, svg, data = save_figure(fig, tmp_path / "sub" / "loss")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" == data[:8]
    assert "<svg" in svg.read_text()[:2000]
    assert not list(tmp_path.rglob("*.tmp"))
