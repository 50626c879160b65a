"""Few-shot adaptation to a low-resource language: how much a model gains from K tokens of it.

For a pretrained model and a corpus in a target language (Exercism's Rust or Go track,
TheAlgorithms in Rust or Go, any JSONL with a text field, any directory of source files):

1. the corpus is split into training and held-out documents by exercise (or by file) —
   never by line, which would leak near-identical code across the split — with a seeded draw;
2. for each budget K (e.g. 0, 20K, 100K, 500K tokens) the model, starting each time from the
   same checkpoint, continues its own pretraining objective on exactly the first K tokens of
   the training documents (:func:`codemix.train.finetune.continue_pretraining`);
3. each adapted model is measured on the held-out documents: bits per byte, next-token
   accuracy and next-line exact match (as :mod:`codemix.evals.perplexity` measures them) and,
   for exercise corpora, the likelihood of each held-out solution given its instructions.

One row per (language, corpus, budget, metric), ``subtask = LANG/CORPUS/BUDGET`` (e.g.
``rust/exercism_rust/20000``), so the analysis regresses the adaptation gain on m. The
primary row is the held-out bits per byte at the largest budget.
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from codemix.config import AdaptEvalConfig, SourceConfig, StudyConfig
from codemix.data.fetch import data_path
from codemix.data.sources import iter_documents
from codemix.errors import DataError
from codemix.evals.benchmark import EvalContext, print_rows
from codemix.evals.handle import Handle
from codemix.evals.mbpp import read_jsonl
from codemix.evals.perplexity import TextSet, score_texts
from codemix.io import atomic_write_json
from codemix.train.finetune import continue_pretraining

__all__ = ["BUILTIN_CORPORA", "Adapt", "Corpus", "Document", "load_corpus", "split_corpus"]

#: Built-in corpora (SOURCES.md, `adapt/`): name -> (file, language, text field, group field, instructions field).
BUILTIN_CORPORA = {
    **{f"exercism_{lang}": (f"adapt/exercism_{lang}.jsonl.gz", lang, "solution", "exercise", "instructions")
       for lang in ("rust", "go", "python")},
    **{f"thealgorithms_{lang}": (f"adapt/thealgorithms_{lang}.jsonl.gz", lang, "text", "path", None)
       for lang in ("rust", "go")},
}
#: Line comments, to show a model the exercise's instructions as code it knows.
_COMMENT = {"python": "# ", "rust": "// ", "go": "// ", "c": "// ", "cpp": "// ", "java": "// ", "js": "// "}


@dataclass(frozen=True)
class Document:
    """One document of a corpus: its group (exercise or file), its text, and its instructions, if any."""

    group: str
    text: str
    instructions: str | None = None


@dataclass(frozen=True)
class Corpus:
    name: str
    lang: str
    docs: list[Document] = field(default_factory=list)


def load_corpus(spec: str, *, lang: str | None = None, text_field: str = "text") -> Corpus:
    """A built-in corpus by name, a JSONL file (one document per line, its ``text_field``), or a
    directory of source files (one document per file, the language from the extensions).

    A JSONL record's group is its ``exercise``, ``path`` or ``id`` (else its line); its language its
    ``lang`` field, else ``lang``. Raises :class:`DataError` for a missing file or field and an empty corpus.
    """
    if spec in BUILTIN_CORPORA:
        path, lang, text_field, group_field, instr_field = BUILTIN_CORPORA[spec]
        rows = read_jsonl(data_path(path))
        docs = [Document(str(r[group_field]), r[text_field], r.get(instr_field) if instr_field else None)
                for r in rows if r.get(text_field)]
        return _checked(Corpus(spec, lang, docs), spec)
    path = data_path(spec)
    name = path.name.split(".")[0]
    if path.is_dir():
        found = list(iter_documents(SourceConfig(name=_safe(name), kind="dir", lang=lang or "code", paths=[str(path)])))
        langs = sorted({d.lang for d in found})
        if lang is None and len(langs) > 1:
            raise DataError(f"{path} holds source files of several languages ({', '.join(langs)}); pass --lang to "
                            "pick one, or point at a directory of one language")
        chosen = lang or (langs[0] if langs else "")
        docs = [Document(d.doc_id, d.text) for d in found if d.lang == chosen]
        return _checked(Corpus(name, chosen, docs), spec)
    rows = read_jsonl(path)
    missing = [i for i, r in enumerate(rows, 1) if not isinstance(r.get(text_field), str)]
    if missing:
        raise DataError(f"{path}: {len(missing)} line(s) lack a text field {text_field!r} (e.g. line {missing[0]}); "
                        "name the field with --set text_field=NAME")
    langs = sorted({r["lang"] for r in rows if r.get("lang")})
    chosen = lang or (langs[0] if len(langs) == 1 else None)
    if chosen is None:
        raise DataError(f"{path}: the records do not name one language ({langs or 'no `lang` field'}); pass --lang")
    docs = [Document(str(r.get("exercise") or r.get("path") or r.get("id") or i), r[text_field],
                     r.get("instructions")) for i, r in enumerate(rows) if r[text_field] and r.get("lang", chosen) == chosen]
    return _checked(Corpus(name, chosen, docs), spec)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_.-" else "_" for c in name) or "corpus"


def _checked(corpus: Corpus, spec: str) -> Corpus:
    if not corpus.docs:
        raise DataError(f"corpus {spec!r} holds no documents" + (f" in {corpus.lang}" if corpus.lang else "")
                        + "; check the path, --lang and text_field")
    return corpus


def _check_budget(handle: Handle, corpus: Corpus, train: list[Document], budget: int, heldout: float) -> None:
    """Raise a DataError when the training documents hold fewer than ``budget`` tokens (counted up to it)."""
    available = 0
    for doc in train:
        available += len(handle.encode(doc.text)) + 1
        if available >= budget:
            return
    raise DataError(f"budget {budget:,} tokens is above the {available:,} training tokens of corpus {corpus.name} "
                    f"({len(train)} documents after holding out {heldout:.0%}); lower --budgets or use a larger corpus")


def split_corpus(corpus: Corpus, *, heldout: float, seed: int) -> tuple[list[Document], list[Document]]:
    """(training, held-out) documents: a seeded draw of ``heldout`` of the groups, never splitting a group."""
    groups = sorted({d.group for d in corpus.docs})
    if len(groups) < 2:
        raise DataError(f"corpus {corpus.name} has {len(groups)} exercise/file group(s); adaptation needs at least "
                        "two (one to train on, one to measure)")
    rng = random.Random(f"adapt:{seed}:{corpus.name}")
    n_held = min(max(1, round(heldout * len(groups))), len(groups) - 1)
    held = set(rng.sample(groups, n_held))
    train = [d for d in corpus.docs if d.group not in held]
    return train, [d for d in corpus.docs if d.group in held]


class Adapt:
    """The ``adapt`` benchmark (registry entry)."""

    needs_heldout = False
    finetunes = True

    def __init__(self, config: type[AdaptEvalConfig]):
        self.config = config

    def evaluate(self, handle: Handle | None, cfg: AdaptEvalConfig, ctx: EvalContext) -> list[dict[str, Any]]:
        """Rows per corpus and budget; ``ctx.out_dir/adapt.json`` has the split and each run's details.

        Every budget of every corpus starts from the weights the model had when it came in.
        """
        assert handle is not None
        corpora = [load_corpus(spec, lang=cfg.lang, text_field=cfg.text_field) for spec in cfg.corpora]
        splits = {c.name: split_corpus(c, heldout=cfg.heldout, seed=cfg.seed) for c in corpora}
        seq_len = cfg.seq_len or min(handle.train_length or handle.max_length, 512, handle.max_length)
        for corpus in corpora:  # every budget must fit before anything trains: one clear error
            _check_budget(handle, corpus, splits[corpus.name][0], max(cfg.budgets), cfg.heldout)
        original = {k: v.detach().to("cpu", copy=True) for k, v in handle.model.state_dict().items()}
        rows: list[dict[str, Any]] = []
        details: dict[str, Any] = {}
        for corpus in corpora:
            train, held = splits[corpus.name]
            held = held[: cfg.max_docs]
            details[corpus.name] = {"lang": corpus.lang, "train_docs": len(train), "heldout_docs": len(held),
                                    "heldout_groups": sorted({d.group for d in held}), "budgets": {}}
            for budget in cfg.budgets:
                handle.model.load_state_dict(original)
                steps = 0
                if budget:
                    steps = continue_pretraining(
                        handle, [d.text for d in train], tokens=budget, seq_len=seq_len, epochs=cfg.epochs,
                        batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps, seed=cfg.seed,
                        out_dir=ctx.out_dir / corpus.name / str(budget))
                subtask = f"{corpus.lang}/{corpus.name}/{budget}"
                measured, detail = score_texts(handle, TextSet(subtask, [(d.group, d.text) for d in held], corpus.name),
                                               next_line_samples=cfg.next_line_samples, batch_size=cfg.batch_size)
                last = budget == max(cfg.budgets)
                rows += [{**r, "task": self.config.section, "primary": last and r["metric"] == "bits_per_byte"}
                         for r in measured]
                solved = [d for d in held if d.instructions]
                if solved:
                    rows.append(self._solution_row(handle, corpus, solved, subtask, cfg.batch_size))
                details[corpus.name]["budgets"][budget] = {"steps": steps, "documents": detail.get("documents")}
        handle.model.load_state_dict(original)
        atomic_write_json(ctx.out_dir / "adapt.json", details)
        return rows

    def _solution_row(self, handle: Handle, corpus: Corpus, docs: list[Document], subtask: str,
                      batch_size: int) -> dict[str, Any]:
        """Bits per byte of each held-out solution given its instructions (as comments of its language)."""
        mark = _COMMENT.get(corpus.lang, "// ")
        contexts = ["\n".join(mark + line for line in (d.instructions or "").strip().splitlines()) + "\n"
                    for d in docs]
        logprobs = handle.score(contexts, [d.text for d in docs], batch_size=batch_size)
        n_bytes = sum(len(d.text.encode("utf-8")) for d in docs)
        return {"task": self.config.section, "subtask": subtask, "metric": "solution_bits_per_byte",
                "value": -sum(logprobs) / math.log(2) / max(n_bytes, 1), "n": len(docs), "primary": False}

    def needs_model(self, cfg: AdaptEvalConfig) -> bool:
        return True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Few-shot adaptation: continue pretraining the model on K tokens of a target-language corpus (each "
            "budget from the same checkpoint), then measure held-out bits per byte, next-token accuracy, "
            "next-line exact match and, for exercise corpora, solution likelihood given the instructions. "
            f"Built-in corpora: {', '.join(BUILTIN_CORPORA)}.")
        parser.add_argument("--corpus", metavar="NAME|FILE|DIR",
                            help="comma-separated corpora: built-in names, JSONL files with a text field, or "
                                 "directories of source files")
        parser.add_argument("--lang", help="the corpus's language, where it does not say (e.g. rust)")
        parser.add_argument("--budgets", metavar="K,K,...", help="training tokens per run (default 0,20000,100000,500000)")
        parser.add_argument("--limit", type=int, metavar="N", help="at most N held-out documents per corpus")

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        return {"corpora": [c.strip() for c in args.corpus.split(",") if c.strip()] if args.corpus else None,
                "lang": args.lang, "max_docs": args.limit,
                "budgets": [int(b) for b in args.budgets.split(",")] if args.budgets else None}

    def data_files(self, cfg: AdaptEvalConfig) -> list[str]:
        return [BUILTIN_CORPORA[c][0] if c in BUILTIN_CORPORA else c for c in cfg.corpora]

    def flops(self, cfg: AdaptEvalConfig, n_params: int, study: StudyConfig) -> float:
        train = sum(cfg.budgets) * cfg.epochs * len(cfg.corpora)
        return 6.0 * n_params * train + 2.0 * n_params * 100_000 * len(cfg.budgets) * len(cfg.corpora)

    def report(self, rows: list[dict[str, Any]], cfg: AdaptEvalConfig, ctx: EvalContext, console: Console) -> int:
        print_rows([r for r in rows if r["metric"] in ("bits_per_byte", "token_accuracy", "solution_bits_per_byte")],
                   "adaptation: held-out measures per corpus and budget", console)
        return 0

