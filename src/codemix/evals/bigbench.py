"""Zero-shot BIG-bench JSON tasks (Petty et al. 2024, §4.2.2; Srivastava et al. 2022).

A BIG-bench JSON task (``task.json``) holds examples with an ``input`` and either
``target_scores`` (a multiple-choice question: option -> score) or ``target`` (a string or
a list of acceptable strings), or both. This module loads any such task and evaluates a
:class:`~codemix.evals.handle.Handle` on it zero-shot.

**The prompt** follows BIG-bench's ``default_format_fn`` for zero shots::

    task_prefix + example_input_prefix + input [+ choice_prefix + choice_prefix.join(choices)] + example_output_prefix

with BIG-bench's defaults ``example_input_prefix="\\nQ: "``, ``example_output_prefix="\\nA: "``,
``choice_prefix="\\n  choice: "``, ``task_prefix=""``. The choices are appended (when the
example has ``target_scores`` and ``append_choices_to_input`` is true, the default) in a
random permutation of their sorted order, seeded per example (task, subtask, index) so
that a prompt never depends on ``--limit`` or on which other tasks run.

**Multiple choice** scores each option as a continuation of the prompt
(:meth:`Handle.score`, summed log-probability; the prompt's forward pass is shared across
options). ``multiple_choice_grade`` is the ``target_scores`` value of the highest-scoring
option, averaged over examples (BIG-bench's metric; 0/1 scores make it accuracy);
``multiple_choice_grade_norm`` picks the option by log-probability per UTF-8 byte instead,
which removes the bias towards short options.

**Generative** examples are decoded greedily until a newline, the task's ``stop_string``
or the output prefix (e.g. ``A:``), and post-processed with the task's ``output_regex``
(first match). The trailing spaces of the prompt are moved into the completion (a BPE
model writes ``" 5"``, not ``" "`` then ``"5"``), and the completion is stripped. Metrics
are the ones the task declares: ``exact_str_match`` (any target, 0/1), ``bleu``
(sacrebleu corpus BLEU, 0-100, all targets as references) and ``rouge``
(``rouge1``/``rouge2``/``rougeLsum`` F-measure, best target, mean, 0-100, rouge-score).

Rows are tidy (``task, subtask, metric, value, n``) plus ``question_type``
(``multiple_choice`` or ``generative``); a task without subtasks has ``subtask`` equal to
its name. Tasks whose keywords mark them as code tasks are left out unless asked for (as in
the paper, which measures what code does to *non-code* abilities).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sacrebleu
from rich.console import Console
from rich.progress import Progress
from rouge_score import rouge_scorer

from codemix.config import BigbenchEvalConfig, StudyConfig
from codemix.data.fetch import data_path
from codemix.errors import DataError
from codemix.evals.benchmark import EvalContext, print_rows
from codemix.evals.handle import Handle
from codemix.io import atomic_write_json

__all__ = [
    "CODE_KEYWORDS",
    "DEFAULT_PATH",
    "GENERATIVE_METRICS",
    "Bigbench",
    "BigbenchTask",
    "exact_str_match",
    "bleu",
    "load_tasks",
    "multiple_choice_grade",
    "rouge",
    "select_tasks",
]

#: The data directory's BIG-bench file (SOURCES.md): one JSON record per task.json.
DEFAULT_PATH = "bigbench/bigbench_tasks.jsonl.gz"
#: Keywords BIG-bench uses for tasks about source code.
CODE_KEYWORDS = frozenset({"computer code", "programming language"})
GENERATIVE_METRICS = ("exact_str_match", "bleu", "rouge")
_KNOWN_METRICS = frozenset({"multiple_choice_grade", *GENERATIVE_METRICS})
_DEFAULTS = {"task_prefix": "", "example_input_prefix": "\nQ: ", "example_output_prefix": "\nA: ",
             "choice_prefix": "\n  choice: ", "append_choices_to_input": True}


# ---------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class BigbenchTask:
    """One evaluable BIG-bench task or subtask: its formatting, metrics and examples."""

    task: str
    subtask: str
    examples: list[dict[str, Any]]
    metrics: list[str]
    preferred_score: str
    keywords: list[str] = field(default_factory=list)
    task_prefix: str = ""
    input_prefix: str = "\nQ: "
    output_prefix: str = "\nA: "
    choice_prefix: str = "\n  choice: "
    append_choices_to_input: bool = True
    output_regex: str | None = None
    stop_string: str | None = None
    source: str = ""

    @property
    def key(self) -> str:
        return self.task if self.subtask == self.task else f"{self.task}:{self.subtask}"

    @property
    def is_code_task(self) -> bool:
        return bool(CODE_KEYWORDS & {k.lower() for k in self.keywords})

    def mc_examples(self, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
        if "multiple_choice_grade" not in self.metrics:
            return []
        return [(i, e) for i, e in enumerate(self.examples[:limit]) if e.get("target_scores")]

    def generative_examples(self, limit: int | None = None) -> list[tuple[int, dict[str, Any]]]:
        if not any(m in self.metrics for m in GENERATIVE_METRICS):
            return []
        return [(i, e) for i, e in enumerate(self.examples[:limit]) if _targets(e)]

    def prompt(self, index: int, example: dict[str, Any]) -> str:
        """The zero-shot prompt of example ``index`` (BIG-bench's ``default_format_fn``)."""
        text = str(example["input"])
        scores = example.get("target_scores")
        if scores and self.append_choices_to_input:
            rng = np.random.default_rng(_seed(self.task, self.subtask, index))
            choices = list(rng.permutation(sorted(scores)))
            text = text + self.choice_prefix + self.choice_prefix.join(choices)
        prefix = example.get("task_prefix", self.task_prefix)  # a few examples override it
        return str(prefix) + self.input_prefix + text + self.output_prefix

    def stops(self) -> list[str]:
        stops = ["\n"]
        if self.stop_string:
            stops.append(self.stop_string)
        if self.output_prefix.strip():
            stops.append(self.output_prefix.strip())
        return stops


def _seed(*parts: Any) -> int:
    return int.from_bytes(hashlib.sha256(json.dumps(parts).encode()).digest()[:8], "little")


def _targets(example: dict[str, Any]) -> list[str]:
    target = example.get("target")
    if target is None:
        return []
    return [str(t) for t in target] if isinstance(target, list) else [str(target)]


def _check_task_json(data: Any, where: str) -> list[str]:
    """Every problem of one task.json object (collected, so one error lists them all)."""
    if not isinstance(data, dict):
        return [f"{where}: expected a JSON object with 'examples', found {type(data).__name__}"]
    problems = []
    if "examples" not in data and "subtasks" not in data:
        problems.append(f"{where}: no 'examples' list (and no 'subtasks'); if its subtasks are task.json files "
                        "in subdirectories, pass the directory")
    if "subtasks" in data and not (isinstance(data["subtasks"], list)
                                   and all(isinstance(s, dict) for s in data["subtasks"])):
        problems.append(f"{where}: 'subtasks' must be a list of task objects")
    for key in ("task_prefix", "example_input_prefix", "example_output_prefix", "choice_prefix", "output_regex",
                "stop_string"):
        if key in data and data[key] is not None and not isinstance(data[key], str):
            problems.append(f"{where}: '{key}' must be a string, found {data[key]!r}")
    if "output_regex" in data and isinstance(data["output_regex"], str):
        try:
            re.compile(data["output_regex"])
        except re.error as err:
            problems.append(f"{where}: 'output_regex' {data['output_regex']!r} is not a valid regex ({err})")
    if "examples" in data:
        examples = data["examples"]
        metrics = data.get("metrics", [])
        if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
            problems.append(f"{where}: 'metrics' must be a list of metric names, found {metrics!r}")
            metrics = []
        unknown = [m for m in metrics if m not in _KNOWN_METRICS]
        if unknown:
            problems.append(f"{where}: unsupported metrics {unknown}; supported: {sorted(_KNOWN_METRICS)}")
        if not metrics:
            problems.append(f"{where}: no 'metrics' declared (e.g. [\"multiple_choice_grade\"])")
        if not isinstance(examples, list):
            problems.append(f"{where}: 'examples' must be a list, found {type(examples).__name__}")
            examples = []
        for i, ex in enumerate(examples):
            if not isinstance(ex, dict) or "input" not in ex:
                problems.append(f"{where}: examples[{i}] has no 'input'")
                continue
            scores = ex.get("target_scores")
            if scores is not None and (not isinstance(scores, dict) or not scores or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) for v in scores.values())):
                problems.append(f"{where}: examples[{i}].target_scores must map each option to a number, "
                                f"found {scores!r}")
            target = ex.get("target")
            if target is not None and not (isinstance(target, str) or (
                    isinstance(target, list) and target and all(isinstance(t, str) for t in target))):
                problems.append(f"{where}: examples[{i}].target must be a string or a list of strings, "
                                f"found {target!r}")
            if scores is None and target is None:
                problems.append(f"{where}: examples[{i}] has neither 'target' nor 'target_scores'")
            elif "multiple_choice_grade" in metrics and scores is None:
                problems.append(f"{where}: examples[{i}] lacks 'target_scores', needed by multiple_choice_grade")
            elif any(m in GENERATIVE_METRICS for m in metrics) and target is None and \
                    "multiple_choice_grade" not in metrics:
                problems.append(f"{where}: examples[{i}] lacks 'target', needed by {metrics}")
            if len(problems) > 20:
                problems.append(f"{where}: (stopped after 20 problems)")
                return problems
    return problems


