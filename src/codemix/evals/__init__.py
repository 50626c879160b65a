"""Benchmarks. One registry: name -> module implementing the benchmark protocol.

A benchmark module provides:

- ``add_arguments(parser)``: its options for ``codemix eval NAME``;
- ``run(args) -> int``: the command;
- ``evaluate(model, cfg, *, out_dir, limit=None, study=None) -> list[dict]``: tidy result rows
  (``task, subtask, metric, value, n``) for the study runner, which adds the study columns.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = ["BENCHMARKS", "ROW_COLUMNS", "add_model_arguments", "benchmark", "write_rows"]

BENCHMARKS: dict[str, str] = {
    "cogs": "codemix.evals.cogs",
    "cogs_vf": "codemix.evals.cogs",
    "passivization": "codemix.evals.cogs",
    "bigbench": "codemix.evals.bigbench",
    "perplexity": "codemix.evals.perplexity",
    "mbpp": "codemix.evals.mbpp",
}


#: Leading columns of a benchmark's result CSV; keys beyond these (question_type, primary) follow.
ROW_COLUMNS = ("task", "subtask", "metric", "value", "n")


def add_model_arguments(parser: Any, *, batch_size: bool = False) -> None:
    """``--model`` and ``--device`` (and ``--batch-size``): the arguments of every eval that scores one model."""
    parser.add_argument("--model", required=True, metavar="PATH",
                        help="codemix checkpoint or run directory, or a local Hugging Face model directory")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    if batch_size:
        parser.add_argument("--batch-size", type=int, metavar="N", help="sequences per forward pass (default: config)")


def write_rows(rows: list[dict[str, Any]], path: str | Path) -> list[str]:
    """Write tidy result rows as CSV (atomically); returns the columns written."""
    import csv
    import io

    from codemix.io import atomic_write_text

    columns = list(ROW_COLUMNS)
    columns += [k for k in dict.fromkeys(k for r in rows for k in r) if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return columns


def benchmark(name: str) -> ModuleType:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return importlib.import_module(BENCHMARKS[name])
