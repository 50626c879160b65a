"""The benchmark protocol: what every benchmark module implements, and what it is given.

A benchmark is a small class (one per module, e.g. :class:`codemix.evals.perplexity.Perplexity`)
that :data:`codemix.evals.registry.BENCHMARKS` lists. Its ``evaluate(handle, cfg, ctx)`` is
the one signature the study's eval stage and ``codemix eval`` call.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from rich.console import Console
from rich.table import Table

from codemix.config import BenchmarkConfig, SourceConfig, StudyConfig
from codemix.evals.handle import Handle

__all__ = ["Benchmark", "EvalContext", "add_common_arguments", "print_rows"]


@dataclass
class EvalContext:
    """What a benchmark gets besides the model and its config section."""

    out_dir: Path
    """Where the benchmark writes its details (predictions, per-sample results, finetuning logs)."""
    heldout: dict[str, Path] = field(default_factory=dict)
    """Source name -> held-out stream directory (``docs.jsonl.gz`` inside) of the model's study."""
    sources: list[SourceConfig] = field(default_factory=list)
    """The sources of the model's study (when it is evaluated in or with its study), e.g. its code corpora."""
    device: str = "auto"
    progress: bool = True
    finetuned_out: Path | None = None
    """Benchmarks that finetune save the finetuned model here (Hugging Face format), when given."""


class Benchmark(Protocol):
    """One benchmark: a registry entry (see the module docstring)."""

    config: type[BenchmarkConfig]
    """Its config class; ``config.section`` is its name."""
    needs_heldout: bool
    """It reads the held-out documents of the model's study (so a study's eval job depends on the streams)."""
    finetunes: bool
    """It finetunes the model before measuring (so ``--finetuned-out`` applies)."""

    def evaluate(self, handle: Handle | None, cfg: Any, ctx: EvalContext) -> list[dict[str, Any]]:
        """Result rows (``task, subtask, metric, value, n`` [, ``question_type``, ``primary``])."""

    def needs_model(self, cfg: Any) -> bool:
        """Whether ``evaluate`` needs a model (a benchmark may also score given outputs)."""

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Its own options of ``codemix eval NAME`` (the common ones come from :func:`add_common_arguments`)."""

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        """Its options as config fields (``None``: not given), applied after ``--set``."""

    def data_files(self, cfg: Any) -> list[str]:
        """Data files it reads (relative to the data directory), so a changed file reruns it."""

    def flops(self, cfg: Any, n_params: int, study: StudyConfig) -> float:
        """A rough model-FLOPs estimate of one run on one checkpoint (for `codemix study plan`)."""

    def report(self, rows: list[dict[str, Any]], cfg: Any, ctx: EvalContext, console: Console) -> int:
        """Print what a person wants to see after `codemix eval`; return the command's exit status."""


def add_common_arguments(parser: argparse.ArgumentParser, bench: Benchmark) -> None:
    """The options every ``codemix eval NAME`` has, then the benchmark's own."""
    name = bench.config.section
    parser.add_argument("--model", metavar="PATH",
                        help="codemix checkpoint or run directory, or a local Hugging Face model directory")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--study", metavar="STUDY.yaml",
                        help="take this benchmark's config (evals." + name + ") and held-out documents from a "
                             "study; a model of the study is evaluated as a job of its graph (kept, reused)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a field of this benchmark's config (see `codemix config-reference`, "
                             f"section evals.{name}), e.g. --set limit=20 (repeatable)")
    parser.add_argument("--out", metavar="FILE", default=f"{name}-results.csv",
                        help=f"result rows, .csv or .parquet (default: {name}-results.csv); details go to the "
                             "directory of the same name without the suffix")
    if bench.finetunes:
        parser.add_argument("--finetuned-out", metavar="DIR",
                            help="also save the finetuned model here (Hugging Face format)")
    bench.add_arguments(parser)


def print_rows(rows: list[dict[str, Any]], title: str, console: Console) -> None:
    """Result rows as a table (task, subtask, metric, value, n)."""
    table = Table(title=title)
    for col in ("task", "subtask", "metric", "value", "n"):
        table.add_column(col, justify="right" if col in ("value", "n") else "left")
    for r in rows:
        value = r["value"]
        table.add_row(r["task"], r.get("subtask") or "", r["metric"],
                      f"{value:.4f}" if isinstance(value, float) else str(value), str(r.get("n", "")))
    console.print(table)
