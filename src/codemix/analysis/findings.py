"""The answer first: one finding per benchmark's headline metric and setting, in numbers and words.

A study fits hundreds of regressions; a reader first wants to know what changed with the code
fraction m. :func:`findings` picks each benchmark's headline units and fits one regression per
headline and setting (language-only baselines aside), with the statistics a reader needs to
trust it: β̂ with its confidence interval, Holm / Benjamini–Hochberg adjusted p over the family
of findings (a small, pre-specified family: the primary endpoints of the study), the
signal-to-noise ratio, the sign stability over seed resamples, the smallest detectable slope
(:mod:`codemix.analysis.noise`), and a sentence that says it.

**Headline units** of a task (per arm): the rows marked ``primary`` (each benchmark marks its
headline metric); for a task without any, the task's first metric in the table (the one its
benchmark writes first, e.g. bits per byte for perplexity), over all its subtasks. Subtasks
that name a programming language (``python``/``py``, ``rust``/``rs``, ``go``/``golang``, also
as part of a name such as ``humaneval_x/rust``) are findings of their own, and feed the
**transfer panel**: Python, Rust and Go slopes side by side. Other subtasks are findings of
their own when a task has at most three of them per metric; more are averaged per (m, seed)
into one finding (``mean of K subtasks``), as BIG-bench reports one preferred score per task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from codemix.analysis.arms import ArmComparisonResult, _compare_arms
from codemix.analysis.inference import wilson_interval
from codemix.analysis.regression import RegressionResult, _fit, _results_iv

__all__ = [
    "LANGUAGES",
    "FindingsResult",
    "findings",
    "language_of",
    "unit_sentence",
]

LANGUAGES = {"python": "Python", "py": "Python", "python3": "Python", "rust": "Rust", "rs": "Rust",
             "go": "Go", "golang": "Go"}
"""Subtask name tokens that name a language of the transfer panel."""

TRANSFER_LANGUAGES = ("Python", "Rust", "Go")
_MAX_SEPARATE = 3  # non-language subtasks per task and metric reported one by one
_FINDING_COLUMNS = ["arm", "task", "subtask", "metric", "setting", "subject", "language", "n_subtasks", "beta", "ci_low",
                    "ci_high", "p_beta", "p_holm", "p_fdr", "snr", "sign_stability", "min_detectable_slope",
                    "seed_sd", "no_signal", "proportion", "m_min", "m_max", "n_seeds", "sentence"]


@dataclass(frozen=True)
class FindingsResult:
    """The findings of a study, the transfer panel and (with arms) their comparison.

    Attributes
    ----------
    table
        One row per headline unit and setting: ``arm, task, subtask`` (``mean of K subtasks``
        for an average), ``metric, setting``, ``subject`` (the unit in words), ``language``
        (Python, Rust, Go or empty),
        ``n_subtasks``, ``beta, ci_low, ci_high, p_beta, p_holm, p_fdr`` (adjusted over the
        findings of the arm), ``snr, sign_stability, min_detectable_slope, seed_sd, no_signal,
        proportion``, ``m_min``/``m_max`` and ``n_seeds`` (the design), and ``sentence``.
    transfer
        Python, Rust and Go side by side: one row per arm, task, metric, setting and subtask
        family, columns ``<language>_beta``, ``_ci_low``, ``_ci_high``, ``_p_fdr`` per language.
        Empty unless some finding is about Rust or Go.
    regressions
        The fits behind the table (their ``points`` are the headline series); None when the
        table has no headline rows (e.g. only language-only baselines).
    arms
        With two or more arms: the arm comparison of every finding (slopes of each arm, their
        difference and the m × arm interaction test, adjusted over the findings, with its
        ``subject`` and ``sentence``), else None.
    """

    table: pd.DataFrame
    transfer: pd.DataFrame
    regressions: RegressionResult | None
    arms: ArmComparisonResult | None


def language_of(subtask: str) -> str:
    """The transfer-panel language a subtask name mentions (``rust``, ``humaneval_x/rs``), or ``""``."""
    for token in re.split(r"[^a-z0-9]+", str(subtask).lower()):
        if token in LANGUAGES:
            return LANGUAGES[token]
    return ""


def _family_of(subtask: str) -> str:
    """The subtask name without its language token: ``humaneval_x/rust`` and ``humaneval_x/go`` share one."""
    parts = re.split(r"([^A-Za-z0-9]+)", str(subtask))
    return "".join(p for p in parts if p.lower() not in LANGUAGES).strip("/_-. ")


def _headline_units(pts: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, task): the (subtask, metric) units the findings report, and how they are grouped.

    Returns columns ``arm, task, subtask, metric, finding`` (the finding's subtask label) and
    ``language``.
    """
    units = pts[["arm", "task", "subtask", "metric", "primary"]]
    primary = units.groupby(["arm", "task", "subtask", "metric"], sort=False)["primary"].any().reset_index()
    has_primary = primary.groupby(["arm", "task"], sort=False)["primary"].transform("any")
    first_metric = units.groupby(["arm", "task"], sort=False)["metric"].transform("first")
    fallback = (units["metric"] == first_metric).groupby([units[k] for k in ("arm", "task", "subtask", "metric")],
                                                          sort=False).any().to_numpy()
    chosen = primary.loc[np.where(has_primary, primary["primary"], fallback)].drop(columns="primary")
    chosen["language"] = chosen["subtask"].map(language_of)
    chosen["finding"] = chosen["subtask"]
    plain = chosen["language"] == ""
    size = chosen.loc[plain].groupby(["arm", "task", "metric"])["subtask"].transform("size")
    many = size[size > _MAX_SEPARATE].index
    chosen.loc[many, "finding"] = [f"mean of {k} subtasks" for k in size[many]]
    return chosen.reset_index(drop=True)


