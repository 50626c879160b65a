"""The one training loop, and the pieces every run uses: optimizer, schedule, logging.

Read top to bottom:

1. the optimizer and learning-rate schedule (:func:`build_optimizer`, :func:`lr_at`);
2. logging (:class:`RunLogger`: JSONL, optional TensorBoard / W&B, a rich progress bar);
3. the loop (:func:`run_loop`): gradient accumulation, clipping, bf16 autocast on CUDA,
   eval and checkpoint hooks; on a CPU, freed memory kept for the next step
   (:func:`keep_freed_memory`). It knows nothing about mixtures, architectures or files:
   pretraining (:mod:`codemix.train.pretrain`) and finetuning (:mod:`codemix.train.finetune`)
   give it their batches, loss and hooks.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import math
import platform
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from codemix.errors import ConfigError, DataError
from codemix.train.distributed import DistContext, all_reduce_mean, no_sync

__all__ = ["LoopSpec", "LoopState", "RunLogger", "build_optimizer", "keep_freed_memory", "lr_at", "run_loop", "warn"]


def warn(message: str) -> None:
    """A yellow warning line on stderr."""
    Console(stderr=True).print(f"[yellow]warning:[/yellow] {message}", highlight=False)


# ----------------------------------------------------------------------------- optimizer and schedule


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float = 0.1,
                    betas: tuple[float, float] = (0.9, 0.95), member_dim: bool = False) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (linear layers and embeddings).

    Norm gains and biases (1-D tensors) are not decayed: shrinking them toward zero only
    fights the normalization. The fused kernel (one pass over each tensor; on a CPU 4x faster
    than the per-tensor loop at a tiny GPT's sizes) is used when the parameters are on CUDA or a CPU.
    ``member_dim``: every parameter has a leading model dimension (a pack), not counted.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    matrix = 3 if member_dim else 2
    decay = [p for p in params if p.dim() >= matrix]
    no_decay = [p for p in params if p.dim() < matrix]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = bool(params) and all(p.device.type in ("cuda", "cpu") for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def lr_at(step: int, *, warmup: int, total: int, lr: float, min_ratio: float = 0.1) -> float:
    """Learning rate for optimizer step ``step`` (0-based): linear warmup, then cosine decay.

    Warmup rises to ``lr`` over ``warmup`` steps; the cosine falls from ``lr`` to
    ``min_ratio * lr`` at the last step (``total - 1``). ``min_ratio=1`` keeps it constant.
    """
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    span = max(1, total - 1 - warmup)
    progress = min(1.0, max(0.0, (step - warmup) / span))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


# ----------------------------------------------------------------------------- logging


class RunLogger:
    """Appends one JSON object per line to ``log.jsonl``; mirrors scalars to TensorBoard / W&B.

    Only the main rank writes (``enabled``); on other ranks every method is a no-op.
    A live progress bar (loss, tokens/s) goes to stderr, so stdout stays machine-readable.
    """

    def __init__(self, path: str | Path | None, *, enabled: bool = True, tensorboard: bool = False,
                 wandb: bool = False, run_name: str | None = None, config: dict[str, Any] | None = None,
                 progress: bool = True):
        self.enabled = enabled
        self.path = Path(path) if path is not None else None
        self._file = None
        self._tb = None
        self._wandb = None
        self._progress = None
        self._bar = None
        self._show_progress = progress and enabled
        if not enabled:
            return
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard") if self.path else None)
            except ImportError:
                warn("pretrain.tensorboard is on but tensorboard is not installed (pip install tensorboard); "
                      "logging to log.jsonl only")
        if wandb:
            try:
                import wandb as wandb_mod

                self._wandb = wandb_mod.init(project="codemix", name=run_name, config=config or {}, resume="allow")
            except ImportError:
                warn("pretrain.wandb is on but wandb is not installed (pip install wandb); logging to log.jsonl only")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        # NaN (e.g. an objective absent from a batch) becomes null: log.jsonl stays strict JSON.
        record = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
        if self._file is not None:
            self._file.write(json.dumps(record, default=float) + "\n")
            self._file.flush()
        step = record.get("step")
        prefix = f"eval/{record['source']}/" if record.get("kind") == "eval" and "source" in record else "train/"
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k != "step"}
        if self._tb is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(prefix + k, v, step)
        if self._wandb is not None:
            self._wandb.log({prefix + k: v for k, v in scalars.items()}, step=step)

    def start_progress(self, total: int, completed: int = 0, description: str = "train") -> None:
        if not self._show_progress:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"), TimeRemainingColumn(),
            console=Console(stderr=True), transient=False,
        )
        self._progress.start()
        self._bar = self._progress.add_task(description, total=total, completed=completed, loss="-", tps="-")

    def advance(self, *, loss: float | None = None, tokens_per_s: float | None = None) -> None:
        if self._progress is None:
            return
        fields: dict[str, Any] = {}
        if loss is not None:
            fields["loss"] = f"{loss:.4f}"
        if tokens_per_s is not None:
            fields["tps"] = f"{tokens_per_s:,.0f}"
        self._progress.update(self._bar, advance=1, **fields)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


# ----------------------------------------------------------------------------- the loop


@dataclass
class LoopSpec:
    """What one run of :func:`run_loop` does; everything data- or model-specific is in its callables."""

    total_steps: int
    """Optimizer steps to reach (a resumed run does the remaining ones)."""
    lr: Callable[[int], float]
    """Learning rate of each step, e.g. ``functools.partial(lr_at, warmup=..., total=..., lr=...)``."""
    accum_steps: int = 1
    """Micro-batches per optimizer step (each rank's batch is split along dim 0)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping)."""
    amp_dtype: torch.dtype | None = None
    """Autocast dtype (bf16 on CUDA); None: full precision."""
    log_every: int = 10
    eval_every: int | None = None
    checkpoint_every: int | None = None
    clip: Callable[[list[torch.Tensor], float], torch.Tensor] | None = None
    """Gradient clipping ``clip(params, grad_clip) -> norm(s)``; default: one global norm
    (``clip_grad_norm_``). A pack of models clips each member on its own norm."""
    batches_to_device: bool = True
    """Move each micro-batch to the device before ``loss_fn``. False for a task that builds its
    inputs on the CPU (CodeT5's objectives): a batch sent to the GPU only to be copied back
    would make every step wait for the previous one to finish."""


@dataclass
class LoopState:
    """Progress of a run: optimizer steps taken and training tokens seen (all ranks)."""

    step: int = 0
    tokens: int = 0


def _split(batch: Any, n: int) -> list[Any]:
    """Split a batch (tensor, dict or tuple of tensors) into n micro-batches along dim 0."""
    if n == 1:
        return [batch]
    if isinstance(batch, torch.Tensor):
        if batch.shape[0] % n:
            raise ConfigError(f"a batch of {batch.shape[0]} rows cannot be split into {n} equal micro-batches")
        return list(batch.chunk(n))
    if isinstance(batch, dict):
        parts = {k: _split(v, n) if isinstance(v, torch.Tensor) else [v] * n for k, v in batch.items()}
        return [{k: parts[k][i] for k in batch} for i in range(n)]
    if isinstance(batch, (tuple, list)):
        parts = [_split(v, n) for v in batch]
        return [type(batch)(p[i] for p in parts) for i in range(n)]
    raise TypeError(f"cannot split a batch of type {type(batch).__name__}")


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _n_tokens(batch: Any) -> int:
    """Tokens in a batch: a tensor's size, or that of its `tokens` / `input_ids` (else first) tensor."""
    if isinstance(batch, torch.Tensor):
        return batch.numel()
    if isinstance(batch, dict):
        t = batch.get("tokens", batch.get("input_ids"))
        if t is None:
            t = next(v for v in batch.values() if isinstance(v, torch.Tensor))
        return t.numel()
    return _n_tokens(batch[0])


def _scalar_or_list(v: torch.Tensor) -> float | list[float]:
    """A logged value: a number, or one number per member of a pack."""
    return v.item() if v.numel() == 1 else v.tolist()


def _as_list(v: float | list[float]) -> list[float]:
    return v if isinstance(v, list) else [v]


def _batches_forever(batches: Iterable[Any]) -> Iterator[Any]:
    """Iterate epoch after epoch (a new ``iter()`` each time the previous one ends)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise DataError("the training data yields no batches; is the mixture smaller than one batch?")


@functools.cache  # a setting of the process: once is enough
def keep_freed_memory() -> bool:
    """Let this process keep the memory a training step frees, for the next step (glibc only).

    Every step frees its activations and allocates the same sizes again. glibc's defaults hand
    large freed blocks back to the kernel, so the next step faults each 4 KiB page in again
    (zeroed by the kernel). A single tiny run stays under glibc's thresholds; a pack's
    activations, K times larger, do not: a pack of 8 ``tiny`` GPTs on 2 CPU threads took
    10-30K page faults per step, 0.6-2.0 s of kernel time in 18-24 steps (measured on a 2-vCPU
    VM), and with this under 500 per step and 0.2-0.4 s. Up to 1 GiB of freed memory then stays
    with the process (its peak is unchanged). Called by :func:`run_loop` on a CPU; True if it applied.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))


