"""From tidy result rows to an answer: tables, figures and a self-contained report.

:func:`analyze` runs the regressions (:mod:`codemix.analysis.regression`), the §5.1
permutation tests (:mod:`codemix.analysis.permutation`), the findings
(:mod:`codemix.analysis.findings`), the comparison of arms (:mod:`codemix.analysis.arms`)
and the figures (:mod:`codemix.analysis.plots`) of Petty et al. 2024 (arXiv 2409.04556),
and writes::

    OUT/findings.csv         one row per benchmark headline and setting: β̂, CI, adjusted p,
                             SNR, sign stability, detectable slope and a sentence
    OUT/transfer.csv         Python, Rust and Go slopes side by side (studies with Rust or Go)
    OUT/arms.csv             with several arms: per unit, each arm's slope, their difference
                             and the m × arm interaction test
    OUT/regressions.csv      one OLS fit per (arm, task, subtask, metric, setting, baseline), with
                             p_holm / p_fdr, no_signal, snr, sign_stability, min_detectable_slope
    OUT/permutation.csv      Δ statistics of treatment vs control slopes: median p over control
                             draws, its quartiles, p_holm / p_fdr
    OUT/slopes.csv           treatment and control slope per setting × task
    OUT/by_m.csv             mean ± sd over seeds per group and m, Wilson interval of proportions
    OUT/points.csv           the fitted rows, with the Wilson interval of each proportion
    OUT/tables/<task>.csv|.tex   paper-shaped tables (Tables 3-7: Dataset, Gen. type,
                                 Setting, Baseline, β̂, α̂, R²)
    OUT/report/index.html    one file, figures embedded, readable offline; opens with the findings
    OUT/report/report.md     the same in Markdown, figures under report/figures/ (PNG, SVG)

An ``arm`` column appears in the tables only when the rows name arms. Significance marks (bold,
stars) come from adjusted p-values only.

When the study directory is given, the report also shows the resolved study config, the
realized mixtures and the pretraining loss curves, each only if present.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from codemix.analysis.arms import COMPARISON_KEYS, ArmComparisonResult, _compare_arms, combine_arms
from codemix.analysis.findings import TRANSFER_LANGUAGES, FindingsResult, _findings, _fmt_p, _num, unit_sentence
from codemix.analysis.inference import wilson_interval
from codemix.analysis.permutation import (
    CONTROL_DRAWS,
    MAX_CONTROL_DRAWS,
    STATISTICS,
    UNIT_KEYS,
    CodeEffectResult,
    _code_effect,
)
from codemix.analysis.plots import (
    loss_curve_figure,
    null_distribution_figures,
    regression_figures,
    save_figure,
    slope_kde_figure,
)
from codemix.analysis.regression import GROUP_KEYS, SIGNAL_KEYS, RegressionResult, _fit, _results_iv
from codemix.errors import ConfigError, DataError
from codemix.io import atomic_dir, atomic_write_text

__all__ = [
    "AnalysisResult",
    "StudyContext",
    "analyze",
    "cmd_analyze",
    "load_results",
    "load_study_context",
]

REGRESSION_COLUMNS = [*GROUP_KEYS, "beta", "alpha", "r2", "se_beta", "p_beta", "p_holm", "p_fdr", "ci_low",
                      "ci_high", "n", "se_alpha", "n_m", "n_dropped", "no_signal", "seed_sd", "snr",
                      "sign_stability", "min_detectable_slope", "proportion", "note"]
ALPHA = 0.05  # adjusted p below this is marked significant (bold, *)
N_BOOTSTRAP = 1000  # seed resamples behind each sign stability
_MAX_CONFIG_CHARS = 50_000
_MAX_SLUG_CHARS = 80  # file names stay far below the usual 255-byte limit
# Read as text from CSV, so that a task "01" stays "01" and an empty subtask stays empty, not NaN.
_TEXT_COLUMNS = ("study", "setting", "task", "subtask", "metric", "arm", "question_type")


@dataclass(frozen=True)
class StudyContext:
    """What a study directory adds to the report; every part may be absent."""

    config_text: str | None = None
    mixtures: pd.DataFrame | None = None
    loss_curves: dict[str, pd.DataFrame] = field(default_factory=dict)
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class AnalysisResult:
    """Everything :func:`analyze` computed and where it was written."""

    out_dir: Path
    regressions: RegressionResult
    permutation: CodeEffectResult
    findings: FindingsResult
    arms: ArmComparisonResult | None
    files: dict[str, Path]
    notes: tuple[str, ...]
    study: StudyContext | None = None


# --------------------------------------------------------------------------- loading


def load_results(path: str | Path) -> pd.DataFrame:
    """Read tidy result rows from a ``.csv`` or ``.parquet`` file (CSV name columns as text)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"results file {path} does not exist; expected a .csv or .parquet file of result rows. "
                        f"Check the path (a study writes its results under its out directory).")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            return pd.read_csv(path, dtype={c: "string" for c in _TEXT_COLUMNS})
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
    except (ValueError, OSError) as err:
        raise DataError(f"could not read results file {path}: {err}. Expected a valid {suffix[1:]} file; "
                        f"re-export the results.") from err
    raise DataError(f"results file {path} has suffix {suffix or '(none)'!r}; expected .csv or .parquet. "
                    f"Convert or rename the file.")


def _total_tokens(v) -> float | None:
    if isinstance(v, dict):
        vals = [_total_tokens(x) for x in v.values()]
        return float(sum(x for x in vals if x is not None))
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return float(v)
    return None


def _per_source(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k}: {x:,}" if isinstance(x, (int, float)) else f"{k}: {x}" for k, x in v.items())
    return ""