def _headline_rows(pts: pd.DataFrame, heads: pd.DataFrame) -> pd.DataFrame:
    """Tidy rows of every finding: a unit's own rows, or the per-(m, seed) mean over its subtasks."""
    rows = pts.loc[~pts["baseline"]].merge(heads, on=["arm", "task", "subtask", "metric"], how="inner")
    keys = ["study", "arm", "setting", "m", "baseline", "seed", "task", "finding", "metric"]
    out = (rows.groupby(keys, sort=False, dropna=False)
           .agg(value=("value", "mean"), n=("n", "sum"), n_subtasks=("subtask", "nunique"),
                language=("language", "first"))
           .reset_index().rename(columns={"finding": "subtask"}))
    return out.assign(primary=True, question_type="", _dropped=False)


def _num(x: float) -> str:
    """A number for a sentence: three significant digits, a true minus sign."""
    if x is None or not np.isfinite(x):
        return "—"
    if x == 0:
        return "0"
    a = abs(x)
    text = f"{a:.0f}" if a >= 100 else f"{a:.3g}" if a >= 1e-3 else f"{a:.1e}"
    return ("−" if x < 0 else "") + text


def _fmt_p(p) -> str:
    """A p-value: three significant digits, scientific below 0.001 (0.0498 is not "0.050")."""
    if p is None or not np.isfinite(p):
        return "—"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3g}"


def _subject(row) -> str:
    metric = str(row["metric"]).replace("_", " ")
    if row["language"]:
        family = _family_of(row["subtask"])
        where = f"{row['task']}{' ' + family if family else ''}"
        return f"{row['language']} {metric} ({where})"
    sub = str(row["subtask"])
    if sub.startswith("mean of "):
        return f"{row['task']} {metric} ({sub})"
    return " ".join(x for x in (str(row["task"]), "" if sub in ("", row["task"]) else sub, metric) if x)


