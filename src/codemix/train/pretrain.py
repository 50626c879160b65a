"""Pretraining one model on one mixture: :func:`train`, its checkpoints and its held-out loss.

:func:`train` wires a pretraining task (:data:`codemix.objectives.TASKS`), a mixture
loader and the one loop (:func:`codemix.train.loop.run_loop`) into a run directory
(``config.yaml``, ``log.jsonl``, ``checkpoints/``). It is a function of explicit paths;
the study's pretrain stage (:mod:`codemix.study.stages.pretrain`) calls it.

Exact resume: a checkpoint holds the weights, the optimizer, every RNG state and the
loader's position, so a run killed and resumed computes the same losses, step for step,
as one that never stopped (CPU, fixed seed).
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from codemix.checkpoint import checkpoint_dirs, latest_checkpoint, read_weights, tied_aliases, write_checkpoint
from codemix.config import StudyConfig, print_config, save_config
from codemix.data.loader import MixtureLoader
from codemix.data.streams import TokenStream
from codemix.data.tokenizer import tokenizer_hash
from codemix.errors import CheckpointError, DataError
from codemix.io import atomic_write_text
from codemix.objectives import TASKS
from codemix.train.distributed import (
    DistContext,
    accum_steps_for,
    all_reduce_mean,
    barrier,
    init_distributed,
    load_model_state_dict,
    load_optimizer_state_dict,
    model_state_dict,
    optimizer_state_dict,
    parallelize,
    unwrap,
)
from codemix.train.loop import LoopSpec, LoopState, RunLogger, build_optimizer, lr_at, run_loop, warn

__all__ = ["HeldoutEval", "decode_rng_state", "encode_rng_state", "load_checkpoint", "precision", "resolve_budget",
           "save_checkpoint", "train", "truncate_log"]


# ----------------------------------------------------------------------------- checkpoints


def encode_rng_state(states: dict[str, Any]) -> dict[str, Any]:
    """Random streams (``cpu``, ``numpy``, ``python`` and, on a GPU, ``cuda``) as JSON for ``trainer_state.json``."""
    def b64(t: torch.Tensor) -> str:
        return base64.b64encode(t.numpy().tobytes()).decode()

    n, py = states["numpy"], states["python"]
    record = {"torch": b64(states["cpu"]), "numpy": [n[0], n[1].tolist(), *n[2:]], "python": [py[0], list(py[1]), py[2]]}
    if "cuda" in states:
        record["cuda"] = b64(states["cuda"])
    return record


def decode_rng_state(record: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`encode_rng_state`: states ``torch.set_rng_state`` and friends take."""
    def tensor(s: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)

    n, py = record["numpy"], record["python"]
    states = {"cpu": tensor(record["torch"]), "numpy": (n[0], np.array(n[1], dtype=np.uint32), *n[2:]),
              "python": (py[0], tuple(py[1]), py[2])}
    if "cuda" in record:
        states["cuda"] = tensor(record["cuda"])
    return states