def load_study_context(study_dir: str | Path | None) -> StudyContext | None:
    """Collect the study's config, realized mixtures and loss curves, tolerating absence.

    - ``study_dir/config.yaml``: shown verbatim.
    - every ``mixture.json`` below ``study_dir``: one row of the mixture table (setting,
      m, baseline, target and realized tokens, realized m; per-source counts if given).
    - every ``log.jsonl`` below ``study_dir``: lines with ``step`` and ``loss`` (and, when
      present, ``kind == "train"``) form one loss curve, labelled by its directory.

    When ``study_dir/jobs`` exists (a codemix study), only complete jobs there are read, not
    jobs still running under ``work/``. Unreadable files are skipped with a note.
    """
    if study_dir is None:
        return None
    root = Path(study_dir)
    if not root.is_dir():
        return StudyContext(notes=(f"study directory {root} does not exist; study sections omitted.",))
    notes = []
    config_text = None
    cfg = root / "config.yaml"
    if cfg.is_file():
        config_text = cfg.read_text(errors="replace")
        if len(config_text) > _MAX_CONFIG_CHARS:
            config_text = config_text[:_MAX_CONFIG_CHARS] + "\n... (truncated)"

    search = root / "jobs" if (root / "jobs").is_dir() else root
    rows = []
    for path in sorted(search.rglob("mixture.json")):
        try:
            d = json.loads(path.read_text())
        except (ValueError, OSError) as err:
            notes.append(f"skipped {path.relative_to(root)}: {err}")
            continue
        if not isinstance(d, dict):
            notes.append(f"skipped {path.relative_to(root)}: not a JSON object")
            continue
        rows.append({
            "setting": d.get("setting"), "m": d.get("m"), "baseline": d.get("baseline"),
            "target_tokens": _total_tokens(d.get("target_tokens")), "tokens": _total_tokens(d.get("tokens")),
            "realized_m": d.get("realized_m"), "tokens_per_source": _per_source(d.get("tokens")),
            "path": str(path.parent.relative_to(root)),
        })
    mixtures = pd.DataFrame(rows) if rows else None
    if mixtures is not None:
        mixtures = mixtures.sort_values(["setting", "baseline", "m"], key=lambda s: s.astype(str),
                                        ignore_index=True)

    curves = {}
    logs = sorted(search.rglob("log.jsonl"))
    label_root = Path(os.path.commonpath([p.parent for p in logs])) if len(logs) > 1 else search
    for path in logs:
        points = []
        try:
            for line in path.read_text(errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if (isinstance(rec, dict) and rec.get("kind", "train") == "train"
                        and isinstance(rec.get("step"), (int, float)) and isinstance(rec.get("loss"), (int, float))):
                    points.append((rec["step"], rec["loss"]))
        except OSError as err:
            notes.append(f"skipped {path.relative_to(root)}: {err}")
            continue
        if points:
            label = str(path.parent.relative_to(label_root))
            label = str(path.parent.relative_to(root)) if label == "." else label
            curves[label] = pd.DataFrame(points, columns=["step", "loss"]).sort_values("step")
    return StudyContext(config_text=config_text, mixtures=mixtures, loss_curves=curves, notes=tuple(notes))


# --------------------------------------------------------------------------- formatting


def _fmt(x, digits: int = 3) -> str:
    if x is None or x is pd.NA or isinstance(x, str):
        return x if isinstance(x, str) else ""
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{x:,}" if abs(x) >= 10_000 else str(x)
    if not math.isfinite(x):
        return "∞" if x == math.inf else "—"
    if float(x).is_integer() and abs(x) >= 1000:  # token counts and the like
        return f"{x:,.0f}"
    if x != 0 and (abs(x) < 10 ** -(digits - 1) or abs(x) >= 1e5):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}f}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:_MAX_SLUG_CHARS] or "x"


def _unique_slugs(names: list[str]) -> dict[str, str]:
    """File-name-safe, distinct slugs (``a b`` and ``a_b`` would otherwise collide)."""
    out, used = {}, set()
    for name in names:
        slug, k = _slug(name), 1
        while slug.lower() in used:
            k += 1
            slug = f"{_slug(name)}-{k}"
        used.add(slug.lower())
        out[name] = slug
    return out


def _paper_table(reg: RegressionResult, task: str) -> pd.DataFrame:
    """Rows of the paper's Tables 3-7 for one task (β̂ marked * when its FDR-adjusted p < 0.05)."""
    t = reg.table[reg.table["task"] == task].sort_values(["arm", "subtask", "metric", "setting", "baseline"])
    sig = t["p_fdr"] < ALPHA
    arm = {"Arm": t["arm"]} if (reg.table["arm"] != "").any() else {}
    return pd.DataFrame({
        **arm, "Dataset": t["task"], "Gen. type": t["subtask"], "Metric": t["metric"], "Setting": t["setting"],
        "Baseline": np.where(t["baseline"], "yes", "no"),
        "β̂": [_fmt(b) + ("*" if s else "") for b, s in zip(t["beta"], sig, strict=True)],
        "α̂": [_fmt(a) for a in t["alpha"]], "R²": [_fmt(r) for r in t["r2"]],
        "p": [_fmt_p(p) for p in t["p_beta"]], "p (FDR)": [_fmt_p(p) for p in t["p_fdr"]],
        "SNR": [_fmt(x, 2) for x in t["snr"]], "sign stable": [_share(x) for x in t["sign_stability"]],
        "n": t["n"], "no signal": np.where(t["no_signal"], "yes", ""),
    })


def _share(x) -> str:
    return f"{x:.0%}" if x is not None and np.isfinite(x) else "—"


def _latex_escape(s: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(repl.get(ch, ch) for ch in str(s))


def _latex_table(table: pd.DataFrame, caption: str) -> str:
    header = {"β̂": r"$\hat\beta$", "α̂": r"$\hat\alpha$", "R²": r"$R^2$", "p": "$p$",
              "p (FDR)": r"$p_{\mathrm{FDR}}$"}
    cols = list(table.columns)
    n_text = cols.index("β̂") if "β̂" in cols else 5
    lines = [r"\begin{table}[t]", r"\centering",
             r"\begin{tabular}{" + "l" * n_text + "r" * (len(cols) - n_text) + "}",
             r"\toprule", " & ".join(header.get(c, _latex_escape(c)) for c in cols) + r" \\", r"\midrule"]
    for row in table.itertuples(index=False):
        cells = [_latex_escape(v).replace("*", "$^{*}$") if isinstance(v, str) else _latex_escape(_fmt(v))
                 for v in row]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + _latex_escape(caption) + "}",
              r"\end{table}", ""]
    return "\n".join(lines)


