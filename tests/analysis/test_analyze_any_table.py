"""`codemix analyze` on any table with the ten contract columns: a report (exit 0) or one error line (exit 2).

Tables are generated with the odd forms real ones come in: empty subtasks, NaN values, booleans
and numbers as text, seeds as floats, absent or partial optional columns, one task / m / seed,
constant values, extra columns, awkward names, CSV or Parquet; some carry one mistake a user
makes (m in percent, a duplicated row, ...), which must be answered with a one-line error.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codemix.cli import main
from codemix.evals.rows import RESULT_COLUMNS

# Names that break naive code: a dot (file suffixes), a slash, mathtext, a comma (CSV), non-ASCII.
NAMES = ["a", "cogs", "big bench", "a.b", "x/y", "$^$", "tâche", "a,b", "50%", "_u", "01"]
MS = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0]
FAULTS = ["m_in_percent", "value_not_a_number", "empty_task", "duplicated_row", "two_studies",
          "baseline_maybe", "primary_maybe", "column_missing", "seed_fraction", "no_finite_value"]


def _as_text(v):
    return None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v)


@st.composite
def tables(draw):
    """(tables, file suffix, whether analyze must succeed: True, False or None for either).

    Usually one table; sometimes two arms, as a second file (``codemix analyze A B``) or as a
    second arm in an ``arm`` column of the one table.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # Small on purpose: every figure of the report costs a few tenths of a second to render.
    tasks = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=2, unique=True))
    pairs = st.tuples(st.sampled_from(["", "lexical", "a.b"]), st.sampled_from(["acc", "exact_match", "perplexity", "$x"]))
    units = [(t, s, m) for t in tasks for s, m in draw(st.lists(pairs, min_size=1, max_size=2, unique=True))]
    # One setting per table (several are covered by test_report.py): each adds a figure per question type.
    setting_names = [draw(st.sampled_from(["competitive", "additive", "other $etting"]))]
    ms = draw(st.lists(st.sampled_from(MS), min_size=1, max_size=3, unique=True))
    n_seeds = draw(st.integers(1, 2))
    baselines = draw(st.booleans())
    values = draw(st.sampled_from(["proportion", "constant", "zero", "large", "some_nan"]))
    rows = []
    for task, subtask, metric in units:
        for setting in setting_names:
            for baseline in (False, True) if baselines else (False,):
                for m in ms:
                    for seed in range(n_seeds):
                        value = {"proportion": rng.uniform(), "constant": 0.3, "zero": 0.0,
                                 "large": rng.uniform(10, 1000),
                                 "some_nan": rng.uniform() if rng.uniform() < 0.7 else np.nan}[values]
                        rows.append({"study": "s", "setting": setting, "m": m, "baseline": baseline, "seed": seed,
                                     "task": task, "subtask": subtask if subtask else draw(st.sampled_from(["", None])),
                                     "metric": metric, "value": value, "n": int(rng.integers(1, 100))})
    df = pd.DataFrame(rows)
    ok = bool(np.isfinite(df["value"]).any())  # with no finite value there is nothing to fit: an error

    # The same facts, spelled as tables in the wild spell them.
    spelling = draw(st.sampled_from(["bool", "True/False", "true/false", "1/0", "yes/no"]))
    if spelling != "bool":
        yes, no = spelling.split("/")
        df["baseline"] = np.where(df["baseline"], yes, no)
    if draw(st.booleans()):
        df["m"] = [draw(st.sampled_from([str(m), f" {m} ", f"{m:.3f}"])) for m in df["m"]]
    df["seed"] = df["seed"].astype(draw(st.sampled_from([int, float, str])))
    question_type = draw(st.sampled_from(["absent", "all_nan", "per_task", "per_row"]))
    if question_type == "all_nan":
        df["question_type"] = np.nan
    elif question_type == "per_task":
        kinds = {t: draw(st.sampled_from(["multiple_choice", "generative", ""])) for t in tasks}
        df["question_type"] = df["task"].map(kinds)
    elif question_type == "per_row":  # a task with several question types is an error
        df["question_type"] = rng.choice(["multiple_choice", "generative"], len(df))
        ok = ok and None
    primary = draw(st.sampled_from(["absent", "all_false", "first_metric", "nan_or_true"]))
    if primary != "absent":
        flag = (df["metric"] == df.groupby("task")["metric"].transform("first")) if primary != "all_false" \
            else pd.Series(False, index=df.index)
        df["primary"] = flag.astype(object)
        if primary == "nan_or_true":
            df.loc[~flag, "primary"] = None
        spelled = draw(st.sampled_from(["bool", "True", "true", "1", "yes"]))
        if spelled != "bool":
            text = {"True": ("True", "False"), "true": ("true", "false"), "1": ("1", "0"), "yes": ("yes", "no")}
            df["primary"] = [None if v is None else text[spelled][0] if v else text[spelled][1]
                             for v in df["primary"]]
    if draw(st.booleans()):
        df["arm"] = draw(st.sampled_from(["code", None]))
    if draw(st.booleans()):
        df["run_id"] = [f"r{i}" for i in range(len(df))]
        df["score_2"] = rng.uniform(size=len(df))

    fault = draw(st.sampled_from([None] * len(FAULTS) + FAULTS))
    if fault is not None:
        ok = False
    if fault == "m_in_percent":
        df["m"] = pd.to_numeric(df["m"]) * 100 + 5  # 25 % spelled 25 (and m = 0 as 5: out of range too)
    elif fault == "value_not_a_number":
        df["value"] = df["value"].astype(object)
        df.loc[0, "value"] = "about 0.5"  # not "n/a": read_csv takes that for a missing value
    elif fault == "empty_task":
        df.loc[len(df) - 1, "task"] = ""
    elif fault == "duplicated_row":
        df = pd.concat([df, df.iloc[:1]], ignore_index=True)
    elif fault == "two_studies":
        df = pd.concat([df, df.iloc[:1].assign(study="another study")], ignore_index=True)
    elif fault == "baseline_maybe":
        df["baseline"] = df["baseline"].astype(object)
        df.loc[0, "baseline"] = "maybe"
    elif fault == "primary_maybe":
        df["primary"] = "maybe"
    elif fault == "column_missing":
        df = df.drop(columns=draw(st.sampled_from(list(RESULT_COLUMNS))))
    elif fault == "seed_fraction":
        df["seed"] = 0.5
    elif fault == "no_finite_value":
        df["value"] = np.nan
    if draw(st.booleans()):
        df = df.sample(frac=1.0, random_state=int(rng.integers(2**31)))  # row order carries no meaning
    arms = draw(st.sampled_from(["one"] * 3 + ["two_files", "arm_column"]))
    frames = [df]
    if arms != "one":
        # A second arm: with several tasks, the tasks are split between the arms (units in one arm only);
        # with one, the same design with other values (units in both arms, compared).
        if "task" in df and df["task"].nunique() > 1:
            second = (df["task"] != df["task"].iloc[0]).to_numpy()
            first_part, second_part = df[~second], df[second]
        else:
            first_part = df
            second_part = df.assign(value=pd.to_numeric(df["value"], errors="coerce") * 0.5) if "value" in df else df
        if arms == "arm_column":
            frames = [pd.concat([first_part.assign(arm="first"), second_part.assign(arm="second")], ignore_index=True)]
        else:
            frames = [first_part, second_part.assign(arm="second") if "arm" in second_part else second_part]
    return frames, draw(st.sampled_from([".csv", ".csv", ".parquet"])), ok


