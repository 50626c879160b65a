"""How much of a slope is seed noise: signal-to-noise, sign stability, detectable slope.

A code-mixture study trains one model per (m, seed); the seeds at one m differ only by the
randomness of training, so their spread is the noise any effect of m has to stand out from.
For each group of points (one regression: task, subtask, metric, setting, ...):

- **seed sd**: the sample standard deviation of the value over seeds at each m
  (``RegressionResult.by_m``), and its mean over the m that have two or more seeds.
- **signal-to-noise ratio** (Heineman et al., *Signal and Noise: A Framework for Reducing
  Uncertainty in Language Model Evaluation*, AI2 2025): the spread of the per-m means
  (max − min, their "dispersion") over the mean seed sd. A metric whose means move less than one
  seed sd across the whole range of m (SNR < 1) cannot rank the mixtures.
- **sign stability**: the share of bootstrap resamples over seeds whose OLS slope has the sign
  of β̂. Seeds are resampled with replacement within each m (the design, m and the number of
  seeds at each m, is kept), so the slope of a resample is ``Σ a_i y*_i`` with fixed weights
  ``a_i = (m_i − m̄) / Sxx``. For a slope estimated with standard error ``se`` it is about
  ``Φ(|β̂| / se)``: 0.5 to 1, and above 0.975 about when a two-sided test at 0.05 rejects.
- **minimum detectable slope**: the smallest |β| that the two-sided t test of β = 0 (α = 0.05)
  detects with probability 0.8 at the study's design and seed noise:
  ``δ(df) · σ_seed / sqrt(Sxx)``, where ``δ`` is the noncentrality at which a noncentral t with
  ``df = n − 2`` exceeds the critical value with that probability, and ``σ_seed`` is the pooled
  within-m sd (the pure-error sd of the points around their per-m means).

:func:`constant_units` finds units without signal: one value at every point (all 0, all 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
from scipy import optimize, stats

from codemix.errors import ConfigError

__all__ = [
    "SeedNoiseResult",
    "constant_units",
    "min_detectable_slope",
    "seed_noise",
]

# Rows of (bootstrap resamples × points) drawn per batch: bounds memory at ~32 MiB per array.
_BATCH_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class SeedNoiseResult:
    """Seed-noise statistics per group, aligned with ``groups``.

    Attributes
    ----------
    groups
        The distinct group labels, sorted.
    seed_sd
        Mean over m (with two or more seeds) of the seed standard deviation at that m.
    pooled_sd
        Pooled within-m standard deviation (pure error), with ``n − n_m`` degrees of freedom.
    snr
        (max − min of the per-m means) / ``seed_sd``; ``inf`` when the means differ and the seeds
        agree exactly, NaN without two seeds at some m or two distinct m.
    sign_stability
        Share of bootstrap resamples over seeds whose slope keeps the sign of β̂; NaN without two
        seeds at some m, two distinct m, or with a constant value.
    min_detectable_slope
        Smallest |β| detected with probability ``power`` by a two-sided test at level ``alpha``;
        NaN for a group with one value at every point.
    n_bootstrap
        Resamples behind ``sign_stability``.
    """

    groups: np.ndarray
    seed_sd: np.ndarray
    pooled_sd: np.ndarray
    snr: np.ndarray
    sign_stability: np.ndarray
    min_detectable_slope: np.ndarray
    n_bootstrap: int


def _noise_iv(alpha, power, n_bootstrap):
    problems = []
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        problems.append(f"alpha must be in (0, 1); found {alpha!r}")
    if not (isinstance(power, (int, float)) and 0 < power < 1):
        problems.append(f"power must be in (0, 1); found {power!r}")
    elif isinstance(alpha, (int, float)) and 0 < alpha < 1 and power <= alpha / 2:
        problems.append(f"power must exceed alpha / 2 (the test's rejection rate at β = 0); found {power!r}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 1:
        problems.append(f"n_bootstrap must be a positive integer; found {n_bootstrap!r}")
    if problems:
        raise ConfigError(problems, source="seed noise")


_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(256)


def _power(delta: float, crit: float, df: int) -> float:
    """P(|T| > crit) for T = (Z + δ) / S, Z standard normal, S = sqrt(χ²_df / df) (noncentral t).

    Integrated over S by Gauss–Legendre quadrature: ``scipy.stats.nct`` returns NaN far in the
    tails (small df, large δ), exactly where a study with few seeds needs it.
    """
    scale = math.sqrt(df)
    lo, hi = stats.chi.ppf([1e-13, 1 - 1e-13], df) / scale
    s = lo + (hi - lo) * (_NODES + 1) / 2
    density = stats.chi.pdf(s * scale, df) * scale
    reject = stats.norm.sf(crit * s - delta) + stats.norm.cdf(-crit * s - delta)
    return float((hi - lo) / 2 * np.sum(_WEIGHTS * reject * density))


@lru_cache(maxsize=256)
def _noncentrality(df: int, alpha: float, power: float) -> float:
    """δ with P(|T| > t_{1−α/2, df}) = power for T ~ noncentral t(df, δ)."""
    crit = stats.t.ppf(1 - alpha / 2, df)
    hi = 2 * (crit + stats.norm.ppf(power)) + 1
    while _power(hi, crit, df) < power:
        hi *= 2
    return optimize.brentq(lambda d: _power(d, crit, df) - power, 0.0, hi, xtol=1e-10)


def min_detectable_slope(m, sigma: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest |β| a two-sided t test of β = 0 detects with probability ``power``.

    ``m`` holds the code fraction of every point of the design (one entry per model: repeat an m
    once per seed), ``sigma`` the sd of a point around its mean. The OLS slope has standard error
    ``sigma / sqrt(Sxx)`` and its t statistic is noncentral t with ``n − 2`` degrees of freedom
    and noncentrality ``β · sqrt(Sxx) / sigma`` (the standard power calculation for a regression
    slope, e.g. Cohen 1988, ch. 9), so the answer is ``δ · sigma / sqrt(Sxx)``.
    """
    _noise_iv(alpha, power, 1)
    x = np.asarray(m, dtype=float)
    if x.ndim != 1 or not np.isfinite(x).all():
        raise ConfigError("m must be a 1-D array of finite code fractions", source="min_detectable_slope")
    if not (isinstance(sigma, (int, float, np.floating)) and sigma >= 0):
        raise ConfigError(f"sigma must be a non-negative number; found {sigma!r}", source="min_detectable_slope")
    sxx = float(((x - x.mean()) ** 2).sum())
    if len(x) < 3 or sxx == 0:
        return math.nan
    return _noncentrality(len(x) - 2, float(alpha), float(power)) * float(sigma) / math.sqrt(sxx)


