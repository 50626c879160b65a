"""Many small models at once: a pack of K GPTs of one shape, trained together in one process.

A study is many small models, and one small model leaves the hardware idle: on a GPU its
kernels are too small to fill it, on a CPU its operations are too small to share among cores. A pack fuses
the K models' operators, as HFTA did (Wang et al., MLSys 2021): every parameter gets a
leading model dimension, each matrix product becomes one batched product over the K
members, attention runs once over all K·B sequences. Each member keeps everything that makes
it a separate run — its own initialization (built under its own seed), its own loader (its
mixture and seed), its own random stream for dropout, its own loss and its own gradient-norm
clipping — so a pack of K trained for S steps equals K separate runs (to float rounding), and
each member writes the ordinary checkpoints of a single run into its own run directory.
On a CPU the cores go to groups of members, each group forward and backward in its own
thread (:func:`member_threads`); a batched product on one core is no faster than its K
single ones there, so the cores are the gain.

:class:`PackedGPT` mirrors :class:`codemix.models.gpt.GPT` operation for operation (a test
holds the two to the same losses and weights); :func:`train_pack` wires it to the one loop
(:func:`codemix.train.loop.run_loop`) as :func:`codemix.train.pretrain.train` wires a GPT.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from codemix.checkpoint import checkpoint_dirs, checkpoint_problem, read_weights, tied_aliases, write_checkpoint
from codemix.config import StudyConfig, print_config, save_config
from codemix.data.loader import MixtureLoader
from codemix.data.tokenizer import tokenizer_hash
from codemix.errors import CheckpointError, ConfigError
from codemix.models.gpt import GPT, GPTConfig, apply_rope, lm_loss
from codemix.objectives import TASKS
from codemix.train.distributed import DistContext, parallelize, resolve_device
from codemix.train.loop import LoopSpec, LoopState, RunLogger, build_optimizer, lr_at, run_loop
from codemix.train.pretrain import (
    HeldoutEval,
    decode_rng_state,
    encode_rng_state,
    precision,
    resolve_budget,
    truncate_log,
)

__all__ = ["PackMember", "PackedGPT", "member_threads", "pack_bytes", "train_pack"]

#: Held while a member's random stream is torch's global one (member groups run in threads).
_RNG_LOCK = threading.Lock()

R = TypeVar("R")
Weights = Callable[[str], torch.Tensor]
"""A GPT parameter name -> the packed tensor (K, ...) of the members a forward computes."""


# ----------------------------------------------------------------------------- the packed model


def _linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T`` per member: x (K, B, T, in), w (K, out, in) -> (K, B, T, out), one batched product."""
    K, B, T, n_in = x.shape
    return torch.bmm(x.reshape(K, B * T, n_in), w.transpose(1, 2)).view(K, B, T, w.shape[1])


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32 (as GPT's), with each member's gain: x (K, B, T, d), weight (K, d)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight[:, None, None, :] * h.to(x.dtype)


class PackedGPT(nn.Module):
    """K GPTs of one shape as one module: each GPT parameter ``name`` is a parameter of shape (K, ...).

    Built from K :class:`GPT` instances (their weights are copied, so each member keeps the
    initialization of its own seed). ``forward(idx, targets)`` takes (K, B, T) tokens and
    returns the K mean losses. Dropout draws each member's masks from its own random stream
    (``rng_states``), in the order its single run draws them, so packs reproduce single runs
    with dropout on; with dropout 0 (the default) every operation is fused across members.

    ``workers`` and ``group_threads`` (set by :func:`member_threads`): on a CPU, the members
    train in ``workers`` groups, each forward and backward in its own thread, on
    ``group_threads`` torch threads. Independent groups keep every core busy with no
    synchronization inside an operation; intra-op threads on a tiny GPT's small operations do
    not (2 cores: 8 tiny members in 2 groups trained 13 % faster than on 2 intra-op threads).
    """

    def __init__(self, members: Sequence[GPT], rng_states: Sequence[dict[str, torch.Tensor]]):
        super().__init__()
        cfgs = {json.dumps(m.cfg.to_dict(), sort_keys=True) for m in members}
        if len(cfgs) != 1:
            raise ConfigError("the models of a pack must have the same shape; pack only runs of one model config")
        self.cfg: GPTConfig = members[0].cfg
        self.k = len(members)
        self.aliases = tied_aliases(members[0])  # lm_head.weight -> embed.weight when tied
        self.names = [n for n, _ in members[0].named_parameters()]  # GPT's order (tied tensors once)
        for name in self.names:
            stacked = torch.stack([m.get_parameter(name).detach() for m in members])
            self.register_parameter(self._key(name), nn.Parameter(stacked))
        self.register_buffer("rope_cos", members[0].rope_cos.clone(), persistent=False)
        self.register_buffer("rope_sin", members[0].rope_sin.clone(), persistent=False)
        self.rng_states = [dict(s) for s in rng_states]
        self.workers, self.group_threads = 1, 1

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def param_key(self, name: str) -> str:
        """The attribute name of GPT parameter ``name``'s packed tensor (tied names resolve to their tensor)."""
        return self._key(self.aliases.get(name, name))

    def w(self, name: str) -> torch.Tensor:
        """The packed parameter of GPT parameter ``name``."""
        return getattr(self, self.param_key(name))

    # -- members

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member ``k``'s weights under GPT's names, tied tensors once (as a checkpoint stores them)."""
        return {name: self.w(name)[k].detach().clone() for name in self.names}

    @torch.no_grad()
    def load_member_state_dict(self, k: int, weights: dict[str, torch.Tensor]) -> None:
        for name in self.names:
            self.w(name)[k].copy_(weights[name])

    @contextlib.contextmanager
    def member_rng(self, k: int) -> Iterator[None]:
        """Run with member ``k``'s random stream as torch's global one (its dropout masks).

        One member at a time in the process (member groups in threads take turns here).
        """
        with _RNG_LOCK:
            saved = {"cpu": torch.get_rng_state()}
            cuda = self.rope_cos.is_cuda
            if cuda:
                saved["cuda"] = torch.cuda.get_rng_state(self.rope_cos.device)
            torch.set_rng_state(self.rng_states[k]["cpu"])
            if cuda:
                torch.cuda.set_rng_state(self.rng_states[k]["cuda"], self.rope_cos.device)
            try:
                yield
            finally:
                self.rng_states[k]["cpu"] = torch.get_rng_state()
                if cuda:
                    self.rng_states[k]["cuda"] = torch.cuda.get_rng_state(self.rope_cos.device)
                torch.set_rng_state(saved["cpu"])
                if cuda:
                    torch.cuda.set_rng_state(saved["cuda"], self.rope_cos.device)

    # -- the network, operation for operation as GPT's; ``w`` gives the weights of the members
    # computed (all K, or a group's), ``first`` the pack index of the first of them

    def _dropout(self, x: torch.Tensor, first: int) -> torch.Tensor:
        if not self.training or self.cfg.dropout == 0:
            return x
        out = []
        for k in range(x.shape[0]):
            with self.member_rng(first + k):
                out.append(F.dropout(x[k], self.cfg.dropout, training=True))
        return torch.stack(out)

    def _attention(self, x: torch.Tensor, i: int, cos: torch.Tensor, sin: torch.Tensor, w: Weights,
                   first: int) -> torch.Tensor:
        K, B, T, _ = x.shape
        cfg, p = self.cfg, f"blocks.{i}.attn."
        nh, nkv, hs = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        q = _linear(x, w(p + "q_proj.weight")).view(K * B, T, nh, hs).transpose(1, 2)  # (K*B, nh, T, hs)
        k = _linear(x, w(p + "k_proj.weight")).view(K * B, T, nkv, hs).transpose(1, 2)  # (K*B, nkv, T, hs)
        v = _linear(x, w(p + "v_proj.weight")).view(K * B, T, nkv, hs).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        dropout = cfg.dropout if self.training else 0.0
        if dropout == 0:  # every member's sequences in one call
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=nkv != nh)
        else:  # each member's attention dropout from its own stream
            ys = []
            for m in range(K):
                rows = slice(m * B, (m + 1) * B)
                with self.member_rng(first + m):
                    ys.append(F.scaled_dot_product_attention(q[rows], k[rows], v[rows], is_causal=True,
                                                             dropout_p=dropout, enable_gqa=nkv != nh))
            y = torch.cat(ys)
        y = y.transpose(1, 2).reshape(K, B, T, nh * hs)  # (K, B, T, d)
        return _linear(y, w(p + "o_proj.weight"))

    def _mlp(self, x: torch.Tensor, i: int, w: Weights) -> torch.Tensor:
        p = f"blocks.{i}.mlp."
        gate, up = _linear(x, w(p + "gate_proj.weight")), _linear(x, w(p + "up_proj.weight"))
        return _linear(F.silu(gate) * up, w(p + "down_proj.weight"))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(K,) mean next-token cross-entropies, one per member; idx and targets are (K, B, T)."""
        if self.workers < 2 or idx.device.type != "cpu":
            return self._losses(idx, targets, self.w, 0)
        if torch.is_grad_enabled():
            return _MemberGroups.apply(self, idx, targets, self.w("embed.weight"))

        def run(members: range) -> torch.Tensor:  # evaluation: no graph
            part = slice(members.start, members.stop)
            with torch.no_grad():
                return self._losses(idx[part], targets[part], lambda name: self.w(name)[part], members.start)

        return torch.cat(self.map_groups(run))

    def _losses(self, idx: torch.Tensor, targets: torch.Tensor, w: Weights, first: int) -> torch.Tensor:
        K, B, T = idx.shape
        cfg = self.cfg
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        embed = w("embed.weight")  # (K, V, d): member k's token t is row k·V + t of the flattened table
        offsets = torch.arange(K, device=idx.device).view(K, 1, 1) * embed.shape[1]
        x = F.embedding(idx + offsets, embed.flatten(0, 1))  # (K, B, T, d)
        for i in range(cfg.n_layers):
            x = x + self._dropout(self._attention(_rms_norm(x, w(f"blocks.{i}.attn_norm.weight"), cfg.norm_eps),
                                                  i, cos, sin, w, first), first)
            x = x + self._dropout(self._mlp(_rms_norm(x, w(f"blocks.{i}.mlp_norm.weight"), cfg.norm_eps), i, w),
                                  first)
        h = _rms_norm(x, w("norm.weight"), cfg.norm_eps)
        head = w("lm_head.weight")
        if idx.is_cuda:  # one product and one loss over all K·B·T rows
            logits = _linear(h, head).float().flatten(0, 2)  # (K·B·T, V)
            ce = F.cross_entropy(logits, targets.flatten(), ignore_index=-100, reduction="none").view(K, B * T)
            return ce.sum(1) / (targets != -100).view(K, B * T).sum(1).clamp(min=1)
        # On a CPU, member by member: K members' logits at once (K·B·T·V floats) outgrow the
        # caches, and the softmax over them runs at memory speed (measured 1.6x slower at K = 8);
        # lm_loss keeps no logits for the backward
        return torch.stack([lm_loss(h_k.flatten(0, 1), head_k, t_k.flatten())
                            for h_k, head_k, t_k in zip(h.unbind(), head.unbind(), targets.unbind())])

    def member_groups(self) -> list[range]:
        """The members of each of the ``workers`` groups: contiguous, sizes differing by at most one."""
        n = min(self.workers, self.k)
        bounds = [self.k * g // n for g in range(n + 1)]
        return [range(a, b) for a, b in zip(bounds, bounds[1:])]

    def map_groups(self, fn: Callable[[range], R]) -> list[R]:
        """``fn(members)`` for every group of members at once, each in its own thread; the results in order."""
        def task(members: range) -> R:
            torch.set_num_threads(self.group_threads)  # this thread's share (torch's count is per thread)
            return fn(members)

        groups = self.member_groups()
        return list(_threads(len(groups)).map(task, groups))


@functools.cache
def _threads(n: int) -> ThreadPoolExecutor:
    """The process's pool of ``n`` threads for member groups."""
    return ThreadPoolExecutor(n, thread_name_prefix="codemix-pack")


class _MemberGroups(torch.autograd.Function):
    """A pack's training step, each group of members forward *and* backward in its own thread.

    A member's parameters reach only its own loss, so the gradient of a weighted sum of the
    losses is each member's gradient times its weight. Each group computes its members'
    losses on leaf views of their slices of the packed parameters, and at once their
    gradients (weight 1), into its slice of one buffer per parameter; the backward hands the
    buffers on, scaled by the weights the loss gave each member (1 for the sum of the losses).
    One trip to the threads per step, not two, and each group frees its activations as soon
    as it is done. The outer graph sees one node, fed by one parameter (``anchor``) so the
    losses require grad; gradients reach the parameters only through here.
    """

    @staticmethod
    def forward(ctx: Any, pack: PackedGPT, idx: torch.Tensor, targets: torch.Tensor,
                anchor: torch.Tensor) -> torch.Tensor:
        params = dict(pack.named_parameters())
        grads = {key: torch.empty_like(p) for key, p in params.items()}

        def run(members: range) -> torch.Tensor:
            part = slice(members.start, members.stop)
            leaves = {key: p.detach()[part].requires_grad_() for key, p in params.items()}
            for key, leaf in leaves.items():  # the backward adds into the group's slice of the buffers
                leaf.grad = grads[key][part].zero_()
            with torch.enable_grad():
                losses = pack._losses(idx[part], targets[part],
                                      lambda name: leaves[pack.param_key(name)], members.start)
                torch.autograd.backward(losses, torch.ones_like(losses), inputs=list(leaves.values()))
            return losses.detach()

        ctx.pack, ctx.grads = pack, grads
        return torch.cat(pack.map_groups(run))

    @staticmethod
    def backward(ctx: Any, weights: torch.Tensor) -> tuple[None, None, None, None]:
        grads, ctx.grads = ctx.grads, None
        scale = None if bool((weights == 1).all()) else weights
        for key, p in ctx.pack.named_parameters():
            grad = grads[key] if scale is None else grads[key] * scale.view(-1, *([1] * (p.dim() - 1)))
            if p.grad is None:
                p.grad = grad
            else:
                p.grad += grad
        return None, None, None, None


@contextlib.contextmanager
def member_threads(pack: PackedGPT, *, compiled: bool = False) -> Iterator[None]:
    """On a CPU, turn torch's threads into groups of members (:attr:`PackedGPT.workers`) for the block.

    With torch set to T threads, a pack of K trains in min(K, T) groups, each in its own
    thread on its share of the T (one when K >= T); the calling thread (optimizer step,
    clipping) gets one, and torch's count is restored on exit. On a GPU, or with one thread or
    one member, or for a ``compiled`` pack (compilation does not trace into threads), nothing changes.
    """
    threads = torch.get_num_threads()
    workers = min(pack.k, threads) if pack.rope_cos.device.type == "cpu" and not compiled else 1
    if workers < 2:
        yield
        return
    pack.workers, pack.group_threads = workers, threads // workers
    torch.set_num_threads(1)  # this thread, while the groups wait (OpenMP threads spin-wait: they would slow them)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        pack.workers, pack.group_threads = 1, 1


def clip_per_member(params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Each member's gradient norm clipped on its own (as ``clip_grad_norm_`` clips one model); (K,) norms."""
    grads = [p.grad for p in params if p.grad is not None]
    squares = torch.stack([g.detach().float().pow(2).flatten(1).sum(1) for g in grads]).sum(0)  # (K,)
    norms = squares.sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))).to(g.dtype))
    return norms


