"""The one training loop: pretraining on a mixture, and the parts finetuning reuses.

Read top to bottom:

1. the optimizer and learning-rate schedule (:func:`build_optimizer`, :func:`lr_at`);
2. logging (:class:`RunLogger`: JSONL, optional TensorBoard / W&B, a rich progress bar);
3. the loop (:func:`run_loop`): gradient accumulation, clipping, bf16 autocast on CUDA,
   eval and checkpoint hooks — it knows nothing about mixtures or architectures;
4. checkpoints (:func:`save_checkpoint`, :func:`latest_checkpoint`, :func:`load_checkpoint`):
   atomic directories, checksummed, the last K kept, a corrupt one skipped for the previous;
5. held-out loss per source (:class:`HeldoutEval`);
6. :func:`train` and ``codemix train`` (:func:`cmd_train`), which wire them to a study.

Exact resume: a checkpoint holds the weights, the optimizer, every RNG state and the
loader's position, so a run killed and resumed computes the same losses, step for step,
as one that never stopped (CPU, fixed seed).
"""

from __future__ import annotations

import base64
import contextlib
import errno
import inspect
import json
import math
import random
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from codemix.errors import CheckpointError, ConfigError, DataError
from codemix.io import atomic_dir, atomic_write_text, sha256_file
from codemix.train.distributed import (
    DistContext,
    accum_steps_for,
    all_reduce_mean,
    barrier,
    init_distributed,
    load_model_state_dict,
    load_optimizer_state_dict,
    model_state_dict,
    no_sync,
    optimizer_state_dict,
    parallelize,
    shutdown,
    unwrap,
)

__all__ = [
    "HeldoutEval",
    "LoopSpec",
    "LoopState",
    "RunLogger",
    "build_optimizer",
    "cmd_train",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_at",
    "run_loop",
    "save_checkpoint",
    "train",
]

CHECKPOINT_FILES = ("model.safetensors", "config.json", "optimizer.pt", "tokenizer.json")


def _warn(message: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[yellow]warning:[/yellow] {message}", highlight=False)


# ----------------------------------------------------------------------------- optimizer and schedule


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float = 0.1,
                    betas: tuple[float, float] = (0.9, 0.95)) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only (linear layers and embeddings).

    Norm gains and biases (1-D tensors) are not decayed: shrinking them toward zero only
    fights the normalization. The fused kernel is used when the parameters are on CUDA.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = bool(params) and all(p.device.type == "cuda" for p in params)
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
                _warn("pretrain.tensorboard is on but tensorboard is not installed (pip install tensorboard); "
                      "logging to log.jsonl only")
        if wandb:
            try:
                import wandb as wandb_mod

                self._wandb = wandb_mod.init(project="codemix", name=run_name, config=config or {}, resume="allow")
            except ImportError:
                _warn("pretrain.wandb is on but wandb is not installed (pip install wandb); logging to log.jsonl only")

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
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

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


def _batches_forever(batches: Iterable[Any]) -> Iterator[Any]:
    """Iterate epoch after epoch (a new ``iter()`` each time the previous one ends)."""
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise DataError("the training data yields no batches; is the mixture smaller than one batch?")


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
            grad_norm = (torch.nn.utils.clip_grad_norm_(params, spec.grad_clip) if spec.grad_clip > 0 else None)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

            step_tokens = _n_tokens(batch) * ctx.world_size
            state.step += 1
            state.tokens += step_tokens
            tokens_since += step_tokens
            is_log_step = state.step % spec.log_every == 0 or state.step == spec.total_steps or state.step == 1
            if is_log_step:
                values = {k: all_reduce_mean(v, ctx).item() for k, v in totals.items()}
                if not math.isfinite(values["loss"]):
                    raise FloatingPointError(f"loss is {values['loss']} at step {state.step}; lower pretrain.lr "
                                             "or check the data (resume from the last checkpoint with --resume)")
                elapsed = time.perf_counter() - t0
                tps = tokens_since / elapsed if elapsed > 0 else 0.0
                record = {"step": state.step, **values, "lr": lr, "tokens": state.tokens, "tokens_per_s": round(tps, 1),
                          "elapsed_s": round(time.perf_counter() - start, 3)}
                if grad_norm is not None:
                    record["grad_norm"] = float(grad_norm)
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


