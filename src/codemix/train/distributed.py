"""Everything that knows about ranks: process groups, DDP / FSDP2, rank-0-only side effects.

A run launched by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` in the environment)
joins a process group (nccl on CUDA, gloo on CPU); a plain ``python`` run is one process
with ``world_size == 1`` and no process group at all, so the training loop is the same code
either way. The model file (``codemix.models.gpt``) never sees any of this.

Launch, e.g. on 8 GPUs::

    codemix train STUDY.yaml --setting additive --m 0.25 --gpus 8

(the study's pretrain stage starts ``torchrun`` itself, one process per GPU: see
:mod:`codemix.study.stages.pretrain`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel as DDP

from codemix.errors import ConfigError

__all__ = [
    "DistContext",
    "accum_steps_for",
    "all_reduce_mean",
    "barrier",
    "init_distributed",
    "model_state_dict",
    "no_sync",
    "optimizer_state_dict",
    "load_model_state_dict",
    "load_optimizer_state_dict",
    "parallelize",
    "resolve_device",
    "shutdown",
    "unwrap",
]


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """`auto`: this rank's GPU when CUDA is available, else the CPU; a bare `cuda` is this rank's GPU."""
    if device == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(f"cuda:{local_rank}" if device == "cuda" else device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"pretrain.device={device!r} but CUDA is not available here; use `auto` or `cpu`")
    return dev


@dataclass(frozen=True)
class DistContext:
    """Where this process sits: its rank, the world size and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, prints and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def single(cls, device: str | torch.device = "cpu") -> DistContext:
        return cls(rank=0, world_size=1, local_rank=0, device=torch.device(device))


def init_distributed(*, device: str = "auto", backend: str = "auto", fsdp: bool = False) -> DistContext:
    """Join the process group torchrun describes in the environment, or run as one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, fsdp=fsdp)


def shutdown(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


def accum_steps_for(batch_size: int, micro_batch_size: int | None, world_size: int) -> int:
    """Micro-batches per optimizer step on each rank, after checking that the batch divides evenly.

    ``batch_size`` is global: each rank takes ``batch_size / world_size`` sequences per step and
    runs them through the model ``micro_batch_size`` at a time.
    """
    if batch_size % world_size:
        raise ConfigError(f"pretrain.batch_size={batch_size} is not divisible by the {world_size} ranks; "
                          f"use a multiple of {world_size} (e.g. {world_size * max(1, batch_size // world_size)}) "
                          "or change the number of processes")
    per_rank = batch_size // world_size
    micro = micro_batch_size or per_rank
    if micro > per_rank or per_rank % micro:
        raise ConfigError(f"pretrain.micro_batch_size={micro} does not divide the per-rank batch "
                          f"{per_rank} (= batch_size {batch_size} / {world_size} ranks); pick a divisor of {per_rank}")
    return per_rank // micro


def parallelize(model: nn.Module, ctx: DistContext, *, compile: bool = False) -> nn.Module:
    """Move to the device, shard (FSDP2) or replicate (DDP) across ranks, optionally compile.

    FSDP2 shards each transformer block separately (``model.blocks`` when the model has
    them), then the root, so only one block's full parameters live on a GPU at a time.

    ``compile``: a model with ``compile_regions`` (:class:`~codemix.models.gpt.GPT`,
    :class:`~codemix.models.t5.CodeT5`) compiles its repeated blocks and its loss in place,
    before sharding or replication wraps them (as torchtitan does); any other model (a pack)
    is compiled whole, after wrapping.
    """
    model = model.to(ctx.device)
    regional = compile and hasattr(model, "compile_regions")
    if regional:
        model.compile_regions()
    if ctx.distributed and ctx.fsdp:
        for block in getattr(model, "blocks", []):
            fully_shard(block)
        model = fully_shard(model)
    elif ctx.distributed:
        model = DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None)
    if compile and not regional:
        model = torch.compile(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under torch.compile and DDP wrappers (FSDP2 modules are their own)."""
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


@contextlib.contextmanager
def no_sync(model: nn.Module, skip: bool) -> Iterator[None]:
    """Skip DDP's gradient all-reduce on all micro-batches but the last of an optimizer step."""
    inner = getattr(model, "_orig_mod", model)
    if skip and isinstance(inner, nn.parallel.DistributedDataParallel):
        with inner.no_sync():
            yield
    elif skip and hasattr(inner, "set_requires_gradient_sync"):  # FSDP2
        inner.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            inner.set_requires_gradient_sync(True)
    else:
        yield


def all_reduce_mean(value: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    """Mean over ranks (each rank sees an equal share of the batch, so this is the batch mean)."""
    if not ctx.distributed:
        return value
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / ctx.world_size


def model_state_dict(model: nn.Module, ctx: DistContext) -> dict[str, torch.Tensor]:
    """Full, unsharded CPU state dict (FSDP2 gathers it; every rank must call this)."""
    if ctx.fsdp and ctx.distributed:
        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, ctx: DistContext) -> dict[str, Any]:
    if ctx.fsdp and ctx.distributed:
        return get_optimizer_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return optimizer.state_dict()


def load_model_state_dict(model: nn.Module, state: dict[str, torch.Tensor], ctx: DistContext) -> None:
    if ctx.fsdp and ctx.distributed:
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    else:
        unwrap(model).load_state_dict(state)


def load_optimizer_state_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                              ctx: DistContext) -> None:
    if ctx.fsdp and ctx.distributed:
        set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state)