def run_loop(model: nn.Module, optimizer: torch.optim.Optimizer, batches: Iterable[Any],
             loss_fn: Callable[[nn.Module, Any, int], dict[str, torch.Tensor]], *, spec: LoopSpec,
             state: LoopState, ctx: DistContext, logger: RunLogger,
             eval_fn: Callable[[nn.Module, int], list[dict[str, Any]]] | None = None,
             checkpoint_fn: Callable[[LoopState], Path] | None = None) -> LoopState:
    """Train ``model`` from ``state.step`` to ``spec.total_steps``; returns the final state.

    Each item of ``batches`` is this rank's share of one optimizer step. ``loss_fn`` returns
    a dict whose ``"loss"`` is minimized; every other entry is averaged and logged. Losses
    are averaged over micro-batches and ranks before logging, so a log line means the same
    thing on 1 or N processes. ``checkpoint_fn`` runs every ``checkpoint_every`` steps and
    after the last step (unless that step was just saved).
    """
    autocast = (torch.autocast(ctx.device.type, dtype=spec.amp_dtype) if spec.amp_dtype is not None
                else contextlib.nullcontext())
    if ctx.device.type == "cpu":
        keep_freed_memory()
    params = [p for p in model.parameters() if p.requires_grad]
    data = _batches_forever(batches)
    logger.start_progress(spec.total_steps, completed=state.step)
    last_saved = state.step if state.step >= spec.total_steps else None
    start = t0 = time.perf_counter()
    tokens_since = 0
    model.train()
    try:
        while state.step < spec.total_steps:
            step = state.step
            lr = spec.lr(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = next(data)
            micro_batches = _split(batch, spec.accum_steps)
            totals: dict[str, torch.Tensor] = {}
            for i, micro in enumerate(micro_batches):
                if spec.batches_to_device:
                    micro = _to_device(micro, ctx.device)
                with no_sync(model, skip=i < len(micro_batches) - 1), autocast:
                    out = loss_fn(model, micro, step)
                (out["loss"] / len(micro_batches)).backward()
                for k, v in out.items():
                    totals[k] = totals.get(k, 0.0) + v.detach().float() / len(micro_batches)
            clip = spec.clip or torch.nn.utils.clip_grad_norm_
            grad_norm = clip(params, spec.grad_clip) if spec.grad_clip > 0 else None
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            step_tokens = _n_tokens(batch) * ctx.world_size
            state.step += 1
            state.tokens += step_tokens
            tokens_since += step_tokens
            is_log_step = state.step % spec.log_every == 0 or state.step == spec.total_steps or state.step == 1
            if is_log_step:
                values = {k: _scalar_or_list(all_reduce_mean(v, ctx)) for k, v in totals.items()}
                if not all(math.isfinite(x) for x in _as_list(values["loss"])):
                    raise FloatingPointError(f"loss is {values['loss']} at step {state.step}; lower pretrain.lr "
                                             "or check the data")
                elapsed = time.perf_counter() - t0
                tps = tokens_since / elapsed if elapsed > 0 else 0.0
                record = {"step": state.step, **values, "lr": lr, "tokens": state.tokens, "tokens_per_s": round(tps, 1),
                          "elapsed_s": round(time.perf_counter() - start, 3)}
                if grad_norm is not None:
                    record["grad_norm"] = _scalar_or_list(grad_norm.detach())
                logger.log(record)
                logger.advance(loss=values["loss"], tokens_per_s=tps)
                t0, tokens_since = time.perf_counter(), 0
            else:
                logger.advance()

            if eval_fn is not None and spec.eval_every and (state.step % spec.eval_every == 0
                                                            or state.step == spec.total_steps):
                for record in eval_fn(model, state.step):
                    logger.log({"kind": "eval", "step": state.step, **record})
                model.train()
            if checkpoint_fn is not None and spec.checkpoint_every and state.step % spec.checkpoint_every == 0:
                checkpoint_fn(state)
                last_saved = state.step
        if checkpoint_fn is not None and last_saved != state.step:
            checkpoint_fn(state)
    finally:
        logger.close()
    return state