def _make_tasks(data: dict[str, Any], task: str, subtask: str | None, where: str,
                parent: dict[str, Any] | None = None) -> list[BigbenchTask]:
    """Tasks of one task.json object: itself if it has examples, plus its inline subtasks."""
    out: list[BigbenchTask] = []
    for i, sub in enumerate(data.get("subtasks") or []):
        name = str(sub.get("name", f"subtask_{i}")).split(":")[-1]
        out += _make_tasks(sub, task, name, f"{where}: subtasks[{i}]", parent=data)
    if "examples" not in data:
        return out
    def get(key: str) -> Any:
        return data.get(key, _DEFAULTS.get(key))

    metrics = list(data.get("metrics", []))
    out.append(BigbenchTask(
        task=task, subtask=subtask or task, examples=list(data["examples"]), metrics=metrics,
        preferred_score=str(data.get("preferred_score", metrics[0] if metrics else "")),
        keywords=list(data.get("keywords") or (parent or {}).get("keywords") or []),
        task_prefix=get("task_prefix") or "", input_prefix=get("example_input_prefix"),
        output_prefix=get("example_output_prefix"), choice_prefix=get("choice_prefix"),
        append_choices_to_input=bool(get("append_choices_to_input")), output_regex=data.get("output_regex") or None,
        stop_string=data.get("stop_string") or None, source=where))
    return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}; "
                        "fix the file (BIG-bench task.json format)") from None
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text ({err}); a task.json must be UTF-8 JSON") from None


