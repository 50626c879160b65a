"""The stream stage: each source tokenized once (training documents + held-out documents).

A stream's key is its source (config and files), the held-out split, the document order,
the tokenizer and, in a t5 study, whether its code is annotated for CodeT5's objectives.
Its *budget* (the most any mixture of the study takes from it) is not in the key: a
stream job is done while it holds the budget (:class:`~codemix.study.jobs.Growth`), and a
study that needs more extends it in place, keeping every token it had byte for byte.
"""

from __future__ import annotations

from codemix.config import SourceConfig, StudyConfig
from codemix.data.annotations import build_annotations, needs_annotations
from codemix.data.fetch import file_sizes
from codemix.data.mixture import stream_budgets
from codemix.data.streams import build_stream
from codemix.study.jobs import Growth, Job, JobContext
from codemix.study.stages.tokenizer import TOKENIZER_FILE

__all__ = ["plan", "run"]


def _key(cfg: StudyConfig, source: SourceConfig) -> dict:
    key = {"source": source.model_dump(mode="json"), "files": file_sizes(source.paths),
           "heldout_docs": cfg.data.heldout_docs, "shuffle_seed": cfg.data.shuffle_seed}
    if needs_annotations(cfg, source):  # CodeT5's objectives read identifier annotations (4-8 bytes a token)
        key["annotate"] = True
    return key


def plan(cfg: StudyConfig, tokenizer: Job) -> dict[str, Job]:
    """One stream job per source, by source name."""
    budgets = stream_budgets(cfg.mixtures, cfg.data)
    token_bytes = 2 if cfg.data.tokenizer.vocab_size <= 65536 else 4
    jobs = {}
    for source in cfg.data.sources:
        key = _key(cfg, source)
        jobs[source.name] = Job.create(
            "stream", source.name, f"{__name__}:run", key, {"tokenizer": tokenizer},
            growth=Growth(need=budgets[source.name]),
            disk_bytes=budgets[source.name] * (token_bytes + 0.1 + (8 if key.get("annotate") else 0)))
    return jobs


def run(ctx: JobContext) -> None:
    """Tokenize one source into ``ctx.out`` (``heldout/`` inside); grow ``ctx.previous`` when given.

    The stream builder keeps committed chunks beside ``ctx.out`` (``.<dir>.partial``), so a
    killed tokenization resumes where it stopped. In a t5 study a code stream is also
    annotated (``annotations/`` inside it).
    """
    source = ctx.cfg.source(ctx.job.key["source"]["name"])
    tokenizer_path = ctx.input("tokenizer") / TOKENIZER_FILE
    assert ctx.job.growth is not None
    build_stream(source, ctx.cfg.data, tokenizer_path, ctx.out, budget_tokens=ctx.job.growth.need,
                 extend=ctx.previous, progress=False)
    if ctx.job.key.get("annotate"):
        build_annotations(ctx.out, source.lang, tokenizer_path, workers=ctx.cfg.data.workers or None, progress=False)
