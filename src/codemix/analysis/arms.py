"""Arms and studies side by side: does the effect of m differ between arms?

An *arm* is one composition of the code in the mixture (Python only; Python with some Rust and
Go; ...), either several arms of one study (the ``arm`` column of the result rows) or several
studies analyzed together (``codemix analyze A.csv B.csv``: each file is an arm). For every unit
(task, subtask, metric, setting, baseline) fitted in two or more arms, :func:`compare_arms`
fits the interaction model

    value = α_arm + β_arm · m + ε,   ε ~ N(0, σ²) with one σ² for all arms

by OLS, which gives each arm's slope (the same β̂ as its own regression), the difference of each
arm's slope from the reference arm's with a confidence interval (t with ``n − 2k`` degrees of
freedom), and the F test of the m × arm interaction (all slopes equal; for two arms it is the t
test of the difference). Holm and Benjamini–Hochberg adjusted p-values of the interaction are
computed over every compared unit: one family. Equal to ``statsmodels`` ``ols("value ~ m *
C(arm)")`` (the tests check it).

Where arms share a model (the language-only m = 0 model of a study with arms is reported under
each arm), the arms' points are not independent; sharing points makes the slopes more alike,
so the test is conservative there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from codemix.analysis.inference import adjust_pvalues
from codemix.analysis.noise import _constant
from codemix.analysis.regression import _grouped_ols, _results_iv
from codemix.errors import ConfigError, DataError
from codemix.evals.rows import RESULT_COLUMNS

__all__ = [
    "COMPARISON_KEYS",
    "ArmComparisonResult",
    "combine_arms",
    "compare_arms",
]

COMPARISON_KEYS = ("task", "subtask", "metric", "setting", "baseline")
"""One comparison of arms per distinct combination of these columns."""


@dataclass(frozen=True)
class ArmComparisonResult:
    """Slopes of each arm, their differences and the m × arm interaction test, per unit.

    Attributes
    ----------
    table
        One row per unit and non-reference arm: the :data:`COMPARISON_KEYS`, ``reference`` and
        ``arm`` (names), ``beta_reference`` and ``beta_arm`` (slopes), ``diff`` (``beta_arm −
        beta_reference``), ``se_diff``, ``ci_low``/``ci_high``, ``p_diff`` (t test of this
        difference), ``p_interaction`` (F test that every arm's slope is equal), ``p_holm`` and
        ``p_fdr`` (``p_interaction`` adjusted over every unit), ``df`` (residual degrees of
        freedom), ``n_arms``, ``no_signal`` (one value at every point in each arm) and ``note``.
    arms
        Arm names in order; the first present in a unit is its reference.
    notes
        Remarks (units found in one arm only).
    confidence_level
        Confidence level of ``ci_low``/``ci_high``.
    """

    table: pd.DataFrame
    arms: tuple[str, ...]
    notes: tuple[str, ...]
    confidence_level: float


_COLUMNS = [*COMPARISON_KEYS, "reference", "arm", "beta_reference", "beta_arm", "diff", "se_diff", "ci_low",
            "ci_high", "p_diff", "p_interaction", "p_holm", "p_fdr", "df", "n_arms", "no_signal", "note"]


def _single_study(frame: pd.DataFrame) -> str | None:
    studies = frame["study"].astype("string").str.strip().dropna().unique() if "study" in frame else []
    return str(studies[0]) if len(studies) == 1 and str(studies[0]) else None


def combine_arms(tables: Sequence[tuple[str | Path, pd.DataFrame]]) -> pd.DataFrame:
    """One table of result rows from several files, each file an arm.

    A file's rows keep their ``arm`` where the file has one; rows without one are named after
    the file's study when it has a single study that names no other file, else after the file's
    stem (``runs/a.csv``: ``a``). With a single file the table is returned as it is.

    Raises
    ------
    codemix.errors.DataError
        A file lacks some of the ten contract columns (the file is named), or two files name
        the same arm.
    """
    if len(tables) == 1:
        return tables[0][1]
    if not tables:
        raise DataError("no results files given; expected one or more .csv or .parquet files of result rows.")
    def needs_name(frame: pd.DataFrame) -> bool:
        arm = frame["arm"].astype("string").str.strip() if "arm" in frame.columns else None
        return arm is None or bool((arm.isna() | (arm == "")).any())

    # A study name names an arm only when no other file that needs a name has it too.
    studies = [_single_study(frame) if needs_name(frame) else None for _, frame in tables]
    shared = {name for name in studies if name is not None and studies.count(name) > 1}
    taken: set[str] = set()
    frames = []
    for (path, frame), study in zip(tables, studies, strict=True):
        path = Path(path)
        missing = [c for c in RESULT_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"{path} lacks column(s) {', '.join(missing)}; every results file needs "
                            f"{', '.join(RESULT_COLUMNS)}. Add or rename the missing columns.")
        arm = frame["arm"].astype("string").str.strip() if "arm" in frame.columns else \
            pd.Series(pd.NA, index=frame.index, dtype="string")
        unnamed = arm.isna() | (arm == "")
        names = set(arm[~unnamed].unique())
        if unnamed.any():
            name = study if study is not None and study not in shared else (path.stem or path.name)
            names.add(name)
            arm = arm.mask(unnamed, name)
        clash = sorted(a for a in names if a.lower() in taken)
        if clash:
            raise DataError(f"{path} has arm(s) {', '.join(clash)}, which another results file has too; expected "
                            f"each arm in one file. Give the files distinct arm columns, study names or stems.")
        taken |= {a.lower() for a in names}
        frames.append(frame.assign(arm=arm.astype(object)))
    return pd.concat(frames, ignore_index=True)


def _compare_iv(confidence_level, reference, arms):
    problems = []
    if not (isinstance(confidence_level, (int, float)) and 0 < confidence_level < 1):
        problems.append(f"confidence_level must be in (0, 1); found {confidence_level!r}")
    if reference is not None and reference not in arms:
        problems.append(f"reference must be one of the arms ({', '.join(arms) or 'none'}); found {reference!r}")
    if problems:
        raise ConfigError(problems, source="arm comparison")


def compare_arms(results: pd.DataFrame, *, reference: str | None = None,
                 confidence_level: float = 0.95) -> ArmComparisonResult:
    """Per unit, each arm's slope on m, its difference from the reference arm, and the m × arm test.

    Parameters
    ----------
    results
        Result rows with an ``arm`` column (see :func:`combine_arms` for several files).
    reference
        The arm every other arm is compared with (keyword-only); default: the first arm in the
        table's row order.
    confidence_level
        Confidence level of the interval on each difference.
    """
    df, _ = _results_iv(results)
    arms = tuple(pd.unique(df["arm"]))
    _compare_iv(confidence_level, reference, arms)
    if reference is not None:
        arms = (reference, *[a for a in arms if a != reference])
    return _compare_arms(df, arms=arms, confidence_level=float(confidence_level))


def _compare_arms(df: pd.DataFrame, *, arms: Sequence[str], confidence_level: float) -> ArmComparisonResult:
    """:func:`compare_arms` on rows validated by :func:`~codemix.analysis.regression._results_iv`."""
    keys = list(COMPARISON_KEYS)
    pts = df.loc[~df["_dropped"]] if "_dropped" in df.columns else df
    rank = {a: i for i, a in enumerate(arms)}
    pts = pts.loc[pts["arm"].isin(rank)]
    if pts.empty or len(arms) < 2:
        return ArmComparisonResult(table=pd.DataFrame(columns=_COLUMNS), arms=tuple(arms), notes=(),
                                   confidence_level=confidence_level)
    grouping = pts.groupby([*keys, "arm"], sort=True)
    codes = grouping.ngroup().to_numpy()
    cells = grouping.size().rename("n").reset_index()
    y = pts["value"].to_numpy()
    fit = _grouped_ols(codes, pts["m"].to_numpy(), y, len(cells))
    sxy = fit["beta"] * fit["sxx"]
    per_arm_unit = pts.groupby(["arm", "task", "subtask", "metric"], sort=True).ngroup().to_numpy()
    constant, _ = _constant(per_arm_unit, y, int(per_arm_unit.max()) + 1)
    cells["constant"] = pd.Series(constant[per_arm_unit]).groupby(codes).all().to_numpy()
    cells = cells.assign(beta=fit["beta"], sxx=fit["sxx"], sxy=sxy, syy=fit["syy"], rss=fit["rss"],
                         rank=cells["arm"].map(rank))
    cells = cells.loc[cells["sxx"] > 0].sort_values([*keys, "rank"], kind="stable")

    rows, one_arm = [], 0
    for key, unit in cells.groupby(keys, sort=True):
        k = len(unit)
        if k < 2:
            one_arm += 1
            continue
        n = unit["n"].sum()
        dof = n - 2 * k
        rss_full = unit["rss"].sum()
        rss_common = unit["syy"].sum() - unit["sxy"].sum() ** 2 / unit["sxx"].sum()  # one slope for all arms
        silent = bool(unit["constant"].all())
        with np.errstate(invalid="ignore", divide="ignore"):
            sigma2 = rss_full / dof if dof > 0 else np.nan
            f_stat = (rss_common - rss_full) / (k - 1) / sigma2
            p_f = float(stats.f.sf(f_stat, k - 1, dof)) if dof > 0 and np.isfinite(f_stat) else np.nan
            tcrit = stats.t.ppf(0.5 + confidence_level / 2, dof) if dof > 0 else np.nan
        note = "no signal: one value at every point in each arm" if silent else (
            "" if dof > 0 else "no residual degrees of freedom")
        ref = unit.iloc[0]
        for other in unit.iloc[1:].itertuples(index=False):
            diff = other.beta - ref["beta"]
            with np.errstate(invalid="ignore", divide="ignore"):
                se = np.sqrt(sigma2 * (1 / other.sxx + 1 / ref["sxx"]))
                t_stat = diff / se
                p_diff = float(2 * stats.t.sf(abs(t_stat), dof)) if dof > 0 and np.isfinite(t_stat) else np.nan
            rows.append({**dict(zip(keys, key, strict=True)), "reference": ref["arm"], "arm": other.arm,
                         "beta_reference": ref["beta"], "beta_arm": other.beta, "diff": diff, "se_diff": se,
                         "ci_low": diff - tcrit * se, "ci_high": diff + tcrit * se,
                         "p_diff": np.nan if silent else p_diff, "p_interaction": np.nan if silent else p_f,
                         "df": int(dof), "n_arms": k, "no_signal": silent, "note": note})
    table = pd.DataFrame(rows, columns=[c for c in _COLUMNS if c not in ("p_holm", "p_fdr")])
    # One test per unit (rows of a unit with three or more arms share its interaction test).
    first = ~table.duplicated(keys) if len(table) else pd.Series(dtype=bool)
    adj = adjust_pvalues(table.loc[first, "p_interaction"].to_numpy(dtype=float))
    per_unit = pd.DataFrame({"p_holm": adj.holm, "p_fdr": adj.fdr}, index=table.index[first.to_numpy()])
    table = table.join(per_unit)
    table[["p_holm", "p_fdr"]] = table.groupby(keys, sort=False)[["p_holm", "p_fdr"]].transform("first")
    notes = (f"{one_arm} unit(s) have a slope in one arm only and are not compared.",) if one_arm else ()
    return ArmComparisonResult(table=table[_COLUMNS].reset_index(drop=True), arms=tuple(arms), notes=notes,
                               confidence_level=confidence_level)