def _rng_state(ctx: DistContext) -> dict[str, Any]:
    states = {"cpu": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if ctx.device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(ctx.device)
    return encode_rng_state(states)


def _set_rng_state(record: dict[str, Any], ctx: DistContext) -> None:
    states = decode_rng_state(record)
    torch.set_rng_state(states["cpu"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"], ctx.device)


def save_checkpoint(run_dir: str | Path, *, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    codemix_config: dict[str, Any], trainer_state: dict[str, Any], tokenizer_path: str | Path,
                    keep: int = 2, ctx: DistContext | None = None) -> Path:
    """Gather the state (every rank must call this: FSDP gathers shards) and write it on the main rank.

    See :func:`codemix.checkpoint.write_checkpoint` for what is written and how atomically.
    """
    ctx = ctx or DistContext.single()
    target = Path(run_dir) / "checkpoints" / f"step-{step:07d}"
    if not ctx.is_main and not ctx.fsdp:  # replicated: rank 0 has everything
        barrier(ctx)
        return target
    aliases = tied_aliases(unwrap(model))
    weights = {k: v for k, v in model_state_dict(model, ctx).items() if k not in aliases}
    optim = optimizer_state_dict(model, optimizer, ctx)
    if ctx.is_main:
        target = write_checkpoint(run_dir, step=step, weights=weights, optimizer_state=optim,
                                  codemix_config=codemix_config, trainer_state=trainer_state,
                                  tokenizer_path=tokenizer_path, keep=keep)
    barrier(ctx)
    return target


def load_checkpoint(ckpt: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    ctx: DistContext | None = None) -> dict[str, Any]:
    """Load weights (and optimizer state) from ``ckpt`` into ``model``; return its trainer state."""
    ctx = ctx or DistContext.single()
    ckpt = Path(ckpt)
    load_model_state_dict(model, read_weights(ckpt, unwrap(model)), ctx)
    if optimizer is not None:
        load_optimizer_state_dict(model, optimizer, torch.load(ckpt / "optimizer.pt", weights_only=True), ctx)
    return json.loads((ckpt / "trainer_state.json").read_text())


# ----------------------------------------------------------------------------- held-out evaluation


class HeldoutEval:
    """Loss on each source's held-out documents: the same sequences at every evaluation.

    Each source's held-out token stream is cut into consecutive ``seq_len`` windows and the
    first ``n_sequences`` are scored, ``batch_size`` at a time. The windows are split across
    ranks and the sums all-reduced, so the figure does not depend on the number of processes.
    Sources without held-out documents are skipped (with one warning). With ``source_ids``
    (for tasks whose objectives depend on the source, e.g. CodeT5's identifier objectives),
    batches are ``{"tokens", "source"}`` dicts, as the loader gives them in training.
    ``batches_to_device`` as in :class:`LoopSpec`.
    """

    def __init__(self, heldout: dict[str, Path], loss_fn: Callable[[nn.Module, Any, int], dict],
                 *, seq_len: int, n_sequences: int, batch_size: int, ctx: DistContext,
                 amp_dtype: torch.dtype | None = None, source_ids: dict[str, int] | None = None,
                 batches_to_device: bool = True, loss_key: str = "loss"):
        self.loss_fn, self.ctx, self.amp_dtype, self.source_ids = loss_fn, ctx, amp_dtype, source_ids
        self.loss_key = loss_key
        self.batches_to_device = batches_to_device
        self.batches: dict[str, list[torch.Tensor]] = {}
        for source, directory in heldout.items():
            directory = Path(directory)
            if not (directory / "tokens.bin").exists():
                if ctx.is_main:
                    warn(f"no held-out token stream for source {source!r} at {directory}; its eval loss is skipped")
                continue
            tokens = np.asarray(TokenStream(directory).tokens)
            # Every rank must run the same number of forward passes (FSDP gathers in each).
            n_windows = min(len(tokens) // seq_len, n_sequences) // ctx.world_size * ctx.world_size
            if n_windows == 0:
                if ctx.is_main:
                    warn(f"held-out stream of {source!r} has {len(tokens)} tokens, too few for one sequence "
                          f"of {seq_len} per rank; its eval loss is skipped")
                continue
            windows = torch.from_numpy(tokens[: n_windows * seq_len].astype(np.int64)).view(n_windows, seq_len)
            self.batches[source] = list(windows[ctx.rank::ctx.world_size].split(batch_size))

    @torch.no_grad()
    def __call__(self, model: nn.Module, step: int) -> list[dict[str, Any]]:
        model.eval()
        autocast = (torch.autocast(self.ctx.device.type, dtype=self.amp_dtype) if self.amp_dtype
                    else contextlib.nullcontext())
        records = []
        for source, batches in self.batches.items():
            total = torch.zeros(1, dtype=torch.float64, device=self.ctx.device)  # sequences, then per-loss sums
            sums: torch.Tensor | float = 0.0
            for batch in batches:
                inputs: Any = batch.to(self.ctx.device) if self.batches_to_device else batch
                if self.source_ids is not None:
                    inputs = {"tokens": inputs, "source": torch.full((len(batch),), self.source_ids[source])}
                with autocast:
                    loss = self.loss_fn(model, inputs, step)[self.loss_key].double()  # scalar, or one per member
                sums = sums + loss * batch.shape[0]
                total += batch.shape[0]
            packed = all_reduce_mean(torch.cat([total, torch.as_tensor(sums).reshape(-1)]), self.ctx)
            mean = packed[1:] / packed[0]  # the ratio is unchanged by the mean over ranks
            records.append({"source": source, "loss": mean.item() if mean.numel() == 1 else mean.tolist(),
                            "sequences": round(packed[0].item() * self.ctx.world_size)})
        return records


# ----------------------------------------------------------------------------- pretraining


def resolve_budget(p: Any, *, batches_per_epoch: int, tokens_per_step: int) -> int:
    """Optimizer steps: one pass over the mixture unless max_steps / max_tokens say otherwise."""
    if p.max_steps is not None:
        steps = p.max_steps
    elif p.max_tokens is not None:
        steps = max(1, math.ceil(p.max_tokens / tokens_per_step))
    else:
        steps = batches_per_epoch
    if steps <= 0:
        raise DataError(f"the mixture holds fewer sequences ({batches_per_epoch} batches) than one batch of "
                        f"pretrain.batch_size={p.batch_size}; lower the batch size or build a larger mixture")
    return steps


def precision(p: Any, device: torch.device) -> torch.dtype | None:
    if p.precision == "bf16" or (p.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def truncate_log(path: Path, step: int) -> None:
    """Drop log lines after ``step`` (a resumed run writes them again)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def train(cfg: StudyConfig, *, mixture_dir: str | Path, heldout: dict[str, Path], tokenizer_path: str | Path,
          seed: int, out_dir: str | Path, resume: bool = False, ctx: DistContext | None = None,
          record: dict[str, Any] | None = None) -> Path:
    """Pretrain one model (``cfg.model.arch``) on one mixture; return the final checkpoint directory.

    Writes ``out_dir/config.yaml`` (the resolved study config), ``log.jsonl`` and
    ``checkpoints/step-NNNNNNN``. With ``resume``, continues from the newest usable checkpoint
    (or starts fresh if there is none); without it, a run directory that already holds
    checkpoints is refused rather than overwritten. ``record`` adds entries to every
    checkpoint's ``config.json`` (what the model is in its study: see
    :class:`codemix.checkpoint.CheckpointInfo`).
    """
    p = cfg.pretrain
    ctx = ctx or init_distributed(device=p.device, backend=cfg.parallel.backend, fsdp=cfg.parallel.fsdp)
    out_dir = Path(out_dir)
    mixture_dir = Path(mixture_dir)
    if not (mixture_dir / "index.npy").is_file() or not (mixture_dir / "mixture.json").is_file():
        raise DataError(f"mixture directory {mixture_dir} has no index.npy/mixture.json: the mixture was not built; "
                        "run `codemix mix STUDY.yaml` (or `codemix train`, which builds it) first")
    accum = accum_steps_for(p.batch_size, p.micro_batch_size, ctx.world_size)

    existing = checkpoint_dirs(out_dir)
    if existing and not resume:
        raise CheckpointError(f"run directory {out_dir} already holds checkpoints (newest {existing[-1].name}); "
                              "resume it, or choose another directory")
    start = latest_checkpoint(out_dir) if resume and existing else None

    if ctx.is_main:
        print_config(cfg, title=f"codemix train -> {out_dir}")
        save_config(cfg, out_dir)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    task = TASKS[cfg.model.arch](cfg, tokenizer_path=tokenizer_path)
    model = task.build_model()
    codemix_config = {
        "arch": cfg.model.arch, "model": task.model_config(), "tokenizer_hash": tokenizer_hash(tokenizer_path),
        "seq_len": cfg.data.seq_len, "study": cfg.name, "seed": seed, **(record or {}),
        "study_config": cfg.model_dump(mode="json"),  # the resolved config travels with the weights
    }
    amp_dtype = precision(p, ctx.device)
    compile_model = p.compile if p.compile is not None else ctx.device.type == "cuda"
    model = parallelize(model, ctx, compile=compile_model)
    optimizer = build_optimizer(model, lr=p.lr, weight_decay=p.weight_decay, betas=(p.beta1, p.beta2))

    # Tasks whose objectives depend on the source (CodeT5) get each sequence's source id too.
    loader = MixtureLoader(mixture_dir, batch_size=p.batch_size, seed=seed, rank=ctx.rank, world_size=ctx.world_size,
                           with_sources=task.needs_sources)
    task.bind_streams([stream.dir for stream in loader.streams])
    tokens_per_step = p.batch_size * cfg.data.seq_len
    total = resolve_budget(p, batches_per_epoch=loader.batches_per_epoch, tokens_per_step=tokens_per_step)
    if total > loader.batches_per_epoch and ctx.is_main:
        warn(f"{total} steps exceed one pass over the mixture ({loader.batches_per_epoch} steps): "
              "sequences will repeat")

    state = LoopState()
    if start is not None:
        saved = json.loads((start / "config.json").read_text())["codemix"]
        if saved.get("model") != json.loads(json.dumps(codemix_config["model"])):
            raise CheckpointError(f"{start} was trained with model {saved.get('model')}, but the study now asks "
                                  f"for {codemix_config['model']}; resume with the same model settings or use "
                                  "another run directory")
        if saved.get("tokenizer_hash") != codemix_config["tokenizer_hash"]:
            raise CheckpointError(f"{start} was trained with tokenizer {saved.get('tokenizer_hash')}, but "
                                  f"{tokenizer_path} is {codemix_config['tokenizer_hash']}; resume with the same "
                                  "data (tokenizer) or use another run directory")
        trainer_state = load_checkpoint(start, model, optimizer, ctx)
        state = LoopState(step=trainer_state["step"], tokens=trainer_state["tokens"])
        loader.load_state_dict(trainer_state["loader"])
        _set_rng_state(trainer_state["rng"], ctx)
        if ctx.is_main:
            print(f"resuming from {start} (step {state.step})", file=sys.stderr)
    if ctx.is_main:  # lines past the checkpoint (or from an attempt killed before any) are redone
        truncate_log(out_dir / "log.jsonl", state.step)

    micro = p.batch_size // ctx.world_size // accum
    batches_to_device = not task.cpu_batches  # CodeT5 builds its inputs on the CPU
    evaluator = HeldoutEval(heldout, task.loss, seq_len=cfg.data.seq_len, n_sequences=p.eval_batches * p.batch_size,
                            batch_size=micro, ctx=ctx, amp_dtype=amp_dtype,
                            source_ids={s.name: i for i, s in enumerate(cfg.data.sources)} if task.needs_sources else None,
                            batches_to_device=batches_to_device)
    logger = RunLogger(out_dir / "log.jsonl", enabled=ctx.is_main, tensorboard=p.tensorboard, wandb=p.wandb,
                       run_name=f"{cfg.name}-{out_dir.name}", config=cfg.model_dump(mode="json"))
    saved_paths: list[Path] = []

    def checkpoint(s: LoopState) -> Path:
        trainer_state = {"step": s.step, "tokens": s.tokens, "total_steps": total, "rng": _rng_state(ctx),
                         "loader": loader.state_dict(), "world_size": ctx.world_size}
        path = save_checkpoint(out_dir, step=s.step, model=model, optimizer=optimizer, codemix_config=codemix_config,
                               trainer_state=trainer_state, tokenizer_path=tokenizer_path,
                               keep=p.keep_checkpoints, ctx=ctx)
        saved_paths.append(path)
        return path

    spec = LoopSpec(total_steps=total, accum_steps=accum, grad_clip=p.grad_clip, amp_dtype=amp_dtype,
                    lr=lambda step: lr_at(step, warmup=p.warmup_steps, total=total, lr=p.lr, min_ratio=p.min_lr_ratio),
                    log_every=p.log_every, eval_every=p.eval_every if evaluator.batches else None,
                    checkpoint_every=p.checkpoint_every,
                    batches_to_device=batches_to_device)
    run_loop(model, optimizer, loader, task.loss, spec=spec, state=state, ctx=ctx, logger=logger,
             eval_fn=evaluator, checkpoint_fn=checkpoint)
    return saved_paths[-1] if saved_paths else out_dir / "checkpoints" / f"step-{state.step:07d}"