def pack_bytes(n_params: int, *, batch_size: int, seq_len: int, d_model: int, n_layers: int, vocab: int) -> int:
    """Rough memory of one member: fp32 weights, gradients and AdamW moments, and its activations."""
    states = 16 * n_params
    activations = 4 * batch_size * seq_len * (34 * d_model * n_layers + 3 * vocab)
    return states + activations


# ----------------------------------------------------------------------------- training a pack


@dataclass
class PackMember:
    """One run of a pack: what a single run of :func:`codemix.train.pretrain.train` would be given."""

    mixture_dir: Path
    seed: int
    out_dir: Path
    record: dict[str, Any] = field(default_factory=dict)


class _PackLogger:
    """One ``log.jsonl`` per member: a pack's log line is split into each member's line."""

    def __init__(self, loggers: list[RunLogger], progress: RunLogger):
        self.loggers, self.progress = loggers, progress

    def log(self, record: dict[str, Any]) -> None:
        k = len(self.loggers)
        for m, logger in enumerate(self.loggers):
            line = {}
            for key, value in record.items():
                if key == "member_loss":
                    continue
                if key == "loss" and "member_loss" in record:
                    value = record["member_loss"]
                if key in ("tokens", "tokens_per_s") and isinstance(value, (int, float)):
                    value = value // k if isinstance(value, int) else round(value / k, 1)
                line[key] = value[m] if isinstance(value, list) else value
            logger.log(line)

    def start_progress(self, total: int, completed: int = 0, description: str = "train") -> None:
        self.progress.start_progress(total, completed, description)

    def advance(self, *, loss: float | None = None, tokens_per_s: float | None = None) -> None:
        self.progress.advance(loss=None if loss is None else loss / len(self.loggers), tokens_per_s=tokens_per_s)

    def close(self) -> None:
        for logger in (*self.loggers, self.progress):
            logger.close()