def _load_jsonl(path: Path) -> list[BigbenchTask]:
    opener = gzip.open if path.suffix == ".gz" else open
    tasks, problems = [], []
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"{where}: not valid JSON ({err.msg})")
                continue
            if not isinstance(record, dict) or "task" not in record or "task_json" not in record:
                problems.append(f"{where}: expected {{\"task\", \"subtask\", \"task_json\"}}")
                continue
            where = f"{where} ({record['task']}{':' + record['subtask'] if record.get('subtask') else ''})"
            if record.get("subtask") is not None and "examples" not in record["task_json"]:
                problems.append(f"{where}: a subtask record needs 'examples'")
                continue
            if record.get("subtask") is None and "examples" not in record["task_json"]:
                continue  # a parent task's metadata record (its subtasks are records of their own)
            found = _check_task_json(record["task_json"], where)
            problems += found
            if not found:
                tasks += _make_tasks(record["task_json"], record["task"], record.get("subtask"), where)
    if problems:
        raise DataError(f"malformed BIG-bench file {path}:\n" + "\n".join(f"  - {p}" for p in problems))
    return tasks


def _load_task_file(path: Path, task: str | None = None, subtask: str | None = None,
                    parent: dict[str, Any] | None = None) -> list[BigbenchTask]:
    data = _read_json(path)
    problems = _check_task_json(data, str(path))
    if problems:
        raise DataError("malformed BIG-bench task.json:\n" + "\n".join(f"  - {p}" for p in problems))
    if task is None:  # a lone file: named by its `name` ("task" or "task:subtask")
        task, _, named_subtask = str(data.get("name") or path.parent.name).partition(":")
        subtask = subtask or named_subtask or None
    return _make_tasks(data, task, subtask, str(path), parent=parent)