def _html_table(df: pd.DataFrame, *, p_cols: tuple[str, ...] = (), sig_cols: tuple[str, ...] = ()) -> str:
    """An HTML table; ``p_cols`` are formatted as p-values, ``sig_cols`` (adjusted ones) bold below 0.05."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for col, v in zip(df.columns, row, strict=True):
            text = _fmt_p(v) if col in p_cols else _fmt(v)
            cls = ' class="sig"' if col in sig_cols and isinstance(v, float) and v < ALPHA else ""
            cls = cls or (' class="num"' if isinstance(v, (int, float, np.number)) else "")
            cells.append(f"<td{cls}>{html.escape(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _md_table(df: pd.DataFrame, *, p_cols: tuple[str, ...] = ()) -> str:
    def cell(col, v):
        return (_fmt_p(v) if col in p_cols else _fmt(v)).replace("|", r"\|")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(c, v) for c, v in zip(df.columns, row, strict=True)) + " |"
              for row in df.itertuples(index=False)]
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:2em auto;max-width:1200px;
     padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:1.8em}
h3{margin-top:1.4em} .meta{color:#555} .notes{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em 1em}
table{border-collapse:collapse;font-size:.85em;margin:.6em 0} th,td{border:1px solid #ddd;padding:.25em .6em}
th{background:#f3f5f7;text-align:left} td.num{text-align:right;font-variant-numeric:tabular-nums}
td.sig{text-align:right;font-weight:bold;color:#b00020} img{max-width:100%;height:auto;border:1px solid #eee}
pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:.8em} .scroll{max-height:520px;overflow:auto}
.lede{color:#444;margin:.1em 0 .8em} .answer{background:#f2f7fd;border-left:4px solid #1f6fb2;padding:.4em 1em .5em;
     margin:.6em 0} .answer h2{border:0;margin:.2em 0;font-size:1.25em} .answer ul{margin:.3em 0;padding-left:1.2em}
.answer li{margin:.15em 0} .answer p{margin:.3em 0} .quiet{color:#666}
table.findings{font-size:.8em} table.findings td,table.findings th{padding:.15em .45em}
table.findings th.group{text-align:center;background:#e8eef5} td.none{color:#999} tr.silent td{color:#999}
td.up,td.down{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.sigcell{font-weight:bold} td.sigcell.down{color:#1a5fb4} td.sigcell.up{color:#b00020}
.two{display:flex;gap:2em;flex-wrap:wrap;align-items:flex-start} .two>div{flex:1 1 420px}
"""


# --------------------------------------------------------------------------- the report


