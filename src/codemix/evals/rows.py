"""Result rows: the one table format every benchmark, the study and the analysis share.

A benchmark's ``evaluate`` returns *benchmark rows*: ``task, subtask, metric, value, n``
and, where it knows them, ``question_type`` (``multiple_choice`` / ``generative``, which
the §5.1 permutation tests split by) and ``primary`` (the task's headline row, the one
the pooled tests use). :func:`labelled` adds the columns that say which model produced
them — ``study, setting, m, baseline, seed`` and ``arm`` — from :class:`codemix.config.Labels`, one copy
of every row per label (a model that stands for several mixtures, such as the shared
language-only m = 0 model, is reported under each). A model from outside a study gets
empty labels. Every writer of result rows goes through :func:`write_table`, so every
table has the ten contract columns (DESIGN.md, "Result rows") in the same order.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from codemix.config import Labels
from codemix.errors import CodemixError
from codemix.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "BENCHMARK_COLUMNS",
    "COLUMNS",
    "OPTIONAL_COLUMNS",
    "RESULT_COLUMNS",
    "ROWS_FILE",
    "collect_rows",
    "labelled",
    "read_rows",
    "write_table",
]

#: The ten columns of every result table (DESIGN.md, "Result rows").
RESULT_COLUMNS = ("study", "setting", "m", "baseline", "seed", "task", "subtask", "metric", "value", "n")
#: Columns codemix adds when it knows them; analysis works without them.
OPTIONAL_COLUMNS = ("arm", "question_type", "primary")
#: Every column codemix writes, in order.
COLUMNS = RESULT_COLUMNS + OPTIONAL_COLUMNS
#: What a benchmark's ``evaluate`` returns per row (``question_type`` and ``primary`` optional).
BENCHMARK_COLUMNS = ("task", "subtask", "metric", "value", "n", "question_type", "primary")


def labelled(rows: Iterable[dict[str, Any]], labels: Sequence[Labels]) -> list[dict[str, Any]]:
    """Every benchmark row once per label, with all of :data:`COLUMNS` (empty where unknown)."""
    out = []
    rows = list(rows)
    for lab in labels or [Labels()]:
        for r in rows:
            out.append({
                "study": lab.study or "", "setting": lab.setting or "",
                "m": lab.m, "baseline": lab.baseline, "seed": lab.seed, "task": r["task"],
                "subtask": r.get("subtask") or "", "metric": r["metric"], "value": r["value"], "n": r.get("n"),
                "arm": lab.arm or "", "question_type": r.get("question_type") or "",
                "primary": bool(r.get("primary")),
            })
    return out


#: The benchmark rows of one eval job directory (one JSON object per line).
ROWS_FILE = "rows.jsonl"


def read_rows(job_dir: Path) -> list[dict[str, Any]]:
    """The benchmark rows an eval job wrote."""
    return [json.loads(line) for line in (job_dir / ROWS_FILE).read_text().splitlines() if line.strip()]


def collect_rows(study: str, evals: Iterable[tuple[Path, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """A study's result table: the rows of each eval job directory, once per label it stands for.

    The one row collector: the analysis job, ``study status --export`` and the SQLite index
    all use it, so every table of a study has the same rows and columns (:data:`COLUMNS`).
    """
    rows: list[dict[str, Any]] = []
    for job_dir, labels in evals:
        rows += labelled(read_rows(job_dir), [Labels.from_dict({**lab, "study": study}) for lab in labels])
    return rows


def write_table(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write result rows as CSV or Parquet (by suffix), atomically, columns in :data:`COLUMNS` order."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".parquet", ".pq"):
        raise CodemixError(f"{path}: expected a file ending in .csv or .parquet, found "
                           f"{suffix or 'no suffix'!r}; e.g. results.csv")
    columns = list(COLUMNS) + [k for k in dict.fromkeys(k for r in rows for k in r) if k not in COLUMNS]
    if suffix == ".csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(path, buf.getvalue())
    else:
        buf = io.BytesIO()
        frame = pd.DataFrame(list(rows), columns=columns)
        frame.to_parquet(buf, index=False)
        atomic_write_bytes(path, buf.getvalue())
    return path
