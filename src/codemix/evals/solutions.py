"""How likely a model finds a correct solution, given its prompt, per programming language.

pass@k tells the truth at scale, but every model small enough to train on a CPU (or in
minutes on one GPU) scores pass@k = 0 in every language, so a regression on m is a
regression on zeros. The likelihood of a *correct* solution carries signal long before
the model can write one (DataDecide, AI2 2025: likelihood metrics make MBPP and HumanEval
predictable at 0.01% of the compute). Per problem set and language this reports

- ``bits_per_byte``: the solution's negative log-likelihood given the prompt, in bits,
  over its UTF-8 bytes (tokenizer-independent, so languages and models compare);
- ``logprob_per_token``: the same as the mean natural-log probability per token;
- for HumanEval-X, whose 164 problems are the same in every language,
  ``gap_vs_python_bits_per_byte``: the mean over problems of (this language's bits per byte
  − Python's), a paired comparison that cancels how hard each problem is.

Sets: ``humaneval_x`` (canonical solutions in python, rust, go, cpp, java, js; prompts as
:func:`codemix.evals.mbpp.load_humaneval_x` builds them), ``mbpp`` (the original MBPP test
split in Python, its reference ``code`` after the problem statement), or any JSONL with
``prompt`` and ``canonical_solution`` (HumanEval-X's format).
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from codemix.config import SolutionsEvalConfig, StudyConfig
from codemix.data.fetch import data_path
from codemix.errors import DataError
from codemix.evals.benchmark import EvalContext, print_rows
from codemix.evals.handle import Handle
from codemix.evals.mbpp import load_humaneval_x, load_mbpp, read_jsonl
from codemix.io import atomic_write_json

__all__ = ["Solution", "Solutions", "load_problems_file", "load_solutions", "score_solutions"]

#: HumanEval-X's task_id prefixes -> its language names.
_TASK_PREFIX = {"python": "python", "rust": "rust", "go": "go", "cpp": "cpp", "java": "java", "javascript": "js",
                "js": "js"}


@dataclass(frozen=True)
class Solution:
    """A correct solution and the prompt it answers."""

    set: str
    lang: str
    name: str
    prompt: str
    solution: str


def load_problems_file(path: str | Path, *, langs: list[str] | None = None) -> list[Solution]:
    """Solutions of a JSONL file with ``prompt`` and ``canonical_solution`` per line.

    The language is the record's ``language``, else the prefix of its ``task_id`` (``Rust/3``);
    the name is its ``task_id`` (else the line number). The set is the file's name.
    """
    path = data_path(path)
    rows = read_jsonl(path)
    out, problems = [], []
    for i, row in enumerate(rows, 1):
        missing = [f for f in ("prompt", "canonical_solution") if not isinstance(row.get(f), str)]
        task_id = str(row.get("task_id", i))
        lang = str(row.get("language") or (task_id.partition("/")[0] if "/" in task_id else "")).lower()
        lang = _TASK_PREFIX.get(lang, lang)
        if missing:
            problems.append(f"line {i}: missing {', '.join(missing)}")
        elif not lang:
            problems.append(f"line {i}: no language (give `language`, or a task_id like `Rust/3`)")
        elif langs is None or lang in langs:
            out.append(Solution(path.name.split(".")[0], lang, task_id.replace("/", "_"), row["prompt"],
                                row["canonical_solution"]))
    if problems:
        raise DataError(f"{path} is not a problems file of prompt + canonical_solution records:\n  "
                        + "\n  ".join(problems[:10]))
    if not out:
        raise DataError(f"{path} holds no problems" + (f" in {', '.join(langs)}" if langs else ""))
    return out


def load_solutions(cfg: SolutionsEvalConfig) -> list[Solution]:
    """The solutions ``cfg`` asks for, at most ``cfg.limit`` per set and language."""
    if cfg.problems:
        found = load_problems_file(cfg.problems, langs=cfg.langs)
    else:
        found = []
        if "humaneval_x" in cfg.sets:
            for lang in cfg.langs:
                found += [Solution("humaneval_x", lang, p.name, p.prompt, p.reference or "")
                          for p in load_humaneval_x(lang)]
        if "mbpp" in cfg.sets:
            found += [Solution("mbpp", "python", p.name, p.prompt, p.reference or "") for p in load_mbpp("test")]
    per: dict[tuple[str, str], list[Solution]] = defaultdict(list)
    for s in found:
        per[(s.set, s.lang)].append(s)
    return [s for group in per.values() for s in group[: cfg.limit]]


def score_solutions(handle: Handle, solutions: list[Solution], *, task: str, batch_size: int,
                    metric_suffix: str = "") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Rows per (set, language) and one record per problem (log-likelihood, tokens, bytes, bits per byte).

    ``metric_suffix`` names a variant of the metrics (e.g. ``_zero_shot``); those rows are not primary.
    """
    # every prompt has one solution: nothing to share, so one forward pass per (prompt, solution)
    logprobs = handle.score([s.prompt for s in solutions], [s.solution for s in solutions], batch_size=batch_size,
                            share_context=False)
    records = []
    for s, lp in zip(solutions, logprobs):
        n_bytes, n_tokens = len(s.solution.encode("utf-8")), len(handle.encode(s.solution))
        records.append({"set": s.set, "lang": s.lang, "name": s.name, "logprob": lp, "tokens": n_tokens,
                        "bytes": n_bytes, "bits_per_byte": -lp / math.log(2) / max(n_bytes, 1)})
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        groups[(r["set"], r["lang"])].append(r)
    rows = []
    for (set_name, lang), group in groups.items():
        nats = -sum(r["logprob"] for r in group)
        rows += [_row(task, f"{set_name}/{lang}", "bits_per_byte" + metric_suffix,
                      nats / math.log(2) / max(sum(r["bytes"] for r in group), 1), len(group),
                      primary=not metric_suffix),
                 _row(task, f"{set_name}/{lang}", "logprob_per_token" + metric_suffix,
                      -nats / max(sum(r["tokens"] for r in group), 1), len(group))]
    python = {r["name"]: r["bits_per_byte"] for r in groups.get(("humaneval_x", "python"), [])}
    for (set_name, lang), group in groups.items():
        if set_name != "humaneval_x" or lang == "python" or not python:
            continue
        gaps = [r["bits_per_byte"] - python[r["name"]] for r in group if r["name"] in python]
        if gaps:
            rows.append(_row(task, f"{set_name}/{lang}", "gap_vs_python_bits_per_byte" + metric_suffix,
                             float(np.mean(gaps)), len(gaps)))
    return rows, records


