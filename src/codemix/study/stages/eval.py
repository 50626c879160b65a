"""The eval stage: one job per checkpoint and benchmark (``evals.<name>`` sections).

The key is the benchmark's config section and the sizes of the data files it reads; its
inputs are the checkpoint and, for a benchmark that reads held-out documents, the streams.
The job writes the benchmark's rows (``rows.jsonl``: ``task, subtask, metric, value, n``
[, ``question_type``, ``primary``]) and its details; the study's labels are added by the
one row collector (:func:`codemix.evals.rows.collect_rows`).
"""

from __future__ import annotations

import json

from codemix.config import BenchmarkConfig, StudyConfig
from codemix.data.fetch import file_sizes
from codemix.evals.benchmark import EvalContext
from codemix.evals.handle import load_handle
from codemix.evals.registry import BENCHMARKS
from codemix.evals.rows import ROWS_FILE
from codemix.io import atomic_write_text
from codemix.models import count_parameters
from codemix.study.jobs import Job, JobContext
from codemix.study.stages.pretrain import checkpoint_of

__all__ = ["eval_job", "plan", "run"]


def eval_job(cfg: StudyConfig, checkpoint: Job, section: BenchmarkConfig, streams: dict[str, Job], *,
             n_params: int) -> Job:
    """The job of one benchmark (configured by ``section``) on one pretraining job's final checkpoint."""
    bench = BENCHMARKS[section.section]
    inputs = {"checkpoint": checkpoint, **({f"stream:{n}": j for n, j in streams.items()} if bench.needs_heldout
                                           else {})}
    key = {"benchmark": section.section, "config": section.model_dump(mode="json"),
           "files": file_sizes(bench.data_files(section))}
    return Job.create("eval", f"{checkpoint.name}-{section.section}", f"{__name__}:run", key, inputs,
                      labels=list(checkpoint.labels), gpus=min(checkpoint.gpus, 1),
                      flops=bench.flops(section, n_params, cfg), disk_bytes=5e6)


def plan(cfg: StudyConfig, checkpoints: list[Job], streams: dict[str, Job]) -> list[Job]:
    """Every configured benchmark on every checkpoint."""
    n_params = count_parameters(cfg.model, vocab_size=cfg.data.tokenizer.vocab_size, seq_len=cfg.data.seq_len)
    return [eval_job(cfg, ckpt, section, streams, n_params=n_params)
            for ckpt in checkpoints for section in cfg.evals.enabled().values()]


def run(ctx: JobContext) -> None:
    """Run one benchmark on one checkpoint; its rows go to ``rows.jsonl``."""
    name = ctx.job.key["benchmark"]
    bench = BENCHMARKS[name]
    section = bench.config.model_validate(ctx.job.key["config"])
    device = ctx.cfg.pretrain.device
    handle = load_handle(checkpoint_of(ctx.input("checkpoint")), device=device) if bench.needs_model(section) else None
    heldout = {n: d / "heldout" for n, d in ctx.stream_dirs().items()}
    rows = bench.evaluate(handle, section, EvalContext(out_dir=ctx.out, heldout=heldout, device=device,
                                                       progress=False, sources=list(ctx.cfg.data.sources)))
    atomic_write_text(ctx.out / ROWS_FILE, "".join(json.dumps(r) + "\n" for r in rows))