def _sentence(row, *, level: float) -> str:
    """One finding in words: the direction, size and uncertainty of the slope, and how far to trust it."""
    subject = _subject(row)
    arm = f"[{row['arm']}] " if row["arm"] else ""
    where = f"in the {row['setting']} setting"
    if row["no_signal"]:
        text = f"{subject} is {_num(row['_constant'])} at every m and seed {where}: no signal"
        if row["proportion"] and np.isfinite(row["_items"]):
            lo, hi = wilson_interval(row["_constant"], row["_items"], confidence_level=level)
            text += (f" (on {int(row['_items'])} items per model, the {level:.0%} Wilson interval is "
                     f"{_num(float(lo))}–{_num(float(hi))})")
        return arm + text + "."
    if row["_flat"]:
        return f"{arm}{subject} is {_num(row['_first'])} at every m and seed {where}: nothing to test."
    if not np.isfinite(row["beta"]):
        return f"{arm}{subject}: no slope {where} ({row['_note'] or 'too few points'})."
    ci = f"{level:.0%} CI {_num(row['ci_low'])} to {_num(row['ci_high'])}"
    span = row["m_max"] - row["m_min"]
    over = (f"{_num(abs(row['beta']) * span)} from m = {_num(row['m_min'])} to {_num(row['m_max'])}; "
            if np.isfinite(span) and span > 0 else "")
    stable = (f", sign stable in {row['sign_stability']:.0%} of seed resamples"
              if np.isfinite(row["sign_stability"]) else "")
    p = f"FDR-adjusted p = {_fmt_p(row['p_fdr'])}"
    if np.isfinite(row["p_fdr"]) and row["p_fdr"] < 1 - level:
        verb = "rises" if row["beta"] > 0 else "falls"
        return (f"{arm}{subject} {verb} by {_num(abs(row['beta']))} per unit of m {where} ({over}{ci})"
                f"{stable}; {p}.")
    detect = (f"; at these seeds only |β| ≥ {_num(row['min_detectable_slope'])} would be detected 80% of the time"
              if np.isfinite(row["min_detectable_slope"]) else "")
    return (f"{arm}{subject}: no change detected {where} (β̂ = {_num(row['beta'])}, {ci}{stable}; {p}{detect}).")


def _significant(row, level: float) -> bool:
    return bool(not row["no_signal"] and np.isfinite(row["p_fdr"]) and row["p_fdr"] < 1 - level)


def unit_sentence(rows: pd.DataFrame, *, level: float = 0.95) -> str:
    """One sentence for one unit's findings in several settings (rows of :attr:`FindingsResult.table`).

    When the slope is significant with the same sign in every setting, the settings share one
    sentence ("... falls with m in both settings: by 1.53 per unit of m in competitive (...) and by
    1.59 in additive (...)"); otherwise the per-setting sentences are joined.
    """
    rows = rows.reset_index(drop=True)
    signs = np.sign(rows["beta"].to_numpy(dtype=float))
    if len(rows) < 2 or not all(_significant(r, level) for _, r in rows.iterrows()) or len(set(signs)) != 1:
        return " ".join(rows["sentence"])
    first = rows.iloc[0]
    arm = f"[{first['arm']}] " if first["arm"] else ""
    verb = "rises" if signs[0] > 0 else "falls"
    parts = []
    for i, r in rows.iterrows():
        span = r["m_max"] - r["m_min"]
        over = (f"{_num(abs(r['beta']) * span)} from m = {_num(r['m_min'])} to {_num(r['m_max'])}; "
                if np.isfinite(span) and span > 0 else "")
        lead = "by " + _num(abs(r["beta"])) + (" per unit of m" if i == 0 else "")
        parts.append(f"{lead} in {r['setting']} ({over}{level:.0%} CI {_num(r['ci_low'])} to "
                     f"{_num(r['ci_high'])}; FDR-adjusted p = {_fmt_p(r['p_fdr'])})")
    every = "both settings" if len(rows) == 2 else f"all {len(rows)} settings"
    stable = rows["sign_stability"].to_numpy(dtype=float)
    tail = ""
    if np.isfinite(stable).all():
        tail = (f"; sign stable in {stable[0]:.0%} of seed resamples in each" if len(set(stable)) == 1 else
                f"; sign stable in {', '.join(f'{x:.0%}' for x in stable)} of seed resamples")
    return f"{arm}{first['subject']} {verb} with m in {every}: {', '.join(parts[:-1])} and {parts[-1]}{tail}."


def findings(results: pd.DataFrame, *, confidence_level: float = 0.95, n_bootstrap: int = 1000,
             rng: np.random.Generator | int | None = None) -> FindingsResult:
    """The findings table, the transfer panel and the arm comparison of a study's result rows.

    Parameters
    ----------
    results
        Tidy result rows (the ten contract columns; ``primary`` and ``arm`` used when present).
    confidence_level
        Of the intervals; the adjusted p-values are called significant below ``1 − level``.
    n_bootstrap, rng
        Seed resamples behind the sign stability, and their generator (keyword-only).
    """
    df, _ = _results_iv(results)
    return _findings(df, confidence_level=float(confidence_level), n_bootstrap=int(n_bootstrap),
                     rng=np.random.default_rng(rng))


