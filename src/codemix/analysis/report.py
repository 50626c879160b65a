"""From tidy result rows to an answer: tables, figures and a self-contained report.

:func:`analyze` runs the regressions (:mod:`codemix.analysis.regression`), the §5.1
permutation tests (:mod:`codemix.analysis.permutation`) and the figures
(:mod:`codemix.analysis.plots`) of Petty et al. 2024 (arXiv 2409.04556), and writes::

    OUT/regressions.csv      one OLS fit per (task, subtask, metric, setting, baseline)
    OUT/permutation.csv      Δ statistics of treatment vs control slopes, with p-values
    OUT/slopes.csv           treatment and control slope per setting × task
    OUT/by_m.csv             mean ± sd over seeds per group and m
    OUT/tables/<task>.csv|.tex   paper-shaped tables (Tables 3-7: Dataset, Gen. type,
                                 Setting, Baseline, β̂, α̂, R²)
    OUT/report/index.html    one file, figures embedded, readable offline
    OUT/report/report.md     the same in Markdown, figures under report/figures/ (PNG, SVG)

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

from codemix.analysis.permutation import STATISTICS, UNIT_KEYS, CodeEffectResult, _code_effect
from codemix.analysis.plots import (
    loss_curve_figure,
    null_distribution_figures,
    regression_figures,
    save_figure,
    slope_kde_figure,
)
from codemix.analysis.regression import GROUP_KEYS, RegressionResult, _fit, _results_iv
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

REGRESSION_COLUMNS = [*GROUP_KEYS, "beta", "alpha", "r2", "se_beta", "p_beta", "ci_low", "ci_high", "n",
                      "se_alpha", "n_m", "n_dropped", "note"]
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
        return "—"
    if float(x).is_integer() and abs(x) >= 1000:  # token counts and the like
        return f"{x:,.0f}"
    if x != 0 and (abs(x) < 10 ** -(digits - 1) or abs(x) >= 1e5):
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}f}"


def _fmt_p(p) -> str:
    if p is None or not math.isfinite(p):
        return "—"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.3g}"  # 3 significant digits: 0.0498 is not "0.050"


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
    """Rows of the paper's Tables 3-7 for one task (β̂ marked * when its CI excludes 0)."""
    t = reg.table[reg.table["task"] == task].sort_values(["subtask", "metric", "setting", "baseline"])
    sig = (t["ci_low"] > 0) | (t["ci_high"] < 0)
    return pd.DataFrame({
        "Dataset": t["task"], "Gen. type": t["subtask"], "Metric": t["metric"], "Setting": t["setting"],
        "Baseline": np.where(t["baseline"], "yes", "no"),
        "β̂": [_fmt(b) + ("*" if s else "") for b, s in zip(t["beta"], sig, strict=True)],
        "α̂": [_fmt(a) for a in t["alpha"]], "R²": [_fmt(r) for r in t["r2"]],
        "p": [_fmt_p(p) for p in t["p_beta"]], "n": t["n"],
    })


def _latex_escape(s: str) -> str:
    repl = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
            "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}
    return "".join(repl.get(ch, ch) for ch in str(s))


def _latex_table(table: pd.DataFrame, caption: str) -> str:
    header = {"β̂": r"$\hat\beta$", "α̂": r"$\hat\alpha$", "R²": r"$R^2$", "p": "$p$"}
    cols = list(table.columns)
    lines = [r"\begin{table}[t]", r"\centering", r"\begin{tabular}{" + "l" * 5 + "r" * (len(cols) - 5) + "}",
             r"\toprule", " & ".join(header.get(c, _latex_escape(c)) for c in cols) + r" \\", r"\midrule"]
    for row in table.itertuples(index=False):
        cells = [_latex_escape(v).replace("*", "$^{*}$") if isinstance(v, str) else _latex_escape(_fmt(v))
                 for v in row]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\caption{" + _latex_escape(caption) + "}",
              r"\end{table}", ""]
    return "\n".join(lines)