def _run(args: list[str]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(args)
    return rc, err.getvalue()


@pytest.fixture
def wide_console(monkeypatch):
    # main() prints an error through rich at $COLUMNS (120 when not a tty); wide enough that one
    # message is one line. Set once per test: the examples of a property test share it.
    monkeypatch.setenv("COLUMNS", "100000")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=tables())
def test_analyze_answers_any_table_with_a_report_or_one_error_line(case, wide_console):
    frames, suffix, ok = case
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, df in enumerate(frames):
            path = Path(tmp) / f"results{k or ''}{suffix}"
            if suffix == ".csv":
                df.to_csv(path, index=False)
            else:  # Parquet needs one type per column: mixed ones (bool and None, float and "n/a") go as text
                df.assign(**{c: df[c].map(_as_text) for c in df.columns if df[c].dtype == object}).to_parquet(path)
            paths.append(str(path))
        out = Path(tmp) / "out"
        rc, err = _run(["analyze", *paths, "--out", str(out), "--permutations", "50", "--control-draws", "3"])
        assert rc in (0, 2)
        if rc == 0:
            assert (out / "report" / "index.html").is_file() and (out / "regressions.csv").is_file()
        else:
            assert err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
            assert not out.exists()  # bad input leaves nothing half-written
        if ok is not None:
            assert rc == (0 if ok else 2), err


def test_plain_table_with_empty_subtask_and_no_primary_gives_a_report(tmp_path, wide_console):
    """The ten contract columns only, subtask empty: once a TypeError in the pooling of §5.1 rows."""
    rows = [{"study": "s", "setting": "competitive", "m": m, "baseline": False, "seed": 0, "task": task,
             "subtask": "", "metric": "acc", "value": value, "n": 10}
            for task, slope in (("a", 0.2), ("b", -0.1)) for m in (0.0, 0.5, 1.0)
            for value in (0.4 + slope * m,)]
    path = tmp_path / "t.csv"
    pd.DataFrame(rows, columns=list(RESULT_COLUMNS)).to_csv(path, index=False)
    assert path.read_text().splitlines()[1] == "s,competitive,0.0,False,0,a,,acc,0.4,10"  # subtask empty
    rc, err = _run(["analyze", str(path), "--out", str(tmp_path / "out"), "--permutations", "50"])
    assert rc == 0, err
    assert (tmp_path / "out" / "report" / "index.html").is_file()
    reg = pd.read_csv(tmp_path / "out" / "regressions.csv", keep_default_na=False)
    assert list(reg["task"]) == ["a", "b"] and (reg["subtask"] == "").all()
    assert reg["beta"].round(12).tolist() == [0.2, -0.1]
    slopes = pd.read_csv(tmp_path / "out" / "slopes.csv")
    assert slopes["task"].tolist() == ["a", "b"]  # both tasks pooled in the §5.1 test
