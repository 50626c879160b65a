"""COGS, COGS-vf and English passivization: finetune, then measure compositional generalization.

This is the paper's headline measurement (Petty et al. 2024, §4.2.1, Tables 3–5). A
pretrained model is finetuned on a task's ``train`` split (:mod:`codemix.train.finetune`)
and then decodes the ``dev`` split (in-distribution) and the ``gen`` split (out of
distribution) greedily. The metrics:

- **exact match**: the decoded output equals the target token for token (whitespace
  differences aside). Reported on dev and on gen, for gen also per lexical/structural
  category and per fine-grained generalization type;
- **well-formedness** (COGS and COGS-vf gen only): the decoded logical form's parentheses
  are balanced. It separates "wrong meaning" from "not even a logical form", which is
  where structural generalization failures show up first.

Datasets (from the data directory, see ``SOURCES.md``):

- ``cogs``: Kim & Linzen (2020), logical forms with variables;
- ``cogs_vf``: the variable-free format of Qiu et al. (2022), row-aligned with COGS;
- ``passivization``: Mueller et al. (2022); the input ends in a tag, ``decl`` (copy) or
  ``passiv`` (passivize), which doubles as the example's type; gen is all ``passiv``.

COGS gen types are mapped to lexical vs structural generalization from
``cogs/gen_cases_to_paper_sections.json``: the types of paper sections 3.2 (novel
combinations of modified phrases) and 3.3 (deeper recursion) are structural, the rest
lexical (Kim & Linzen 2020, §3).
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

from rich.console import Console

from codemix.config import CogsEvalConfig, StudyConfig
from codemix.data.fetch import data_path
from codemix.errors import DataError
from codemix.evals.benchmark import EvalContext, print_rows
from codemix.evals.handle import Handle
from codemix.io import atomic_write_json
from codemix.train.finetune import finetune

__all__ = [
    "COGS",
    "COGS_VF",
    "PASSIVIZATION",
    "SPLITS",
    "Cogs",
    "Example",
    "TaskData",
    "exact_match",
    "gen_categories",
    "is_well_formed",
    "load_split",
    "normalize",
    "score",
    "select",
    "summarize",
    "token_accuracy",
]

SPLITS = ("train", "dev", "test", "gen")

#: Paper sections (Kim & Linzen 2020) whose generalization types are structural.
STRUCTURAL_SECTIONS = ("3.2.", "3.3.")


# ----------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class TaskData:
    """Where a task's splits live and which metrics apply to it."""

    pattern: str
    """Path of a split relative to the data directory, with ``{split}``."""
    has_types: bool
    """Whether the TSV has a third column with the example's type (COGS, COGS-vf)."""
    logical_forms: bool
    """Whether outputs are logical forms (well-formedness and lexical/structural apply)."""


COGS = TaskData("cogs/cogs_{split}.tsv.gz", has_types=True, logical_forms=True)
COGS_VF = TaskData("cogs_vf/cogs_vf_{split}.tsv.gz", has_types=True, logical_forms=True)
PASSIVIZATION = TaskData("passivization/passiv_en_nps_{split}.tsv.gz", has_types=False, logical_forms=False)


@dataclass(frozen=True)
class Example:
    """One input/target pair, with where it came from."""

    input: str
    target: str
    type: str
    """COGS: the TSV's type column (`in_distribution`, a gen type, ...); passivization: its tag."""
    split: str
    index: int
    """Row of the example in its split file (0-based), so outputs can be joined back."""


def load_split(spec: TaskData, split: str) -> list[Example]:
    """All examples of one split, in file order.

    A split name outside train/dev/test/gen, or a split file missing from the data
    directory, raises a :class:`DataError` that says what to do.
    """
    if split not in SPLITS:
        raise DataError(f"{spec.pattern} has no split {split!r}; expected one of {', '.join(SPLITS)}")
    path = data_path(spec.pattern.format(split=split))
    examples = []
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        for i, line in enumerate(f):
            fields = line.rstrip("\n").split("\t")
            want = 3 if spec.has_types else 2
            if len(fields) != want:
                raise DataError(f"{path} line {i + 1}: expected {want} tab-separated fields, found {len(fields)}; "
                                f"the file is not the {split} split (re-fetch it with `codemix data fetch`)")
            if spec.has_types:
                source, target, kind = fields
            else:
                source, target = fields
                kind = source.rsplit(" ", 1)[-1]  # the task tag: decl or passiv
            examples.append(Example(source, target, kind, split, i))
    if not examples:
        raise DataError(f"{path} is empty; expected the {split} split (re-fetch it with `codemix data fetch`)")
    return examples


@lru_cache(maxsize=1)
def _paper_sections() -> dict[str, str]:
    path = data_path("cogs/gen_cases_to_paper_sections.json")
    return json.loads(path.read_text(encoding="utf-8"))


