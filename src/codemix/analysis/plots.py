"""Figures of a code-mixture study, shaped like Petty et al. 2024 (arXiv 2409.04556).

- :func:`regression_figures`: value vs ``m`` with seed-level points, mean ± sd per ``m``
  and the fitted OLS line, per setting, with the language-only baselines (paper Figs. 2, 5, 6).
- :func:`slope_kde_figure`: kernel density of treatment vs control slopes per setting and
  question type (Fig. 7, §5.1).
- :func:`null_distribution_figures`: permutation null distributions with the observed
  statistic and its p-value (Fig. 8).
- :func:`loss_curve_figure`: pretraining loss curves of a study.

Figures are built on :class:`matplotlib.figure.Figure` directly (no ``pyplot`` state, Agg
rendering), and :func:`save_figure` writes each one as PNG and SVG.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy.stats import gaussian_kde

from codemix.analysis.permutation import CodeEffectResult
from codemix.analysis.regression import RegressionResult
from codemix.io import atomic_write_bytes

__all__ = [
    "figure_bytes",
    "loss_curve_figure",
    "null_distribution_figures",
    "regression_figures",
    "save_figure",
    "slope_kde_figure",
]

_SETTING_COLORS = {"competitive": "#1f77b4", "additive": "#d62728"}
_BASELINE_COLOR = "#7f7f7f"
_OTHER_COLORS = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf"]
_STAT_LABELS = {"mean": "Δ mean", "variance": "Δ variance", "skewness": "Δ skewness",
                "upper_quartile": "Δ upper quartile", "lower_quartile": "Δ lower quartile"}


def _plain(text) -> str:
    """Data text as literal matplotlib text: a ``$`` in a task name would start mathtext (and may not parse)."""
    return str(text).replace("$", r"\$")


def _series_style(setting: str, baseline: bool, others: dict[str, str]) -> dict:
    if setting not in _SETTING_COLORS and setting not in others:
        others[setting] = _OTHER_COLORS[len(others) % len(_OTHER_COLORS)]
    color = _BASELINE_COLOR if baseline else _SETTING_COLORS.get(setting, others.get(setting))
    label = _plain(f"{setting} (language-only baseline)" if baseline else setting)
    return {"color": color, "label": label, "linestyle": "--" if baseline else "-",
            "marker": "s" if baseline else "o"}


def _grid(n: int, *, max_cols: int = 4) -> tuple[int, int]:
    cols = min(n, max_cols)
    return int(np.ceil(n / cols)), cols


def _fixed_grid_figure(rows: int, cols: int, *, panel: tuple[float, float], top: float,
                       bottom: float) -> Figure:
    """A rows × cols grid with margins fixed in inches.

    Constrained layout would place these small multiples about the same way but costs as
    much as drawing the figure, for every figure of a report with hundreds of panels.
    """
    width, height = panel[0] * cols, panel[1] * rows + top + bottom
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(left=0.62 / width, right=1 - 0.12 / width, top=1 - top / height,
                        bottom=bottom / height, wspace=0.38, hspace=0.55)
    fig.subplots(rows, cols, squeeze=False)
    return fig


def regression_figures(reg: RegressionResult, *, max_panels: int = 16) -> list[tuple[str, str, Figure]]:
    """Value vs m, one panel per (subtask, metric), one figure per task and arm (Figs. 2, 5, 6).

    Each (setting, baseline) series shows the seed-level points, the mean ± sd over seeds
    at each m and its fitted line ``alpha + beta * m``. Tasks with more panels than
    ``max_panels`` are split over several figures; with arms, each arm has its own figures
    (titled ``task · arm``). Returns ``(task, title, figure)`` triples.
    """
    out, others = [], {}
    fits = reg.table.set_index(["arm", "task", "subtask", "metric", "setting", "baseline"])
    for (task, arm), task_pts in reg.points.groupby(["task", "arm"], sort=True):
        panels = task_pts[["subtask", "metric"]].drop_duplicates().sort_values(["subtask", "metric"])
        panel_list = list(panels.itertuples(index=False))
        chunks = [panel_list[i:i + max_panels] for i in range(0, len(panel_list), max_panels)]
        for k, chunk in enumerate(chunks):
            rows, cols = _grid(len(chunk))
            n_series = len(task_pts[["setting", "baseline"]].drop_duplicates())
            legend_cols = min(n_series, 3 if cols > 1 else 1)
            legend_rows = -(-n_series // legend_cols)
            fig = _fixed_grid_figure(rows, cols, panel=(3.4, 2.6), top=0.75, bottom=0.55 + 0.22 * legend_rows)
            axes = fig.axes
            handles = {}
            for ax, (subtask, metric) in zip(axes, chunk, strict=False):  # spare axes hidden below
                pts = task_pts[(task_pts["subtask"] == subtask) & (task_pts["metric"] == metric)]
                for (setting, baseline), s in pts.groupby(["setting", "baseline"], sort=True):
                    style = _series_style(setting, bool(baseline), others)
                    ax.scatter(s["m"], s["value"], s=9, alpha=0.35, color=style["color"], linewidths=0)
                    agg = s.groupby("m")["value"].agg(["mean", "std"]).reset_index()
                    h = ax.errorbar(agg["m"], agg["mean"], yerr=agg["std"].fillna(0), fmt=style["marker"],
                                    color=style["color"], ms=4, capsize=2, lw=1,
                                    mfc="white" if baseline else style["color"])
                    key = (arm, task, subtask, metric, setting, bool(baseline))
                    if key in fits.index and np.isfinite(fits.loc[key, "beta"]):
                        fit = fits.loc[key]
                        xs = np.array([s["m"].min(), s["m"].max()])
                        ax.plot(xs, fit["alpha"] + fit["beta"] * xs, color=style["color"],
                                linestyle=style["linestyle"], lw=1.5)
                    handles.setdefault(style["label"], h)
                ax.set_title(_plain(f"{subtask or task} · {metric}"), fontsize=9)
                ax.set_xlabel("code fraction m", fontsize=8)
                ax.set_ylabel(_plain(metric), fontsize=8)
                ax.tick_params(labelsize=7)
                ax.xaxis.set_major_locator(MaxNLocator(5))
                ax.yaxis.set_major_locator(MaxNLocator(5))
                ax.grid(alpha=0.3)
            for ax in axes[len(chunk):]:
                ax.set_visible(False)
            name = f"{task} · {arm}" if arm else task
            title = name if len(chunks) == 1 else f"{name} ({k + 1}/{len(chunks)})"
            fig.suptitle(_plain(title), fontsize=11)
            fig.legend(list(handles.values()), list(handles.keys()), loc="lower center",
                       ncols=legend_cols, fontsize=8, frameon=False)
            out.append((task, title, fig))
    return out


def _kde(ax, values: np.ndarray, grid: np.ndarray, **style) -> None:
    # A variance that underflows (slopes equal up to rounding) makes the KDE's covariance singular.
    if len(values) >= 2 and np.var(values) > np.finfo(float).tiny:
        ax.plot(grid, gaussian_kde(values)(grid), **style)
    else:  # a density is undefined; show where the values are
        ax.axvline(values.mean() if len(values) else 0.0, **style)


def slope_kde_figure(effect: CodeEffectResult) -> Figure:
    """Density of treatment vs control slopes (first control draw), per arm × setting × question type (Fig. 7)."""
    cells = sorted(effect.tests) or [("", "(none)", "all")]
    rows = sorted({(a, s) for a, s, _ in cells})
    qtypes = ["all", *sorted({q for _, _, q in cells if q != "all"})]
    fig = _fixed_grid_figure(len(rows), len(qtypes), panel=(3.6, 2.5), top=0.75, bottom=0.55)
    axes = np.reshape(fig.axes, (len(rows), len(qtypes)))
    for i, (arm, setting) in enumerate(rows):
        for j, qtype in enumerate(qtypes):
            ax = axes[i, j]
            if (arm, setting, qtype) not in effect.tests:
                ax.set_visible(False)
                continue
            sub = effect.slopes[(effect.slopes["setting"] == setting) & (effect.slopes["arm"] == arm)]
            if qtype != "all":
                sub = sub[sub["question_type"] == qtype]
            t, c = sub["treatment"].to_numpy(), sub["control"].to_numpy()
            both = np.concatenate([t, c])
            pad = 0.15 * (np.ptp(both) or 1.0)
            grid = np.linspace(both.min() - pad, both.max() + pad, 256)
            _kde(ax, t, grid, color="#d62728", lw=1.8, label="treatment (code)")
            _kde(ax, c, grid, color="#555555", lw=1.5, linestyle="--", label="control (m shuffled)")
            ax.plot(t, np.zeros_like(t), "|", color="#d62728", ms=8, alpha=0.6)
            ax.plot(c, np.zeros_like(c), "|", color="#555555", ms=5, alpha=0.6)
            ax.axvline(0, color="black", lw=0.6, alpha=0.5)
            where = f"{arm} · {setting}" if arm else setting
            ax.set_title(_plain(f"{where} · {qtype} ({len(t)} tasks)"), fontsize=9)
            ax.set_xlabel("slope β̂ (value per unit m)", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(5))
            ax.legend(fontsize=7, frameon=False, loc="upper right")
    fig.suptitle("Task slopes: treatment vs control", fontsize=11)
    return fig


def null_distribution_figures(effect: CodeEffectResult) -> list[tuple[str, Figure]]:
    """Permutation null distributions with the observed Δ and its p-value (Fig. 8).

    Each panel shows the median control draw of its statistic (the draw whose p is the median
    over draws); its title gives that p and the interquartile range of p over all draws.
    """
    out = []
    for (arm, setting, qtype), res in sorted(effect.tests.items()):
        draws = effect.draw_pvalues.get((arm, setting, qtype))
        k = len(res.statistics)
        # Fixed margins instead of constrained layout: these small multiples all look alike,
        # and solving the layout would double the cost of a report with many cells.
        fig = Figure(figsize=(2.9 * k, 2.7))
        fig.subplots_adjust(left=0.06, right=0.99, bottom=0.12, top=0.72, wspace=0.3)
        axes = fig.subplots(1, k, squeeze=False)[0]
        for i, (ax, name, obs, p, null) in enumerate(zip(axes, res.statistics, res.observed, res.pvalues,
                                                         res.null_distribution, strict=True)):
            finite = null[np.isfinite(null)]
            edges = np.linspace(finite.min(), finite.max(), 41) if len(finite) else np.zeros(2)
            if (np.diff(edges) > 0).all():
                counts, edges = np.histogram(finite, bins=edges)
                ax.stairs(counts, edges, fill=True, color="#9ecae1")
            elif len(finite):  # every Δ equal up to rounding (e.g. constant values): no bins to draw
                ax.axvline(finite[0], color="#9ecae1", lw=6)
            if np.isfinite(obs):
                ax.axvline(obs, color="#d62728", lw=1.8)
            spread = ""
            if draws is not None and len(draws) > 1 and np.isfinite(draws[:, i]).any():
                lo, hi = np.quantile(draws[np.isfinite(draws[:, i]), i], [0.25, 0.75])
                spread = f" (IQR {lo:.2g}–{hi:.2g})"
            ax.set_title(f"{_STAT_LABELS.get(name, name)}\np = {p:.3g}{spread}", fontsize=9)
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.yaxis.set_major_locator(MaxNLocator(4))
            ax.tick_params(labelsize=7)
        kind = "exact" if res.exact else f"{res.n_resamples} permutations"
        if draws is not None and len(draws) > 1:
            kind += f", median of {len(draws)} control draws"
        title = f"{arm} · {setting} · {qtype}" if arm else f"{setting} · {qtype}"
        fig.suptitle(_plain(f"Null distributions, {title} ({kind})"), fontsize=10)
        out.append((title, fig))
    return out


def loss_curve_figure(curves: Mapping[str, pd.DataFrame]) -> Figure:
    """Pretraining loss vs step, one line per run (``curves``: label → frame with step, loss)."""
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    for label, frame in sorted(curves.items()):
        ax.plot(frame["step"], frame["loss"], lw=1, label=_plain(label))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    if 0 < len(curves) <= 12:
        ax.legend(fontsize=7, frameon=False)
    fig.suptitle("Pretraining loss", fontsize=11)
    return fig


def figure_bytes(fig: Figure, fmt: str = "png", *, dpi: int = 110) -> bytes:
    buf = io.BytesIO()
    # SVG text as <text> elements, not glyph outlines: searchable, smaller and faster to write.
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format=fmt, dpi=dpi)
    return buf.getvalue()


def save_figure(fig: Figure, stem: str | Path, *, dpi: int = 110) -> tuple[Path, Path, bytes]:
    """Write ``stem.png`` and ``stem.svg`` (each atomically); return both paths and the PNG bytes."""
    stem = Path(stem)
    # Appended, not with_suffix: a stem from a task "a.b" must not lose its ".b".
    png_path, svg_path = stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.svg"
    png = figure_bytes(fig, "png", dpi=dpi)
    fig.set_layout_engine("none")  # keep the constrained layout just computed; do not solve it again
    atomic_write_bytes(png_path, png)
    atomic_write_bytes(svg_path, figure_bytes(fig, "svg"))
    return png_path, svg_path, png
