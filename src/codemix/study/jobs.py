"""The stage functions a study runs, one per job kind, and the process entry point of a job.

Each function takes a :class:`JobContext` and writes its outputs into ``ctx.out`` (a work
directory that the executor renames into ``<out>/jobs/<stage>/<name>-<hash>/`` only when
the function returns). They call the stage modules' explicit-path entry points
(docs/interfaces.md); nothing here knows about executors or the study index.

``python -m codemix.study.jobs PAYLOAD.pkl`` runs one job from a pickled payload: the local
executor starts it once per GPU slot, and multi-GPU pretraining starts it under ``torchrun``.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codemix.config import StudyConfig
from codemix.io import atomic_write_text
from codemix.study.plan import Job

__all__ = [
    "JobContext",
    "analysis_job",
    "eval_job",
    "mixture_job",
    "pretrain_job",
    "stream_job",
    "tokenizer_job",
]


@dataclass
class JobContext:
    """What a job function gets: the study, its job, where to write, and its inputs."""

    cfg: StudyConfig
    job: Job
    out: Path
    """The work directory: write every output here (it becomes the job directory on success)."""
    inputs: dict[str, Path]
    """Role → directory of the (done) input job."""
    resume: bool = False
    """``out`` holds what an interrupted attempt left (only for resumable jobs, e.g. checkpoints)."""

    def input(self, role: str) -> Path:
        return self.inputs[role]

    def stream_dirs(self) -> dict[str, Path]:
        return {role.split(":", 1)[1]: p for role, p in self.inputs.items() if role.startswith("stream:")}


TOKENIZER_FILE = "tokenizer.json"
ROWS_FILE = "rows.jsonl"
CONTEXT_DIR = "context"


# ----------------------------------------------------------------------------- data


def tokenizer_job(ctx: JobContext) -> None:
    """Train (or copy) the study tokenizer: ``tokenizer.json``."""
    from codemix.data.tokenizer import build_tokenizer

    build_tokenizer(ctx.cfg.data, ctx.out / TOKENIZER_FILE)


def stream_job(ctx: JobContext) -> None:
    """Tokenize one source: the job directory is the stream (``heldout/`` inside it).

    In a t5 study a code stream is also annotated (``annotations/`` inside it).

    The stream builder keeps committed chunks beside ``ctx.out`` (``.<dir>.partial``), so a
    killed tokenization resumes where it stopped.
    """
    from codemix.data.annotations import build_annotations
    from codemix.data.streams import build_stream

    source = ctx.cfg.source(ctx.job.key["source"]["name"])
    tokenizer_path = ctx.input("tokenizer") / TOKENIZER_FILE
    build_stream(source, ctx.cfg.data, tokenizer_path, ctx.out, budget_tokens=int(ctx.job.key["budget_tokens"]),
                 progress=False)
    if ctx.job.key.get("annotate"):  # a t5 study: identifiers for CodeT5's objectives
        build_annotations(ctx.out, source.lang, tokenizer_path, workers=ctx.cfg.data.workers or None, progress=False)


def mixture_job(ctx: JobContext) -> None:
    """Build one mixture index (``index.npy``, ``mixture.json``) from the streams."""
    from codemix.data.mixture import MixtureSpec, build_mixture

    label = ctx.job.labels[0]  # identical mixtures share one job; the first label names it
    spec = MixtureSpec(label["setting"], float(label["m"]), bool(label["baseline"]))
    build_mixture(spec, ctx.cfg.mixtures, ctx.cfg.data, ctx.stream_dirs(), ctx.out)


# ----------------------------------------------------------------------------- pretraining


def _under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def pretrain_job(ctx: JobContext) -> None:
    """Pretrain one model; the job directory is the run directory (``checkpoints/``, ``log.jsonl``).

    Always resumes from the newest checkpoint an interrupted attempt left. With more than one
    GPU per job it re-launches itself under ``torchrun`` (one process per GPU, DDP/FSDP
    applied by the trainer); the executor sees one job either way.
    """
    if ctx.job.gpus > 1 and not _under_torchrun():
        _torchrun(ctx, ctx.job.gpus)
    else:
        from codemix.train.pretrain import train

        rank0 = int(os.environ.get("RANK", "0")) == 0
        if rank0 and not list((ctx.out / "checkpoints").glob("step-*")):  # nothing to resume: drop a stale log
            (ctx.out / "log.jsonl").unlink(missing_ok=True)
        heldout = {name: d / "heldout" for name, d in ctx.stream_dirs().items()}
        ckpt = train(ctx.cfg, mixture_dir=ctx.input("mixture"), heldout=heldout,
                     tokenizer_path=ctx.input("tokenizer") / TOKENIZER_FILE, seed=int(ctx.job.key["seed"]),
                     out_dir=ctx.out, resume=True)
        if rank0:
            atomic_write_text(ctx.out / "final_checkpoint", os.path.relpath(ckpt, ctx.out) + "\n")


def _torchrun(ctx: JobContext, nproc: int) -> None:
    payload = ctx.out / ".torchrun-payload.pkl"
    payload.write_bytes(pickle.dumps({"kind": "context", "ctx": ctx}))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "codemix.study.jobs", str(payload)]
    result = subprocess.run(cmd, check=False)
    payload.unlink(missing_ok=True)
    if result.returncode != 0:
        raise RuntimeError(f"torchrun with {nproc} processes exited with code {result.returncode}: {' '.join(cmd)}")


def checkpoint_of(run_dir: Path) -> Path:
    """The final checkpoint of a done pretraining job."""
    marker = run_dir / "final_checkpoint"
    if marker.is_file():
        return run_dir / marker.read_text().strip()
    from codemix.train.pretrain import latest_checkpoint

    return latest_checkpoint(run_dir)


# ----------------------------------------------------------------------------- evaluation


def eval_job(ctx: JobContext) -> None:
    """Run one benchmark on one checkpoint; its rows go to ``rows.jsonl``."""
    from codemix.evals import benchmark

    name = ctx.job.key["benchmark"]
    module = benchmark(name)
    section = getattr(ctx.cfg.evals, name)
    ckpt = checkpoint_of(ctx.input("checkpoint"))
    kwargs: dict[str, Any] = {"out_dir": ctx.out, "study": ctx.cfg}
    if name in ("cogs", "cogs_vf", "passivization"):
        kwargs["task"] = name
    if name == "perplexity":  # the held-out documents of this study's stream jobs
        kwargs["heldout"] = {n: d / "heldout" for n, d in ctx.stream_dirs().items()}
    rows = module.evaluate(str(ckpt), section, **kwargs)
    keys = ("task", "subtask", "metric", "value", "n", "question_type", "primary")
    lines = [json.dumps({k: r.get(k) for k in keys}) for r in rows]
    atomic_write_text(ctx.out / ROWS_FILE, "\n".join(lines) + ("\n" if lines else ""))


# ----------------------------------------------------------------------------- analysis


def analysis_job(ctx: JobContext) -> None:
    """Gather every eval's rows under their study labels; regressions, permutation tests, report.

    The report's study sections (config, mixture table, loss curves) are read from a small
    ``context/`` copy of this plan's mixture and pretraining records, so jobs of earlier
    versions of the study that are still on disk do not show up in it.
    """
    import shutil

    import pandas as pd

    from codemix.analysis.report import analyze
    from codemix.config import save_config
    from codemix.study.store import RESULT_COLUMNS

    rows = []
    for role, path in sorted(ctx.inputs.items()):
        kind, _, job_id = role.partition(":")
        if kind != "eval":
            continue
        for lab in ctx.job.key["labels"][job_id]:
            for line in (path / ROWS_FILE).read_text().splitlines():
                if line.strip():
                    r = json.loads(line)
                    rows.append({"study": ctx.job.key["study"], "setting": lab["setting"], "m": lab["m"],
                                 "baseline": bool(lab["baseline"]), "seed": lab["seed"], "task": r["task"],
                                 "subtask": r.get("subtask") or "", "metric": r["metric"], "value": r["value"],
                                 "n": r.get("n")})
    df = pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
    atomic_write_text(ctx.out / "results.csv", df.to_csv(index=False))

    context = ctx.out / CONTEXT_DIR
    save_config(ctx.cfg, context)
    for role, path in sorted(ctx.inputs.items()):
        kind, _, job_id = role.partition(":")
        record = {"mixture": "mixture.json", "pretrain": "log.jsonl"}.get(kind)
        if record and (path / record).is_file():
            target = context / kind / job_id.split("/", 1)[1].rsplit("-", 1)[0]
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path / record, target / record)
    a = ctx.cfg.analysis
    analyze(df, ctx.out, permutations=a.permutations, seed=a.seed, study_dir=context)


# ----------------------------------------------------------------------------- process entry point


def main(argv: list[str] | None = None) -> int:
    """Run one job from a pickled payload (a local GPU slot, or one torchrun rank)."""
    argv = sys.argv[1:] if argv is None else argv
    payload = pickle.loads(Path(argv[0]).read_bytes())
    if payload["kind"] == "context":  # a torchrun rank of a multi-GPU pretraining job
        pretrain_job(payload["ctx"])
        return 0
    from codemix.study.executors import run_job

    state = run_job(payload["cfg"], payload["root"], payload["job"])
    return 0 if state == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
