"""`codemix analyze` and the report: files, columns, study sections, bad input, headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from codemix.analysis.report import analyze, load_results, load_study_context
from codemix.errors import ConfigError, DataError

from .helpers import make_results

QT = {"cogs": "generative", "bigbench": "multiple_choice"}
UNITS = {("cogs", "lexical", "exact_match"): 0.3, ("cogs", "structural", "exact_match"): 0.02,
         **{("bigbench", f"t{i}", "mcg"): 0.05 * (i - 2) for i in range(5)}}
REGRESSION_COLUMNS = ["task", "subtask", "metric", "setting", "baseline", "beta", "alpha", "r2", "se_beta",
                      "p_beta", "p_holm", "p_fdr", "ci_low", "ci_high", "n"]
PERMUTATION_COLUMNS = ["setting", "question_type", "statistic", "observed", "p_value", "p_holm", "p_fdr"]


def _write_study(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text("name: synthetic\nseeds: [0, 1, 2]\nmodel: {arch: gpt, preset: tiny}\n")
    for setting, m in (("competitive", 0.5), ("additive", 0.25)):
        d = root / "mixtures" / f"{setting}-m{m}"
        d.mkdir(parents=True)
        (d / "mixture.json").write_text(json.dumps({
            "setting": setting, "m": m, "baseline": False, "target_tokens": {"c4": 3000, "python": 1000},
            "tokens": {"c4": 3010, "python": 990}, "realized_m": 0.2475}))
        log = root / "pretrain" / f"{setting}-m{m}-seed0" / "log.jsonl"
        log.parent.mkdir(parents=True)
        lines = [json.dumps({"kind": "train", "step": s, "loss": 9.0 - s / 10}) for s in range(0, 50, 10)]
        lines += [json.dumps({"kind": "eval", "step": 40, "loss": 1.0}), "{not json", json.dumps({"step": 60})]
        log.write_text("\n".join(lines) + "\n")
    (root / "mixtures" / "broken").mkdir()
    (root / "mixtures" / "broken" / "mixture.json").write_text("{")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis")
    results = make_results(UNITS, question_types=QT, rng=0)
    results.loc[5, "value"] = np.nan
    results.to_csv(root / "results.csv", index=False)
    _write_study(root / "study")
    res = analyze(results, root / "out", permutations=200, seed=0, study_dir=root / "study")
    return root, results, res


def test_writes_the_promised_files_and_columns(study):
    root, results, _res = study
    out = root / "out"
    reg = pd.read_csv(out / "regressions.csv")
    assert list(reg.columns[:15]) == REGRESSION_COLUMNS  # no arm column: the rows name no arm
    assert len(reg) == len(UNITS) * 3 and reg["n"].sum() == len(results) - 1
    perm = pd.read_csv(out / "permutation.csv")
    assert list(perm.columns[:7]) == PERMUTATION_COLUMNS
    assert set(perm["question_type"]) == {"all", "generative", "multiple_choice"}
    # "all" and multiple-choice cells: 7 and 5 tasks, C(14, 7), C(10, 5) > 200 partitions, so randomized;
    # generative: 2 tasks, C(4, 2) = 6 partitions, all enumerated.
    assert (perm["n_permutations"] == np.where(perm["question_type"] == "generative", 6, 200)).all()
    for name in ("slopes.csv", "by_m.csv", "tables/cogs.csv", "tables/cogs.tex", "tables/bigbench.tex",
                 "report/index.html", "report/report.md"):
        assert (out / name).is_file(), name
    figs = out / "report" / "figures"
    assert {p.stem for p in figs.glob("*.png")} == {p.stem for p in figs.glob("*.svg")}
    assert not list(out.rglob("*.tmp"))


def test_paper_tables(study):
    root, _, res = study
    table = pd.read_csv(root / "out" / "tables" / "cogs.csv", keep_default_na=False)
    assert list(table.columns[:8]) == ["Dataset", "Gen. type", "Metric", "Setting", "Baseline", "β̂", "α̂", "R²"]
    row = table[(table["Gen. type"] == "lexical") & (table["Setting"] == "competitive")].iloc[0]
    fit = res.regressions.table.query("task == 'cogs' and subtask == 'lexical' and setting == 'competitive'")
    assert row["β̂"] == f"{fit['beta'].iloc[0]:.3f}*"  # true slope 0.3 ≫ its SE: significant
    assert set(table["Baseline"]) == {"yes", "no"}
    tex = (root / "out" / "tables" / "cogs.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\hat\beta$" in tex and "bigbench" not in tex


def test_html_is_self_contained_and_complete(study):
    root, _, _res = study
    page = (root / "out" / "report" / "index.html").read_text()
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", page)  # readable offline
    n_png = len(list((root / "out" / "report" / "figures").glob("*.png")))
    assert page.count('src="data:image/png;base64,') == n_png == 2 + 1 + 6 + 1  # tasks, KDE, nulls, loss
    for text in ("Realized mixtures", "Resolved study config", "preset: tiny", "Pretraining loss",
                 "arXiv 2409.04556", "1 row(s) with missing"):
        assert text in page, text
    md = (root / "out" / "report" / "report.md").read_text()
    assert "| setting | question type |" in md and "](figures/" in md


def test_study_context_is_tolerant(study, tmp_path):
    _root, _, res = study
    ctx = res.study
    assert len(ctx.mixtures) == 2 and set(ctx.mixtures["tokens"]) == {4000.0}
    assert "python: 990" in ctx.mixtures["tokens_per_source"].iloc[0]
    # eval lines, bad JSON, a line without loss: skipped; labels relative to the runs' common parent
    assert {k: len(c) for k, c in ctx.loss_curves.items()} == {"additive-m0.25-seed0": 5, "competitive-m0.5-seed0": 5}
    assert any("broken" in n for n in ctx.notes)
    assert load_study_context(None) is None
    assert "does not exist" in load_study_context(tmp_path / "nope").notes[0]
    empty = load_study_context(tmp_path)
    assert empty.config_text is None and empty.mixtures is None and empty.loss_curves == {}


def test_study_layout_reads_complete_jobs_only(tmp_path):
    for part in ("jobs/pretrain/competitive-m0.5-seed0-ab12", "jobs/pretrain/additive-m0.25-seed0-cd34",
                 "work/pretrain/additive-m0.5-seed1-ef56"):
        (tmp_path / part).mkdir(parents=True)
        (tmp_path / part / "log.jsonl").write_text('{"step": 1, "loss": 3.0, "lr": 0.1, "tokens": 10}\n')
    ctx = load_study_context(tmp_path)
    assert sorted(ctx.loss_curves) == ["additive-m0.25-seed0-cd34", "competitive-m0.5-seed0-ab12"]


def test_cli_reads_parquet_like_csv(study, tmp_path, capsys):
    from codemix.cli import main

    _root, results, _ = study
    small = results[results["task"] == "cogs"].drop(columns="question_type")
    small.to_parquet(tmp_path / "results.parquet")
    small.to_csv(tmp_path / "results.csv", index=False)
    pd.testing.assert_frame_equal(load_results(tmp_path / "results.parquet"), load_results(tmp_path / "results.csv"),
                                  check_dtype=False)
    assert main(["analyze", str(tmp_path / "results.parquet"), "--out", str(tmp_path / "pq"),
                 "--permutations", "50", "--seed", "3"]) == 0
    assert f"wrote {tmp_path / 'pq' / 'report' / 'index.html'}" in capsys.readouterr().out
    reg = pd.read_csv(tmp_path / "pq" / "regressions.csv")
    assert set(reg["task"]) == {"cogs"} and len(reg) == 2 * 3
    perm = pd.read_csv(tmp_path / "pq" / "permutation.csv")
    assert (perm["n_permutations"] == 6).all()  # 2 vs 2 slopes per cell: all C(4, 2) partitions


def test_bad_input_writes_nothing(tmp_path, capsys):
    from codemix.cli import main

    bad = make_results(UNITS).drop(columns=["value", "n"])
    bad.to_csv(tmp_path / "bad.csv", index=False)
    assert main(["analyze", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "value, n" in err and "lacks column" in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="permutations must be a positive integer"):
        analyze(make_results(UNITS), tmp_path / "out", permutations=0)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("name", "content", "match"), [
    ("missing.csv", None, "does not exist"),
    ("results.json", "[]", "expected .csv or .parquet"),
    ("broken.parquet", "not parquet", "could not read"),
])
def test_load_results_errors(tmp_path, name, content, match):
    if content is not None:
        (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=match):
        load_results(tmp_path / name)


def test_report_renders_in_headless_chromium(study, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (make install adds it)")
    root, _, _ = study
    shot = tmp_path / "report.png"
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1280,2000",
           (root / "out" / "report" / "index.html").as_uri()]
    subprocess.run(cmd, check=True, timeout=120, capture_output=True)
    from matplotlib.image import imread

    img = imread(shot)[..., :3]
    assert img.shape[:2] == (2000, 1280)
    ink = (img.min(axis=2) < 0.6).mean()  # share of clearly non-white pixels: text, tables, figures
    assert 0.01 < ink < 0.6, ink
    red = (img[..., 0] > 0.6) & (img[..., 1] < 0.35) & (img[..., 2] < 0.35)  # figure lines / significant p
    assert red.sum() > 200


def test_permutation_tests_pool_only_proportion_metrics(tmp_path):
    """Perplexity-like units (values far above 1) stay in the regressions but not in §5.1's pooled slopes."""
    acc = make_results({("bigbench", "arithmetic", "acc"): 0.2, ("cogs", "gen", "exact_match"): -0.1}, rng=1)
    ppl = make_results({("perplexity", "python", "perplexity"): -300.0}, rng=2, intercept=900.0)
    res = analyze(pd.concat([acc, ppl], ignore_index=True), tmp_path / "out", permutations=200, seed=0)
    assert "perplexity" in set(res.regressions.table["task"])
    slopes = pd.read_csv(tmp_path / "out" / "slopes.csv")
    assert set(slopes["task"]) == {"bigbench", "cogs"}
    assert any("not proportions" in note for note in res.notes)


def test_permutation_tests_pool_primary_rows_when_marked(tmp_path):
    """With a `primary` column, one headline metric per task is pooled, whatever its scale."""
    units = {("bigbench", "arithmetic", "multiple_choice_grade"): 0.2,
             ("bigbench", "arithmetic", "multiple_choice_grade_norm"): 0.1,
             ("bigbench", "conlang", "bleu"): 30.0}
    df = make_results(units, rng=3)
    df["primary"] = df["metric"].isin(["multiple_choice_grade", "bleu"])
    csv = tmp_path / "rows.csv"
    df.to_csv(csv, index=False)  # through CSV, as `codemix analyze` reads it
    res = analyze(load_results(csv), tmp_path / "out", permutations=200, seed=0)
    slopes = pd.read_csv(tmp_path / "out" / "slopes.csv")
    assert set(slopes["metric"]) == {"multiple_choice_grade", "bleu"}
    assert len(res.regressions.table.groupby(["task", "subtask", "metric"])) == 3
    assert any("primary metric only" in note for note in res.notes)