def seed_noise(groups, m, value, *, n_bootstrap: int = 1000, alpha: float = 0.05, power: float = 0.8,
               rng: np.random.Generator | int | None = None) -> SeedNoiseResult:
    """Seed sd, signal-to-noise ratio, sign stability and detectable slope per group.

    Parameters
    ----------
    groups
        One label per point (a regression group; any sortable labels).
    m, value
        The code fraction and the result of each point; each point is one model (one seed).
        Non-finite points are ignored.
    n_bootstrap
        Resamples over seeds for ``sign_stability`` (keyword-only).
    alpha, power
        Level and power of the test behind ``min_detectable_slope``.
    rng
        ``numpy.random.Generator`` (or a seed for one) that draws the resamples.
    """
    _noise_iv(alpha, power, n_bootstrap)
    labels, codes = np.unique(np.asarray(groups), return_inverse=True)
    x, y = np.asarray(m, dtype=float), np.asarray(value, dtype=float)
    if not (len(codes) == len(x) == len(y)):
        raise ConfigError(f"groups, m and value must have one entry per point; found lengths "
                          f"{len(codes)}, {len(x)}, {len(y)}", source="seed noise")
    ok = np.isfinite(x) & np.isfinite(y)
    out = _seed_noise(codes[ok], x[ok], y[ok], len(labels), n_bootstrap=int(n_bootstrap), alpha=float(alpha),
                      power=float(power), rng=np.random.default_rng(rng))
    return SeedNoiseResult(groups=labels, n_bootstrap=int(n_bootstrap), **out)


