"""Per-language perplexity and code completion on held-out documents.

The Python → Rust/Go question needs measures that are informative even for models too
small to pass a unit test: how well a model predicts held-out text of each language. Per
source (the study's held-out documents, ``docs.jsonl.gz`` of each held-out stream, set
aside before any mixture was drawn; or any files given) this reports:

- ``bits_per_byte``: total negative log-likelihood of the documents in bits, divided by
  their UTF-8 bytes. Unlike perplexity it does not depend on the tokenizer, so it compares
  languages that one tokenizer splits into tokens very differently (and models with
  different tokenizers);
- ``perplexity``: ``exp`` of the mean negative log-likelihood per token;
- ``token_accuracy``: how often the model's top-1 next-token prediction is the real token;
- ``next_line_exact_match``: the model continues a document from a line boundary, greedily,
  to the end of the line; the fraction of probes where that line equals the real next line
  (trailing whitespace aside; a model that does not end the previous line scores 0).
  ``next_line_similarity`` is the mean ``difflib.SequenceMatcher`` ratio of the two lines,
  which moves before exact match does.

Documents longer than the model's context are scored in overlapping windows
(:meth:`~codemix.evals.handle.Handle.rolling_logprobs`); every token is predicted once,
the first one after the start token (``<eos>``, which precedes every document in training).
Rows are tidy: ``task="perplexity"``, ``subtask=<source>``, ``metric``, ``value``, ``n``
(documents, or probes for the next-line metrics).
"""

from __future__ import annotations

import argparse
import difflib
import gzip
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import Progress

from codemix.config import PerplexityEvalConfig, SourceConfig, StudyConfig
from codemix.data.fetch import data_path
from codemix.data.sources import iter_documents
from codemix.errors import CodemixError, DataError
from codemix.evals.benchmark import EvalContext, print_rows
from codemix.evals.handle import Handle
from codemix.io import atomic_write_json

__all__ = ["Perplexity", "TextSet", "file_texts", "heldout_texts", "next_line_probes", "score_texts"]

TASK = "perplexity"
#: Characters of document kept before a next-line probe (the handle then keeps what fits the context).
_PROBE_CONTEXT_CHARS = 8000


@dataclass(frozen=True)
class TextSet:
    """Documents of one source (or file) to score: ``(doc_id, text)`` pairs."""

    name: str
    docs: list[tuple[str, str]]
    origin: str


def _read_docs_jsonl(path: Path, name: str) -> TextSet:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    docs = [(str(r.get("doc_id", i)), r["text"]) for i, r in enumerate(records)]
    return TextSet(name, [d for d in docs if d[1]], str(path))


def heldout_texts(heldout: dict[str, Path], sources: list[str] | None = None) -> list[TextSet]:
    """Held-out documents of a study's sources: ``heldout`` maps source names to held-out stream
    directories; ``sources`` picks some of them (default: all)."""
    names = list(heldout)
    unknown = [s for s in sources or [] if s not in names]
    if unknown:
        raise DataError(f"unknown source(s) {unknown} for perplexity; the study's sources are {names}")
    chosen = list(sources) if sources else names
    for s in chosen:
        if not (Path(heldout[s]) / "docs.jsonl.gz").is_file():
            raise DataError(f"no held-out documents for source {s!r}: {heldout[s]}/docs.jsonl.gz is missing; "
                            "rebuild the study's data with `codemix mix STUDY.yaml`")
    return [_read_docs_jsonl(Path(heldout[s]) / "docs.jsonl.gz", s) for s in chosen]


def file_texts(path: str) -> TextSet:
    """Documents of any file a source can read (JSONL/JSON with ``text``, plain text, Parquet, a directory)."""
    p = data_path(path)
    name = p.name.split(".")[0] if p.is_file() else p.name
    suffixes = "".join(p.suffixes).removesuffix(".gz")
    if p.is_dir():
        kind, split = "dir", "file"
    elif suffixes.endswith(".jsonl"):
        kind, split = "jsonl", "line"
    elif suffixes.endswith(".json"):
        kind, split = "json", "line"
    elif suffixes.endswith(".parquet"):
        kind, split = "parquet", "line"
    else:  # any other text file (source code, .txt): the whole file is one document
        kind, split = "text", "file"
    src = SourceConfig(name=name.replace(" ", "_") or "file", kind=kind, split=split, paths=[str(p)])
    docs = [(d.doc_id, d.text) for d in iter_documents(src)]
    if not docs:
        raise DataError(f"{p} holds no documents to score (read as {kind})")
    return TextSet(src.name, docs, str(p))


