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

Tests are run per arm, setting (competitive, additive; language-only baselines excluded) and
question type (multiple-choice vs generative, from an optional ``question_type`` column;
``all`` pools every task). Units without signal (one value at every point of the study) are
left out: their treatment and control slopes are both 0 and say nothing about code.

Step 2 draws one shuffle per task, so a single test's p-value moves with the seed. The control
is therefore drawn ``control_draws`` times (21 by default); each draw is tested against the same
re-partitions (common random numbers, so the spread of p is the spread due to the control, not
Monte Carlo noise), and the table reports the median p and its quartiles over draws. Holm and
Benjamini–Hochberg adjusted p-values are computed over every test of an arm (all settings,
question types and statistics): one family.

The p-values follow the conventions of
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

from codemix.analysis.inference import adjust_pvalues
from codemix.analysis.noise import _constant
from codemix.analysis.regression import _grouped_ols, _results_iv
from codemix.config import AnalysisConfig
from codemix.errors import ConfigError, DataError

__all__ = [
    "CONTROL_DRAWS",
    "MAX_CONTROL_DRAWS",
    "STATISTICS",
    "CodeEffectResult",
    "PermutationTestResult",
    "code_effect_test",
    "slope_permutation_test",
    "task_slopes",
]

STATISTICS = ("mean", "variance", "skewness", "upper_quartile", "lower_quartile")
"""Statistics whose treatment − control difference is tested (Petty et al. 2024, §5.1)."""

CONTROL_DRAWS: int = AnalysisConfig.model_fields["control_draws"].default
"""Control draws per test by default (``analysis.control_draws``: 21): odd, so that the median p is one draw's p."""

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
    """The §5.1 analysis for every arm × setting × question type.

    Attributes
    ----------
    table
        Columns ``arm, setting, question_type, statistic, observed, p_value, p_holm, p_fdr,
        p_q25, p_q75, control_draws, n_permutations, n_tasks, exact``; one row per tested
        statistic and cell. ``observed`` and ``p_value`` are those of the median control draw
        (ranked by p; the upper of the two middle ones when ``control_draws`` is even),
        ``p_q25``/``p_q75`` the quartiles of p over draws, ``p_holm``/``p_fdr`` the median p
        adjusted over every test of the arm.
    slopes
        One row per arm × setting × task unit: ``arm, setting, task, subtask, metric,
        question_type, treatment, control`` (the treatment slope and the first draw's control).
    tests
        Per ``(arm, setting, question_type)``, a :class:`PermutationTestResult` whose row for
        each statistic comes from that statistic's median draw (with its null distribution).
    draw_pvalues
        Per cell, the p-values of every control draw, shape ``(control_draws, k)``.
    notes
        Remarks about units or cells left out (too few tasks, a single distinct m, no signal).
    """

    table: pd.DataFrame
    slopes: pd.DataFrame
    tests: dict[tuple[str, str, str], PermutationTestResult]
    draw_pvalues: dict[tuple[str, str, str], np.ndarray]
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