# ----------------------------------------------------------------------------- checkpoints


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"


def _tied_aliases(module: nn.Module) -> dict[str, str]:
    """Parameters that are the same tensor as an earlier one (tied embeddings): alias -> first name.

    Checkpoints store a tied tensor once, under its first name.
    """
    seen: dict[int, str] = {}
    aliases = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            aliases[name] = seen[id(p)]
        else:
            seen[id(p)] = name
    return aliases


def _rng_state(ctx: DistContext) -> dict[str, Any]:
    def b64(t: torch.Tensor) -> str:
        return base64.b64encode(t.numpy().tobytes()).decode()

    np_state = np.random.get_state()
    state = {
        "torch": b64(torch.get_rng_state()),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if ctx.device.type == "cuda":
        state["cuda"] = b64(torch.cuda.get_rng_state(ctx.device))
    return state


def _set_rng_state(state: dict[str, Any], ctx: DistContext) -> None:
    def tensor(s: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    if "cuda" in state and ctx.device.type == "cuda":
        torch.cuda.set_rng_state(tensor(state["cuda"]), ctx.device)


def save_checkpoint(run_dir: str | Path, *, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    codemix_config: dict[str, Any], trainer_state: dict[str, Any], tokenizer_path: str | Path,
                    keep: int = 2, ctx: DistContext | None = None) -> Path:
    """Write ``run_dir/checkpoints/step-NNNNNNN`` atomically, then keep only the last ``keep``.

    Every rank must call this (FSDP gathers shards); only the main rank writes. The files are
    written into a temporary directory that is renamed into place once complete, and
    ``trainer_state.json`` (written last) records each file's sha256, so a checkpoint is
    either whole and verifiable or absent. Out of disk space, the partial copy is removed,
    older checkpoints are untouched, and a :class:`CheckpointError` says so.
    """
    from safetensors.torch import save_file

    ctx = ctx or DistContext.single()
    root = Path(run_dir) / "checkpoints"
    target = _step_dir(root, step)
    if not ctx.is_main and not ctx.fsdp:  # replicated: rank 0 has everything
        barrier(ctx)
        return target
    aliases = _tied_aliases(unwrap(model))
    weights = {k: v.contiguous() for k, v in model_state_dict(model, ctx).items() if k not in aliases}
    optim = optimizer_state_dict(model, optimizer, ctx)
    if ctx.is_main:
        try:
            with atomic_dir(target, overwrite=True) as tmp:
                save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
                torch.save(optim, tmp / "optimizer.pt")
                (tmp / "config.json").write_text(json.dumps({"codemix": codemix_config}, indent=2, default=str))
                shutil.copyfile(_tokenizer_json(tokenizer_path), tmp / "tokenizer.json")
                files = {name: sha256_file(tmp / name) for name in CHECKPOINT_FILES}
                (tmp / "trainer_state.json").write_text(json.dumps({**trainer_state, "files": files}, default=_json))
        except OSError as err:
            good = _valid_steps(root)
            kept = f"the last good checkpoint, {good[-1].name}, is intact" if good else "no earlier checkpoint exists"
            what = "out of disk space" if err.errno == errno.ENOSPC else f"OS error ({err})"
            raise CheckpointError(f"could not write checkpoint {target.name} under {root}: {what}; {kept}. "
                                  "Free space (or fix the directory), then rerun with --resume") from err
        for old in _checkpoint_dirs(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(ctx)
    return target


def _json(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return str(obj)


def _tokenizer_json(path: str | Path) -> Path:
    path = Path(path)
    return path / "tokenizer.json" if path.is_dir() else path


def _checkpoint_dirs(root: Path) -> list[Path]:
    """Checkpoint directories under ``root``, oldest first (temporary dirs excluded)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit())


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be used (missing file, bad JSON, checksum mismatch), or None if it is whole."""
    state_file = ckpt / "trainer_state.json"
    if not state_file.is_file():
        return "trainer_state.json is missing (the write did not finish)"
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"trainer_state.json is not valid JSON ({err})"
    for name, digest in state.get("files", {}).items():
        if not (ckpt / name).is_file():
            return f"{name} is missing"
        if sha256_file(ckpt / name) != digest:
            return f"{name} does not match its recorded sha256 (corrupt or modified)"
    return None


def _valid_steps(root: Path) -> list[Path]:
    return [p for p in _checkpoint_dirs(root) if checkpoint_problem(p) is None]


def latest_checkpoint(path: str | Path) -> Path:
    """The newest usable checkpoint for a checkpoint, ``checkpoints/`` or run directory.

    A corrupt newest checkpoint is reported (warning) and the previous one used; a
    :class:`CheckpointError` is raised when none is usable.
    """
    path = Path(path)
    if (path / "trainer_state.json").exists() or (path / "model.safetensors").exists():
        problem = checkpoint_problem(path)
        if problem:
            raise CheckpointError(f"checkpoint {path} is unusable: {problem}; use an earlier one from {path.parent}")
        return path
    root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
    candidates = _checkpoint_dirs(root)
    for ckpt in reversed(candidates):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        _warn(f"checkpoint {ckpt} is unusable ({problem}); trying the previous one")
    raise CheckpointError(f"no usable checkpoint under {path}: expected checkpoints/step-NNNNNNN directories "
                          f"with trainer_state.json, found {len(candidates)} candidate(s); train first "
                          "(`codemix train`) or pass a checkpoint directory")


def load_checkpoint(ckpt: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    ctx: DistContext | None = None) -> dict[str, Any]:
    """Load weights (and optimizer state) from ``ckpt`` into ``model``; return its trainer state."""
    from safetensors.torch import load_file

    ctx = ctx or DistContext.single()
    ckpt = Path(ckpt)
    weights = load_file(str(ckpt / "model.safetensors"))
    for alias, name in _tied_aliases(unwrap(model)).items():  # tied tensors were saved once
        if name in weights:
            weights[alias] = weights[name]
    full = unwrap(model).state_dict()
    missing = sorted(set(full) - set(weights))
    if missing:
        raise CheckpointError(f"{ckpt}/model.safetensors lacks {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                              "it was written for a different model shape (compare its config.json)")
    load_model_state_dict(model, weights, ctx)
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
                 batches_to_device: bool = True):
        from codemix.data.streams import TokenStream

        self.loss_fn, self.ctx, self.amp_dtype, self.source_ids = loss_fn, ctx, amp_dtype, source_ids
        self.batches_to_device = batches_to_device
        self.batches: dict[str, list[torch.Tensor]] = {}
        for source, directory in heldout.items():
            directory = Path(directory)
            if not (directory / "tokens.bin").exists():
                if ctx.is_main:
                    _warn(f"no held-out token stream for source {source!r} at {directory}; its eval loss is skipped")
                continue
            tokens = np.asarray(TokenStream(directory).tokens)
            # Every rank must run the same number of forward passes (FSDP gathers in each).
            n_windows = min(len(tokens) // seq_len, n_sequences) // ctx.world_size * ctx.world_size
            if n_windows == 0:
                if ctx.is_main:
                    _warn(f"held-out stream of {source!r} has {len(tokens)} tokens, too few for one sequence "
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
            total = torch.zeros(2, dtype=torch.float64, device=self.ctx.device)  # (sum of losses, sequences)
            for batch in batches:
                inputs: Any = batch.to(self.ctx.device) if self.batches_to_device else batch
                if self.source_ids is not None:
                    inputs = {"tokens": inputs, "source": torch.full((len(batch),), self.source_ids[source])}
                with autocast:
                    loss = self.loss_fn(model, inputs, step)["loss"].double()
                total += torch.stack([loss * batch.shape[0], total.new_tensor(batch.shape[0])])
            total = all_reduce_mean(total, self.ctx)  # the ratio is unchanged by the mean
            records.append({"source": source, "loss": (total[0] / total[1]).item(),
                            "sequences": round(total[1].item() * self.ctx.world_size)})
        return records


# ----------------------------------------------------------------------------- pretraining


def _resolve_budget(p: Any, *, batches_per_epoch: int, tokens_per_step: int) -> int:
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


def _precision(p: Any, device: torch.device) -> torch.dtype | None:
    if p.precision == "bf16" or (p.precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _truncate_log(path: Path, step: int) -> None:
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


def train(cfg: Any, *, mixture_dir: str | Path, heldout: dict[str, Path], tokenizer_path: str | Path, seed: int,
          out_dir: str | Path, resume: bool = False, ctx: DistContext | None = None) -> Path:
    """Pretrain one model (``cfg.model.arch``) on one mixture; return the final checkpoint directory.

    Writes ``out_dir/config.yaml`` (the resolved study config), ``log.jsonl`` and
    ``checkpoints/step-NNNNNNN``. With ``resume``, continues from the newest usable checkpoint
    (or starts fresh if there is none); without it, a run directory that already holds
    checkpoints is refused rather than overwritten.
    """
    from codemix.config import print_config, save_config
    from codemix.data.loader import MixtureLoader
    from codemix.data.tokenizer import tokenizer_hash
    from codemix.objectives import TASKS

    p = cfg.pretrain
    ctx = ctx or init_distributed(device=p.device, backend=cfg.parallel.backend, fsdp=cfg.parallel.fsdp)
    out_dir = Path(out_dir)
    mixture_dir = Path(mixture_dir)
    if not (mixture_dir / "index.npy").is_file() or not (mixture_dir / "mixture.json").is_file():
        raise DataError(f"mixture directory {mixture_dir} has no index.npy/mixture.json: the mixture was not built; "
                        "run `codemix mix STUDY.yaml` (or `codemix train`, which builds it) first")
    accum = accum_steps_for(p.batch_size, p.micro_batch_size, ctx.world_size)

    ckpt_root = out_dir / "checkpoints"
    existing = _checkpoint_dirs(ckpt_root)
    if existing and not resume:
        raise CheckpointError(f"run directory {out_dir} already holds checkpoints (newest {existing[-1].name}); "
                              "pass --resume to continue it, or choose another --out")
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
        "seq_len": cfg.data.seq_len, "study": cfg.name, "mixture": mixture_dir.name, "seed": seed,
        "study_config": cfg.model_dump(mode="json"),  # the resolved config travels with the weights
    }
    amp_dtype = _precision(p, ctx.device)
    compile_model = p.compile if p.compile is not None else ctx.device.type == "cuda"
    model = parallelize(model, ctx, compile=compile_model)
    optimizer = build_optimizer(model, lr=p.lr, weight_decay=p.weight_decay, betas=(p.beta1, p.beta2))

    # Tasks whose objectives depend on the source (CodeT5) get each sequence's source id too.
    needs_sources = bool(getattr(task, "needs_sources", False))
    loader_takes_sources = "with_sources" in inspect.signature(MixtureLoader).parameters
    extra = {"with_sources": True} if needs_sources and loader_takes_sources else {}
    loader = MixtureLoader(mixture_dir, batch_size=p.batch_size, seed=seed, rank=ctx.rank, world_size=ctx.world_size,
                           **extra)
    if hasattr(task, "bind_streams"):  # e.g. CodeT5's precomputed identifier annotations
        task.bind_streams([stream.dir for stream in loader.streams])
    tokens_per_step = p.batch_size * cfg.data.seq_len
    total = _resolve_budget(p, batches_per_epoch=loader.batches_per_epoch, tokens_per_step=tokens_per_step)
    if total > loader.batches_per_epoch and ctx.is_main:
        _warn(f"{total} steps exceed one pass over the mixture ({loader.batches_per_epoch} steps): "
              "sequences will repeat")

    state = LoopState()
    if start is not None:
        saved = json.loads((start / "config.json").read_text())["codemix"]
        if saved.get("model") != json.loads(json.dumps(codemix_config["model"])):
            raise CheckpointError(f"{start} was trained with model {saved.get('model')}, but the study now asks "
                                  f"for {codemix_config['model']}; resume with the same model settings or use "
                                  "another --out")
        if saved.get("tokenizer_hash") != codemix_config["tokenizer_hash"]:
            raise CheckpointError(f"{start} was trained with tokenizer {saved.get('tokenizer_hash')}, but "
                                  f"{tokenizer_path} is {codemix_config['tokenizer_hash']}; resume with the same "
                                  "data (tokenizer) or use another --out")
        trainer_state = load_checkpoint(start, model, optimizer, ctx)
        state = LoopState(step=trainer_state["step"], tokens=trainer_state["tokens"])
        loader.load_state_dict(trainer_state["loader"])
        _set_rng_state(trainer_state["rng"], ctx)
        if ctx.is_main:
            print(f"resuming from {start} (step {state.step})", file=sys.stderr)
    if ctx.is_main:  # lines past the checkpoint (or from an attempt killed before any) are redone
        _truncate_log(out_dir / "log.jsonl", state.step)

    micro = p.batch_size // ctx.world_size // accum
    batches_to_device = not getattr(task, "cpu_batches", False)  # CodeT5 builds its inputs on the CPU
    evaluator = HeldoutEval(heldout, task.loss, seq_len=cfg.data.seq_len, n_sequences=p.eval_batches * p.batch_size,
                            batch_size=micro, ctx=ctx, amp_dtype=amp_dtype,
                            source_ids={s.name: i for i, s in enumerate(cfg.data.sources)} if needs_sources else None,
                            batches_to_device=batches_to_device)
    logger = RunLogger(out_dir / "log.jsonl", enabled=ctx.is_main, tensorboard=p.tensorboard, wandb=p.wandb,
                       run_name=f"{cfg.name}-{mixture_dir.name}-seed{seed}", config=cfg.model_dump(mode="json"))
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
    return saved_paths[-1] if saved_paths else _step_dir(ckpt_root, state.step)


def cmd_train(args: Any) -> int:
    """`codemix train STUDY --setting S --m M [--seed N] [--baseline] [--out DIR] [--resume]`."""
    from codemix.config import load_study
    from codemix.data.mixture import mixture_name, prepare_data

    cfg = load_study(args.study, args.overrides)
    ctx = init_distributed(device=cfg.pretrain.device, backend=cfg.parallel.backend, fsdp=cfg.parallel.fsdp)
    try:
        # Rank 0 builds whatever data is missing; the others wait, then find it all built.
        if ctx.is_main:
            layout = prepare_data(cfg)
        barrier(ctx)
        if not ctx.is_main:
            layout = prepare_data(cfg)
        baseline = bool(getattr(args, "baseline", False))
        mixture_dir = layout.mixture_dir(args.setting, args.m, baseline)
        heldout = {s.name: layout.heldout_dir(s.name) for s in cfg.data.sources}
        out = Path(args.out) if args.out else (
            Path(cfg.out) / "train" / f"{mixture_name(args.setting, args.m, baseline)}-seed{args.seed}")
        ckpt = train(cfg, mixture_dir=mixture_dir, heldout=heldout, tokenizer_path=layout.tokenizer_path,
                     seed=args.seed, out_dir=out, resume=bool(args.resume), ctx=ctx)
        if ctx.is_main:
            print(ckpt, flush=True)
    finally:
        shutdown(ctx)
    return 0
