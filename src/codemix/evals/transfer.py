"""Python → Rust / Go transfer on MBPP: finetune on Python only, test in Python, Rust and Go.

Zero-shot MBPP means nothing for a span-corruption T5, which never learned to continue a
prompt, and every small model scores pass@k = 0 zero-shot. So, as CodeT5 is evaluated, the
pretrained model is first finetuned to write a function body from its prompt — on Python
only — and then tested on the same problems in Python, Rust and Go:

- training pairs come from MBPP's train split (task ids 601-974), the model selected on its
  validation split (511-600) by the loss of the reference bodies (every ``finetune.eval_every``
  steps, the best step's weights kept). A pair is formatted as MultiPL-E formats its Python
  prompts — the solution's imports (and any helper it defines first), its ``def`` line and
  the problem statement as a docstring — with the reference body as the target. Decoder-only
  models learn ``prompt body <eos>`` with the loss on the body; T5 maps prompt to body;
- the finetuned model then completes MultiPL-E's MBPP test prompts in py, rs and go (the same
  problems in all three by default), run and scored with pass@k in the sandbox
  (:mod:`codemix.evals.mbpp`);
- and the likelihood of correct solutions (:mod:`codemix.evals.solutions`) is measured
  before and after the finetune, which carries signal where pass@k is still 0.
"""

from __future__ import annotations

import argparse
import ast
import re
import warnings
from typing import Any

from rich.console import Console

from codemix.config import MbppTransferEvalConfig, StudyConfig
from codemix.evals.benchmark import EvalContext, print_rows
from codemix.evals.handle import Handle
from codemix.evals.mbpp import _data_file as mbpp_file
from codemix.evals.mbpp import generate, read_jsonl, score, select_problems
from codemix.evals.solutions import load_solutions, score_solutions
from codemix.io import atomic_write_json
from codemix.train.finetune import finetune

__all__ = ["MBPP_TRAIN_IDS", "MBPP_VALID_IDS", "MbppTransfer", "mbpp_pairs", "python_pair"]

MBPP_TRAIN_IDS = range(601, 975)
MBPP_VALID_IDS = range(511, 601)


def _normalize(code: str) -> str:
    """MBPP's references mix CRLF, tabs and trailing spaces; MultiPL-E's prompts use LF and 4 spaces."""
    lines = []
    for line in code.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        body = line.lstrip(" \t")
        indent = line[: len(line) - len(body)].replace("\t", "    ")
        lines.append((indent + body).rstrip())
    return "\n".join(lines).strip("\n") + "\n"


def python_pair(text: str, code: str, tests: list[str]) -> tuple[str, str] | None:
    """(prompt, body) of one MBPP problem in MultiPL-E's Python prompt format, or None when its
    reference does not parse or its tested function cannot be found.

    The prompt is everything the reference defines before the tested function (imports,
    helpers), the function's ``def`` line(s), and the problem statement as a docstring that
    starts with a tab, as MultiPL-E writes it; the body is the rest of the function, indented
    by 4 spaces a level as MultiPL-E's prompts are.
    """
    source = _normalize(code)
    try:
        tree = _parse(source)
    except SyntaxError:  # Python 2 references (print statements)
        return None
    tested = {n for t in tests for n in re.findall(r"\b(\w+)\s*\(", t)}
    fn = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in tested), None)
    if fn is None or fn is not tree.body[-1] or fn.body[0].lineno == fn.lineno:
        return None  # the body must be the file's last code, on lines of its own
    statements = fn.body
    if isinstance(statements[0], ast.Expr) and isinstance(statements[0].value, ast.Constant):
        statements = statements[1:]  # its own docstring: the problem statement replaces it
    if not statements:
        return None
    lines = source.split("\n")
    header = "\n".join(lines[: fn.body[0].lineno - 1]).rstrip("\n") + "\n"  # imports, helpers, the def line(s)
    body_lines = lines[statements[0].lineno - 1: fn.end_lineno]
    unit = statements[0].col_offset - fn.col_offset
    body = "\n".join(_reindent(line, unit) for line in body_lines) + "\n"
    quote = '"' * 3
    docstring = f"    {quote}\t" + " ".join(text.split()).replace(quote, "'''") + f"{quote}\n"
    try:
        _parse(header + docstring + body)
    except SyntaxError:  # indentation the rescaling could not follow
        return None
    return header + docstring, body