def _load_dir(root: Path) -> list[BigbenchTask]:
    """A BIG-bench task tree: ``<task>/task.json`` and ``<task>/<subtask>/task.json``.

    A parent ``task.json`` with neither examples nor inline subtasks (BIG-bench's layout for
    tasks with subtask directories) only lends its metadata (keywords) to its subtasks.
    """
    files = sorted(root.rglob("task.json"))
    if not files:
        raise DataError(f"no task.json files under {root}; pass a BIG-bench task directory, a task.json or "
                        f"a BIG-bench JSONL like {DEFAULT_PATH}")
    dirs = {f.parent for f in files}
    tasks = []
    for f in files:
        has_children = any(d != f.parent and f.parent in d.parents for d in dirs)
        if has_children:
            data = _read_json(f)
            if isinstance(data, dict) and "examples" not in data and "subtasks" not in data:
                continue  # metadata of a task whose subtasks are directories below
        if f.parent.parent in dirs and f.parent != root:
            parent = _read_json(f.parent.parent / "task.json")
            tasks += _load_task_file(f, f.parent.parent.name, f.parent.name,
                                     parent if isinstance(parent, dict) else None)
        elif f.parent != root and f.parent.parent != root:  # <task>/<subtask>/task.json, no parent file
            tasks += _load_task_file(f, f.parent.parent.name, f.parent.name)
        else:
            tasks += _load_task_file(f, None if f.parent == root else f.parent.name)
    return tasks


def load_tasks(path: str | Path | None = None) -> list[BigbenchTask]:
    """Every task and subtask in a BIG-bench JSONL (default: the data directory's), a directory or a file.

    A directory is searched for ``task.json`` files; ``<task>/task.json`` is task ``<task>``
    and ``<task>/<subtask>/task.json`` its subtask. A single ``task.json`` is named by its
    ``name`` field. Inline ``subtasks`` lists are expanded. Malformed files raise one
    :class:`~codemix.errors.DataError` listing every problem.
    """
    p = data_path(path or DEFAULT_PATH)
    if p.is_dir():
        tasks = _load_dir(p)
    elif p.name.endswith((".jsonl", ".jsonl.gz")):
        tasks = _load_jsonl(p)
    else:
        tasks = _load_task_file(p)
    if not tasks:
        raise DataError(f"{p} holds no task with examples")
    return tasks


def select_tasks(tasks: Sequence[BigbenchTask], names: Sequence[str] = (), *,
                 include_code_tasks: bool = False) -> list[BigbenchTask]:
    """The tasks named (``arithmetic`` = all its subtasks, ``arithmetic:1_digit_addition`` = one).

    No names: every task, less code tasks unless ``include_code_tasks``. A code task named
    explicitly is kept. An unknown name raises an error listing the known ones.
    """
    if not names:
        return [t for t in tasks if include_code_tasks or not t.is_code_task]
    chosen, unknown = [], []
    for name in names:
        name = name.strip().replace("/", ":")
        hits = [t for t in tasks if name in (t.task, t.key, f"{t.task}:{t.subtask}")]
        if not hits:
            unknown.append(name)
        chosen += [t for t in hits if t not in chosen]
    if unknown:
        known = sorted({t.task for t in tasks})
        raise DataError(f"unknown BIG-bench task(s) {unknown}; known tasks: {', '.join(known)} "
                        f"(a subtask is named task:subtask, e.g. {tasks[0].task}:{tasks[0].subtask})")
    return chosen


# ---------------------------------------------------------------------- metrics


def multiple_choice_grade(log_probs: Sequence[Sequence[float]], target_scores: Sequence[Sequence[float]]) -> float:
    """Mean target score of the arg-max option (first one on ties), as BIG-bench computes it."""
    if not log_probs:
        return float("nan")
    return float(np.mean([scores[int(np.argmax(lp))] for lp, scores in zip(log_probs, target_scores)]))


def exact_str_match(predictions: Sequence[str], targets: Sequence[Sequence[str]]) -> float:
    """Fraction of predictions equal (after stripping whitespace) to one of their targets."""
    if not predictions:
        return float("nan")
    return float(np.mean([any(p.strip() == t.strip() for t in ts) for p, ts in zip(predictions, targets)]))