def next_line_probes(docs: list[tuple[str, str]], n: int, *, seed: str) -> list[tuple[str, int, str, str]]:
    """Up to ``n`` (doc_id, line number, context, real line) probes, drawn reproducibly.

    A probe is a non-blank line that is not a document's first; its context is everything
    before it (ending in a newline). Probes are spread over documents round-robin so one
    long file does not supply them all.
    """
    rng = random.Random(seed)
    per_doc = []
    for doc_id, text in docs:
        lines = text.split("\n")
        starts = np.cumsum([0] + [len(line) + 1 for line in lines[:-1]])
        candidates = [k for k in range(1, len(lines)) if lines[k].strip()]
        rng.shuffle(candidates)
        per_doc.append([(doc_id, k, text[:starts[k]], lines[k]) for k in candidates])
    probes: list[tuple[str, int, str, str]] = []
    depth = 0
    while len(probes) < n and any(depth < len(p) for p in per_doc):
        probes += [p[depth] for p in per_doc if depth < len(p)][: n - len(probes)]
        depth += 1
    return probes


def score_texts(handle: Handle, texts: TextSet, *, next_line_samples: int, batch_size: int,
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows and per-document details for one set of documents."""
    scores = handle.rolling_logprobs([t for _, t in texts.docs], batch_size=batch_size)
    nats = float(sum(-s.logprobs.sum() for s in scores))
    n_tokens = sum(s.n_tokens for s in scores)
    n_bytes = sum(s.n_bytes for s in scores)
    n_correct = int(sum(s.correct.sum() for s in scores))
    n = len(texts.docs)
    rows = [_row(texts.name, "bits_per_byte", nats / math.log(2) / max(1, n_bytes), n),
            _row(texts.name, "perplexity", math.exp(nats / max(1, n_tokens)), n),
            _row(texts.name, "token_accuracy", n_correct / max(1, n_tokens), n)]
    details: dict[str, Any] = {"origin": texts.origin, "tokens": n_tokens, "bytes": n_bytes, "nats": nats,
                               "documents": [{"doc_id": d, "tokens": s.n_tokens, "bytes": s.n_bytes,
                                              "nats": float(-s.logprobs.sum()),
                                              "token_accuracy": float(s.correct.mean()) if s.n_tokens else None}
                                             for (d, _), s in zip(texts.docs, scores)]}
    probes = next_line_probes(texts.docs, next_line_samples, seed=texts.name)
    if probes:
        # The prompt stops *before* the newline that ends the previous line: byte-level BPE merges a
        # newline with the next line's indentation ("\n   " + " return"), so a prompt ending in a bare
        # "\n" token would be a tokenization the model never saw before an indented line. The model
        # writes the newline itself; the predicted line is what follows it, up to the next newline.
        budget = max(len(handle.encode("\n" + line)) for *_, line in probes) + 4
        completions = handle.generate([ctx[:-1][-_PROBE_CONTEXT_CHARS:] for _, _, ctx, _ in probes],
                                      max_new_tokens=min(budget, 128), batch_size=batch_size)
        preds = [c[0][1:].split("\n")[0] if c[0].startswith("\n") else None for c in completions]
        raw = [c[0] for c in completions]
        exact = [p is not None and p.rstrip() == line.rstrip() for p, (*_, line) in zip(preds, probes)]
        sim = [difflib.SequenceMatcher(None, p.rstrip(), line.rstrip()).ratio() if p is not None else 0.0
               for p, (*_, line) in zip(preds, probes)]
        rows += [_row(texts.name, "next_line_exact_match", float(np.mean(exact)), len(probes)),
                 _row(texts.name, "next_line_similarity", float(np.mean(sim)), len(probes))]
        details["next_line"] = [{"doc_id": d, "line": k, "real": line, "predicted": p, "completion": c, "exact": e}
                                for (d, k, _, line), p, c, e in zip(probes, preds, raw, exact)]
    return rows, details


def _row(source: str, metric: str, value: float, n: int) -> dict[str, Any]:
    return {"task": TASK, "subtask": source, "metric": metric, "value": float(value), "n": int(n)}


class Perplexity:
    """The ``perplexity`` benchmark (registry entry)."""

    needs_heldout = True
    finetunes = False

    def __init__(self, config: type[PerplexityEvalConfig]):
        self.config = config

    def evaluate(self, handle: Handle | None, cfg: PerplexityEvalConfig, ctx: EvalContext) -> list[dict[str, Any]]:
        """Bits-per-byte, perplexity, token accuracy and next-line completion per source.

        Sources are the held-out documents in ``ctx.heldout`` (``cfg.sources`` of them, default
        all) plus ``cfg.files``; ``cfg.max_docs`` caps the documents per source. Writes
        ``ctx.out_dir/perplexity.json`` (per-document and per-probe details).
        """
        if cfg.sources and not ctx.heldout:
            raise CodemixError(f"perplexity sources {cfg.sources} need the held-out documents of a study: pass "
                               "--study FILE, or a model trained in a study; or score files with --files")
        sets = heldout_texts(ctx.heldout, cfg.sources) if ctx.heldout else []
        sets += [file_texts(f) for f in cfg.files]
        if not sets:
            raise CodemixError("nothing to score: the model records no study held-out documents; pass --study "
                               "(its sources' held-out documents) or --files FILE,...")
        sets = [TextSet(s.name, s.docs[:cfg.max_docs], s.origin) for s in sets]
        assert handle is not None
        rows: list[dict[str, Any]] = []
        details: dict[str, Any] = {}
        start = time.perf_counter()
        with Progress(transient=True, disable=not ctx.progress) as progress:
            bar = progress.add_task("perplexity", total=len(sets))
            for s in sets:
                progress.update(bar, description=f"perplexity {s.name} ({len(s.docs)} docs)")
                r, d = score_texts(handle, s, next_line_samples=cfg.next_line_samples, batch_size=cfg.batch_size)
                rows += r
                details[s.name] = d
                progress.advance(bar)
        details["_summary"] = {"seconds": time.perf_counter() - start, "model": str(handle.path),
                               "max_length": handle.max_length, "limit": cfg.max_docs}
        atomic_write_json(ctx.out_dir / "perplexity.json", details)
        return rows

    def needs_model(self, cfg: PerplexityEvalConfig) -> bool:
        return True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Bits-per-byte, perplexity, top-1 next-token accuracy and greedy next-line exact match per source, "
            "on the held-out documents of the model's study (a codemix model records them; or --study) and/or "
            "on any files (--files). Bits-per-byte is tokenizer-independent, so it compares languages and "
            "models directly.")
        parser.add_argument("--sources", metavar="a,b", help="study sources to score (default: all)")
        parser.add_argument("--files", metavar="FILE,...",
                            help="extra files to score, each its own row group: JSONL/JSON with a text field, "
                                 "Parquet, a directory of source files, or any text file (one document)")
        parser.add_argument("--limit", type=int, metavar="N", help="at most N documents per source")
        parser.add_argument("--batch-size", type=int, metavar="N", help="sequences per forward pass")

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        split = (lambda text: [x.strip() for x in text.split(",") if x.strip()] if text else None)
        return {"sources": split(args.sources), "files": split(args.files), "max_docs": args.limit,
                "batch_size": args.batch_size}

    def data_files(self, cfg: PerplexityEvalConfig) -> list[str]:
        return list(cfg.files)

    def flops(self, cfg: PerplexityEvalConfig, n_params: int, study: StudyConfig) -> float:
        docs = (cfg.max_docs or 1000) * len(study.data.sources)
        return 2.0 * n_params * docs * 2 * study.data.seq_len

    def report(self, rows: list[dict[str, Any]], cfg: PerplexityEvalConfig, ctx: EvalContext,
               console: Console) -> int:
        print_rows(rows, "perplexity and completion per source", console)
        return 0
