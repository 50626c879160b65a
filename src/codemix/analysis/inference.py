"""Inference helpers shared by every table of the analysis: adjusted p-values and Wilson intervals.

- :func:`adjust_pvalues`: Holm (family-wise error rate; Holm 1979) and Benjamini–Hochberg (false
  discovery rate; Benjamini & Hochberg 1995) adjusted p-values over one family of tests, equal to
  ``statsmodels.stats.multitest.multipletests(p, method="holm" | "fdr_bh")`` (the tests check
  them against it). Tests without a p-value (NaN) are not members of the family and stay NaN.
- :func:`wilson_interval`: the Wilson score interval of a proportion ``value`` observed on ``n``
  items (Wilson 1927; Brown, Cai & DasGupta 2001 recommend it over the normal interval, which
  collapses to a point at 0 and 1, exactly where most small-model exact-match scores sit).
- :func:`proportion_units`: which units of a results table are proportions of ``n`` items.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from codemix.errors import ConfigError

__all__ = [
    "AdjustedPValues",
    "adjust_pvalues",
    "proportion_units",
    "wilson_interval",
]

#: A pass@k estimate is a mean of per-problem probabilities, not a count over ``n``; it is a
#: proportion all the same (issue 17 asks for its interval).
_PASS_AT_K = re.compile(r"^pass@\d+$")


@dataclass(frozen=True)
class AdjustedPValues:
    """Adjusted p-values of one family, aligned with the input (NaN where the input was NaN).

    Attributes
    ----------
    holm
        Holm step-down adjusted p-values (controls the family-wise error rate).
    fdr
        Benjamini–Hochberg step-up adjusted p-values (controls the false discovery rate).
    n_tests
        Size of the family: the number of finite input p-values.
    """

    holm: np.ndarray
    fdr: np.ndarray
    n_tests: int


def _pvalues_iv(pvalues) -> np.ndarray:
    p = np.asarray(pvalues, dtype=float)
    if p.ndim != 1:
        raise ConfigError(f"p-values must be a 1-D array; found shape {p.shape}", source="adjust_pvalues")
    finite = p[np.isfinite(p)]
    if ((finite < 0) | (finite > 1)).any() or np.isinf(p).any():
        raise ConfigError(f"p-values must lie in [0, 1] (NaN for a test that was not run); found "
                          f"{p[np.isinf(p) | (p < 0) | (p > 1)][:5].tolist()}", source="adjust_pvalues")
    return p


def adjust_pvalues(pvalues) -> AdjustedPValues:
    """Holm and Benjamini–Hochberg adjusted p-values over one family of tests.

    The family is every finite entry of ``pvalues``; NaN entries (a test that could not be run:
    a unit without signal, a group with one distinct m) are left out of it and stay NaN, so that
    adding an untestable unit never makes the others more conservative.

    With the ``k`` finite p-values sorted, ``p_(1) ≤ … ≤ p_(k)``: Holm's adjusted value of
    ``p_(i)`` is ``max_{j ≤ i} min(1, (k − j + 1) p_(j))``; Benjamini–Hochberg's is
    ``min_{j ≥ i} min(1, k p_(j) / j)``. These are the values of
    ``statsmodels.stats.multitest.multipletests(p, method="holm" | "fdr_bh")[1]``; they are
    computed here in closed form because statsmodels' Holm path runs a full garbage collection
    on every call, which a report with several families would pay each time.
    """
    p = _pvalues_iv(pvalues)
    holm, fdr = np.full_like(p, np.nan), np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    k = len(ok)
    if k:
        order = ok[np.argsort(p[ok], kind="stable")]
        ranked = p[order]
        holm[order] = np.minimum(1.0, np.maximum.accumulate(ranked * np.arange(k, 0, -1)))
        fdr[order] = np.minimum(1.0, np.minimum.accumulate((ranked * k / np.arange(1, k + 1))[::-1])[::-1])
    return AdjustedPValues(holm=holm, fdr=fdr, n_tests=k)


def wilson_interval(value, n, *, confidence_level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score interval of proportions ``value`` observed on ``n`` items (vectorized).

    With ``z`` the two-sided normal quantile, ``p = value`` and the centre shifted towards 1/2::

        (p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)

    Entries with a value outside [0, 1] or ``n`` not a positive number give NaN. Equal to
    ``statsmodels.stats.proportion.proportion_confint(value * n, n, method="wilson")``.
    """
    if not (isinstance(confidence_level, (int, float)) and 0 < confidence_level < 1):
        raise ConfigError(f"confidence_level must be in (0, 1); found {confidence_level!r}",
                          source="wilson_interval")
    p, n = np.broadcast_arrays(np.asarray(value, dtype=float), np.asarray(n, dtype=float))
    z = stats.norm.ppf(0.5 + confidence_level / 2)
    ok = np.isfinite(p) & np.isfinite(n) & (n > 0) & (p >= 0) & (p <= 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 (or 1) the bound is exactly 0 (or 1); the formula leaves rounding residue there.
    low = np.where(ok, np.where(p == 0, 0.0, np.clip(centre - half, 0.0, 1.0)), np.nan)
    high = np.where(ok, np.where(p == 1, 1.0, np.clip(centre + half, 0.0, 1.0)), np.nan)
    return low, high


def _proportion_rows(value: np.ndarray, n: np.ndarray, metric: pd.Series) -> np.ndarray:
    """Per row: could this row belong to a proportion unit (see :func:`proportion_units`)?"""
    value, n = np.asarray(value, dtype=float), np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore"):
        count = value * n
        whole = np.abs(count - np.round(count)) <= 1e-6 * np.maximum(1.0, np.abs(count))
        in_unit = (value >= 0) & (value <= 1) & np.isfinite(n) & (n >= 1)
    pass_at_k = metric.astype(str).str.match(_PASS_AT_K).to_numpy(dtype=bool)
    return ~np.isfinite(value) | (in_unit & (whole | pass_at_k))


def proportion_units(rows: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Whether each unit (distinct ``keys``) of validated result rows is a proportion of ``n`` items.

    A unit is a proportion when every finite value lies in [0, 1], every ``n`` is a positive
    count, and ``value · n`` is a whole number in every row (a share of ``n`` items: accuracy,
    exact match, a fraction of programs), or its metric is ``pass@k``. Bits per byte, perplexity,
    BLEU and similarities are not. Returns a bool Series indexed by the unit keys.
    """
    ok = _proportion_rows(rows["value"], rows["n"], rows["metric"])
    return pd.Series(ok, index=rows.index).groupby([rows[k] for k in keys], sort=True).all()