def gen_categories() -> dict[str, str]:
    """COGS gen type -> ``"lexical"`` or ``"structural"``, from the paper-section map.

    Only the 21 gen types are returned (the map also names exposure examples and
    ``in_distribution``, which are not generalization types).
    """
    out = {}
    for kind, section in _paper_sections().items():
        if kind == "in_distribution" or kind.startswith("exposure_example"):
            continue
        out[kind] = "structural" if section.startswith(STRUCTURAL_SECTIONS) else "lexical"
    return out


def select(examples: Sequence[Example], limit: int | None) -> list[Example]:
    """At most ``limit`` examples of each type, in file order (all with ``limit=None``)."""
    if limit is None:
        return list(examples)
    seen: dict[str, int] = defaultdict(int)
    out = []
    for ex in examples:
        if seen[ex.type] < limit:
            seen[ex.type] += 1
            out.append(ex)
    return out


# ----------------------------------------------------------------------------- metrics


def normalize(text: str) -> str:
    """Collapse whitespace: targets are space-tokenized, decoders may differ in spacing."""
    return " ".join(text.split())


def exact_match(prediction: str, target: str) -> bool:
    """Full-sequence exact match: every token of the output right, nothing missing or extra."""
    return normalize(prediction) == normalize(target)


def is_well_formed(prediction: str) -> bool:
    """Whether a decoded logical form has balanced parentheses.

    Every ``)`` must close an open ``(`` and every ``(`` must be closed. An empty output
    is not a logical form, so it does not count as well-formed; a truncated output
    (cut at the token limit) usually leaves a parenthesis open and fails.
    """
    if not prediction.strip():
        return False
    depth = 0
    for ch in prediction:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def token_accuracy(prediction: str, target: str) -> float:
    """Share of target positions whose whitespace token the output gets right.

    Divided by the longer of the two lengths, so extra output tokens cost as much as
    missing ones. A softer signal than exact match while a model is still learning.
    """
    pred, gold = prediction.split(), target.split()
    if not pred and not gold:
        return 1.0
    right = sum(p == g for p, g in zip(pred, gold))
    return right / max(len(pred), len(gold))


def summarize(predictions: Sequence[str], targets: Sequence[str], *, logical_forms: bool = True) -> dict[str, float]:
    """Mean exact match, token accuracy and (for logical forms) well-formedness of a set of outputs."""
    n = max(len(targets), 1)
    out = {"exact_match": sum(map(exact_match, predictions, targets)) / n,
           "token_accuracy": sum(map(token_accuracy, predictions, targets)) / n}
    if logical_forms:
        out["well_formed"] = sum(map(is_well_formed, predictions)) / n
    return out


def _row(task: str, subtask: str, metric: str, values: Sequence[float]) -> dict[str, Any]:
    # `primary`: exact match on the whole gen split is the task's headline (Petty et al. Tables 3-5).
    return {"task": task, "subtask": subtask, "metric": metric,
            "value": sum(values) / len(values) if values else float("nan"), "n": len(values),
            "question_type": "generative", "primary": subtask == "gen" and metric == "exact_match"}


def score(task: str, spec: TaskData, examples: Sequence[Example], predictions: Sequence[str]) -> list[dict[str, Any]]:
    """Tidy rows (``task``, subtask, metric, value, n) for decoded outputs of any splits of ``spec``.

    Subtasks: the split (``dev``, ``gen``); for a split with several types also
    ``<split>/<type>``; on COGS/COGS-vf gen also ``gen/lexical`` and ``gen/structural``.
    Metrics: ``exact_match`` everywhere, ``well_formed`` on COGS/COGS-vf gen.
    """
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    categories = gen_categories() if spec.logical_forms else {}
    types_per_split: dict[str, set[str]] = defaultdict(set)
    for ex in examples:
        types_per_split[ex.split].add(ex.type)
    groups: dict[str, list[tuple[Example, str]]] = defaultdict(list)
    for ex, pred in zip(examples, predictions):
        groups[ex.split].append((ex, pred))
        if len(types_per_split[ex.split]) > 1:
            groups[f"{ex.split}/{ex.type}"].append((ex, pred))
        if ex.split == "gen" and ex.type in categories:
            groups[f"gen/{categories[ex.type]}"].append((ex, pred))
    rows = []
    for subtask in sorted(groups, key=lambda s: (s.split("/")[0], "/" in s, s)):
        pairs = groups[subtask]
        rows.append(_row(task, subtask, "exact_match", [float(exact_match(p, e.target)) for e, p in pairs]))
        if spec.logical_forms and subtask.split("/")[0] == "gen":
            rows.append(_row(task, subtask, "well_formed", [float(is_well_formed(p)) for _, p in pairs]))
    return rows


# ----------------------------------------------------------------------------- evaluation


