"""Does code pretraining change the distribution of task slopes? Permutation tests.

The procedure of Petty, van Steenkiste & Linzen 2024 (arXiv 2409.04556), §5.1:

1. **Treatment slopes**: one OLS slope of value on the code fraction ``m`` per task
   (here a task is a (task, subtask, metric) unit), fitted over all its (m, seed) points.
2. **Control slopes**: the same fit after shuffling ``m`` among the points of each task,
   which breaks any link between code and performance while keeping each task's values.
3. **Two-sided permutation test**: pool treatment and control slopes and re-partition them
   at random into two groups of the original sizes (10,000 times by default) to get the
   null distribution of Δ = statistic(treatment) − statistic(control) for the mean,
   variance, skewness, upper quartile and lower quartile.

Tests are run per setting (competitive, additive; language-only baselines excluded) and per
question type (multiple-choice vs generative, from an optional ``question_type`` column;
``all`` pools every task). The p-values follow the conventions of
``scipy.stats.permutation_test``: an exact test over all distinct partitions when there
are no more of them than ``n_resamples``, otherwise a randomized test in which the
observed partition is counted once, ``p = (1 + #{|null| as extreme}) / (1 + n_resamples)``,
made two-sided by doubling the smaller one-sided p-value.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from codemix.analysis.regression import _grouped_ols, _results_iv
from codemix.errors import ConfigError, DataError

__all__ = [
    "STATISTICS",
    "CodeEffectResult",
    "PermutationTestResult",
    "code_effect_test",
    "slope_permutation_test",
    "task_slopes",
]

STATISTICS = ("mean", "variance", "skewness", "upper_quartile", "lower_quartile")
"""Statistics whose treatment − control difference is tested (Petty et al. 2024, §5.1)."""

UNIT_KEYS = ("task", "subtask", "metric")
_ALL = "all"
# Rows of (resamples × pooled sample) evaluated per batch: bounds memory at ~32 MiB/array.
_BATCH_ELEMENTS = 1 << 22


_QUARTILES = {"upper_quartile": 0.75, "lower_quartile": 0.25}


def _statistics(x: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """Each named statistic of ``x`` along its last axis; shape ``(len(names), *x.shape[:-1])``.

    One pass shares the intermediates: the centred deviations serve the variance (ddof=1)
    and the skewness (Fisher-Pearson g1 = m3 / m2**1.5, scipy.stats.skew with bias=True);
    one sort serves both quartiles (linear interpolation, numpy's default). A full ``np.sort``
    of each row is used rather than ``np.partition``: on rows of a few hundred slopes numpy's
    vectorized sort is many times faster than selecting several order statistics.
    """
    n = x.shape[-1]
    mean = x.mean(axis=-1)
    out = {"mean": mean}
    if "variance" in names or "skewness" in names:
        d = x - mean[..., None]
        d2 = d * d
        m2 = d2.mean(axis=-1)
        out["variance"] = m2 * (n / (n - 1))
        if "skewness" in names:
            m3 = (d2 * d).mean(axis=-1)
            with np.errstate(invalid="ignore", divide="ignore"):
                out["skewness"] = np.where(m2 > 0, m3 / m2**1.5, np.nan)
    wanted = [name for name in names if name in _QUARTILES]
    if wanted:
        part = np.sort(x, axis=-1)
        for name in wanted:
            p = _QUARTILES[name] * (n - 1)
            lo = math.floor(p)
            a, b, g = part[..., lo], part[..., min(lo + 1, n - 1)], p - lo
            out[name] = b - (b - a) * (1 - g) if g >= 0.5 else a + (b - a) * g  # numpy's lerp
    return np.stack([out[name] for name in names])


@dataclass(frozen=True)
class PermutationTestResult:
    """A two-sample permutation test of Δ = statistic(treatment) − statistic(control).

    Attributes
    ----------
    statistics
        Names of the tested statistics (see :data:`STATISTICS`).
    observed
        Observed Δ per statistic, shape ``(k,)``.
    pvalues
        Two-sided p-values, shape ``(k,)``.
    null_distribution
        Δ under re-partitioning, shape ``(k, n_resamples)``.
    n_resamples
        Number of partitions evaluated (all of them when ``exact``).
    exact
        Whether every distinct partition was enumerated.
    """

    statistics: tuple[str, ...]
    observed: np.ndarray
    pvalues: np.ndarray
    null_distribution: np.ndarray
    n_resamples: int
    exact: bool


@dataclass(frozen=True)
class CodeEffectResult:
    """The §5.1 analysis for every setting × question type.

    Attributes
    ----------
    table
        Columns ``setting, question_type, statistic, observed, p_value, n_permutations,
        n_tasks, exact``; one row per tested statistic and cell.
    slopes
        One row per setting × task unit: ``setting, task, subtask, metric, question_type,
        treatment, control`` (the two slopes).
    tests
        The full :class:`PermutationTestResult` per ``(setting, question_type)``, with null
        distributions for plotting.
    notes
        Remarks about units or cells left out (too few tasks, a single distinct m).
    """

    table: pd.DataFrame
    slopes: pd.DataFrame
    tests: dict[tuple[str, str], PermutationTestResult]
    notes: tuple[str, ...]


def _permutation_iv(treatment, control, statistics, n_resamples, rng):
    t = np.asarray(treatment, dtype=float)
    c = np.asarray(control, dtype=float)
    problems = []
    if t.ndim != 1 or c.ndim != 1:
        problems.append(f"treatment and control must be 1-D samples; found shapes {t.shape} and {c.shape}")
    elif len(t) < 2 or len(c) < 2:
        problems.append(f"each sample needs at least 2 slopes; found {len(t)} treatment and {len(c)} control")
    elif not (np.isfinite(t).all() and np.isfinite(c).all()):
        problems.append("slopes must be finite; drop tasks whose slope is undefined (one distinct m)")
    statistics = (statistics,) if isinstance(statistics, str) else tuple(statistics)
    unknown = [s for s in statistics if s not in STATISTICS]
    if unknown or not statistics:
        problems.append(f"statistics must be a non-empty subset of {', '.join(STATISTICS)}; found {list(statistics)}")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        problems.append(f"n_resamples must be a positive integer; found {n_resamples!r}")
    if problems:
        raise ConfigError(problems, source="permutation test")
    return t, c, statistics, int(n_resamples), np.random.default_rng(rng)


def _deltas(pooled: np.ndarray, treat_idx: np.ndarray, ctrl_idx: np.ndarray,
            statistics: Sequence[str]) -> np.ndarray:
    """Δ per statistic for each row of partition indices; shape (k, B)."""
    return _statistics(pooled[treat_idx], statistics) - _statistics(pooled[ctrl_idx], statistics)


def _pvalues(null: np.ndarray, observed: np.ndarray, *, exact: bool) -> np.ndarray:
    # Relative tolerance so that Δs equal in theory but not in floating point count as ties.
    gamma = np.abs(observed * np.finfo(float).eps * 100)[:, None]
    adjust = 0 if exact else 1
    total = null.shape[1] + adjust
    less = ((null <= observed[:, None] + gamma).sum(axis=1) + adjust) / total
    greater = ((null >= observed[:, None] - gamma).sum(axis=1) + adjust) / total
    p = np.clip(2 * np.minimum(less, greater), 0, 1)
    return np.where(np.isfinite(observed), p, np.nan)


def slope_permutation_test(treatment, control, *, statistics: Sequence[str] = STATISTICS,
                           n_resamples: int = 10_000,
                           rng: np.random.Generator | int | None = None) -> PermutationTestResult:
    """Two-sided permutation test of Δ = statistic(treatment) − statistic(control).

    The pooled sample is re-partitioned into groups of the original sizes; each
    statistic's Δ is evaluated on every partition at once (vectorized over resamples,
    in batches). This is step 3 of Petty et al. 2024 (arXiv 2409.04556), §5.1, and gives
    the same p-values as ``scipy.stats.permutation_test(..., permutation_type=
    'independent', alternative='two-sided')`` for the same statistic: exactly when all
    partitions are enumerated, within Monte Carlo error otherwise.

    Parameters
    ----------
    treatment, control
        1-D samples (slopes), at least two each.
    statistics
        Names from :data:`STATISTICS` (keyword-only).
    n_resamples
        Random partitions to draw; when the number of distinct partitions
        ``comb(n_t + n_c, n_t)`` is not larger, all of them are enumerated instead.
    rng
        ``numpy.random.Generator`` (or a seed for one) that draws the partitions.
    """
    t, c, statistics, n_resamples, rng = _permutation_iv(treatment, control, statistics, n_resamples, rng)
    pooled = np.concatenate([t, c])
    n_t, n = len(t), len(t) + len(c)
    observed = _deltas(pooled, np.arange(n_t)[None], np.arange(n_t, n)[None], statistics)[:, 0]

    n_partitions = math.comb(n, n_t)
    exact = n_partitions <= n_resamples
    batch = max(1, _BATCH_ELEMENTS // n)
    chunks = []
    if exact:
        combos = np.array(list(itertools.combinations(range(n), n_t)), dtype=np.intp)
        in_treat = np.zeros((len(combos), n), dtype=bool)
        np.put_along_axis(in_treat, combos, True, axis=1)
        rest = np.nonzero(~in_treat)[1].reshape(len(combos), n - n_t)
        for lo in range(0, len(combos), batch):
            chunks.append(_deltas(pooled, combos[lo:lo + batch], rest[lo:lo + batch], statistics))
    else:
        for lo in range(0, n_resamples, batch):
            size = min(batch, n_resamples - lo)
            # A uniform random partition: the n_t smallest of n i.i.d. uniform keys form the
            # treatment group (argpartition is O(n) per row, cheaper than a full shuffle).
            x = pooled[np.argpartition(rng.random((size, n)), n_t - 1, axis=1)]
            chunks.append(_statistics(x[:, :n_t], statistics) - _statistics(x[:, n_t:], statistics))
    null = np.concatenate(chunks, axis=1)
    return PermutationTestResult(statistics=statistics, observed=observed,
                                 pvalues=_pvalues(null, observed, exact=exact),
                                 null_distribution=null, n_resamples=null.shape[1], exact=exact)


def _shuffle_within(codes: np.ndarray, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Permute ``values`` independently inside each group given by ``codes``."""
    by_group = np.argsort(codes, kind="stable")
    shuffled = np.lexsort((rng.random(len(codes)), codes))
    out = np.empty_like(values)
    out[by_group] = values[shuffled]
    return out


