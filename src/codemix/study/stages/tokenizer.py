"""The tokenizer stage: one byte-level BPE per study, trained on samples of every source.

Its key is ``data.tokenizer`` plus everything the sample reads: each source's config and
files, the held-out split (held-out documents are never sampled) and the document order.
With ``data.tokenizer.path`` it is that file instead.
"""

from __future__ import annotations

from codemix.config import StudyConfig
from codemix.data.fetch import file_sizes
from codemix.data.tokenizer import build_tokenizer
from codemix.study.jobs import Job, JobContext

__all__ = ["TOKENIZER_FILE", "plan", "run"]

TOKENIZER_FILE = "tokenizer.json"


def plan(cfg: StudyConfig) -> Job:
    d = cfg.data
    if d.tokenizer.path:
        key = {"tokenizer": d.tokenizer.model_dump(mode="json"), "file": file_sizes([d.tokenizer.path])}
    else:
        key = {"tokenizer": d.tokenizer.model_dump(mode="json"), "heldout_docs": d.heldout_docs,
               "shuffle_seed": d.shuffle_seed,
               "sources": [{"source": s.model_dump(mode="json"), "files": file_sizes(s.paths)} for s in d.sources]}
    return Job.create("tokenizer", "tokenizer", f"{__name__}:run", key, {}, disk_bytes=d.tokenizer.vocab_size * 60.0)


def run(ctx: JobContext) -> None:
    """Train (or copy) the study tokenizer: ``tokenizer.json``."""
    build_tokenizer(ctx.cfg.data, ctx.out / TOKENIZER_FILE)