class Cogs:
    """COGS, COGS-vf or passivization (registry entries): ``data`` says which files."""

    needs_heldout = False
    finetunes = True

    def __init__(self, config: type[CogsEvalConfig], data: TaskData):
        self.config, self.data = config, data

    def evaluate(self, handle: Handle | None, cfg: CogsEvalConfig, ctx: EvalContext) -> list[dict[str, Any]]:
        """Finetune on the train split, then score dev and gen.

        Finetuning changes the handle's weights in place. ``cfg.limit`` caps the evaluated
        examples per split and type. ``ctx.out_dir`` receives ``predictions.json`` (one record per
        evaluated example), ``results.json`` (the rows) and ``finetune/`` (training log and the
        decoded outputs of every periodic evaluation); ``ctx.finetuned_out``, if given, the
        finetuned model in Hugging Face format.
        """
        assert handle is not None
        spec, task = self.data, self.config.section
        train = load_split(spec, "train")
        evals = {split: select(load_split(spec, split), cfg.limit) for split in ("dev", "gen")}
        max_new_tokens = _max_new_tokens(handle.tokenizer, [ex for exs in evals.values() for ex in exs],
                                         cfg.max_new_tokens)
        result = finetune(
            handle,
            [(ex.input, ex.target) for ex in train],
            cfg.finetune,
            eval_sets={split: [(ex.input, ex.target) for ex in exs] for split, exs in evals.items()},
            out_dir=ctx.out_dir / "finetune",
            decode_batch_size=cfg.batch_size,
            max_new_tokens=max_new_tokens,
            summarize=functools.partial(summarize, logical_forms=spec.logical_forms),
            save_to=ctx.finetuned_out,
        )
        if handle.truncated:
            _console().print(f"[yellow]warning:[/yellow] {handle.truncated} prompts were cut from the left to fit "
                             f"the model's context of {handle.max_length} tokens; their outputs are likely wrong",
                             highlight=False)
        examples = [ex for split in ("dev", "gen") for ex in evals[split]]
        predictions = [p for split in ("dev", "gen") for p in result.outputs[split]]
        rows = score(task, spec, examples, predictions)
        categories = gen_categories() if spec.logical_forms else {}
        records = [
            {**asdict(ex), "category": categories.get(ex.type), "prediction": pred,
             "exact_match": exact_match(pred, ex.target),
             **({"well_formed": is_well_formed(pred)} if spec.logical_forms else {})}
            for ex, pred in zip(examples, predictions)
        ]
        atomic_write_json(ctx.out_dir / "predictions.json", records)
        atomic_write_json(ctx.out_dir / "results.json", rows)
        return rows

    def needs_model(self, cfg: CogsEvalConfig) -> bool:
        return True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Finetune a pretrained model on the task's train split, then decode dev and gen greedily and "
            "report exact match (on gen also per lexical/structural category and per type) and, for COGS "
            "and COGS-vf, well-formedness of the logical forms. Finetuning options: --set finetune.steps=N, "
            "finetune.batch_size, finetune.lr, finetune.eval_every, finetune.max_train_examples.")
        parser.add_argument("--limit", type=int, metavar="N",
                            help="evaluate at most N examples per split and type (quick checks; default: all)")

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"limit": args.limit}

    def data_files(self, cfg: CogsEvalConfig) -> list[str]:
        files = [self.data.pattern.format(split=split) for split in ("train", "dev", "gen")]
        return files + (["cogs/gen_cases_to_paper_sections.json"] if self.data.logical_forms else [])

    def flops(self, cfg: CogsEvalConfig, n_params: int, study: StudyConfig) -> float:
        ft = cfg.finetune
        limit = cfg.limit or 21_000
        return 6.0 * n_params * ft.steps * ft.batch_size * 96 + 2.0 * n_params * limit * 3 * 128

    def report(self, rows: list[dict[str, Any]], cfg: CogsEvalConfig, ctx: EvalContext, console: Console) -> int:
        headline = [r for r in rows if "/" not in r["subtask"] or r["subtask"] in ("gen/lexical", "gen/structural")]
        print_rows(headline, f"{self.config.section}: headline rows (every type is in the results file)", console)
        return 0


def _max_new_tokens(tokenizer: Any, examples: Sequence[Example], max_new_tokens: int | None) -> int:
    """The decoding budget: as configured, else the longest target + 1 (room for <eos>).

    Says so when some targets cannot be decoded within a configured budget (they would count as wrong).
    """
    lengths = [len(ids) for ids in tokenizer([ex.target for ex in examples], add_special_tokens=False)["input_ids"]]
    if max_new_tokens is None:
        return max(lengths, default=0) + 1
    too_long = sum(n > max_new_tokens for n in lengths)
    if too_long:
        _console().print(
            f"[yellow]warning:[/yellow] {too_long} of {len(examples)} evaluation targets are longer than "
            f"max_new_tokens={max_new_tokens} tokens (longest: {max(lengths)}); their outputs will be cut and "
            f"count as wrong. Raise it with --set max_new_tokens={max(lengths) + 1}", highlight=False)
    return max_new_tokens


def _console() -> Console:
    return Console(stderr=True)