def bleu(predictions: Sequence[str], targets: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU (sacrebleu, 0-100) with every target of an example as a reference.

    Examples with fewer targets repeat their first one, which leaves BLEU unchanged
    (clipped n-gram counts and the closest reference length are the same).
    """
    if not predictions:
        return float("nan")
    width = max(len(t) for t in targets)
    streams = [[ts[k] if k < len(ts) else ts[0] for ts in targets] for k in range(width)]
    return float(sacrebleu.corpus_bleu(list(predictions), streams).score)


def rouge(predictions: Sequence[str], targets: Sequence[Sequence[str]]) -> dict[str, float]:
    """ROUGE-1/2/Lsum F-measure (rouge-score, 0-100): best target per example, mean over examples."""
    kinds = ("rouge1", "rouge2", "rougeLsum")
    if not predictions:
        return {k: float("nan") for k in kinds}
    scorer = rouge_scorer.RougeScorer(list(kinds), use_stemmer=True)
    best = {k: [] for k in kinds}
    for p, ts in zip(predictions, targets):
        # rougeLsum splits summaries at newlines; keep sentences on lines as BIG-bench does.
        scores = [scorer.score(t.replace(". ", ".\n"), p.replace(". ", ".\n")) for t in ts]
        for k in kinds:
            best[k].append(max(s[k].fmeasure for s in scores))
    return {k: 100.0 * float(np.mean(v)) for k, v in best.items()}


# ---------------------------------------------------------------------- evaluation


def _row(task: BigbenchTask, metric: str, value: float, n: int, question_type: str) -> dict[str, Any]:
    # `primary`: the task's preferred score, the one row per task that the §5.1 permutation tests pool.
    primary = metric == task.preferred_score or (task.preferred_score == "rouge" and metric == "rougeLsum")
    return {"task": task.task, "subtask": task.subtask, "metric": metric, "value": float(value), "n": int(n),
            "question_type": question_type, "primary": primary}


def _postprocess(text: str, regex: str | None) -> str:
    text = text.strip()
    if regex:
        found = re.findall(regex, text)
        text = found[0] if found else ""
        text = text if isinstance(text, str) else text[0]  # a regex with groups returns tuples
    return text


def _evaluate_mc(handle: Handle, task: BigbenchTask, examples: list[tuple[int, dict[str, Any]]],
                 batch_size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    contexts, continuations, spans = [], [], []
    for i, ex in examples:
        prompt = task.prompt(i, ex)
        choices = list(ex["target_scores"])
        spans.append((len(continuations), len(choices)))
        contexts += [prompt] * len(choices)
        continuations += choices
    scores = handle.score(contexts, continuations, batch_size=batch_size)
    per_example, lps, targets, norm_lps = [], [], [], []
    for (i, ex), (start, k) in zip(examples, spans):
        choices = continuations[start:start + k]
        lp = scores[start:start + k]
        norm = [s / max(1, len(c.encode("utf-8"))) for s, c in zip(lp, choices)]
        target = [float(ex["target_scores"][c]) for c in choices]
        lps.append(lp), norm_lps.append(norm), targets.append(target)
        per_example.append({"index": i, "question_type": "multiple_choice", "prompt": contexts[start],
                            "choices": choices, "log_probs": lp, "target_scores": target,
                            "prediction": choices[int(np.argmax(lp))],
                            "prediction_norm": choices[int(np.argmax(norm))]})
    rows = [_row(task, "multiple_choice_grade", multiple_choice_grade(lps, targets), len(lps), "multiple_choice"),
            _row(task, "multiple_choice_grade_norm", multiple_choice_grade(norm_lps, targets), len(lps),
                 "multiple_choice")]
    return rows, per_example


def _max_new_tokens(handle: Handle, targets: Iterable[Sequence[str]]) -> int:
    """Room for twice the longest target (the model is not told it; it only bounds decoding time)."""
    longest = max((len(handle.encode(" " + t)) for ts in targets for t in ts), default=16)
    return int(min(256, 2 * longest + 8))


def _evaluate_generative(handle: Handle, task: BigbenchTask, examples: list[tuple[int, dict[str, Any]]],
                         batch_size: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    prompts = [task.prompt(i, ex) for i, ex in examples]
    targets = [_targets(ex) for _, ex in examples]
    stripped = [p.rstrip(" ") for p in prompts]
    raw = handle.generate(stripped, max_new_tokens=_max_new_tokens(handle, targets), stop=task.stops(),
                          batch_size=batch_size)
    predictions = [_postprocess(r[0], task.output_regex) for r in raw]
    rows = []
    metrics = [m for m in task.metrics if m in GENERATIVE_METRICS]
    n = len(predictions)
    for metric in metrics:
        if metric == "exact_str_match":
            rows.append(_row(task, metric, exact_str_match(predictions, targets), n, "generative"))
        elif metric == "bleu":
            rows.append(_row(task, metric, bleu(predictions, targets), n, "generative"))
        elif metric == "rouge":
            rows += [_row(task, k, v, n, "generative") for k, v in rouge(predictions, targets).items()]
    per_example = [{"index": i, "question_type": "generative", "prompt": p, "completion": r[0], "prediction": pred,
                    "targets": ts, "exact_str_match": any(pred.strip() == t.strip() for t in ts)}
                   for (i, _), p, r, pred, ts in zip(examples, prompts, raw, predictions, targets)]
    return rows, per_example


class Bigbench:
    """The ``bigbench`` benchmark (registry entry)."""

    needs_heldout = False
    finetunes = False

    def __init__(self, config: type[BigbenchEvalConfig]):
        self.config = config

    def evaluate(self, handle: Handle | None, cfg: BigbenchEvalConfig, ctx: EvalContext) -> list[dict[str, Any]]:
        """Evaluate zero-shot on the configured BIG-bench tasks.

        ``cfg.limit`` caps the examples per task/subtask: the first N. Writes
        ``ctx.out_dir/predictions.json`` (every example's prompt, option log-probs or completion)
        and ``ctx.out_dir/summary.json``; returns tidy rows with ``question_type``.
        """
        assert handle is not None
        tasks = select_tasks(load_tasks(cfg.path), cfg.tasks, include_code_tasks=cfg.include_code_tasks)
        if not tasks:
            raise DataError("no BIG-bench tasks to run (all were code tasks?); set include_code_tasks or name tasks")
        truncated_before = handle.truncated
        rows: list[dict[str, Any]] = []
        outputs: dict[str, list[dict[str, Any]]] = {}
        start = time.perf_counter()
        n_examples = 0
        with Progress(transient=True, disable=not ctx.progress) as progress:
            bar = progress.add_task("BIG-bench", total=len(tasks))
            for task in tasks:
                progress.update(bar, description=f"BIG-bench {task.key}")
                outputs[task.key] = []
                mc, gen = task.mc_examples(cfg.limit), task.generative_examples(cfg.limit)
                if mc:
                    r, ex = _evaluate_mc(handle, task, mc, cfg.batch_size)
                    rows += r
                    outputs[task.key] += ex
                if gen:
                    r, ex = _evaluate_generative(handle, task, gen, cfg.batch_size)
                    rows += r
                    outputs[task.key] += ex
                n_examples += len({i for i, _ in mc} | {i for i, _ in gen})
                progress.advance(bar)
        atomic_write_json(ctx.out_dir / "predictions.json", outputs)
        atomic_write_json(ctx.out_dir / "summary.json", {
            "tasks": [t.key for t in tasks], "examples": n_examples,
            "truncated_inputs": handle.truncated - truncated_before, "seconds": time.perf_counter() - start,
            "limit": cfg.limit, "model": str(handle.path)})
        return rows

    def needs_model(self, cfg: BigbenchEvalConfig) -> bool:
        return True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Zero-shot BIG-bench JSON tasks. Multiple-choice examples are scored by the log-probability of each "
            "option given the prompt (multiple_choice_grade, and a per-byte length-normalized variant); "
            "generative examples are decoded greedily to a newline and scored with the metrics the task declares "
            "(exact_str_match, bleu, rouge). Code tasks are left out unless named or "
            "--set include_code_tasks=true.")
        parser.add_argument("--tasks", metavar="a,b|DIR|FILE",
                            help="comma-separated task names (task or task:subtask), or a directory of task.json "
                                 "files, or one task.json / BIG-bench JSONL (default: every non-code task of "
                                 f"{DEFAULT_PATH} in the data directory)")
        parser.add_argument("--limit", type=int, metavar="N", help="at most N examples per task/subtask (the first N)")
        parser.add_argument("--batch-size", type=int, metavar="N", help="sequences per forward pass")

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        values: dict[str, Any] = {"limit": args.limit, "batch_size": args.batch_size}
        if args.tasks and Path(args.tasks).exists():
            values.update(path=str(Path(args.tasks).resolve()), tasks=[])
        elif args.tasks:
            values["tasks"] = [t.strip() for t in args.tasks.split(",") if t.strip()]
        return values

    def data_files(self, cfg: BigbenchEvalConfig) -> list[str]:
        return [cfg.path or DEFAULT_PATH]

    def flops(self, cfg: BigbenchEvalConfig, n_params: int, study: StudyConfig) -> float:
        return 2.0 * n_params * (cfg.limit or 1000) * max(len(cfg.tasks), 24) * 4 * 128

    def report(self, rows: list[dict[str, Any]], cfg: BigbenchEvalConfig, ctx: EvalContext, console: Console) -> int:
        print_rows(rows, "BIG-bench (zero-shot)", console)
        summary = json.loads((ctx.out_dir / "summary.json").read_text())
        console.print(f"{summary['examples']} examples in {summary['seconds']:.1f} s; "
                      f"{summary['truncated_inputs']} inputs left-truncated to the model's context; "
                      f"details in {ctx.out_dir}/predictions.json")
        return 0