def _row(task: str, subtask: str, metric: str, value: float, n: int, *, primary: bool = False) -> dict[str, Any]:
    return {"task": task, "subtask": subtask, "metric": metric, "value": float(value), "n": int(n),
            "primary": primary}


class Solutions:
    """The ``solutions`` benchmark (registry entry)."""

    needs_heldout = False
    finetunes = False

    def __init__(self, config: type[SolutionsEvalConfig]):
        self.config = config

    def evaluate(self, handle: Handle | None, cfg: SolutionsEvalConfig, ctx: EvalContext) -> list[dict[str, Any]]:
        """Rows per set and language; ``ctx.out_dir/solutions.json`` holds every problem's numbers."""
        assert handle is not None
        solutions = load_solutions(cfg)
        if not solutions:
            raise DataError(f"no solutions to score for sets {cfg.sets} in {cfg.langs}")
        rows, records = score_solutions(handle, solutions, task=self.config.section, batch_size=cfg.batch_size)
        atomic_write_json(ctx.out_dir / "solutions.json", {"truncated_inputs": handle.truncated, "problems": records})
        return rows

    def needs_model(self, cfg: SolutionsEvalConfig) -> bool:
        return True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = ("The likelihood of correct solutions given their prompts, per language: bits per "
                              "byte and log-prob per token of HumanEval-X's canonical solutions (the same 164 "
                              "problems in each language, with the paired gap to Python) and MBPP's Python "
                              "references. Signal where pass@k is still 0.")
        parser.add_argument("--problems", metavar="FILE",
                            help="a JSONL of prompt + canonical_solution records to score instead of the built-in sets")
        parser.add_argument("--langs", help="comma-separated HumanEval-X languages (default python,rust,go)")
        parser.add_argument("--sets", help="comma-separated built-in sets: humaneval_x, mbpp (default both)")
        parser.add_argument("--limit", type=int, metavar="N", help="at most N problems per set and language")
        parser.add_argument("--batch-size", type=int, metavar="N", help="sequences per forward pass")

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        split = (lambda text: [x.strip() for x in text.split(",") if x.strip()] if text else None)
        return {"problems": args.problems, "langs": split(args.langs), "sets": split(args.sets), "limit": args.limit,
                "batch_size": args.batch_size}

    def data_files(self, cfg: SolutionsEvalConfig) -> list[str]:
        if cfg.problems:
            return [cfg.problems]
        files = [f"humaneval_x/humaneval_{lang}.jsonl.gz" for lang in cfg.langs] if "humaneval_x" in cfg.sets else []
        return files + (["mbpp/mbpp.jsonl.gz"] if "mbpp" in cfg.sets else [])

    def flops(self, cfg: SolutionsEvalConfig, n_params: int, study: StudyConfig) -> float:
        problems = (cfg.limit or 164) * (len(cfg.langs) + ("mbpp" in cfg.sets))
        return 2.0 * n_params * problems * 512

    def report(self, rows: list[dict[str, Any]], cfg: SolutionsEvalConfig, ctx: EvalContext, console: Console) -> int:
        print_rows(rows, "likelihood of correct solutions", console)
        return 0