def task_slopes(results: pd.DataFrame, *, rng: np.random.Generator | int | None = None) -> pd.DataFrame:
    """Treatment and control slopes per setting × task (steps 1-2 of §5.1, Petty et al. 2024).

    Treatment: OLS slope of value on ``m`` over the task's (m, seed) points. Control: the
    slope after shuffling ``m`` among those points (one shuffle per task, from ``rng``).
    Language-only baseline rows are excluded (they hold no code). Units with fewer than
    two distinct ``m`` are left out. Returns columns ``setting, task, subtask, metric,
    question_type, treatment, control``.

    Raises
    ------
    codemix.errors.DataError
        As :func:`codemix.analysis.regression.fit_regressions`, and when one task has
        several question types.
    """
    df, _ = _results_iv(results)
    return _task_slopes(df, rng=np.random.default_rng(rng))


def _task_slopes(df: pd.DataFrame, *, rng: np.random.Generator) -> pd.DataFrame:
    """:func:`task_slopes` on rows validated by :func:`~codemix.analysis.regression._results_iv`."""
    df = df.loc[~df["_dropped"] & ~df["baseline"]]
    keys = ["setting", *UNIT_KEYS]
    grouping = df.groupby(keys, sort=True)
    units = grouping.size().rename("n").reset_index()
    n_types = grouping["question_type"].nunique().to_numpy()
    if (n_types > 1).any():
        bad = units.loc[n_types > 1, list(UNIT_KEYS)].drop_duplicates().head(5).to_dict("records")
        raise DataError(f"each task must have one question_type; found several for {bad} (an empty one "
                        f"counts). Make question_type constant within each (task, subtask, metric).")
    units["question_type"] = grouping["question_type"].first().to_numpy()
    units["n_m"] = grouping["m"].nunique().to_numpy()
    if len(units) == 0:
        return units.assign(treatment=[], control=[])[[*keys, "question_type", "treatment", "control"]]

    codes = grouping.ngroup().to_numpy()
    m, y = df["m"].to_numpy(), df["value"].to_numpy()
    units["treatment"] = _grouped_ols(codes, m, y, len(units))["beta"]
    units["control"] = _grouped_ols(codes, _shuffle_within(codes, m, rng), y, len(units))["beta"]
    units = units.loc[units["n_m"] >= 2]
    return units[[*keys, "question_type", "treatment", "control"]].reset_index(drop=True)