def _parse(source: str) -> ast.Module:
    """``ast.parse`` of a dataset's program, without the warnings its own code raises (MBPP's
    references hold string escapes such as ``"\\d"`` that Python 3.11 warns about and 3.12 prints)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (SyntaxWarning, DeprecationWarning))
        return ast.parse(source)


def _reindent(line: str, unit: int) -> str:
    """A line whose indentation counts levels of ``unit`` spaces, with 4 spaces a level instead."""
    width = len(line) - len(line.lstrip(" "))
    return " " * ((width // unit) * 4 + width % unit) + line[width:] if unit > 0 else line


def mbpp_pairs(task_ids: range, *, data_dir: str | None = None) -> list[tuple[str, str]]:
    """(prompt, body) pairs of the MBPP problems in ``task_ids`` whose reference can be formatted."""
    pairs = []
    for row in read_jsonl(mbpp_file("mbpp/mbpp.jsonl.gz", data_dir)):
        if row["task_id"] in task_ids:
            pair = python_pair(row["text"], row["code"], row["test_list"])
            if pair is not None:
                pairs.append(pair)
    return pairs


class MbppTransfer:
    """The ``mbpp_transfer`` benchmark (registry entry)."""

    needs_heldout = False
    finetunes = True

    def __init__(self, config: type[MbppTransferEvalConfig]):
        self.config = config

    def evaluate(self, handle: Handle | None, cfg: MbppTransferEvalConfig, ctx: EvalContext) -> list[dict[str, Any]]:
        """Finetune on Python MBPP, then pass@k per language and solution likelihood before and after.

        ``ctx.out_dir`` receives ``finetune/`` (log, selection losses), ``mbpp_samples.jsonl``
        (every generated program and its outcome) and ``solutions.json``.
        """
        assert handle is not None
        task = self.config.section
        train, valid = mbpp_pairs(MBPP_TRAIN_IDS), mbpp_pairs(MBPP_VALID_IDS)
        solutions = load_solutions(cfg.solutions) if cfg.solutions is not None else []
        rows: list[dict[str, Any]] = []
        before: list[dict[str, Any]] = []
        if solutions:
            zero_shot, before = score_solutions(handle, solutions, task=task, batch_size=cfg.solutions.batch_size,
                                                metric_suffix="_zero_shot")
            rows += zero_shot
        result = finetune(handle, train, cfg.finetune, eval_sets={}, out_dir=ctx.out_dir / "finetune",
                          separator=False, select_on=valid, save_to=ctx.finetuned_out)
        problems = select_problems(cfg.test)
        completions = generate(handle, problems, cfg.test, progress=ctx.progress)
        pass_rows = score(problems, completions, cfg.test, out_dir=ctx.out_dir, progress=ctx.progress, task=task)
        rows += pass_rows
        if solutions:
            after, records = score_solutions(handle, solutions, task=task, batch_size=cfg.solutions.batch_size)
            rows += [{**r, "primary": False} for r in after]  # pass@1 is the task's headline
            atomic_write_json(ctx.out_dir / "solutions.json", {"before": before, "after": records})
        atomic_write_json(ctx.out_dir / "finetune" / "summary.json", {
            "train_pairs": len(train), "valid_pairs": len(valid), "selected_step": result.selected_step,
            "history": result.history})
        return rows

    def needs_model(self, cfg: MbppTransferEvalConfig) -> bool:
        return True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Finetune the model on MBPP's Python train split (prompt -> function body; best step on the "
            "validation split), then generate for MultiPL-E's MBPP test problems in Python, Rust and Go and "
            "score pass@k in the sandbox; also the likelihood of correct solutions before and after. Finetuning: "
            "--set finetune.steps=N, finetune.lr, finetune.batch_size, finetune.eval_every; testing: "
            "--set test.n=10 --set 'test.k=[1,10]'.")
        parser.add_argument("--langs", help="comma-separated test languages (default py,rs,go)")
        parser.add_argument("--limit", type=int, metavar="N", help="at most N test problems per language")

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        test = {k: v for k, v in (("langs", args.langs.split(",") if args.langs else None),
                                  ("limit", args.limit)) if v is not None}
        return {"test": test or None}

    def data_files(self, cfg: MbppTransferEvalConfig) -> list[str]:
        return ["mbpp/mbpp.jsonl.gz", *(f"multipl_e/mbpp-{lang}-reworded.jsonl.gz" for lang in cfg.test.langs)]

    def flops(self, cfg: MbppTransferEvalConfig, n_params: int, study: StudyConfig) -> float:
        ft = cfg.finetune
        test = 2.0 * n_params * (cfg.test.limit or 348) * len(cfg.test.langs) * cfg.test.n * 512
        return 6.0 * n_params * ft.steps * ft.batch_size * 256 + test

    def report(self, rows: list[dict[str, Any]], cfg: MbppTransferEvalConfig, ctx: EvalContext,
               console: Console) -> int:
        print_rows([r for r in rows if r["metric"].startswith(("pass@", "bits_per_byte"))],
                   "MBPP transfer: Python finetune, tested in each language", console)
        return 0