def _partition_batches(n: int, n_t: int, n_resamples: int, rng: np.random.Generator):
    """``(exact, batches)``: treatment masks of every or of random partitions, each batch ``(n, b)``.

    Exact when the number of distinct partitions ``comb(n, n_t)`` is at most ``n_resamples``.
    A random partition takes the ``n_t`` smallest of ``n`` i.i.d. uniform keys as the treatment
    group (argpartition is O(n) per row, cheaper than a full shuffle). Masks are laid out with
    the partitions along the last axis, so that a running count over the pooled sample is a
    sum of contiguous rows.
    """
    exact = math.comb(n, n_t) <= n_resamples
    batch = max(1, _BATCH_ELEMENTS // n)

    def as_mask(chosen: np.ndarray) -> np.ndarray:
        mask = np.zeros((len(chosen), n), dtype=bool)
        np.put_along_axis(mask, chosen, True, axis=1)
        return np.ascontiguousarray(mask.T)

    def batches():
        if exact:
            combos = np.array(list(itertools.combinations(range(n), n_t)), dtype=np.intp)
            for lo in range(0, len(combos), batch):
                yield as_mask(combos[lo:lo + batch])
        else:
            for lo in range(0, n_resamples, batch):
                size = min(batch, n_resamples - lo)
                yield as_mask(np.argpartition(rng.random((size, n)), n_t - 1, axis=1)[:, :n_t])

    return exact, batches()


def _running_count(members: np.ndarray, dtype) -> np.ndarray:
    """Cumulative sum along the first axis (row by row: far faster than ``np.cumsum(axis=0)`` here)."""
    out = np.empty(members.shape, dtype=dtype)
    out[0] = members[0]
    for j in range(1, len(members)):
        np.add(out[j - 1], members[j], out=out[j])
    return out


def _group_quantile(counts: np.ndarray, xs: np.ndarray, size: int, q: float) -> np.ndarray:
    """The ``q`` quantile (numpy's linear interpolation) of each column's group.

    ``counts[j]`` is the number of the group's members among the ``j + 1`` smallest pooled
    values ``xs``; the member of rank ``k`` (0-based) sits at the first ``j`` where the count
    exceeds ``k``, that is at ``#{j: counts[j] <= k}``. Below position ``k`` every count is at
    most ``k`` and from position ``k + n_other`` on every count exceeds it, so only that window
    is scanned.
    """
    n = len(xs)
    other = n - size

    def member(k: int) -> np.ndarray:
        window = counts[k:min(n, k + other)]
        return xs[k + np.sum(window <= k, axis=0, dtype=counts.dtype)]

    p = q * (size - 1)
    lo = math.floor(p)
    a, b, g = member(lo), member(min(lo + 1, size - 1)), p - lo
    return b - (b - a) * (1 - g) if g >= 0.5 else a + (b - a) * g  # numpy's lerp, as in _statistics


def _partition_deltas(pooled: np.ndarray, mask: np.ndarray, statistics: Sequence[str]) -> np.ndarray:
    """Δ = statistic(treatment) − statistic(control) of every draw under every partition in ``mask``.

    ``pooled`` has shape ``(R, n)`` (one pooled sample per control draw), ``mask`` ``(n, b)``
    (True: treatment). Returns shape ``(k, R, b)``. No group is materialized or sorted:

    - mean, variance and skewness come from power sums ``Σ x^j`` over each group, which for all
      draws and partitions at once are one matrix product ``[x, x², x³] @ mask`` (the values
      centred per draw first, so that the moments do not cancel);
    - a quartile of a group is an order statistic, read off the running count of the group's
      members along the draw's sorted values (:func:`_group_quantile`).
    """
    r, n = pooled.shape
    b = mask.shape[1]
    n_t = int(mask[:, 0].sum())
    n_c = n - n_t
    centred = pooled - pooled.mean()  # one centre for every draw: Δs are shift-invariant
    out = np.empty((len(statistics), r, b))
    if any(name not in _QUARTILES for name in statistics):
        powers = np.concatenate([centred, centred ** 2, centred ** 3])  # (3R, n)
        weights = mask.astype(float)
        if r > 1 and (pooled[1:, :n_t] == pooled[0, :n_t]).all():
            # Draws share the treatment slopes (only the control is redrawn): their share of the
            # power sums is one product for all draws.
            shared = powers[::r, :n_t] @ weights[:n_t]  # (3, b)
            s_t = np.repeat(shared, r, axis=0) + powers[:, n_t:] @ weights[n_t:]
        else:
            s_t = powers @ weights  # (3R, b): treatment power sums
        s_c = powers.sum(axis=1, keepdims=True) - s_t
        by_group = []
        for sums, size in ((s_t, n_t), (s_c, n_c)):
            mean, raw2, raw3 = sums[:r] / size, sums[r:2 * r] / size, sums[2 * r:] / size
            m2 = np.maximum(raw2 - mean * mean, 0.0)
            m3 = raw3 - 3 * mean * raw2 + 2 * mean ** 3
            # A group of equal values has m2 = 0 up to the rounding of the power sums: no skewness.
            flat = m2 <= 1e-12 * raw2
            with np.errstate(invalid="ignore", divide="ignore"):
                skew = np.where(flat, np.nan, m3 / np.where(flat, 1.0, m2) ** 1.5)
            by_group.append({"mean": mean, "variance": m2 * (size / (size - 1)), "skewness": skew})
        for i, name in enumerate(statistics):
            if name not in _QUARTILES:
                out[i] = by_group[0][name] - by_group[1][name]
    wanted = [(i, _QUARTILES[name]) for i, name in enumerate(statistics) if name in _QUARTILES]
    if wanted:
        dtype = np.int16 if n < np.iinfo(np.int16).max else np.int32
        position = np.arange(1, n + 1, dtype=dtype)[:, None]
        members = mask.view(np.int8)
        for d in range(r):
            order = np.argsort(centred[d], kind="stable")
            xs = centred[d, order]
            in_t = _running_count(members[order], dtype)  # (n, b): treatment members so far
            in_c = position - in_t
            for i, q in wanted:
                out[i, d] = _group_quantile(in_t, xs, n_t, q) - _group_quantile(in_c, xs, n_c, q)
    return out


def _pvalues(null: np.ndarray, observed: np.ndarray, *, exact: bool) -> np.ndarray:
    """Two-sided p-values of ``observed`` (shape ``(k, ...)``) against ``null`` (``(k, ..., B)``).

    Δs equal in theory but not in floating point count as ties: the observed Δ is computed from
    the sorted groups (:func:`_statistics`), the null from power sums and running counts, so a
    tie may differ by rounding; 1e-9 of the null's largest |Δ| is far below any real difference.
    """
    scale = np.max(np.where(np.isfinite(null), np.abs(null), 0.0), axis=-1, initial=0.0)
    with np.errstate(invalid="ignore"):
        gamma = (1e-9 * np.maximum(np.abs(observed), scale) + np.abs(observed) * np.finfo(float).eps * 100)[..., None]
    adjust = 0 if exact else 1
    total = null.shape[-1] + adjust
    less = ((null <= observed[..., None] + gamma).sum(axis=-1) + adjust) / total
    greater = ((null >= observed[..., None] - gamma).sum(axis=-1) + adjust) / total
    p = np.clip(2 * np.minimum(less, greater), 0, 1)
    return np.where(np.isfinite(observed), p, np.nan)


def _draws_test(treatment: np.ndarray, controls: np.ndarray, statistics: Sequence[str], n_resamples: int,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """Permutation tests of one treatment sample against each row of ``controls``, on shared partitions.

    Returns ``observed`` ``(k, R)``, ``pvalues`` ``(k, R)``, ``null`` ``(k, R, B)`` and ``exact``.
    """
    n_t = len(treatment)
    pooled = np.concatenate([np.broadcast_to(treatment, (len(controls), n_t)), controls], axis=1)
    observed = _statistics(treatment, statistics)[:, None] - _statistics(controls, statistics)
    exact, batches = _partition_batches(pooled.shape[1], n_t, n_resamples, rng)
    null = np.concatenate([_partition_deltas(pooled, mask, statistics) for mask in batches], axis=2)
    return observed, _pvalues(null, observed, exact=exact), null, exact


def slope_permutation_test(treatment, control, *, statistics: Sequence[str] = STATISTICS,
                           n_resamples: int = 10_000,
                           rng: np.random.Generator | int | None = None) -> PermutationTestResult:
    """Two-sided permutation test of Δ = statistic(treatment) − statistic(control).

    The pooled sample is re-partitioned into groups of the original sizes; each
    statistic's Δ is evaluated on every partition at once (vectorized over resamples,
    in batches; see :func:`_partition_deltas`). This is step 3 of Petty et al. 2024
    (arXiv 2409.04556), §5.1, and gives the same p-values as ``scipy.stats.permutation_test(...,
    permutation_type='independent', alternative='two-sided')`` for the same statistic: exactly
    when all partitions are enumerated, within Monte Carlo error otherwise.

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
    observed, pvalues, null, exact = _draws_test(t, c[None], statistics, n_resamples, rng)
    return PermutationTestResult(statistics=statistics, observed=observed[:, 0], pvalues=pvalues[:, 0],
                                 null_distribution=null[:, 0], n_resamples=null.shape[2], exact=exact)


def _shuffle_within(codes: np.ndarray, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Permute ``values`` independently inside each group given by ``codes``."""
    by_group = np.argsort(codes, kind="stable")
    shuffled = np.lexsort((rng.random(len(codes)), codes))
    out = np.empty_like(values)
    out[by_group] = values[shuffled]
    return out


def task_slopes(results: pd.DataFrame, *, rng: np.random.Generator | int | None = None) -> pd.DataFrame:
    """Treatment and control slopes per arm × setting × task (steps 1-2 of §5.1, Petty et al. 2024).

    Treatment: OLS slope of value on ``m`` over the task's (m, seed) points. Control: the
    slope after shuffling ``m`` among those points (one shuffle per task, from ``rng``).
    Language-only baseline rows are excluded (they hold no code). Units with fewer than
    two distinct ``m``, and units without signal (one value at every point of the arm's study),
    are left out. Returns columns ``arm, setting, task, subtask, metric, question_type, treatment,
    control``.

    Raises
    ------
    codemix.errors.DataError
        As :func:`codemix.analysis.regression.fit_regressions`, and when one task has
        several question types.
    """
    df, _ = _results_iv(results)
    slopes, _, _ = _task_slopes(df, rng=np.random.default_rng(rng), draws=1)
    return slopes


def _task_slopes(df: pd.DataFrame, *, rng: np.random.Generator,
                 draws: int) -> tuple[pd.DataFrame, np.ndarray, int]:
    """:func:`task_slopes` on validated rows; also every draw's control slopes ``(units, draws)``.

    The third value counts the units left out for having no signal.
    """
    df = df.loc[~df["_dropped"]]
    keys = ["arm", *UNIT_KEYS]
    if len(df):
        units = df.groupby(keys, sort=True).ngroup().to_numpy()
        constant, _ = _constant(units, df["value"].to_numpy(), int(units.max()) + 1)
        silent = constant[units]
        n_silent = len(df.loc[silent & ~df["baseline"].to_numpy(), keys].drop_duplicates())
        df = df.loc[~silent & ~df["baseline"].to_numpy()]
    else:
        n_silent = 0
    keys = ["arm", "setting", *UNIT_KEYS]
    cols = [*keys, "question_type", "treatment", "control"]
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
        return units.assign(treatment=[], control=[])[cols], np.zeros((0, draws)), n_silent

    codes = grouping.ngroup().to_numpy()
    m, y = df["m"].to_numpy(), df["value"].to_numpy()
    units["treatment"] = _grouped_ols(codes, m, y, len(units))["beta"]
    controls = np.stack([_grouped_ols(codes, _shuffle_within(codes, m, rng), y, len(units))["beta"]
                         for _ in range(draws)], axis=1)
    units["control"] = controls[:, 0]
    keep = (units["n_m"] >= 2).to_numpy()
    return units.loc[keep, cols].reset_index(drop=True), controls[keep], n_silent


MAX_CONTROL_DRAWS = 1000
"""Every draw's null distribution is kept (k × draws × resamples floats): more draws only refine the median."""


def _code_effect_iv(n_resamples, statistics, control_draws):
    _permutation_iv([0.0, 1.0], [0.0, 1.0], statistics, n_resamples, None)
    if (isinstance(control_draws, bool) or not isinstance(control_draws, (int, np.integer))
            or not 1 <= control_draws <= MAX_CONTROL_DRAWS):
        raise ConfigError([f"control_draws must be an integer from 1 to {MAX_CONTROL_DRAWS}; found {control_draws!r}"],
                          source="permutation test")


def code_effect_test(results: pd.DataFrame, *, n_resamples: int = 10_000,
                     statistics: Sequence[str] = STATISTICS, control_draws: int = CONTROL_DRAWS,
                     rng: np.random.Generator | int | None = None) -> CodeEffectResult:
    """Run Petty et al. 2024 (arXiv 2409.04556) §5.1 per arm, setting and question type.

    For each arm and setting, treatment and control slopes come from :func:`task_slopes`; the
    permutation test of :func:`slope_permutation_test` compares them for all tasks
    (``question_type == "all"``) and, when a ``question_type`` column is present, for each
    question type separately. The control is drawn ``control_draws`` times and each draw is
    tested on the same re-partitions; the table gives the median draw's p and the quartiles of
    p over draws, and Holm / Benjamini–Hochberg adjusted p over every test of the arm. Cells
    with fewer than two tasks are reported in ``notes`` and skipped. One ``rng`` drives the
    control shuffles and every test, so a seed fixes the whole analysis.
    """
    _code_effect_iv(n_resamples, statistics, control_draws)
    df, _ = _results_iv(results)
    return _code_effect(df, n_resamples=n_resamples, statistics=statistics, control_draws=int(control_draws),
                        rng=np.random.default_rng(rng))


def _code_effect(df: pd.DataFrame, *, n_resamples: int, statistics: Sequence[str], rng: np.random.Generator,
                 control_draws: int = CONTROL_DRAWS) -> CodeEffectResult:
    """:func:`code_effect_test` on rows validated by :func:`~codemix.analysis.regression._results_iv`.

    The rows may be any subset of a validated table, none included (then nothing is tested).
    """
    statistics = (statistics,) if isinstance(statistics, str) else tuple(statistics)
    slopes, controls, n_silent = _task_slopes(df, rng=rng, draws=control_draws)
    notes, rows, tests, draw_pvalues = [], [], {}, {}
    if n_silent:
        notes.append(f"{n_silent} task unit(s) without signal (one value at every point) are left out of the "
                     f"§5.1 permutation tests.")
    cells = []
    for (arm, setting), sub in slopes.groupby(["arm", "setting"], sort=True):
        cells.append((arm, setting, _ALL, sub.index.to_numpy()))
        types = sorted(t for t in sub["question_type"].unique() if t != "")
        cells.extend((arm, setting, qt, sub.index[sub["question_type"] == qt].to_numpy()) for qt in types)
    for arm, setting, qtype, idx in cells:
        where = f"{arm}/{setting}/{qtype}" if arm else f"{setting}/{qtype}"
        if len(idx) < 2:
            notes.append(f"{where}: {len(idx)} task(s) with a slope; at least 2 are needed, not tested.")
            continue
        treatment = slopes["treatment"].to_numpy()[idx]
        observed, pvalues, null, exact = _draws_test(treatment, controls[idx].T, statistics, n_resamples, rng)
        # Per statistic, the median draw by p (the upper middle one for an even number of draws).
        median = np.argsort(pvalues, axis=1, kind="stable")[:, control_draws // 2]
        k = np.arange(len(statistics))
        tests[(arm, setting, qtype)] = PermutationTestResult(
            statistics=statistics, observed=observed[k, median], pvalues=pvalues[k, median],
            null_distribution=null[k, median], n_resamples=null.shape[2], exact=exact)
        draw_pvalues[(arm, setting, qtype)] = pvalues.T
        q25, q75 = np.array([np.quantile(p[np.isfinite(p)], [0.25, 0.75]) if np.isfinite(p).any()
                             else (np.nan, np.nan) for p in pvalues]).T
        for i, name in enumerate(statistics):
            rows.append({"arm": arm, "setting": setting, "question_type": qtype, "statistic": name,
                         "observed": observed[i, median[i]], "p_value": pvalues[i, median[i]],
                         "p_q25": q25[i], "p_q75": q75[i], "control_draws": control_draws,
                         "n_permutations": null.shape[2], "n_tasks": len(idx), "exact": exact})
    cols = ["arm", "setting", "question_type", "statistic", "observed", "p_value", "p_holm", "p_fdr", "p_q25",
            "p_q75", "control_draws", "n_permutations", "n_tasks", "exact"]
    table = pd.DataFrame(rows, columns=[c for c in cols if c not in ("p_holm", "p_fdr")])
    table["p_holm"], table["p_fdr"] = np.nan, np.nan
    for idx in table.groupby("arm", sort=True).indices.values():  # one family per arm (per study)
        adj = adjust_pvalues(table["p_value"].to_numpy()[idx])
        table.loc[table.index[idx], "p_holm"], table.loc[table.index[idx], "p_fdr"] = adj.holm, adj.fdr
    return CodeEffectResult(table=table[cols], slopes=slopes, tests=tests, draw_pvalues=draw_pvalues,
                            notes=tuple(notes))