def _analyze_iv(results, out_dir, permutations, seed, study_dir, control_draws):
    problems = []
    if isinstance(permutations, bool) or not isinstance(permutations, (int, np.integer)) or permutations < 1:
        problems.append(f"permutations must be a positive integer (10000 in the paper); found {permutations!r}")
    if (isinstance(control_draws, bool) or not isinstance(control_draws, (int, np.integer))
            or not 1 <= control_draws <= MAX_CONTROL_DRAWS):
        problems.append(f"control_draws must be an integer from 1 to {MAX_CONTROL_DRAWS} ({CONTROL_DRAWS} by "
                        f"default); found {control_draws!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer, np.random.Generator)):
        problems.append(f"seed must be an integer or numpy Generator; found {seed!r}")
    if not isinstance(out_dir, (str, Path)):
        problems.append(f"out_dir must be a path; found {type(out_dir).__name__}")
    elif Path(out_dir).exists() and not Path(out_dir).is_dir():
        problems.append(f"out_dir {out_dir} exists and is not a directory; choose another --out")
    if problems:
        raise ConfigError(problems, source="analyze")
    return Path(out_dir), int(permutations), np.random.default_rng(seed), (
        Path(study_dir) if study_dir is not None else None)


def _pooled_rows(rows: pd.DataFrame) -> tuple[pd.DataFrame, tuple[str, ...]]:
    """The rows the §5.1 permutation tests pool: one slope per task needs one metric per task.

    ``rows`` are validated (``primary`` is bool, false where the column was absent). When any
    row is marked ``primary`` (codemix's benchmarks mark each task's headline metric: BIG-bench's
    preferred score, exact match on COGS gen, pass@k at the smallest k) only primary rows are
    pooled. Otherwise the (task, subtask, metric) units whose values are all proportions in
    [0, 1] are: perplexity or bits-per-byte would dominate the pooled moments. Everything stays
    in the regressions either way; the report notes what was left out. The result may be empty.
    """
    keys = list(UNIT_KEYS)
    primary = rows["primary"].to_numpy(dtype=bool)
    if primary.any():
        n_out = len(rows.loc[~primary, keys].drop_duplicates())
        note = (f"the §5.1 permutation tests pool each task's primary metric only ({n_out} other task units "
                f"are in the regressions)")
        return rows.loc[primary], (note,) if n_out else ()
    in_unit = rows["_dropped"] | rows["value"].between(0.0, 1.0)
    ok = in_unit.groupby([rows[k] for k in keys], sort=False).transform("all").to_numpy(dtype=bool)
    dropped = rows.loc[~ok, keys].drop_duplicates()
    if dropped.empty:
        return rows, ()
    names = sorted({f"{t}/{m}" for t, m in zip(dropped["task"], dropped["metric"], strict=True)})
    shown = ", ".join(names[:8]) + (" …" if len(names) > 8 else "")
    note = (f"{len(dropped)} task units whose values are not proportions in [0, 1] ({shown}) are in the "
            f"regressions but not in the §5.1 permutation tests (their slopes are on another scale)")
    return rows.loc[ok], (note,)


def analyze(results: pd.DataFrame, out_dir: str | Path, *, permutations: int = 10_000, seed=0,
            study_dir: str | Path | None = None, control_draws: int = CONTROL_DRAWS) -> AnalysisResult:
    """Findings, regressions, §5.1 permutation tests, arm comparison, figures and report of result rows.

    Petty et al. 2024 (arXiv 2409.04556): per-group OLS of value on the code fraction m
    (Tables 3-7, Figs. 2, 5, 6) and permutation tests of treatment vs control slopes per
    setting and question type (§5.1, Figs. 7, 8); with adjusted p-values over each family, seed
    noise per group and units without signal set apart (issue 17). Input is validated before
    anything is written, and every file is written atomically.

    Parameters
    ----------
    results
        Tidy result rows: any table with the ten columns of
        :data:`codemix.evals.rows.RESULT_COLUMNS` (optional and extra columns allowed). With an
        ``arm`` column naming two or more arms, the arms are also compared (see
        :func:`codemix.analysis.arms.combine_arms` for several files).
    out_dir
        Output directory (created).
    permutations
        Re-partitions per permutation test (keyword-only).
    seed
        Seed (or ``numpy.random.Generator``) of the control shuffles, permutations and seed resamples.
    study_dir
        Optional study output directory for the config, mixture and loss-curve sections.
    control_draws
        Control draws per permutation test: the report gives the median p and its spread.
    """
    out, permutations, rng, study_path = _analyze_iv(results, out_dir, permutations, seed, study_dir,
                                                     control_draws)
    rows, row_notes = _results_iv(results)  # validated and normalized once for every step below
    reg = _fit(rows, row_notes, confidence_level=0.95, n_bootstrap=N_BOOTSTRAP, rng=rng)
    pooled, pool_notes = _pooled_rows(rows)
    effect = _code_effect(pooled, n_resamples=permutations, statistics=STATISTICS, rng=rng,
                          control_draws=int(control_draws))
    found = _findings(rows, confidence_level=0.95, n_bootstrap=N_BOOTSTRAP, rng=rng)
    arm_names = tuple(pd.unique(rows["arm"]))
    arms = _compare_arms(rows, arms=arm_names, confidence_level=0.95) if len(arm_names) > 1 else None
    study = load_study_context(study_path)
    notes = (*reg.notes, *effect.notes, *pool_notes, *(arms.notes if arms else ()),
             *(study.notes if study else ()))

    files: dict[str, Path] = {}
    out.mkdir(parents=True, exist_ok=True)
    frames = [("findings.csv", found.table), ("regressions.csv", reg.table[REGRESSION_COLUMNS]),
              ("permutation.csv", effect.table), ("slopes.csv", effect.slopes), ("by_m.csv", reg.by_m),
              ("points.csv", reg.points)]
    if len(found.transfer):
        frames.append(("transfer.csv", found.transfer))
    if arms is not None:
        frames.append(("arms.csv", arms.table))
    for name, frame in frames:
        atomic_write_text(out / name, _drop_empty_arm(frame).to_csv(index=False))
        files[name] = out / name
    for stale in ("transfer.csv", "arms.csv"):  # from an earlier run of another study into this directory
        if stale not in files and (out / stale).is_file():
            (out / stale).unlink()

    slugs = _unique_slugs(sorted(reg.table["task"].unique()))
    paper_tables = {task: _paper_table(reg, task) for task in slugs}
    # Directories are replaced whole, so files of an earlier run (a task since removed) do not linger.
    with atomic_dir(out / "tables", overwrite=True) as tmp:
        for task, table in paper_tables.items():
            (tmp / f"{slugs[task]}.csv").write_text(table.to_csv(index=False))
            metrics = ", ".join(table["Metric"].unique())
            (tmp / f"{slugs[task]}.tex").write_text(_latex_table(
                table, f"{task}: OLS of {metrics} on the code fraction m (* FDR-adjusted p of beta < 0.05)."))
    for slug in slugs.values():
        files[f"tables/{slug}.csv"] = out / "tables" / f"{slug}.csv"
        files[f"tables/{slug}.tex"] = out / "tables" / f"{slug}.tex"

    figures: dict[str, list[tuple[str, str, bytes]]] = {}  # section -> (title, relative png, bytes)
    stems: set[str] = set()
    with atomic_dir(out / "report", overwrite=True) as tmp:

        def add_figure(section: str, title: str, fig, stem: str) -> None:
            # Titles such as "a b · all" and "a_b · all" share a slug; neither may overwrite the other.
            base, k = stem, 1
            while stem.lower() in stems:
                k += 1
                stem = f"{base}-{k}"
            stems.add(stem.lower())
            png, _, data = save_figure(fig, tmp / "figures" / stem)
            figures.setdefault(section, []).append((title, str(png.relative_to(tmp)), data))

        for task, title, fig in regression_figures(reg):
            suffix = title[len(task):].replace("/", "of")
            stem = f"regression_{slugs[task]}" + (f"_{_slug(suffix)}" if suffix else "")
            add_figure(f"task:{task}", title, fig, stem)
        if effect.tests:
            add_figure("effect", "Treatment vs control slopes", slope_kde_figure(effect), "slopes_kde")
            for title, fig in null_distribution_figures(effect):
                add_figure("null", title, fig, f"null_{_slug(title)}")
        if study and study.loss_curves:
            add_figure("loss", "Pretraining loss", loss_curve_figure(study.loss_curves), "loss_curves")

        ctx = {"reg": reg, "effect": effect, "findings": found, "arms": arms, "study": study, "notes": notes,
               "figures": figures, "paper_tables": paper_tables, "name": _study_name(rows),
               "permutations": permutations, "control_draws": int(control_draws), "seed": seed}
        (tmp / "index.html").write_text(_render_html(ctx))
        (tmp / "report.md").write_text(_render_md(ctx))
    files["report/index.html"] = out / "report" / "index.html"
    files["report/report.md"] = out / "report" / "report.md"
    return AnalysisResult(out_dir=out, regressions=reg, permutation=effect, findings=found, arms=arms,
                          files=files, notes=notes, study=study)


def _drop_empty_arm(frame: pd.DataFrame) -> pd.DataFrame:
    """Tables name their arm first, and only when the rows name arms."""
    if "arm" not in frame.columns:
        return frame
    if (frame["arm"].astype(str) == "").all():
        return frame.drop(columns="arm")
    return frame[["arm", *[c for c in frame.columns if c != "arm"]]]


def _study_name(rows: pd.DataFrame) -> str:
    studies = list(pd.unique(rows["study"]))
    arms = [a for a in pd.unique(rows["arm"]) if a]
    if len(studies) == 1:
        return str(studies[0]) + (f" (arms: {', '.join(arms)})" if len(arms) > 1 else "")
    return " vs ".join(map(str, studies))


def _overview(ctx) -> list[tuple[str, str]]:
    reg = ctx["reg"]
    pts = reg.points
    ms = ", ".join(_fmt(m, 2) for m in sorted(pts["m"].unique()))
    units = reg.table[list(SIGNAL_KEYS)].drop_duplicates()
    silent = reg.table.loc[reg.table["no_signal"], list(SIGNAL_KEYS)].drop_duplicates()
    arms = [a for a in pd.unique(pts["arm"]) if a]
    return [("study", ctx["name"]), *([("arms", ", ".join(arms))] if arms else []),
            ("result rows used", f"{len(pts):,}"), ("tasks", str(pts["task"].nunique())),
            ("groups (task × subtask × metric × setting × baseline)", str(len(reg.table))),
            ("units without signal", f"{len(silent)} of {len(units)}"),
            ("settings", ", ".join(sorted(pts["setting"].unique()))), ("values of m", ms),
            ("seeds", str(pts["seed"].nunique())),
            ("permutation tests", (f"{ctx['permutations']:,} re-partitions each, {ctx['control_draws']} control "
                                  f"draws, seed {ctx['seed']}"))]


def _perm_display(effect: CodeEffectResult) -> pd.DataFrame:
    t = effect.table
    arm = {"arm": t["arm"]} if (t["arm"] != "").any() else {}
    iqr = [f"{_fmt_p(a)}–{_fmt_p(b)}" for a, b in zip(t["p_q25"], t["p_q75"], strict=True)]
    return pd.DataFrame({**arm, "setting": t["setting"], "question type": t["question_type"],
                         "statistic": t["statistic"], "observed Δ": t["observed"], "p (median)": t["p_value"],
                         "p IQR over draws": iqr, "p (Holm)": t["p_holm"], "p (FDR)": t["p_fdr"],
                         "tasks": t["n_tasks"], "permutations": t["n_permutations"],
                         "control draws": t["control_draws"]})


_PERM_P = ("p (median)", "p (Holm)", "p (FDR)")
_PERM_SIG = ("p (Holm)", "p (FDR)")


def _silent_units(reg: RegressionResult) -> pd.DataFrame:
    """Units without signal: one row each, with their value and, for proportions, the Wilson interval."""
    t = reg.table.loc[reg.table["no_signal"]]
    if t.empty:
        return pd.DataFrame()
    keys = list(SIGNAL_KEYS)
    units = t.groupby(keys, sort=True).agg(value=("alpha", "first"), proportion=("proportion", "first")).reset_index()
    items = reg.points.groupby(keys, sort=True)["n"].min().rename("items per model").reset_index()
    units = units.merge(items, on=keys, how="left")
    lo, hi = wilson_interval(units["value"], units["items per model"])
    units["95% Wilson interval"] = [f"{_num(a)}–{_num(b)}" if p and np.isfinite(a) else ""
                                    for a, b, p in zip(lo, hi, units["proportion"], strict=True)]
    units = units.drop(columns="proportion")
    return units if (units["arm"] != "").any() else units.drop(columns="arm")


def _img(data: bytes, title: str) -> str:
    return (f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,'
            f'{base64.b64encode(data).decode()}"></figure>')


def _settings_order(settings) -> list[str]:
    known = [s for s in ("competitive", "additive") if s in set(settings)]
    return known + sorted(s for s in set(settings) if s not in known)


def _significant(t: pd.DataFrame) -> np.ndarray:
    return ((t["p_fdr"] < ALPHA) & ~t["no_signal"]).to_numpy(dtype=bool)


def _ordered_findings(t: pd.DataFrame) -> pd.DataFrame:
    """Findings in reading order: arm, units with signal before those without, task, subtask, setting."""
    if t.empty:
        return t
    rank = {s: i for i, s in enumerate(_settings_order(t["setting"]))}
    task_rank = {k: i for i, k in enumerate(pd.unique(t["task"]))}
    arm_rank = {k: i for i, k in enumerate(pd.unique(t["arm"]))}
    return (t.assign(_a=t["arm"].map(arm_rank), _t=t["task"].map(task_rank), _s=t["setting"].map(rank))
            .sort_values(["_a", "no_signal", "_t", "subtask", "metric", "_s"], kind="stable")
            .drop(columns=["_a", "_t", "_s"]))


def _answer_html(ctx) -> str:
    """The first thing a reader sees: what changed with m, in sentences, and what could not be told."""
    t = _ordered_findings(ctx["findings"].table)
    h = ["<div class='answer'><h2>What changed with m</h2>"]
    if t.empty:
        h.append("<p>No headline metric has rows outside the language-only baselines; nothing to report.</p></div>")
        return "".join(h)
    arms = ctx["findings"].arms
    if arms is not None and len(arms.table):
        a = arms.table.loc[~arms.table["baseline"]]
        differ = a.loc[a["p_fdr"] < ALPHA].sort_values("p_fdr")
        if len(differ):
            h.append("<p><b>Between arms</b> (m × arm interaction, FDR-adjusted p &lt; 0.05):</p><ul>"
                     + "".join(f"<li>{html.escape(x)}</li>" for x in differ["sentence"].head(6)) + "</ul>")
            if len(differ) > 6:
                h.append(f"<p class='quiet'>… and {len(differ) - 6} more below.</p>")
        else:
            h.append(f"<p><b>Between arms:</b> no headline slope differs detectably (m × arm interaction, smallest "
                     f"FDR-adjusted p = {_fmt_p(a['p_fdr'].min())}).</p>")
        h.append("<p><b>Within each arm:</b></p>")
    sig = _significant(t)
    if sig.any():
        units = list(t.loc[sig].groupby(["arm", "task", "subtask", "metric"], sort=False))
        h.append("<ul>" + "".join(f"<li>{html.escape(unit_sentence(g))}</li>" for _, g in units[:8]) + "</ul>")
        if len(units) > 8:
            h.append(f"<p class='quiet'>… and {len(units) - 8} more units with significant findings below.</p>")
    else:
        best = t.loc[~t["no_signal"], "p_fdr"].min()
        h.append(f"<p><b>No headline metric changed with m</b> after correcting for {len(t)} findings "
                 f"(smallest FDR-adjusted p = {_fmt_p(best)}).</p>")

    n_arms = t["arm"].nunique()
    n_settings = t["setting"].nunique()

    def listing(mask) -> str:
        """Units named once each: the arms and settings they hold in, when not all of them."""
        parts = []
        for _, g in t.loc[mask].groupby(["task", "subtask", "metric"], sort=False):
            arms = list(pd.unique(g["arm"]))
            settings = list(pd.unique(g["setting"]))
            where = "" if len(settings) == n_settings and n_settings > 1 else f" ({', '.join(settings)})"
            who = f"[{', '.join(arms)}] " if arms[0] and len(arms) < n_arms else ""
            parts.append(html.escape(f"{who}{g['subject'].iloc[0]}{where}"))
        return "; ".join(parts)

    quiet = ~sig & ~t["no_signal"].to_numpy(dtype=bool)
    if quiet.any():
        h.append(f"<p><b>No change detected</b> (FDR-adjusted p ≥ {ALPHA}): {listing(quiet)}.</p>")
    silent = t["no_signal"].to_numpy(dtype=bool)
    if silent.any():
        h.append(f"<p><b>No signal</b> (one value at every m and seed, so no test is possible): "
                 f"{listing(silent)}.</p>")
    effect = ctx["effect"].table
    mean = effect.loc[(effect["statistic"] == "mean") & (effect["question_type"] == "all")]
    if not len(effect):
        h.append("<p class='quiet'>All task slopes vs shuffled-m controls (§5.1): not tested; no setting has two "
                 "or more task units with signal (see the notes under Details).</p>")
    if len(mean):
        parts = [f"{html.escape((r.arm + ' ') if r.arm else '')}{html.escape(r.setting)}: Δmean = {_num(r.observed)}, "
                 f"median p = {_fmt_p(r.p_value)} (IQR {_fmt_p(r.p_q25)}–{_fmt_p(r.p_q75)}), "
                 f"FDR-adjusted {_fmt_p(r.p_fdr)}" for r in mean.itertuples(index=False)]
        h.append(f"<p class='quiet'>All task slopes vs shuffled-m controls (§5.1, over {ctx['control_draws']} "
                 f"control draws): {'; '.join(parts)}.</p>")
    h.append("</div>")
    return "".join(h)


def _ci_cell(beta, lo, hi, p, *, silent=False, flat=None) -> str:
    if silent:
        return "<td class='none' colspan='1'>no signal</td>"
    if flat is not None:
        return f"<td class='none'>all {html.escape(_num(flat))}</td>"
    if not np.isfinite(beta):
        return "<td class='none'>—</td>"
    cls = ("up" if beta > 0 else "down") + (" sigcell" if np.isfinite(p) and p < ALPHA else "")
    ci = f" [{_num(lo)}, {_num(hi)}]" if np.isfinite(lo) else ""
    return f"<td class='{cls}'>{html.escape(_num(beta) + ci)}</td>"


def _findings_html(t: pd.DataFrame) -> str:
    """Findings with the settings side by side: β̂ [CI], FDR p, SNR, sign stability, detectable |β|."""
    settings = _settings_order(t["setting"])
    with_arm = (t["arm"] != "").any()
    label = (["arm"] if with_arm else []) + ["headline metric"]
    per = ["β̂ [95% CI]", "p FDR", "SNR", "sign stable", "detect. |β|"]
    head = ("<tr>" + "".join(f"<th rowspan='2'>{c}</th>" for c in label)
            + "".join(f"<th class='group' colspan='{len(per)}'>{html.escape(s)}</th>" for s in settings) + "</tr>"
            + "<tr>" + "".join(f"<th>{c}</th>" for _ in settings for c in per) + "</tr>")
    body = []
    keys = ["arm", "task", "subtask", "metric"]
    ordered = _ordered_findings(t)
    silent_units = ordered.loc[ordered["no_signal"]].drop_duplicates(keys)
    for key, g in ordered.loc[~ordered["no_signal"]].groupby(keys, sort=False):
        by = g.set_index("setting")
        silent = False
        cells = ([f"<td>{html.escape(key[0])}</td>"] if with_arm else []) + [
            f"<td>{html.escape(g['subject'].iloc[0])}</td>"]
        for setting in settings:
            if setting not in by.index:
                cells.append(f"<td class='none' colspan='{len(per)}'></td>")
                continue
            r = by.loc[setting]
            if silent:
                cells.append(f"<td class='none' colspan='{len(per)}'>no signal: {html.escape(_num(r['_value']))} "
                             f"at every m and seed</td>")
                continue
            flat = r["_value"] if r["_flat"] else None
            p_cls = " class='sig'" if np.isfinite(r["p_fdr"]) and r["p_fdr"] < ALPHA else " class='num'"
            detectable = "—" if flat is not None else _num(r["min_detectable_slope"])
            cells += [_ci_cell(r["beta"], r["ci_low"], r["ci_high"], r["p_fdr"], flat=flat),
                      f"<td{p_cls}>{html.escape(_fmt_p(r['p_fdr']))}</td>",
                      f"<td class='num'>{html.escape(_fmt(r['snr'], 2))}</td>",
                      f"<td class='num'>{html.escape(_share(r['sign_stability']))}</td>",
                      f"<td class='num'>{html.escape(detectable)}</td>"]
        body.append("<tr>" + "".join(cells) + "</tr>")
    if len(silent_units):  # one row: they are listed, with their value, in the answer above
        names = "; ".join(f"[{a}] {x}" if a else x for a, x in zip(silent_units["arm"], silent_units["subject"],
                                                                      strict=True))
        body.append(f"<tr class='silent'><td colspan='{len(label) + len(per) * len(settings)}'>"
                    f"{len(silent_units)} without signal (one value at every m and seed): {html.escape(names)}</td></tr>")
    return f"<table class='findings'><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"


def _findings_for_display(found: FindingsResult) -> pd.DataFrame:
    """The findings table with each row's group value (``_value``, ``_flat``) for the renderers."""
    t = found.table
    if t.empty or found.regressions is None:
        return t.assign(_value=[], _flat=[])
    pts = found.regressions.points
    span = pts.groupby(["arm", "task", "subtask", "metric", "setting"], sort=False)["value"].agg(["min", "max"])
    span = span.reset_index().rename(columns={"min": "_value"})
    span["_flat"] = span["_value"] == span["max"]
    return t.merge(span.drop(columns="max"), on=["arm", "task", "subtask", "metric", "setting"], how="left")


def _transfer_display(transfer: pd.DataFrame) -> pd.DataFrame:
    """Python, Rust and Go slopes side by side as text cells, for the report."""
    rank = {s: i for i, s in enumerate(_settings_order(transfer["setting"]))}
    silent = transfer[[f"{lang.lower()}_no_signal" for lang in TRANSFER_LANGUAGES]].eq(True).all(axis=1)
    transfer = (transfer.assign(_s=transfer["setting"].map(rank), _silent=silent)
                .sort_values(["arm", "_silent", "task", "family", "metric", "_s"], kind="stable")
                .drop(columns=["_s", "_silent"]))
    cols = {"benchmark": transfer["task"] + np.where(transfer["family"] != "", " " + transfer["family"], ""),
            "metric": transfer["metric"], "setting": transfer["setting"]}
    if (transfer["arm"] != "").any():
        cols = {"arm": transfer["arm"], **cols}
    out = pd.DataFrame(cols)
    for language in TRANSFER_LANGUAGES:
        key = language.lower()
        cells = []
        for b, lo, hi, p, silent in zip(transfer[f"{key}_beta"], transfer[f"{key}_ci_low"],
                                        transfer[f"{key}_ci_high"], transfer[f"{key}_p_fdr"],
                                        transfer[f"{key}_no_signal"], strict=True):
            if silent is True:
                cells.append("no signal")
            elif not np.isfinite(b):
                cells.append("—")
            else:
                star = "*" if np.isfinite(p) and p < ALPHA else ""
                ci = f" [{_num(lo)}, {_num(hi)}]" if np.isfinite(lo) else ""
                cells.append(f"{_num(b)}{ci}{star}")
        out[language] = cells
    return out


def _transfer_html(transfer: pd.DataFrame) -> str:
    d = _transfer_display(transfer)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in d.columns)
    body = []
    for row in d.itertuples(index=False):
        cells = []
        for col, v in zip(d.columns, row, strict=True):
            if col in TRANSFER_LANGUAGES:
                cls = "none" if v in ("no signal", "—") else (
                    ("down" if v.startswith("−") else "up") + (" sigcell" if v.endswith("*") else ""))
                cells.append(f"<td class='{cls}'>{html.escape(v.rstrip('*'))}</td>")
            else:
                cells.append(f"<td>{html.escape(str(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table class='findings'><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _arms_display(t: pd.DataFrame) -> pd.DataFrame:
    """Rows of an arm comparison (:attr:`ArmComparisonResult.table`) for the report."""
    if "subject" in t.columns:  # headline metrics, named as in their sentences
        what = {"headline metric": t["subject"], "setting": t["setting"]}
    else:
        what = {"benchmark": t["task"], "subtask": t["subtask"], "metric": t["metric"], "setting": t["setting"],
                "baseline": np.where(t["baseline"], "yes", "no")}
    return pd.DataFrame({
        **what, "reference": t["reference"], "arm": t["arm"],
        "β̂ reference": [_num(x) for x in t["beta_reference"]], "β̂ arm": [_num(x) for x in t["beta_arm"]],
        "Δ [95% CI]": [f"{_num(d)} [{_num(lo)}, {_num(hi)}]" if np.isfinite(lo) else _num(d)
                       for d, lo, hi in zip(t["diff"], t["ci_low"], t["ci_high"], strict=True)],
        "p (m × arm)": t["p_interaction"], "p (FDR)": t["p_fdr"]})


def _render_html(ctx) -> str:
    reg, effect, study, figures = ctx["reg"], ctx["effect"], ctx["study"], ctx["figures"]
    found = ctx["findings"]
    pts = reg.points
    seeds = pts.groupby(["arm", "setting", "baseline", "m"])["seed"].nunique()
    seeds_text = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
    seeds_text += " seed" if seeds.max() == 1 else " seeds"
    ms = ", ".join(_fmt(m, 2) for m in sorted(pts["m"].unique()))
    lede = (f"How the code fraction <i>m</i> of the pretraining mixture changed each ability · {seeds_text} "
            f"per model · m ∈ {{{html.escape(ms)}}} · "
            f"{html.escape(', '.join(_settings_order(pts['setting'])))} · significance from adjusted p only")
    h = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
         f"<title>codemix analysis: {html.escape(ctx['name'])}</title><style>{_CSS}</style></head><body>",
         f"<h1>Code in pretraining: {html.escape(ctx['name'])}</h1>", f"<p class='lede'>{lede}</p>",
         _answer_html(ctx)]
    if found.arms is not None and len(found.arms.table):
        h.append("<h3>Arms side by side (headline metrics)</h3>")
        h.append("<p class='quiet'>Slope of each arm, their difference with its 95% CI, and the test of the "
                 "m × arm interaction (one residual variance for all arms); bold: FDR-adjusted p &lt; 0.05 over the "
                 "findings. Every unit: <code>../arms.csv</code>.</p>")
        shown_arms = found.arms.table.loc[~found.arms.table["no_signal"] & ~found.arms.table["baseline"]]
        h.append(_html_table(_arms_display(shown_arms), p_cols=("p (m × arm)", "p (FDR)"), sig_cols=("p (FDR)",)))
    shown = _findings_for_display(found)
    if len(shown):
        h.append("<h3>Findings: each benchmark's headline metric</h3>")
        h.append(_findings_html(shown))
    if len(found.transfer):
        h.append("<h3>Transfer: Python, Rust and Go slopes side by side</h3>")
        h.append(_transfer_html(found.transfer))
    if len(shown):
        h.append("<p class='quiet'>β̂: change per unit of m; bold: FDR-adjusted p &lt; 0.05 over the findings "
                 "(Benjamini–Hochberg; Holm in <code>../findings.csv</code>), blue falls, red rises. SNR: spread of "
                 "the per-m means over the mean seed sd (AI2, <i>Signal and Noise</i>, 2025). Sign stable: share of "
                 "bootstrap resamples of the seeds that keep the sign of β̂. Detect. |β|: smallest slope found 80% "
                 "of the time at α = 0.05 with these seeds.</p>")
        h.append("<details><summary>Every finding in words</summary><ul>"
                 + "".join(f"<li>{html.escape(x)}</li>" for x in _ordered_findings(found.table)["sentence"])
                 + "</ul></details>")
    h.append("<h2>Details</h2>")
    h.append("<p class='meta'>Method: OLS of each metric on <i>m</i> per group and permutation tests of task slopes "
             "(Petty, van Steenkiste &amp; Linzen 2024, arXiv 2409.04556, §4.2, §5.1); Holm and Benjamini–Hochberg "
             "adjusted p-values per family (findings, regressions, permutation tests, arm comparisons); seed noise "
             "after Heineman et al., <i>Signal and Noise</i> (AI2, 2025).</p>")
    h.append("<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                                 for k, v in _overview(ctx)) + "</table>")
    if ctx["notes"]:
        h.append("<div class='notes'><b>Notes</b><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in ctx["notes"])
                 + "</ul></div>")
    arms = ctx["arms"]
    if arms is not None and len(arms.table):
        sig = arms.table["p_fdr"] < ALPHA
        h.append(f"<h2>Arms: every unit</h2><p>{int(sig.sum())} of {int((~arms.table.duplicated(list(COMPARISON_KEYS))).sum())} "
                 f"compared units have an m × arm interaction with FDR-adjusted p &lt; 0.05.</p>")
        h.append("<div class='scroll'>" + _html_table(_arms_display(arms.table), p_cols=("p (m × arm)", "p (FDR)"),
                                                      sig_cols=("p (FDR)",)) + "</div>")

    h.append("<h2>Does code change task performance? (§5.1)</h2>")
    h.append(f"<p>Treatment slopes: one slope of value on m per task. Control slopes: the same after shuffling "
             f"m within each task, drawn {ctx['control_draws']} times; each draw is tested against the same "
             f"re-partitions, and the table gives the median draw's p and the interquartile range of p over draws. "
             f"Units without signal are left out. Bold: Holm / FDR-adjusted p &lt; 0.05 over every test.</p>")
    if len(effect.table):
        h.append(_html_table(_perm_display(effect), p_cols=_PERM_P, sig_cols=_PERM_SIG))
    else:
        h.append("<p><i>No setting has two or more tasks with a slope; no test was run.</i></p>")
    for title, _, data in figures.get("effect", []) + figures.get("null", []):
        h.append(f"<h3>{html.escape(title)}</h3>{_img(data, title)}")

    h.append("<h2>Regressions on the code fraction m</h2>")
    h.append("<p>β̂: change in the metric from m = 0 to m = 1 (per unit of m); * when its FDR-adjusted p "
              "(Benjamini–Hochberg over every regression of the study) is below 0.05. Points: seeds; markers: "
              "mean ± sd over seeds; dashed grey: language-only baselines.</p>")
    for task, table in ctx["paper_tables"].items():
        h.append(f"<h3>{html.escape(task)}</h3><div class='scroll'>{_html_table(table)}</div>")
        for title, _, data in figures.get(f"task:{task}", []):
            h.append(_img(data, title))

    silent = _silent_units(reg)
    if len(silent):
        h.append(f"<h2>Units without signal ({len(silent)})</h2>")
        h.append("<p>One value at every m, seed and setting: no slope can be tested, so these units are flagged "
                 "<code>no_signal</code>, left out of the adjusted p-values and of the §5.1 tests. For proportions, "
                 "the Wilson interval says what that value is compatible with on the items each model saw.</p>")
        h.append("<div class='scroll'>" + _html_table(silent) + "</div>")

    if study is not None:
        h.append("<h2>Study</h2>")
        if study.mixtures is not None:
            h.append("<h3>Realized mixtures</h3>" + _html_table(study.mixtures))
        for title, _, data in figures.get("loss", []):
            h.append(f"<h3>{html.escape(title)}</h3>{_img(data, title)}")
        if study.config_text is not None:
            h.append(f"<h3>Resolved study config</h3><pre>{html.escape(study.config_text)}</pre>")
        if study.mixtures is None and not study.loss_curves and study.config_text is None:
            h.append("<p><i>The study directory holds no config.yaml, mixture.json or log.jsonl.</i></p>")
    h.append("<p class='meta'>Generated by <code>codemix analyze</code>. Tables as CSV/LaTeX: "
             "<code>../tables/</code>; figures as PNG/SVG: <code>figures/</code>.</p></body></html>")
    return "\n".join(h)


def _findings_md(t: pd.DataFrame) -> pd.DataFrame:
    t = _ordered_findings(t)
    arm = {"arm": t["arm"]} if (t["arm"] != "").any() else {}
    return pd.DataFrame({
        **arm, "benchmark": t["task"], "subtask": t["subtask"], "metric": t["metric"], "setting": t["setting"],
        "β̂ [95% CI]": [f"{_num(b)} [{_num(lo)}, {_num(hi)}]" if np.isfinite(lo) else _num(b)
                       for b, lo, hi in zip(t["beta"], t["ci_low"], t["ci_high"], strict=True)],
        "p (FDR)": t["p_fdr"], "p (Holm)": t["p_holm"], "SNR": t["snr"],
        "sign stable": [_share(x) for x in t["sign_stability"]],
        "detectable |β|": [_num(x) for x in t["min_detectable_slope"]], "finding": t["sentence"]})


def _render_md(ctx) -> str:
    reg, effect, study, figures = ctx["reg"], ctx["effect"], ctx["study"], ctx["figures"]
    found = ctx["findings"]
    md = [f"# Code in pretraining: {ctx['name']}", "",
          ("OLS of each metric on the code fraction m and permutation tests of task slopes "
          "(Petty, van Steenkiste & Linzen 2024, arXiv 2409.04556, §4.2, §5.1); significance from adjusted "
           "p-values only."), "", "## What changed with m", ""]
    t = _ordered_findings(found.table)
    sig = _significant(t) if len(t) else np.zeros(0, bool)
    md += [f"- {unit_sentence(g)}" for _, g in t.loc[sig].groupby(["arm", "task", "subtask", "metric"], sort=False)] \
        or ["- No headline metric changed with m (FDR-adjusted p ≥ 0.05)."]
    md += [""]
    if len(t):
        md += ["### Findings", "", _md_table(_findings_md(found.table), p_cols=("p (FDR)", "p (Holm)")), ""]
    if len(found.transfer):
        md += ["### Transfer: Python, Rust and Go", "", "(* FDR-adjusted p < 0.05)", "",
               _md_table(_transfer_display(found.transfer)), ""]
    if found.arms is not None and len(found.arms.table):
        md += ["### Arms side by side", "", *[f"- {x}" for x in found.arms.table.loc[
            found.arms.table["p_fdr"] < ALPHA, "sentence"]], "",
               _md_table(_arms_display(found.arms.table), p_cols=("p (m × arm)", "p (FDR)")), ""]
    md += ["## Details", ""] + [f"- **{k}**: {v}" for k, v in _overview(ctx)] + [""]
    if ctx["notes"]:
        md += ["## Notes", "", *[f"- {n}" for n in ctx["notes"]], ""]
    md += ["## Does code change task performance? (§5.1)", ""]
    md += [_md_table(_perm_display(effect), p_cols=_PERM_P) if len(effect.table) else "_No test was run._", ""]
    md += [f"![{t}]({p})" for t, p, _ in figures.get("effect", []) + figures.get("null", [])] + [""]
    md += ["## Regressions on the code fraction m", "", "β̂ marked * when its FDR-adjusted p is below 0.05.", ""]
    for task, table in ctx["paper_tables"].items():
        md += [f"### {task}", "", _md_table(table), ""]
        md += [f"![{t}]({p})" for t, p, _ in figures.get(f"task:{task}", [])] + [""]
    silent = _silent_units(reg)
    if len(silent):
        md += [f"## Units without signal ({len(silent)})", "", _md_table(silent), ""]
    if study is not None:
        md += ["## Study", ""]
        if study.mixtures is not None:
            md += ["### Realized mixtures", "", _md_table(study.mixtures), ""]
        md += [f"![{t}]({p})" for t, p, _ in figures.get("loss", [])] + [""]
        if study.config_text is not None:
            md += ["### Resolved study config", "", "```yaml", study.config_text.rstrip(), "```", ""]
    return "\n".join(md)


def cmd_analyze(args: argparse.Namespace) -> int:
    """``codemix analyze RESULTS... --out DIR [--permutations N] [--control-draws R] [--seed S] [--study-dir D]``.

    Several results files are compared as arms (:func:`codemix.analysis.arms.combine_arms`).
    """
    paths = [args.results] if isinstance(args.results, (str, Path)) else list(args.results)
    results = combine_arms([(path, load_results(path)) for path in paths])
    res = analyze(results, Path(args.out), permutations=args.permutations, seed=args.seed,
                  study_dir=getattr(args, "study_dir", None),
                  control_draws=getattr(args, "control_draws", None) or CONTROL_DRAWS)
    for note in res.notes:
        print(f"note: {note}")
    reg, perm, found = res.regressions.table, res.permutation.table, res.findings.table
    print(f"{len(found)} findings ({int(_significant(found).sum()) if len(found) else 0} with FDR-adjusted p < {ALPHA}), "
          f"{len(reg)} regressions ({int((reg['p_fdr'] < ALPHA).sum())} with FDR-adjusted p < {ALPHA}, "
          f"{int(reg['no_signal'].sum())} without signal), {len(perm)} permutation tests "
          f"({int((perm['p_fdr'] < ALPHA).sum())} with FDR-adjusted p < {ALPHA})")
    if res.arms is not None:
        arms = res.arms.table
        print(f"{len(arms)} arm comparisons ({int((arms['p_fdr'] < ALPHA).sum())} with an m × arm interaction at "
              f"FDR-adjusted p < {ALPHA})")
    for name in ("findings.csv", "regressions.csv", "permutation.csv", "arms.csv", "report/index.html"):
        if name in res.files:
            print(f"wrote {res.files[name]}")
    return 0