def _html_table(df: pd.DataFrame, *, p_cols: tuple[str, ...] = ()) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    for row in df.itertuples(index=False):
        cells = []
        for col, v in zip(df.columns, row, strict=True):
            text = _fmt_p(v) if col in p_cols else _fmt(v)
            cls = ' class="sig"' if col in p_cols and isinstance(v, float) and v < 0.05 else ""
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
"""


# --------------------------------------------------------------------------- the report


def _analyze_iv(results, out_dir, permutations, seed, study_dir):
    problems = []
    if isinstance(permutations, bool) or not isinstance(permutations, (int, np.integer)) or permutations < 1:
        problems.append(f"permutations must be a positive integer (10000 in the paper); found {permutations!r}")
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
            study_dir: str | Path | None = None) -> AnalysisResult:
    """Regressions, §5.1 permutation tests, figures and report for one study's result rows.

    Petty et al. 2024 (arXiv 2409.04556): per-group OLS of value on the code fraction m
    (Tables 3-7, Figs. 2, 5, 6) and permutation tests of treatment vs control slopes per
    setting and question type (§5.1, Figs. 7, 8). Input is validated before anything is
    written, and every file is written atomically.

    Parameters
    ----------
    results
        Tidy result rows: any table with the ten columns of
        :data:`codemix.evals.rows.RESULT_COLUMNS` (optional and extra columns allowed).
    out_dir
        Output directory (created).
    permutations
        Re-partitions per permutation test (keyword-only).
    seed
        Seed (or ``numpy.random.Generator``) of the control shuffles and permutations.
    study_dir
        Optional study output directory for the config, mixture and loss-curve sections.
    """
    out, permutations, rng, study_path = _analyze_iv(results, out_dir, permutations, seed, study_dir)
    rows, row_notes = _results_iv(results)  # validated and normalized once for every step below
    reg = _fit(rows, row_notes, confidence_level=0.95)
    pooled, pool_notes = _pooled_rows(rows)
    effect = _code_effect(pooled, n_resamples=permutations, statistics=STATISTICS, rng=rng)
    study = load_study_context(study_path)
    notes = (*reg.notes, *effect.notes, *pool_notes, *(study.notes if study else ()))

    files: dict[str, Path] = {}
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("regressions.csv", reg.table[REGRESSION_COLUMNS]), ("permutation.csv", effect.table),
                        ("slopes.csv", effect.slopes), ("by_m.csv", reg.by_m)):
        atomic_write_text(out / name, frame.to_csv(index=False))
        files[name] = out / name

    slugs = _unique_slugs(sorted(reg.table["task"].unique()))
    paper_tables = {task: _paper_table(reg, task) for task in slugs}
    # Directories are replaced whole, so files of an earlier run (a task since removed) do not linger.
    with atomic_dir(out / "tables", overwrite=True) as tmp:
        for task, table in paper_tables.items():
            (tmp / f"{slugs[task]}.csv").write_text(table.to_csv(index=False))
            metrics = ", ".join(table["Metric"].unique())
            (tmp / f"{slugs[task]}.tex").write_text(
                _latex_table(table, f"{task}: OLS of {metrics} on the code fraction m (* 95% CI of beta excludes 0)."))
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

        study_name = str(rows["study"].iloc[0])
        ctx = {"reg": reg, "effect": effect, "study": study, "notes": notes, "figures": figures,
               "paper_tables": paper_tables, "name": study_name, "permutations": permutations, "seed": seed}
        (tmp / "index.html").write_text(_render_html(ctx))
        (tmp / "report.md").write_text(_render_md(ctx))
    files["report/index.html"] = out / "report" / "index.html"
    files["report/report.md"] = out / "report" / "report.md"
    return AnalysisResult(out_dir=out, regressions=reg, permutation=effect, files=files, notes=notes,
                          study=study)


def _overview(ctx) -> list[tuple[str, str]]:
    pts = ctx["reg"].points
    ms = ", ".join(_fmt(m, 2) for m in sorted(pts["m"].unique()))
    return [("study", ctx["name"]), ("result rows used", f"{len(pts):,}"),
            ("tasks", str(pts["task"].nunique())),
            ("groups (task × subtask × metric × setting × baseline)", str(len(ctx["reg"].table))),
            ("settings", ", ".join(sorted(pts["setting"].unique()))), ("values of m", ms),
            ("seeds", str(pts["seed"].nunique())),
            ("permutation tests", f"{ctx['permutations']:,} re-partitions each, seed {ctx['seed']}")]


def _perm_display(effect: CodeEffectResult) -> pd.DataFrame:
    t = effect.table
    return pd.DataFrame({"setting": t["setting"], "question type": t["question_type"], "statistic": t["statistic"],
                         "observed Δ": t["observed"], "p": t["p_value"], "tasks": t["n_tasks"],
                         "permutations": t["n_permutations"]})


def _img(data: bytes, title: str) -> str:
    return (f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,'
            f'{base64.b64encode(data).decode()}"></figure>')


def _render_html(ctx) -> str:
    reg, effect, study, figures = ctx["reg"], ctx["effect"], ctx["study"], ctx["figures"]
    h = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
         f"<title>codemix analysis: {html.escape(ctx['name'])}</title><style>{_CSS}</style></head><body>",
         f"<h1>Code in pretraining: {html.escape(ctx['name'])}</h1>",
         ("<p class='meta'>How the code fraction <i>m</i> of the pretraining mixture changes each ability: "
         "OLS of each metric on <i>m</i> and permutation tests of task slopes (Petty, van Steenkiste &amp; "
         "Linzen 2024, arXiv 2409.04556, §4.2, §5.1).</p>"),
         "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                             for k, v in _overview(ctx)) + "</table>"]
    if ctx["notes"]:
        h.append("<div class='notes'><b>Notes</b><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in ctx["notes"])
                 + "</ul></div>")

    h.append("<h2>Does code change task performance? (§5.1)</h2>")
    h.append("<p>Treatment slopes: one slope of value on m per task. Control slopes: the same after shuffling "
             "m within each task. Two-sided permutation test of the difference (treatment − control) of each "
             "statistic; p &lt; 0.05 in bold red.</p>")
    if len(effect.table):
        h.append(_html_table(_perm_display(effect), p_cols=("p",)))
    else:
        h.append("<p><i>No setting has two or more tasks with a slope; no test was run.</i></p>")
    for title, _, data in figures.get("effect", []) + figures.get("null", []):
        h.append(f"<h3>{html.escape(title)}</h3>{_img(data, title)}")

    h.append("<h2>Regressions on the code fraction m</h2>")
    h.append("<p>β̂: change in the metric from m = 0 to m = 1 (per unit of m); * when its "
             f"{int(reg.confidence_level * 100)}% CI excludes 0. Points: seeds; markers: mean ± sd over seeds; "
             "dashed grey: language-only baselines.</p>")
    for task, table in ctx["paper_tables"].items():
        h.append(f"<h3>{html.escape(task)}</h3><div class='scroll'>{_html_table(table)}</div>")
        for title, _, data in figures.get(f"task:{task}", []):
            h.append(_img(data, title))

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


def _render_md(ctx) -> str:
    reg, effect, study, figures = ctx["reg"], ctx["effect"], ctx["study"], ctx["figures"]
    md = [f"# Code in pretraining: {ctx['name']}", "",
          ("OLS of each metric on the code fraction m and permutation tests of task slopes "
          "(Petty, van Steenkiste & Linzen 2024, arXiv 2409.04556, §4.2, §5.1)."), ""]
    md += [f"- **{k}**: {v}" for k, v in _overview(ctx)] + [""]
    if ctx["notes"]:
        md += ["## Notes", "", *[f"- {n}" for n in ctx["notes"]], ""]
    md += ["## Does code change task performance? (§5.1)", ""]
    md += [_md_table(_perm_display(effect), p_cols=("p",)) if len(effect.table) else "_No test was run._", ""]
    md += [f"![{t}]({p})" for t, p, _ in figures.get("effect", []) + figures.get("null", [])] + [""]
    md += ["## Regressions on the code fraction m", "",
           f"β̂ marked * when its {int(reg.confidence_level * 100)}% CI excludes 0.", ""]
    for task, table in ctx["paper_tables"].items():
        md += [f"### {task}", "", _md_table(table), ""]
        md += [f"![{t}]({p})" for t, p, _ in figures.get(f"task:{task}", [])] + [""]
    if study is not None:
        md += ["## Study", ""]
        if study.mixtures is not None:
            md += ["### Realized mixtures", "", _md_table(study.mixtures), ""]
        md += [f"![{t}]({p})" for t, p, _ in figures.get("loss", [])] + [""]
        if study.config_text is not None:
            md += ["### Resolved study config", "", "```yaml", study.config_text.rstrip(), "```", ""]
    return "\n".join(md)


def cmd_analyze(args: argparse.Namespace) -> int:
    """``codemix analyze RESULTS --out DIR [--permutations N] [--seed S] [--study-dir D]``."""
    results = load_results(args.results)
    res = analyze(results, Path(args.out), permutations=args.permutations, seed=args.seed,
                  study_dir=getattr(args, "study_dir", None))
    for note in res.notes:
        print(f"note: {note}")
    sig = res.permutation.table[res.permutation.table["p_value"] < 0.05]
    print(f"{len(res.regressions.table)} regressions, {len(res.permutation.table)} permutation tests "
          f"({len(sig)} with p < 0.05)")
    for name in ("regressions.csv", "permutation.csv", "report/index.html"):
        print(f"wrote {res.files[name]}")
    return 0