class _PackBatches:
    """Each step, every member's next batch from its own loader (its mixture, its seed), stacked (K, B, T)."""

    def __init__(self, loaders: list[MixtureLoader]):
        self.loaders = loaders
        self.streams = [_forever(loader) for loader in loaders]

    def __iter__(self) -> Iterator[torch.Tensor]:
        while True:
            yield torch.stack([next(s) for s in self.streams])


def _forever(loader: MixtureLoader) -> Iterator[torch.Tensor]:
    while True:  # as a single run iterates its loader: epoch after epoch
        yield from loader


def _common_step(members: list[PackMember]) -> int | None:
    """The newest step at which every member has a usable checkpoint (None: start afresh)."""
    steps = [{int(p.name[5:]) for p in checkpoint_dirs(m.out_dir) if checkpoint_problem(p) is None} for m in members]
    common = set.intersection(*steps) if steps else set()
    return max(common) if common else None


def train_pack(cfg: StudyConfig, members: list[PackMember], *, heldout: dict[str, Path],
               tokenizer_path: str | Path, resume: bool = True) -> list[Path]:
    """Train the members together (same model, optimizer, schedule and steps); their final checkpoints.

    Each member's run directory gets exactly what :func:`codemix.train.pretrain.train` writes for
    a single run: ``config.yaml``, ``log.jsonl`` and ``checkpoints/step-NNNNNNN`` (weights, AdamW
    state, trainer state with its loader position and random streams). A killed pack resumes from
    the newest step every member has saved.
    """
    p = cfg.pretrain
    if cfg.model.arch != "gpt":
        raise ConfigError(f"packs train gpt models; model.arch={cfg.model.arch} trains one run per process")
    if p.micro_batch_size not in (None, p.batch_size):
        raise ConfigError("packs do not accumulate gradients; leave pretrain.micro_batch_size unset")
    ctx = DistContext.single(resolve_device(p.device))
    # the members share the study's config (they differ in mixture and seed): printed once per pack
    print_config(cfg, title=f"codemix train (pack of {len(members)}) -> "
                            f"{os.path.commonpath([m.out_dir for m in members])}")
    models, rngs, loaders, configs = [], [], [], []
    for m in members:  # each member exactly as its single run starts: seeded, then built
        random.seed(m.seed)
        np.random.seed(m.seed)
        torch.manual_seed(m.seed)
        task = TASKS["gpt"](cfg, tokenizer_path=tokenizer_path)
        models.append(task.build_model())
        rngs.append({"cpu": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                     **({"cuda": torch.cuda.get_rng_state(ctx.device)} if ctx.device.type == "cuda" else {})})
        loaders.append(MixtureLoader(m.mixture_dir, batch_size=p.batch_size, seed=m.seed))
        configs.append({"arch": "gpt", "model": task.model_config(), "tokenizer_hash": tokenizer_hash(tokenizer_path),
                        "seq_len": cfg.data.seq_len, "study": cfg.name, "seed": m.seed, **m.record,
                        "study_config": cfg.model_dump(mode="json")})
        save_config(cfg, m.out_dir)
    tokens_per_step = p.batch_size * cfg.data.seq_len
    totals = {resolve_budget(p, batches_per_epoch=ld.batches_per_epoch, tokens_per_step=tokens_per_step)
              for ld in loaders}
    if len(totals) != 1:
        raise ConfigError(f"the members of a pack must train for the same number of steps, found {sorted(totals)}")
    total = totals.pop()
    pack = PackedGPT(models, [{k: v for k, v in r.items() if k in ("cpu", "cuda")} for r in rngs]).to(ctx.device)
    del models
    optimizer = build_optimizer(pack, lr=p.lr, weight_decay=p.weight_decay, betas=(p.beta1, p.beta2), member_dim=True)

    state = LoopState()
    step = _common_step(members) if resume else None
    if step is not None:
        state = _load(pack, optimizer, members, loaders, rngs, step)
    for m in members:  # lines past the checkpoint (or from an attempt killed before any) are redone
        truncate_log(m.out_dir / "log.jsonl", state.step)

    amp_dtype = precision(p, ctx.device)
    compile_model = p.compile if p.compile is not None else ctx.device.type == "cuda"
    model = parallelize(pack, ctx, compile=compile_model)  # (one device: moved and, on CUDA, compiled)
    evaluator = HeldoutEval(heldout, lambda m, batch, s: {"member_loss": _replicated_loss(m, batch, pack.k)},
                            seq_len=cfg.data.seq_len, n_sequences=p.eval_batches * p.batch_size,
                            batch_size=p.batch_size, ctx=ctx, amp_dtype=amp_dtype, loss_key="member_loss")
    logger = _PackLogger([RunLogger(m.out_dir / "log.jsonl", progress=False) for m in members], RunLogger(None))
    saved: list[list[Path]] = [[] for _ in members]

    def checkpoint(s: LoopState) -> Path:
        opt = optimizer.state_dict()
        for k, m in enumerate(members):
            trainer_state = {"step": s.step, "tokens": s.tokens // len(members), "total_steps": total,
                             "rng": _member_rng_record(pack, rngs, k), "loader": loaders[k].state_dict(),
                             "world_size": 1}
            saved[k].append(write_checkpoint(m.out_dir, step=s.step, weights=pack.member_state_dict(k),
                                             optimizer_state=_member_optimizer_state(opt, k),
                                             codemix_config=configs[k], trainer_state=trainer_state,
                                             tokenizer_path=tokenizer_path, keep=p.keep_checkpoints))
        return saved[0][-1]

    spec = LoopSpec(total_steps=total, grad_clip=p.grad_clip, amp_dtype=amp_dtype, clip=clip_per_member,
                    lr=lambda i: lr_at(i, warmup=p.warmup_steps, total=total, lr=p.lr, min_ratio=p.min_lr_ratio),
                    log_every=p.log_every, eval_every=p.eval_every if evaluator.batches else None,
                    checkpoint_every=p.checkpoint_every)

    def loss(model: nn.Module, batch: torch.Tensor, i: int) -> dict[str, torch.Tensor]:
        losses = model(batch[..., :-1], batch[..., 1:])
        return {"loss": losses.sum(), "member_loss": losses.detach()}

    with member_threads(pack, compiled=compile_model):
        run_loop(model, optimizer, _PackBatches(loaders), loss, spec=spec, state=state, ctx=ctx, logger=logger,
                 eval_fn=evaluator, checkpoint_fn=checkpoint)
    return [paths[-1] if paths else m.out_dir / "checkpoints" / f"step-{state.step:07d}"
            for paths, m in zip(saved, members)]