def code_effect_test(results: pd.DataFrame, *, n_resamples: int = 10_000,
                     statistics: Sequence[str] = STATISTICS,
                     rng: np.random.Generator | int | None = None) -> CodeEffectResult:
    """Run Petty et al. 2024 (arXiv 2409.04556) §5.1 per setting and question type.

    For each setting, treatment and control slopes come from :func:`task_slopes`; the
    permutation test of :func:`slope_permutation_test` compares them for all tasks
    (``question_type == "all"``) and, when a ``question_type`` column is present, for each
    question type separately. Cells with fewer than two tasks are reported in ``notes``
    and skipped. One ``rng`` drives the control shuffles and every test, so a seed fixes
    the whole analysis.
    """
    _permutation_iv([0.0, 1.0], [0.0, 1.0], statistics, n_resamples, None)
    df, _ = _results_iv(results)
    return _code_effect(df, n_resamples=n_resamples, statistics=statistics, rng=np.random.default_rng(rng))


def _code_effect(df: pd.DataFrame, *, n_resamples: int, statistics: Sequence[str],
                 rng: np.random.Generator) -> CodeEffectResult:
    """:func:`code_effect_test` on rows validated by :func:`~codemix.analysis.regression._results_iv`.

    The rows may be any subset of a validated table, none included (then nothing is tested).
    """
    slopes = _task_slopes(df, rng=rng)
    notes, rows, tests = [], [], {}
    cells = []
    for setting, sub in slopes.groupby("setting", sort=True):
        cells.append((setting, _ALL, sub))
        types = sorted(t for t in sub["question_type"].unique() if t != "")
        cells.extend((setting, qt, sub[sub["question_type"] == qt]) for qt in types)
    for setting, qtype, sub in cells:
        if len(sub) < 2:
            notes.append(f"{setting}/{qtype}: {len(sub)} task(s) with a slope; at least 2 are needed, not tested.")
            continue
        res = slope_permutation_test(sub["treatment"].to_numpy(), sub["control"].to_numpy(),
                                     statistics=statistics, n_resamples=n_resamples, rng=rng)
        tests[(setting, qtype)] = res
        for name, obs, p in zip(res.statistics, res.observed, res.pvalues, strict=True):
            rows.append({"setting": setting, "question_type": qtype, "statistic": name, "observed": obs,
                         "p_value": p, "n_permutations": res.n_resamples, "n_tasks": len(sub),
                         "exact": res.exact})
    cols = ["setting", "question_type", "statistic", "observed", "p_value", "n_permutations", "n_tasks", "exact"]
    return CodeEffectResult(table=pd.DataFrame(rows, columns=cols), slopes=slopes, tests=tests, notes=tuple(notes))