def _findings(df: pd.DataFrame, *, confidence_level: float, n_bootstrap: int,
              rng: np.random.Generator) -> FindingsResult:
    """:func:`findings` on rows validated by :func:`~codemix.analysis.regression._results_iv`."""
    pts = df.loc[~df["_dropped"]]
    heads = _headline_units(pts)
    rows = _headline_rows(pts, heads)
    if rows.empty:
        return FindingsResult(table=pd.DataFrame(columns=_FINDING_COLUMNS), transfer=pd.DataFrame(),
                              regressions=None, arms=None)
    reg = _fit(rows.drop(columns=["n_subtasks", "language"]), (), confidence_level=confidence_level,
               n_bootstrap=n_bootstrap, rng=rng)
    keys = ["arm", "task", "subtask", "metric"]
    info = rows.groupby(keys, sort=False).agg(language=("language", "first"), n_subtasks=("n_subtasks", "max"),
                                              _items=("n", "min"), _constant=("value", "first"))
    design = rows.groupby([*keys, "setting"], sort=False).agg(m_min=("m", "min"), m_max=("m", "max"),
                                                              n_seeds=("seed", "nunique"), _first=("value", "first"),
                                                              _lo=("value", "min"), _hi=("value", "max"))
    design["_flat"] = design["_lo"] == design["_hi"]
    table = (reg.table.loc[~reg.table["baseline"]]
             .merge(info.reset_index(), on=keys, how="left")
             .merge(design.reset_index(), on=[*keys, "setting"], how="left")
             .rename(columns={"note": "_note"}))
    table["subject"] = [_subject(r) for _, r in table.iterrows()]
    table["sentence"] = [_sentence(r, level=confidence_level) for _, r in table.iterrows()]
    table = table[_FINDING_COLUMNS].reset_index(drop=True)

    arms = tuple(pd.unique(rows["arm"]))
    comparison = None
    if len(arms) > 1:
        comparison = _compare_arms(rows, arms=arms, confidence_level=confidence_level)
        t = comparison.table.assign(language=comparison.table["subtask"].map(language_of))
        t["subject"] = [_subject(r) for _, r in t.iterrows()]
        t["sentence"] = [_arm_sentence(r, level=confidence_level) for _, r in t.iterrows()]
        comparison = replace(comparison, table=t.drop(columns="language"))
    return FindingsResult(table=table, transfer=_transfer(table), regressions=reg, arms=comparison)


def _arm_sentence(row, *, level: float) -> str:
    """One comparison of arms in words: how much steeper or flatter one arm's slope is, and how sure."""
    where = f"in the {row['setting']} setting" + (" (language-only baseline)" if row["baseline"] else "")
    if row["no_signal"] or not np.isfinite(row["diff"]):
        return f"{row['subject']}: no slope to compare between {row['reference']} and {row['arm']} {where}."
    ci = f"{level:.0%} CI {_num(row['ci_low'])} to {_num(row['ci_high'])}"
    p = f"m × arm FDR-adjusted p = {_fmt_p(row['p_fdr'])}"
    slopes = f"{_num(row['beta_reference'])} in {row['reference']}, {_num(row['beta_arm'])} in {row['arm']}"
    if np.isfinite(row["p_fdr"]) and row["p_fdr"] < 1 - level:
        way = "higher" if row["diff"] > 0 else "lower"
        return (f"{row['subject']}: the slope in {row['arm']} is {_num(abs(row['diff']))} per unit of m {way} than "
                f"in {row['reference']} {where} ({slopes}; {ci} of the difference); {p}.")
    return f"{row['subject']}: the arms' slopes do not differ detectably {where} ({slopes}; {ci} of the difference); {p}."


def _transfer(table: pd.DataFrame) -> pd.DataFrame:
    """Python, Rust and Go findings side by side, when some finding is about Rust or Go."""
    lang = table.loc[table["language"].isin(TRANSFER_LANGUAGES)]
    if not lang["language"].isin(["Rust", "Go"]).any():
        return pd.DataFrame()
    lang = lang.assign(family=lang["subtask"].map(_family_of))
    keys = ["arm", "task", "family", "metric", "setting"]
    out = lang[keys].drop_duplicates().reset_index(drop=True)
    for language in TRANSFER_LANGUAGES:
        part = lang.loc[lang["language"] == language, [*keys, "beta", "ci_low", "ci_high", "p_fdr", "no_signal"]]
        part = part.drop_duplicates(keys).rename(
            columns={c: f"{language.lower()}_{c}" for c in ("beta", "ci_low", "ci_high", "p_fdr", "no_signal")})
        out = out.merge(part, on=keys, how="left")
    return out

