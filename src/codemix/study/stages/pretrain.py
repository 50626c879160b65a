"""The pretrain stage: one model per mixture and seed (``model`` and ``pretrain`` sections).

The key holds the model and the optimization settings that change what is computed, and
the seed; how a run is executed or logged (device, compilation, logging, checkpoint
cadence, GPUs) is not in it. The run directory is the job directory (``checkpoints/``,
``log.jsonl``); every checkpoint records what the model is in its study
(:class:`codemix.checkpoint.CheckpointInfo`): its labels, and where the study's held-out
documents are, so ``codemix eval`` of the checkpoint alone finds them.

GPT runs that train for the same steps are grouped into packs (:func:`packs`, sized by
``pretrain.pack`` and by memory): the scheduler starts a pack as one process that trains its
members together (:func:`run_pack`, :mod:`codemix.train.pack`). Each member still writes its
own job directory, exactly as :func:`run` would; the pack is never part of a key.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from codemix.checkpoint import checkpoint_dirs, checkpoint_problem, latest_checkpoint, relative_to
from codemix.config import Labels, StudyConfig
from codemix.errors import DataError
from codemix.io import atomic_write_text
from codemix.models import count_parameters
from codemix.models.gpt import config_from_model_config
from codemix.study.jobs import Job, JobContext, Pack
from codemix.study.stages.tokenizer import TOKENIZER_FILE
from codemix.train.pack import PackMember, pack_bytes, train_pack
from codemix.train.pretrain import resolve_budget, train

__all__ = ["EXECUTION_FIELDS", "checkpoint_of", "pack_memory", "pack_size", "packs", "plan", "run", "run_pack",
           "train_tokens"]

#: Pretraining fields that change how a run is executed, logged or checkpointed, not what it
#: computes; they are left out of the key (e.g. enabling W&B, or packing runs, does not retrain).
EXECUTION_FIELDS = {"device", "compile", "tensorboard", "wandb", "log_every", "checkpoint_every",
                    "keep_checkpoints", "pack", "pack_memory_gb"}
FINAL_CHECKPOINT = "final_checkpoint"
#: Memory a pack may use on SLURM when ``pretrain.pack_memory_gb`` is unset (the GPU is not known at planning).
SLURM_PACK_MEMORY_GB = 40.0


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


def pack_memory(cfg: StudyConfig) -> float:
    """Bytes one pack may use: ``pretrain.pack_memory_gb``, else this machine's GPU (or half its RAM)."""
    p = cfg.pretrain
    if p.pack_memory_gb is not None:
        return p.pack_memory_gb * 1e9
    if cfg.executor.kind == "slurm":
        return SLURM_PACK_MEMORY_GB * 1e9
    if p.device != "cpu" and torch.cuda.is_available():
        index = torch.device(p.device).index if p.device.startswith("cuda") else None
        return 0.9 * torch.cuda.get_device_properties(index or 0).total_memory
    return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def pack_size(cfg: StudyConfig) -> tuple[int, str]:
    """How many runs one pack holds (1: no packs), and why: ``pretrain.pack``, capped by what fits in memory.

    No packs for T5: its network is Hugging Face's module as is (what export hands on), and
    the one generic way to batch it, ``torch.func.vmap`` over ``functional_call``, runs but
    measured slower than one run after another on a CPU (eager attention only: SDPA's CPU
    kernel cannot differentiate the batched position bias) and draws dropout (0.1 in the
    CodeT5 presets) from one stream, so a pack could not equal its members' single runs. No
    packs either for runs of several GPUs, or with gradient accumulation.
    """
    p = cfg.pretrain
    if cfg.model.arch != "gpt":
        return 1, f"model.arch={cfg.model.arch}: packs train GPT models only"
    if cfg.executor.gpus_per_job > 1:
        return 1, f"executor.gpus_per_job={cfg.executor.gpus_per_job}: a pack trains on one device"
    if p.micro_batch_size not in (None, p.batch_size):
        return 1, "pretrain.micro_batch_size is set: packs do not accumulate gradients"
    if p.pack < 2:
        return 1, f"pretrain.pack={p.pack}"
    model = config_from_model_config(cfg.model, vocab_size=cfg.data.tokenizer.vocab_size, seq_len=cfg.data.seq_len)
    n_params = count_parameters(cfg.model, vocab_size=cfg.data.tokenizer.vocab_size, seq_len=cfg.data.seq_len)
    member = pack_bytes(n_params, batch_size=p.batch_size, seq_len=cfg.data.seq_len, d_model=model.d_model,
                        n_layers=model.n_layers, vocab=model.vocab_size)
    budget = pack_memory(cfg)
    size = min(p.pack, int(budget // member))
    if size < p.pack:
        return max(size, 1), (f"pretrain.pack={p.pack}, but {budget / 1e9:.3g} GB (pretrain.pack_memory_gb) hold "
                              f"{size} run{'s' if size != 1 else ''} of ≈{member / 1e9:.2g} GB")
    return size, f"pretrain.pack={p.pack}"


def pack_width(cfg: StudyConfig) -> int:
    """Members a pack of this study trains at once: on this machine's CPU, one per thread it gets; else 1.

    A pack on a CPU trains its members in groups, one thread each
    (:func:`codemix.train.pack.member_threads`), so it takes as long as its largest group.
    """
    p = cfg.pretrain
    if cfg.executor.kind != "local" or (p.device != "cpu" and torch.cuda.is_available()):
        return 1
    return pack_cpu_threads()


def pack_cpu_threads() -> int:
    """CPU threads a pack trains on: every core, unless the user chose a count (``OMP_NUM_THREADS``).

    (Without a user's count, ``codemix study run`` runs each job on one thread and every pack on
    all cores: :func:`codemix.study.scheduler.limit_cpu_threads`.)
    """
    if os.environ.get("CODEMIX_AUTO_THREADS") == "1" or "OMP_NUM_THREADS" not in os.environ:
        return len(os.sched_getaffinity(0))
    return torch.get_num_threads()


def packs(cfg: StudyConfig, jobs: list[Job], mixtures: list[Job]) -> list[Pack]:
    """Group pretraining jobs into packs of runs of the same steps, at most :func:`pack_size` each.

    A group of n runs is split into as few packs as fit, of even size, in multiples of the
    members a pack trains at once (:func:`pack_width`). 14 runs with size 8: on a GPU two
    packs of 7; on 2 CPU cores packs of 6 and 8, whose groups (3 + 3, 4 + 4 members) train
    in the time of 7 members one after another, where two packs of 7 (3 + 4 each) take 8.
    """
    p = cfg.pretrain
    size, note = pack_size(cfg)
    if size < 2:
        return []
    width = min(pack_width(cfg), size)
    note += " (1: one run per process)"
    if width > 1:
        note += f"; sizes in multiples of {width}, the CPU threads a pack trains its members on"
    sequences = {m.id: sum(m.key["sequences"].values()) for m in mixtures}
    groups: dict[int, list[Job]] = {}
    for job in jobs:  # runs of one pack train the same number of steps
        try:
            steps = resolve_budget(p, batches_per_epoch=sequences[job.inputs["mixture"]] // p.batch_size,
                                   tokens_per_step=p.batch_size * cfg.data.seq_len)
        except DataError:  # a mixture smaller than a batch: the run alone says so when it starts
            continue
        groups.setdefault(steps, []).append(job)
    out = []
    for group in groups.values():  # split into chunks of `width` runs, the chunks evenly into packs
        chunks = math.ceil(len(group) / width)
        n_packs = math.ceil(chunks / (size // width))
        for i in range(n_packs):
            members = group[i * chunks // n_packs * width:(i + 1) * chunks // n_packs * width]
            if len(members) > 1:
                out.append(Pack(f"{__name__}:run_pack", tuple(j.id for j in members), note))
    return out


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
    if rank0:
        _drop_stale_log(ctx)
    ckpt = train(ctx.cfg, mixture_dir=ctx.input("mixture"), heldout=_heldout(ctx),
                 tokenizer_path=ctx.input("tokenizer") / TOKENIZER_FILE, seed=int(ctx.job.key["seed"]),
                 out_dir=ctx.out, resume=True, record=_record(ctx))
    if rank0:
        atomic_write_text(ctx.out / FINAL_CHECKPOINT, os.path.relpath(ckpt, ctx.out) + "\n")


def run_pack(ctxs: list[JobContext]) -> None:
    """Pretrain several runs together (:func:`codemix.train.pack.train_pack`); each job directory as :func:`run`'s.

    Members resume from their newest checkpoints; members that stopped at different steps (a
    pack that grew, a member once run alone) train as separate packs, one per step.
    """
    cfg = ctxs[0].cfg
    groups: dict[int, list[JobContext]] = {}
    for ctx in ctxs:
        _drop_stale_log(ctx)
        steps = [int(d.name[5:]) for d in checkpoint_dirs(ctx.out) if checkpoint_problem(d) is None]
        groups.setdefault(max(steps, default=0), []).append(ctx)
    for group in groups.values():
        with _all_cpu_threads():
            final = train_pack(cfg, [PackMember(c.input("mixture"), int(c.job.key["seed"]), c.out, _record(c))
                                     for c in group],
                               heldout=_heldout(group[0]), tokenizer_path=group[0].input("tokenizer") / TOKENIZER_FILE)
        for ctx, ckpt in zip(group, final):
            atomic_write_text(ctx.out / FINAL_CHECKPOINT, os.path.relpath(ckpt, ctx.out) + "\n")


@contextlib.contextmanager
def _all_cpu_threads() -> Iterator[None]:
    """A pack on a CPU uses every core the study left single-threaded (as groups of members, a thread each:
    :func:`codemix.train.pack.member_threads`)."""
    threads = torch.get_num_threads()
    if os.environ.get("CODEMIX_AUTO_THREADS") == "1":
        torch.set_num_threads(pack_cpu_threads())
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _drop_stale_log(ctx: JobContext) -> None:
    if not list((ctx.out / "checkpoints").glob("step-*")):  # nothing to resume: the log of a lost attempt
        (ctx.out / "log.jsonl").unlink(missing_ok=True)


def _heldout(ctx: JobContext) -> dict[str, Path]:
    return {name: d / "heldout" for name, d in ctx.stream_dirs().items()}


def _record(ctx: JobContext) -> dict[str, Any]:
    """What a checkpoint records of its place in the study (its labels, where the study and held-out data are)."""
    # where the study is, seen from a checkpoint (work/ and jobs/ have the same depth)
    return {"labels": [Labels.from_dict({**lab, "study": ctx.cfg.name}).to_dict() for lab in ctx.job.labels],
            "study_root": relative_to(ctx.root, ctx.out / "checkpoints" / "step-0"),
            "heldout": {name: relative_to(d / "heldout", ctx.root) for name, d in ctx.stream_dirs().items()}}


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
