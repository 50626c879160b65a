"""Per-group linear regressions of task performance on the code fraction ``m``.

For every (arm, task, subtask, metric, setting, baseline) group of tidy result rows, fit
ordinary least squares ``value = alpha + beta * m`` over all (m, seed) points, as in
Petty, van Steenkiste & Linzen, *How Does Code Pretraining Affect Language Model Task
Performance?* (arXiv 2409.04556), §4.2 and §5.1, whose Tables 3-7 report β̂, α̂ and R²
per dataset, generalization type and setting. All groups are fitted at once with
vectorized sums (``numpy.bincount``), so thousands of groups cost one pass over the rows.

Beside each fit: Holm and Benjamini–Hochberg adjusted p-values over the study's family of
regressions (:mod:`codemix.analysis.inference`), a ``no_signal`` flag for units whose value is
the same at every point of the study (all 0, all 1), and the seed noise of the group: signal-to-
noise ratio, sign stability of β̂ over seed resamples and the smallest slope the study could
detect (:mod:`codemix.analysis.noise`).

Bad input is rejected before any computation by :func:`_results_iv`, which also normalizes
every table that has the ten contract columns (:data:`codemix.evals.rows.RESULT_COLUMNS`) once:
numbers given as text, booleans spelled ``"True"``/``"no"``/``1``, empty subtasks, absent
optional columns. Groups that cannot be fitted (a single distinct ``m``, fewer than three
points for standard errors) are reported in the table with NaN statistics and a ``note``,
not raised.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from codemix.analysis.inference import _proportion_rows, adjust_pvalues, wilson_interval
from codemix.analysis.noise import _constant, _seed_noise
from codemix.errors import ConfigError, DataError
from codemix.evals.rows import OPTIONAL_COLUMNS, RESULT_COLUMNS

__all__ = [
    "GROUP_KEYS",
    "REQUIRED_COLUMNS",
    "SIGNAL_KEYS",
    "RegressionResult",
    "fit_regressions",
]

REQUIRED_COLUMNS = RESULT_COLUMNS
"""The ten columns every results table has (:data:`codemix.evals.rows.RESULT_COLUMNS`)."""

GROUP_KEYS = ("arm", "task", "subtask", "metric", "setting", "baseline")
"""One regression is fitted per distinct combination of these columns (``arm`` is empty without arms)."""

SIGNAL_KEYS = ("arm", "task", "subtask", "metric")
"""A benchmark unit of one arm: what ``no_signal`` is judged on, across every setting of the study."""

_POINT_KEYS = ("arm", "setting", "m", "baseline", "seed", "task", "subtask", "metric")
_NAME_COLUMNS = ("study", "setting", "task", "metric")  # every row needs one
_TEXT_COLUMNS = ("subtask", "arm", "question_type")  # empty when unknown
_TRUE = {"true", "t", "yes", "y", "1", "1.0"}
_FALSE = {"false", "f", "no", "n", "0", "0.0"}


@dataclass(frozen=True)
class RegressionResult:
    """OLS fits of value on ``m``, one per (arm, task, subtask, metric, setting, baseline).

    Attributes
    ----------
    table
        One row per group: the group keys, then ``beta`` (slope, β̂), ``alpha``
        (intercept, α̂), ``r2``, ``se_beta``, ``se_alpha``, ``p_beta`` (two-sided t test of
        β = 0), ``p_holm``/``p_fdr`` (``p_beta`` adjusted by Holm / Benjamini–Hochberg over
        every tested group of the same arm: the study's family of regressions),
        ``ci_low``/``ci_high`` (confidence interval of β), ``n`` (points),
        ``n_m`` (distinct values of m), ``n_dropped`` (rows without a finite value or m),
        ``no_signal`` (the unit, task × subtask × metric, has one value at every point of the
        arm's study: untestable, left out of the family and of the pooled tests), ``seed_sd``
        (mean seed sd over m), ``snr``, ``sign_stability``, ``min_detectable_slope`` (see
        :mod:`codemix.analysis.noise`), ``proportion`` (values are shares of ``n`` items)
        and ``note`` (why a statistic is NaN; empty when all are defined).
    points
        The validated rows that were fitted (the seed-level scatter), with ``baseline``
        as bool and ``m``/``value`` as float, and ``wilson_low``/``wilson_high`` (Wilson
        interval of each proportion from ``value`` and ``n``; NaN for other metrics).
    by_m
        Mean and sample standard deviation of the value over seeds, per group and ``m``
        (columns ``mean``, ``sd``, ``n_seeds``), and for proportions the Wilson interval of
        the items pooled over seeds (``n_items``, ``wilson_low``, ``wilson_high``).
    notes
        Human-readable remarks about the input (dropped rows, unfitted groups).
    confidence_level
        Confidence level of ``ci_low``/``ci_high``.
    """

    table: pd.DataFrame
    points: pd.DataFrame
    by_m: pd.DataFrame
    notes: tuple[str, ...]
    confidence_level: float


def _short(v) -> str:
    """A value as a reader would write it: 0, 1, 0.5, 3.05."""
    return f"{v:.4g}" if isinstance(v, (int, float, np.floating)) and np.isfinite(v) else str(v)


def _blank(col: pd.Series) -> np.ndarray:
    """Missing or whitespace-only cells."""
    text = col.astype("string").str.strip()
    return (text.isna() | text.eq("").fillna(True)).to_numpy(dtype=bool)


def _boolean(df: pd.DataFrame, name: str, *, if_empty: bool | None, fix: str) -> pd.Series:
    """Column ``name`` as bool from true/false, yes/no, 1/0 in any case (CSV gives them as text).

    Empty cells become ``if_empty``; with ``if_empty=None`` they are an error.
    """
    col = df[name]
    if pd.api.types.is_bool_dtype(col) and not col.isna().any():
        return col.astype(bool)
    text = col.astype("string").str.strip().str.lower()
    is_true = text.isin(_TRUE).fillna(False).to_numpy(dtype=bool)
    is_false = text.isin(_FALSE).fillna(False).to_numpy(dtype=bool)
    empty = _blank(col)
    bad = ~(is_true | is_false | empty)
    if bad.any():
        examples = ", ".join(repr(v) for v in col[bad].drop_duplicates().head(5).tolist())
        raise DataError(f"column {name!r} must be boolean (true/false, 1/0); found {int(bad.sum())} row(s) "
                        f"with other values, e.g. {examples}. {fix}")
    if empty.any() and if_empty is None:
        rows = ", ".join(map(str, df.index[empty][:5]))
        raise DataError(f"column {name!r} is empty in {int(empty.sum())} row(s) (e.g. rows {rows}); expected "
                        f"true or false in every row. {fix}")
    return pd.Series(is_true | (empty & bool(if_empty)), index=col.index)


def _numeric(results: pd.DataFrame, name: str) -> pd.Series:
    raw = results[name]
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna().to_numpy() & ~_blank(raw)
    if bad.any():
        examples = ", ".join(f"row {i}: {v!r}" for i, v in raw[bad].head(5).items())
        raise DataError(
            f"column {name!r} must be numeric; found {int(bad.sum())} non-numeric value(s) ({examples}). "
            f"Fix or remove those rows (missing values may be left empty; they are dropped)."
        )
    return values.astype(float)


def _seeds(df: pd.DataFrame) -> pd.Series:
    seed = _numeric(df, "seed")
    bad = seed.notna() & ~(np.isfinite(seed) & (seed == np.round(seed)))
    if bad.any():
        examples = ", ".join(map(repr, seed[bad].drop_duplicates().head(5).tolist()))
        raise DataError(f"column 'seed' must hold integers (the pretraining seed of each model); found {examples}. "
                        f"Check that the seed and m columns are not swapped.")
    return seed


def _results_iv(results: pd.DataFrame) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """Validate and normalize a tidy results table; return (rows to fit, notes).

    Any table with the ten :data:`REQUIRED_COLUMNS` is accepted, from CSV or Parquet, and
    normalized once here: ``m``, ``value``, ``n`` and ``seed`` to float (text such as
    ``"0.5"`` included), ``baseline`` and ``primary`` to bool (``"True"``, ``"no"``, ``1``),
    the name columns to ``str``, and ``subtask``, ``arm`` and ``question_type`` to ``str``
    with ``""`` where empty. The optional columns (:data:`codemix.evals.rows.OPTIONAL_COLUMNS`)
    are added when absent (``primary`` false, the others empty); other columns are kept.

    Rows whose ``m`` or ``value`` is missing or non-finite are dropped and counted in the
    notes (an evaluation that failed should not stop the analysis); everything else that
    is wrong raises :class:`~codemix.errors.DataError` naming what was expected, what was
    found and what to do. The returned frame has a bool column ``_dropped``.
    """
    if not isinstance(results, pd.DataFrame):
        raise DataError(
            f"results must be a pandas DataFrame of tidy result rows; found {type(results).__name__}. "
            f"Load the CSV/Parquet first (codemix.analysis.report.load_results)."
        )
    missing = [c for c in REQUIRED_COLUMNS if c not in results.columns]
    if missing:
        raise DataError(
            f"results table lacks column(s) {', '.join(missing)}; expected {', '.join(REQUIRED_COLUMNS)} "
            f"(optionally {', '.join(OPTIONAL_COLUMNS)}); found "
            f"{', '.join(map(str, results.columns)) or 'no columns'}. Add or rename the missing columns."
        )
    if len(results) == 0:
        raise DataError("results table has no rows; expected at least one result row per (m, seed). "
                        "Check that the evaluations wrote their results.")

    df = results.reset_index(drop=True).copy()
    for name in ("m", "value", "n"):
        df[name] = _numeric(df, name)
    df["seed"] = _seeds(df)
    df["baseline"] = _boolean(df, "baseline", if_empty=None,
                              fix="Mark language-only baseline rows true and every other row false.")
    df["primary"] = (_boolean(df, "primary", if_empty=False,
                              fix="Mark each task's headline metric true and every other row false, "
                                  "or drop the column.")
                     if "primary" in df.columns else False)

    for name in _NAME_COLUMNS:
        empty = _blank(df[name])
        if empty.any():
            rows = ", ".join(map(str, df.index[empty][:5]))
            raise DataError(f"column {name!r} is empty in {int(empty.sum())} row(s) (e.g. rows {rows}); "
                            f"every result row needs a {name}. Fill it in or drop those rows.")
        df[name] = df[name].astype(str)
    for name in _TEXT_COLUMNS:
        df[name] = df[name].astype("string").fillna("").astype(str) if name in df.columns else ""

    per_arm = df.groupby("arm", sort=True)["study"].unique()
    mixed = per_arm[per_arm.map(len) > 1]
    if len(mixed):
        arm, studies = mixed.index[0], sorted(mixed.iloc[0])
        where = f" within arm {arm!r}" if arm else ""
        raise DataError(f"results mix {len(studies)} studies{where} ({', '.join(studies[:5])}); expected one study "
                        f"per arm, because regressions pool every row of a group. Filter the table to one study, "
                        f"or compare studies as arms: codemix analyze A.csv B.csv.")

    finite_m = np.isfinite(df["m"].to_numpy())
    out_of_range = finite_m & ((df["m"] < 0) | (df["m"] > 1)).to_numpy()
    if out_of_range.any():
        examples = ", ".join(map(repr, df.loc[out_of_range, "m"].drop_duplicates().head(5).tolist()))
        raise DataError(f"column 'm' is the code fraction, expected within [0, 1]; found {examples}. "
                        f"If m is given in percent, divide it by 100.")

    dup = df.duplicated(list(_POINT_KEYS), keep=False)
    if dup.any():
        first = df.loc[dup, list(_POINT_KEYS)].head(3).to_dict("records")
        raise DataError(f"{int(dup.sum())} rows share the same (setting, m, baseline, seed, task, subtask, "
                        f"metric); expected one value per point, e.g. {first}. Remove duplicated results "
                        f"(was a results file ingested twice?).")

    keep = finite_m & np.isfinite(df["value"].to_numpy())
    if not keep.any():
        raise DataError(f"no result row has both a finite m and a finite value (all {len(df)} are empty, NaN or "
                        f"infinite); expected the code fraction in m and a score in value. Check that the "
                        f"evaluations wrote their values.")
    notes = []
    if not keep.all():
        dropped = df.loc[~keep]
        by_group = dropped.groupby(list(GROUP_KEYS), sort=True).size()
        detail = "; ".join(f"{'/'.join(map(str, k))}: {v}" for k, v in by_group.head(5).items())
        notes.append(f"{int((~keep).sum())} row(s) with missing or non-finite m or value were dropped ({detail}"
                     f"{'; ...' if len(by_group) > 5 else ''}).")
    df["_dropped"] = ~keep
    return df, tuple(notes)


def _grouped_ols(codes: np.ndarray, x: np.ndarray, y: np.ndarray, n_groups: int) -> dict[str, np.ndarray]:
    """Closed-form simple OLS for every group at once (two-pass centred sums)."""
    n = np.bincount(codes, minlength=n_groups).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        xbar = np.bincount(codes, x, n_groups) / n
        ybar = np.bincount(codes, y, n_groups) / n
        dx, dy = x - xbar[codes], y - ybar[codes]
        sxx = np.bincount(codes, dx * dx, n_groups)
        sxy = np.bincount(codes, dx * dy, n_groups)
        syy = np.bincount(codes, dy * dy, n_groups)
        beta = sxy / sxx
        alpha = ybar - beta * xbar
        resid = dy - beta[codes] * dx
        rss = np.bincount(codes, resid * resid, n_groups)
    return {"n": n, "xbar": xbar, "sxx": sxx, "syy": syy, "beta": beta, "alpha": alpha, "rss": rss}


def _slopes(codes: np.ndarray, x: np.ndarray, y: np.ndarray, n_groups: int) -> np.ndarray:
    return _grouped_ols(codes, x, y, n_groups)["beta"]


def fit_regressions(results: pd.DataFrame, *, confidence_level: float = 0.95, n_bootstrap: int = 1000,
                    rng: np.random.Generator | int | None = None) -> RegressionResult:
    """Fit ``value = alpha + beta * m`` by OLS for every (arm, task, subtask, metric, setting, baseline).

    Each group pools all its (m, seed) points, so seed-to-seed variation enters the
    residual variance, as in Petty et al. 2024 (arXiv 2409.04556), §4.2 / §5.1 and
    Tables 3-7. Standard errors, the t-test p-value of β̂ and its confidence interval use
    ``n - 2`` degrees of freedom (identical to ``statsmodels.OLS`` with a constant).

    Parameters
    ----------
    results
        Tidy result rows with columns :data:`REQUIRED_COLUMNS` (CSV/Parquet loaded as a
        DataFrame); optional and extra columns are carried along into ``points``.
    confidence_level
        Confidence level of the interval on β̂ (keyword-only); the detectable slope is for a
        test at level ``1 − confidence_level`` with power 0.8.
    n_bootstrap
        Resamples over seeds behind ``sign_stability``.
    rng
        ``numpy.random.Generator`` (or a seed for one) of those resamples.

    Returns
    -------
    RegressionResult
        Groups with one distinct ``m`` get NaN β̂/α̂/R² and a note; with two points
        (zero residual degrees of freedom) the fit is given but SE, p and CI are NaN.

    Raises
    ------
    codemix.errors.DataError
        Missing columns (all listed), non-numeric ``m``/``value``/``n``/``seed``, ``m`` outside
        [0, 1], an unreadable ``baseline`` or ``primary``, duplicated points, several studies in
        one table, or no row with a finite ``m`` and ``value``.
    """
    if not (isinstance(confidence_level, (int, float)) and 0 < confidence_level < 1):
        raise DataError(f"confidence_level must be a number in (0, 1); found {confidence_level!r}.")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, (int, np.integer)) or n_bootstrap < 1:
        raise ConfigError(f"n_bootstrap must be a positive integer; found {n_bootstrap!r}", source="regressions")
    df, notes = _results_iv(results)
    return _fit(df, notes, confidence_level=float(confidence_level), n_bootstrap=int(n_bootstrap),
                rng=np.random.default_rng(rng))


def _fit(df: pd.DataFrame, notes: tuple[str, ...], *, confidence_level: float, n_bootstrap: int = 1000,
         rng: np.random.Generator | None = None) -> RegressionResult:
    """:func:`fit_regressions` on rows already validated by :func:`_results_iv`."""
    keys = list(GROUP_KEYS)
    rng = np.random.default_rng(rng)

    all_groups = df.groupby(keys, sort=True).size().rename("n_rows").reset_index()
    pts = df.loc[~df["_dropped"]].drop(columns="_dropped").reset_index(drop=True)
    dropped = df.loc[df["_dropped"]].groupby(keys, sort=True).size().rename("n_dropped")

    grouping = pts.groupby(keys, sort=True)
    codes = grouping.ngroup().to_numpy()
    table = grouping.size().rename("n").reset_index()
    table["n_m"] = grouping["m"].nunique().to_numpy()
    fit = _grouped_ols(codes, pts["m"].to_numpy(), pts["value"].to_numpy(), len(table))

    n, n_m = fit["n"], table["n_m"].to_numpy()
    # A group with one value at every point has slope 0 and no residual: its t statistic is 0/0,
    # and rounding of the centred sums must not turn that into an arbitrary p-value.
    flat, flat_value = _constant(codes, pts["value"].to_numpy(), len(table))
    fit["beta"] = np.where(flat, 0.0, fit["beta"])
    fit["alpha"] = np.where(flat, flat_value, fit["alpha"])
    fit["rss"] = np.where(flat, 0.0, fit["rss"])
    fitted = n_m >= 2
    df_resid = n - 2
    has_se = fitted & (df_resid > 0)
    nan = np.full(len(table), np.nan)
    beta, alpha = np.where(fitted, fit["beta"], nan), np.where(fitted, fit["alpha"], nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = np.where(fitted, 1.0 - fit["rss"] / fit["syy"], nan)
        sigma2 = np.where(has_se, fit["rss"] / np.where(has_se, df_resid, 1), nan)
        se_beta = np.sqrt(sigma2 / fit["sxx"])
        se_alpha = np.sqrt(sigma2 * (1.0 / n + fit["xbar"] ** 2 / fit["sxx"]))
        tval = np.where(flat, np.nan, beta / se_beta)
        dof = np.where(has_se, df_resid, 1)
        p_beta = np.where(has_se & ~flat, 2.0 * stats.t.sf(np.abs(tval), dof), nan)
        tcrit = np.where(has_se, stats.t.ppf(0.5 + confidence_level / 2.0, dof), nan)
    table["beta"], table["alpha"], table["r2"] = beta, alpha, r2
    table["se_beta"], table["se_alpha"], table["p_beta"] = se_beta, se_alpha, p_beta
    table["ci_low"], table["ci_high"] = beta - tcrit * se_beta, beta + tcrit * se_beta
    table.loc[flat, ["ci_low", "ci_high"]] = np.nan
    table["_flat"] = flat

    # Units without signal: one value at every point of the arm's study (every setting, m, seed).
    y = pts["value"].to_numpy()
    units = pts.groupby(list(SIGNAL_KEYS), sort=True).ngroup().to_numpy()
    n_units = int(units.max()) + 1 if len(units) else 0
    first = np.zeros(len(table), dtype=np.intp)
    first[codes[::-1]] = np.arange(len(codes))[::-1]  # first point of each group
    group_unit = units[first] if len(units) else first
    constant, value = _constant(units, y, n_units)
    table["no_signal"] = constant[group_unit] if n_units else False
    table["_constant_value"] = value[group_unit] if n_units else np.nan
    proportion = np.bincount(units, ~_proportion_rows(y, pts["n"].to_numpy(), pts["metric"]), n_units) == 0
    table["proportion"] = proportion[group_unit] if n_units else False
    noise = _seed_noise(codes, pts["m"].to_numpy(), y, len(table), n_bootstrap=n_bootstrap,
                        alpha=1 - confidence_level, power=0.8, rng=rng)
    for name in ("seed_sd", "snr", "sign_stability", "min_detectable_slope"):
        table[name] = noise[name]
    low, high = wilson_interval(y, pts["n"].to_numpy(), confidence_level=confidence_level)
    point_prop = proportion[units] if n_units else np.zeros(0, bool)
    pts["wilson_low"], pts["wilson_high"] = np.where(point_prop, low, np.nan), np.where(point_prop, high, np.nan)

    # Groups whose every row was dropped still get a row, so nothing silently disappears.
    table = all_groups[keys].merge(table, on=keys, how="left")
    table["n"] = table["n"].fillna(0).astype(int)
    table["n_m"] = table["n_m"].fillna(0).astype(int)
    table = table.merge(dropped.reset_index(), on=keys, how="left")
    table["n_dropped"] = table["n_dropped"].fillna(0).astype(int)
    for name in ("no_signal", "proportion"):
        table[name] = table[name].astype("boolean").fillna(False).astype(bool)
    note = np.full(len(table), "", dtype=object)
    note[(table["n_m"] >= 2) & (table["n"] <= 2)] = "two points: no residual degrees of freedom"
    note[table["n_m"] == 1] = "one distinct m: slope undefined"
    note[table["n"] == 0] = "no finite values"
    unfit = note != ""
    silent = table["no_signal"].to_numpy()
    table.loc[silent, ["p_beta", "ci_low", "ci_high"]] = np.nan  # untestable: not a member of any family
    note[silent & ~unfit] = [f"no signal: {_short(v)} at every point of the study"
                             for v in table.loc[silent & ~unfit, "_constant_value"]]
    flat = table["_flat"].astype("boolean").fillna(False).to_numpy(dtype=bool) & ~silent & ~unfit
    note[flat] = [f"one value ({_short(v)}) at every point of this group: no slope to test"
                  for v in table.loc[flat, "alpha"]]
    table["note"] = note

    table["p_holm"], table["p_fdr"] = np.nan, np.nan
    for idx in table.groupby("arm", sort=True).indices.values():  # one family per arm (per study)
        adj = adjust_pvalues(table["p_beta"].to_numpy()[idx])
        table.loc[table.index[idx], "p_holm"], table.loc[table.index[idx], "p_fdr"] = adj.holm, adj.fdr

    table = table[[*keys, "beta", "alpha", "r2", "se_beta", "se_alpha", "p_beta", "p_holm", "p_fdr", "ci_low",
                   "ci_high", "n", "n_m", "n_dropped", "no_signal", "seed_sd", "snr", "sign_stability",
                   "min_detectable_slope", "proportion", "note"]]

    if unfit.any():
        bad = table[unfit]
        listed = "; ".join(f"{'/'.join(str(v) for v in r[keys])}: {r['note']}" for _, r in bad.head(5).iterrows())
        notes = (*notes, (f"{len(bad)} group(s) without complete statistics ({listed}"
                         f"{'; ...' if len(bad) > 5 else ''})."))
    if silent.any():
        n_silent = len(table.loc[silent, list(SIGNAL_KEYS)].drop_duplicates())
        notes = (*notes, (f"{n_silent} of {n_units} task unit(s) have one value at every point of the study "
                          f"(no signal); they are flagged no_signal, kept out of the adjusted p-values and of "
                          f"the pooled §5.1 tests."))

    by_m = (pts.groupby([*keys, "m"], sort=True)["value"]
            .agg(mean="mean", sd="std", n_seeds="count").reset_index())
    # Items pooled over seeds: the item-sampling uncertainty of the mean (seed noise is in ``sd``).
    n_ok = pts["n"].where(np.isfinite(pts["n"]) & (pts["n"] > 0))
    pooled = (pts.assign(_count=pts["value"] * n_ok, _items=n_ok)
              .groupby([*keys, "m"], sort=True)[["_count", "_items"]].sum(min_count=1))
    by_m_prop = proportion[by_m.groupby(list(SIGNAL_KEYS), sort=True).ngroup().to_numpy()] if n_units else False
    n_items = pooled["_items"].to_numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        low, high = wilson_interval(pooled["_count"].to_numpy() / n_items, n_items, confidence_level=confidence_level)
    by_m["n_items"] = np.where(by_m_prop, n_items, np.nan)
    by_m["wilson_low"], by_m["wilson_high"] = np.where(by_m_prop, low, np.nan), np.where(by_m_prop, high, np.nan)
    return RegressionResult(table=table, points=pts, by_m=by_m, notes=tuple(notes),
                            confidence_level=float(confidence_level))
