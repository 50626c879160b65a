"""The pretrain stage: one model per mixture and seed (``model`` and ``pretrain`` sections).

The key holds the model and the optimization settings that change what is computed, and
the seed; how a run is executed or logged (device, compilation, logging, checkpoint
cadence, GPUs) is not in it. The run directory is the job directory (``checkpoints/``,
``log.jsonl``); every checkpoint records what the model is in its study
(:class:`codemix.checkpoint.CheckpointInfo`): its labels, and where the study's held-out
documents are, so ``codemix eval`` of the checkpoint alone finds them.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

from codemix.checkpoint import latest_checkpoint, relative_to
from codemix.config import Labels, StudyConfig
from codemix.io import atomic_write_text
from codemix.models import count_parameters
from codemix.study.jobs import Job, JobContext
from codemix.study.stages.tokenizer import TOKENIZER_FILE
from codemix.train.pretrain import train

__all__ = ["EXECUTION_FIELDS", "checkpoint_of", "plan", "run", "train_tokens"]

#: Pretraining fields that change how a run is executed, logged or checkpointed, not what it
#: computes; they are left out of the key (e.g. enabling W&B does not retrain).
EXECUTION_FIELDS = {"device", "compile", "tensorboard", "wandb", "log_every", "checkpoint_every",
                    "keep_checkpoints"}
FINAL_CHECKPOINT = "final_checkpoint"


def train_tokens(cfg: StudyConfig, mixture_tokens: int) -> int:
    """Tokens one run sees: the max_steps / max_tokens caps, else one pass over the mixture."""
    p = cfg.pretrain
    candidates = [p.max_steps * p.batch_size * cfg.data.seq_len] if p.max_steps else [mixture_tokens]
    if p.max_tokens:
        candidates.append(p.max_tokens)
    return int(min(candidates))


def plan(cfg: StudyConfig, mixtures: list[Job], tokenizer: Job, streams: dict[str, Job]) -> list[Job]:
    """One job per mixture and seed; each stands for its mixture's labels at that seed."""
    n_params = count_parameters(cfg.model, vocab_size=cfg.data.tokenizer.vocab_size, seq_len=cfg.data.seq_len)
    key = {"model": cfg.model.model_dump(mode="json"),
           "pretrain": cfg.pretrain.model_dump(mode="json", exclude=EXECUTION_FIELDS), "seq_len": cfg.data.seq_len}
    heldout = {f"stream:{n}": j for n, j in streams.items()}  # held-out loss during training
    jobs = []
    for mixture in mixtures:
        tokens = sum(mixture.key["sequences"].values()) * cfg.data.seq_len
        for seed in cfg.seeds:
            jobs.append(Job.create(
                "pretrain", f"{mixture.name}-seed{seed}", f"{__name__}:run", {**key, "seed": seed},
                {"mixture": mixture, "tokenizer": tokenizer, **heldout},
                labels=[{**lab, "seed": seed} for lab in mixture.labels], gpus=cfg.executor.gpus_per_job,
                resumable=True, flops=6.0 * n_params * train_tokens(cfg, tokens),
                disk_bytes=n_params * 12.0 * cfg.pretrain.keep_checkpoints))
    return jobs


def _under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def run(ctx: JobContext) -> None:
    """Pretrain one model; the job directory is the run directory.

    Always resumes from the newest checkpoint an interrupted attempt left. With more than one
    GPU per job it re-launches itself under ``torchrun`` (one process per GPU, DDP/FSDP
    applied by the trainer); the scheduler sees one job either way.
    """
    if ctx.job.gpus > 1 and not _under_torchrun():
        _torchrun(ctx, ctx.job.gpus)
        return
    rank0 = int(os.environ.get("RANK", "0")) == 0
    if rank0 and not list((ctx.out / "checkpoints").glob("step-*")):  # nothing to resume: drop a stale log
        (ctx.out / "log.jsonl").unlink(missing_ok=True)
    streams = ctx.stream_dirs()
    # where the study is, seen from a checkpoint (work/ and jobs/ have the same depth)
    record = {"labels": [Labels.from_dict({**lab, "study": ctx.cfg.name}).to_dict() for lab in ctx.job.labels],
              "study_root": relative_to(ctx.root, ctx.out / "checkpoints" / "step-0"),
              "heldout": {name: relative_to(d / "heldout", ctx.root) for name, d in streams.items()}}
    ckpt = train(ctx.cfg, mixture_dir=ctx.input("mixture"), heldout={n: d / "heldout" for n, d in streams.items()},
                 tokenizer_path=ctx.input("tokenizer") / TOKENIZER_FILE, seed=int(ctx.job.key["seed"]),
                 out_dir=ctx.out, resume=True, record=record)
    if rank0:
        atomic_write_text(ctx.out / FINAL_CHECKPOINT, os.path.relpath(ckpt, ctx.out) + "\n")


def _torchrun(ctx: JobContext, nproc: int) -> None:
    payload = ctx.out / ".torchrun-payload.pkl"
    payload.write_bytes(pickle.dumps(ctx))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "codemix.study.stages.pretrain", str(payload)]
    result = subprocess.run(cmd, check=False)
    payload.unlink(missing_ok=True)
    if result.returncode != 0:
        raise RuntimeError(f"torchrun with {nproc} processes exited with code {result.returncode}: {' '.join(cmd)}")


def checkpoint_of(run_dir: Path) -> Path:
    """The final checkpoint of a done pretraining job."""
    marker = run_dir / FINAL_CHECKPOINT
    return run_dir / marker.read_text().strip() if marker.is_file() else latest_checkpoint(run_dir)


if __name__ == "__main__":  # one torchrun rank of a multi-GPU job (see _torchrun)
    run(pickle.loads(Path(sys.argv[1]).read_bytes()))