def _replicated_loss(model: nn.Module, batch: torch.Tensor, k: int) -> torch.Tensor:
    """Every member's loss on the same held-out batch (B, T): (K,)."""
    idx = batch.unsqueeze(0).expand(k, *batch.shape)
    return model(idx[..., :-1], idx[..., 1:])


def _member_rng_record(pack: PackedGPT, rngs: list[dict[str, Any]], k: int) -> dict[str, Any]:
    """Member ``k``'s random streams in the trainer-state format of a single run."""
    return encode_rng_state({**pack.rng_states[k], "numpy": rngs[k]["numpy"], "python": rngs[k]["python"]})


def _member_optimizer_state(packed: dict[str, Any], k: int) -> dict[str, Any]:
    """Member ``k``'s slice of the pack's AdamW state: the state dict its single run's AdamW has."""
    state = {i: {name: (v[k].clone() if name in ("exp_avg", "exp_avg_sq") else v.clone())
                 for name, v in s.items()} for i, s in packed["state"].items()}
    return {"state": state, "param_groups": packed["param_groups"]}


def _load(pack: PackedGPT, optimizer: torch.optim.Optimizer, members: list[PackMember],
          loaders: list[MixtureLoader], rngs: list[dict[str, Any]], step: int) -> LoopState:
    """Resume every member from its checkpoint of ``step``."""
    opts, tokens = [], 0
    for k, m in enumerate(members):
        ckpt = m.out_dir / "checkpoints" / f"step-{step:07d}"
        saved = json.loads((ckpt / "config.json").read_text())["codemix"]
        if saved.get("model") != json.loads(json.dumps(pack.cfg.to_dict())):
            raise CheckpointError(f"{ckpt} was trained with model {saved.get('model')}, not the pack's "
                                  f"{pack.cfg.to_dict()}; use another run directory")
        pack.load_member_state_dict(k, read_weights(ckpt))
        opts.append(torch.load(ckpt / "optimizer.pt", weights_only=True))
        trainer = json.loads((ckpt / "trainer_state.json").read_text())
        loaders[k].load_state_dict(trainer["loader"])
        rng = decode_rng_state(trainer["rng"])
        pack.rng_states[k] = {key: rng[key] for key in ("cpu", "cuda") if key in rng}
        rngs[k].update(numpy=rng["numpy"], python=rng["python"])
        tokens += trainer["tokens"]
    merged = {"state": {i: {name: (torch.stack([o["state"][i][name] for o in opts])
                                   if name in ("exp_avg", "exp_avg_sq") else v)
                            for name, v in s.items()} for i, s in opts[0]["state"].items()},
              "param_groups": opts[0]["param_groups"]}
    optimizer.load_state_dict(merged)
    return LoopState(step=step, tokens=tokens)
