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
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codemix.data.fetch import data_path
from codemix.errors import CodemixError, ConfigError, DataError

if TYPE_CHECKING:
    from codemix.config import CogsEvalConfig, StudyConfig

__all__ = [
    "SPLITS",
    "TASKS",
    "Example",
    "TaskData",
    "add_arguments",
    "evaluate",
    "exact_match",
    "gen_categories",
    "is_well_formed",
    "load_split",
    "normalize",
    "run",
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

    name: str
    pattern: str
    """Path of a split relative to the data directory, with ``{split}``."""
    has_types: bool
    """Whether the TSV has a third column with the example's type (COGS, COGS-vf)."""
    logical_forms: bool
    """Whether outputs are logical forms (well-formedness and lexical/structural apply)."""


TASKS: dict[str, TaskData] = {
    "cogs": TaskData("cogs", "cogs/cogs_{split}.tsv.gz", has_types=True, logical_forms=True),
    "cogs_vf": TaskData("cogs_vf", "cogs_vf/cogs_vf_{split}.tsv.gz", has_types=True, logical_forms=True),
    "passivization": TaskData("passivization", "passivization/passiv_en_nps_{split}.tsv.gz",
                              has_types=False, logical_forms=False),
}


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


def _task(task: str) -> TaskData:
    if task not in TASKS:
        raise CodemixError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")
    return TASKS[task]


def load_split(task: str, split: str) -> list[Example]:
    """All examples of one split, in file order.

    A split name outside train/dev/test/gen, or a split file missing from the data
    directory, raises a :class:`DataError` that says what to do.
    """
    spec = _task(task)
    if split not in SPLITS:
        raise DataError(f"{task} has no split {split!r}; expected one of {', '.join(SPLITS)}")
    path = data_path(spec.pattern.format(split=split))
    examples = []
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        for i, line in enumerate(f):
            fields = line.rstrip("\n").split("\t")
            want = 3 if spec.has_types else 2
            if len(fields) != want:
                raise DataError(f"{path} line {i + 1}: expected {want} tab-separated fields, found {len(fields)}; "
                                f"the file is not the {task} {split} split (re-fetch it with `codemix data fetch`)")
            if spec.has_types:
                source, target, kind = fields
            else:
                source, target = fields
                kind = source.rsplit(" ", 1)[-1]  # the task tag: decl or passiv
            examples.append(Example(source, target, kind, split, i))
    if not examples:
        raise DataError(f"{path} is empty; expected the {task} {split} split (re-fetch it with `codemix data fetch`)")
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


def score(task: str, examples: Sequence[Example], predictions: Sequence[str]) -> list[dict[str, Any]]:
    """Tidy rows (task, subtask, metric, value, n) for decoded outputs of any splits.

    Subtasks: the split (``dev``, ``gen``); for a split with several types also
    ``<split>/<type>``; on COGS/COGS-vf gen also ``gen/lexical`` and ``gen/structural``.
    Metrics: ``exact_match`` everywhere, ``well_formed`` on COGS/COGS-vf gen.
    """
    if len(examples) != len(predictions):
        raise ValueError(f"{len(examples)} examples but {len(predictions)} predictions")
    spec = _task(task)
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


def _config_for(task: str, study: StudyConfig | None) -> CogsEvalConfig:
    from codemix.config import CogsEvalConfig

    cfg = getattr(study.evals, task, None) if study is not None else None
    return cfg if cfg is not None else CogsEvalConfig()


def evaluate(
    model: Any,
    cfg: CogsEvalConfig,
    *,
    out_dir: str | Path,
    limit: int | None = None,
    study: StudyConfig | None = None,
    task: str = "cogs",
    device: str = "auto",
    finetuned_out: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Finetune ``model`` on ``task``'s train split, then score dev and gen.

    ``model`` is a checkpoint/HF directory or a loaded :class:`~codemix.evals.handle.Handle`
    (finetuning changes a given handle's weights in place). ``limit`` (default
    ``cfg.limit``) caps the evaluated examples per split and type. ``out_dir`` receives
    ``predictions.json`` (one record per evaluated example), ``results.json`` (the rows)
    and ``finetune/`` (training log and the decoded outputs of every periodic evaluation).
    ``finetuned_out``, if given, receives the finetuned model in Hugging Face format.
    ``study`` is accepted for the common benchmark protocol; COGS needs nothing from it.
    """
    from codemix.io import atomic_write_json
    from codemix.train.finetune import finetune

    spec = _task(task)
    limit = cfg.limit if limit is None else limit
    out_dir = Path(out_dir)
    train = load_split(task, "train")
    evals = {split: select(load_split(task, split), limit) for split in ("dev", "gen")}
    handle = _load(model, device)
    max_new_tokens = _max_new_tokens(handle.tokenizer, [ex for exs in evals.values() for ex in exs],
                                     cfg.max_new_tokens)
    result = finetune(
        handle,
        [(ex.input, ex.target) for ex in train],
        cfg.finetune,
        eval_sets={split: [(ex.input, ex.target) for ex in exs] for split, exs in evals.items()},
        out_dir=out_dir / "finetune",
        decode_batch_size=cfg.batch_size,
        max_new_tokens=max_new_tokens,
        summarize=functools.partial(summarize, logical_forms=spec.logical_forms),
        save_to=finetuned_out,
    )
    if handle.truncated:
        _console().print(f"[yellow]warning:[/yellow] {handle.truncated} prompts were cut from the left to fit the "
                         f"model's context of {handle.max_length} tokens; their outputs are likely wrong",
                         highlight=False)
    examples = [ex for split in ("dev", "gen") for ex in evals[split]]
    predictions = [p for split in ("dev", "gen") for p in result.outputs[split]]
    rows = score(spec.name, examples, predictions)
    categories = gen_categories() if spec.logical_forms else {}
    records = [
        {**asdict(ex), "category": categories.get(ex.type), "prediction": pred,
         "exact_match": exact_match(pred, ex.target),
         **({"well_formed": is_well_formed(pred)} if spec.logical_forms else {})}
        for ex, pred in zip(examples, predictions)
    ]
    atomic_write_json(out_dir / "predictions.json", records)
    atomic_write_json(out_dir / "results.json", rows)
    return rows


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


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def _load(model: Any, device: str) -> Any:
    """A :class:`Handle` for a path, or the given handle."""
    if isinstance(model, (str, Path)):
        from codemix.evals.handle import load_handle

        return load_handle(model, device=device)
    return model


# ----------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``codemix eval cogs|cogs_vf|passivization`` (the CLI adds --set and --study)."""
    from codemix.evals import add_model_arguments

    parser.description = (
        "Finetune a pretrained model on the task's train split, then decode dev and gen greedily and "
        "report exact match (on gen also per lexical/structural category and per type) and, for COGS "
        "and COGS-vf, well-formedness of the logical forms. Finetuning options: --set finetune.steps=N, "
        "finetune.batch_size, finetune.lr, finetune.eval_every, finetune.max_train_examples."
    )
    add_model_arguments(parser)
    parser.add_argument("--limit", type=int, metavar="N",
                        help="evaluate at most N examples per split and type (quick checks; default: all)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="result rows as CSV (default: <benchmark>-results.csv); per-example outputs and the "
                             "finetuning log go to the directory of the same name without .csv")
    parser.add_argument("--finetuned-out", metavar="DIR",
                        help="also save the finetuned model here (Hugging Face format)")


def _resolve_config(args: argparse.Namespace) -> CogsEvalConfig:
    from pydantic import ValidationError

    from codemix.config import CogsEvalConfig, apply_overrides, load_study

    study = load_study(args.study) if getattr(args, "study", None) else None
    base = _config_for(args.benchmark, study)
    raw = apply_overrides(base.model_dump(), getattr(args, "overrides", None))
    try:
        return CogsEvalConfig.model_validate(raw)
    except ValidationError as err:
        problems = [f"--set {'.'.join(map(str, e['loc']))}: {e['msg']} (found {e.get('input')!r})"
                    for e in err.errors()]
        raise ConfigError(problems) from None


def run(args: argparse.Namespace) -> int:
    """``codemix eval cogs|cogs_vf|passivization``: finetune, evaluate, write rows and outputs."""
    from codemix.config import print_config
    from codemix.evals import write_rows

    task = args.benchmark
    _task(task)
    if args.limit is not None and args.limit <= 0:
        raise CodemixError(f"--limit must be a positive number of examples, found {args.limit}")
    cfg = _resolve_config(args)
    if args.limit is not None:
        cfg.limit = args.limit
    print_config(cfg, title=f"{task} config")
    out = Path(args.out or f"{task}-results.csv")
    out_dir = out.with_suffix("") if out.suffix else out.with_name(out.name + "-outputs")
    start = time.perf_counter()
    rows = evaluate(args.model, cfg, out_dir=out_dir, task=task, device=args.device,
                    finetuned_out=args.finetuned_out)
    write_rows(rows, out)
    console = _console()
    for row in _summary(rows):
        console.print(f"{row['subtask']:<12} {row['metric']:<12} {row['value']:.4f}  (n={row['n']})")
    console.print(f"wrote {out} and {out_dir}/predictions.json in {time.perf_counter() - start:.0f} s")
    return 0


def _summary(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The headline rows: per split and per gen category (the per-type rows are in the CSV)."""
    return [r for r in rows if "/" not in r["subtask"] or r["subtask"] in ("gen/lexical", "gen/structural")]