def _seed_noise(codes: np.ndarray, x: np.ndarray, y: np.ndarray, n_groups: int, *, n_bootstrap: int,
                alpha: float, power: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """:func:`seed_noise` on finite points with integer group codes ``0 .. n_groups − 1``."""
    nan = np.full(n_groups, np.nan)
    if len(codes) == 0:
        return {"seed_sd": nan, "pooled_sd": nan.copy(), "snr": nan.copy(), "sign_stability": nan.copy(),
                "min_detectable_slope": nan.copy()}
    # Cells: (group, m). Points sorted by cell so that each cell's seeds are contiguous.
    order = np.lexsort((x, codes))
    codes, x, y = codes[order], x[order], y[order]
    new_cell = np.r_[True, (codes[1:] != codes[:-1]) | (x[1:] != x[:-1])]
    cell = np.cumsum(new_cell) - 1
    n_cells = int(cell[-1]) + 1
    cell_group = codes[new_cell]
    cell_start = np.flatnonzero(new_cell)
    cell_n = np.bincount(cell, minlength=n_cells).astype(float)
    cell_mean = np.bincount(cell, y, n_cells) / cell_n
    resid = y - cell_mean[cell]
    cell_ss = np.bincount(cell, resid * resid, n_cells)
    with np.errstate(invalid="ignore", divide="ignore"):
        cell_sd = np.where(cell_n >= 2, np.sqrt(cell_ss / (cell_n - 1)), np.nan)

    n = np.bincount(codes, minlength=n_groups).astype(float)
    n_m = np.bincount(cell_group, minlength=n_groups)
    noisy = cell_n >= 2  # cells that carry seed noise
    n_noisy = np.bincount(cell_group, noisy.astype(float), n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        seed_sd = np.where(n_noisy > 0, np.bincount(cell_group, np.where(noisy, cell_sd, 0.0), n_groups) / n_noisy,
                           np.nan)
        dof = n - n_m
        pooled_sd = np.where(dof > 0, np.sqrt(np.bincount(cell_group, cell_ss, n_groups) / dof), np.nan)
    hi, lo = np.full(n_groups, -np.inf), np.full(n_groups, np.inf)
    np.maximum.at(hi, cell_group, cell_mean)
    np.minimum.at(lo, cell_group, cell_mean)
    signal = np.where(n_m >= 2, hi - lo, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(seed_sd > 0, signal / seed_sd, np.where(signal > 0, np.inf, np.nan))
    snr = np.where(np.isfinite(seed_sd) & np.isfinite(signal), snr, np.nan)

    # OLS slope as a fixed linear combination of the points: beta = Σ a_i y_i.
    with np.errstate(invalid="ignore", divide="ignore"):
        xbar = np.bincount(codes, x, n_groups) / n
        dx = x - xbar[codes]
        sxx = np.bincount(codes, dx * dx, n_groups)
        a = np.where(sxx[codes] > 0, dx / sxx[codes], 0.0)
    beta = np.bincount(codes, a * y, n_groups)
    group_hi, group_lo = np.full(n_groups, -np.inf), np.full(n_groups, np.inf)
    np.maximum.at(group_hi, codes, y)
    np.minimum.at(group_lo, codes, y)
    testable = (n_m >= 2) & (n_noisy > 0) & (group_hi > group_lo) & (beta != 0)
    stability = np.full(n_groups, np.nan)
    if testable.any():
        keep = testable[codes]
        stability = _sign_stability(y, codes[keep], cell[keep], a[keep], cell_start, cell_n, beta,
                                    n_bootstrap=n_bootstrap, rng=rng)

    mds = np.full(n_groups, np.nan)
    # A group with one value at every point has no test at all (not a test of infinite power).
    for g in np.flatnonzero((n_m >= 2) & (n >= 3) & np.isfinite(pooled_sd) & (group_hi > group_lo)):
        mds[g] = _noncentrality(int(n[g]) - 2, alpha, power) * pooled_sd[g] / math.sqrt(sxx[g])
    return {"seed_sd": seed_sd, "pooled_sd": pooled_sd, "snr": snr, "sign_stability": stability,
            "min_detectable_slope": mds}


def _sign_stability(y: np.ndarray, codes: np.ndarray, cell: np.ndarray, a: np.ndarray, cell_start: np.ndarray,
                    cell_n: np.ndarray, beta: np.ndarray, *, n_bootstrap: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Share of stratified bootstrap resamples whose slope has the sign of β̂, per group in ``codes``.

    ``y`` holds every point sorted by cell (cells ``cell_start``/``cell_n`` index it); ``codes``,
    ``cell`` and ``a`` describe the points of the groups to resample, in the same order. Each
    resample replaces every point by a seed drawn with replacement from its own cell (same m),
    so the slope of a resample is ``Σ a_i y*_i`` with the design weights ``a_i`` fixed.
    """
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]])
    present = codes[starts]
    first, size = cell_start[cell], cell_n[cell]
    sign = np.sign(beta[present])
    kept = np.zeros(len(present))
    batch = max(1, _BATCH_ELEMENTS // len(codes))
    for lo in range(0, n_bootstrap, batch):
        b = min(batch, n_bootstrap - lo)
        draw = first + (rng.random((b, len(codes))) * size).astype(np.intp)
        slopes = np.add.reduceat(y[draw] * a, starts, axis=1)  # (b, groups)
        kept += (np.sign(slopes) == sign).sum(axis=0)
    out = np.full(len(beta), np.nan)
    out[present] = kept / n_bootstrap
    return out


def _constant(codes: np.ndarray, y: np.ndarray, n_units: int) -> tuple[np.ndarray, np.ndarray]:
    """Per unit code: whether its finite values are all equal, and its largest value."""
    finite = np.isfinite(y)
    hi, lo = np.full(n_units, -np.inf), np.full(n_units, np.inf)
    np.maximum.at(hi, codes[finite], y[finite])
    np.minimum.at(lo, codes[finite], y[finite])
    seen = np.isfinite(hi)
    with np.errstate(invalid="ignore"):
        constant = seen & ((hi - lo) <= 1e-12 * np.maximum(1.0, np.maximum(np.abs(hi), np.abs(lo))))
    return constant, np.where(seen, hi, np.nan)


def constant_units(units, value) -> pd.Series:
    """Whether each unit's finite values are all equal (no signal): a bool Series indexed by unit.

    ``units`` holds one label per point (e.g. a (task, subtask, metric) tuple), ``value`` the
    point's result. Equal means within 1e-12 relative (values parsed from text may differ in the
    last bit). A unit with no finite value is not constant: it has nothing to say at all and is
    reported as unfitted instead.
    """
    codes, labels = pd.factorize(pd.Series(list(units) if not isinstance(units, pd.Series) else units), sort=True)
    constant, _ = _constant(codes, np.asarray(value, dtype=float), len(labels))
    return pd.Series(constant, index=labels)
