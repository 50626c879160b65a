"""A Llama-architecture decoder-only language model, readable top to bottom.

Attention -> MLP -> Block -> Config -> Model, as in nanoGPT's ``model.py``, but with the
Llama choices: rotary position embeddings (RoPE), RMSNorm, a SwiGLU feed-forward layer,
no biases, optionally tied input/output embeddings and grouped-query attention.

The layout of every weight matches Hugging Face's ``LlamaForCausalLM`` one to one (RoPE
rotates the two *halves* of each head, HF's ``rotate_half``), so ``codemix.models.export``
converts a checkpoint by renaming tensors, with no permutation, and the logits agree.

Parallelism, compilation and checkpointing live elsewhere (``codemix.train``); this file
only describes the network.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from codemix.errors import ConfigError

__all__ = ["GPT", "GPTConfig", "PRESETS", "config_from_model_config", "lm_loss"]


# ----------------------------------------------------------------------------- rotary embeddings


def rope_cache(seq_len: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables, each (seq_len, head_dim), in float32.

    Frequency i rotates the pair (x[i], x[i + head_dim/2]); the table repeats the
    frequencies for the two halves, as HF Llama does.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))  # (hs/2,)
    t = torch.arange(seq_len, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)  # (T, hs/2)
    emb = torch.cat((freqs, freqs), dim=-1)  # (T, hs)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, nh, T, hs) by position; cos/sin are (T, hs)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # rotate_half
    return (x * cos + rotated * sin).to(x.dtype)


# ----------------------------------------------------------------------------- layers


class Attention(nn.Module):
    """Causal self-attention with RoPE and optional grouped-query attention (fewer K/V heads)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, nkv, T, hs)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        # Flash / memory-efficient kernels on CUDA; enable_gqa shares each K/V head among
        # n_heads / n_kv_heads query heads (the same grouping as HF's repeat_kv).
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )  # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, nh*hs)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))  # (B, T, d)


class RMSNorm(nn.Module):
    """RMSNorm computed in float32 (as HF Llama does), so bf16 activations keep their scale."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), cos, sin))
        return x + self.drop(self.mlp(self.mlp_norm(x)))


# ----------------------------------------------------------------------------- config


@dataclass
class GPTConfig:
    """Shape of the decoder. ``vocab_size`` comes from the study's tokenizer."""

    vocab_size: int
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None  # None: = n_heads (plain multi-head attention)
    d_model: int = 64
    d_ff: int = 172
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    dropout: float = 0.0
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        problems = []
        if self.d_model % self.n_heads:
            problems.append(f"model.d_model={self.d_model} is not divisible by model.n_heads={self.n_heads}")
        elif (self.d_model // self.n_heads) % 2:
            problems.append(f"head size d_model/n_heads={self.d_model // self.n_heads} is odd; RoPE needs an even "
                            "head size (change model.n_heads or model.d_model)")
        if self.n_heads % self.n_kv_heads:
            problems.append(f"model.n_kv_heads={self.n_kv_heads} does not divide model.n_heads={self.n_heads}")
        if problems:
            raise ConfigError(problems)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token in the PaLM / nanoGPT accounting: ``6 N + 12 L d T``.

        N counts the weights that take part in a matrix product (every one but the input
        embedding lookup; the output projection counts, tied or not), L the layers, d the width
        and T the sequence length (the attention scores); what MFU figures divide.
        """
        per_layer = (2 * self.d_model * self.n_heads * self.head_dim + 2 * self.d_model * self.n_kv_heads
                     * self.head_dim + 3 * self.d_model * self.d_ff + 2 * self.d_model)
        n_matmul = self.n_layers * per_layer + self.d_model + self.vocab_size * self.d_model
        return 6 * n_matmul + 12 * self.n_layers * self.d_model * seq_len

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


#: Size presets. `t5-large-dec` is the decoder of Petty et al. (2024, App. A): 24 layers,
#: d_model 1024, d_ff 2816 and 64 heads of size 16, about 374M parameters with a 32K vocabulary.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(n_layers=2, n_heads=4, d_model=64, d_ff=176),
    "20m": dict(n_layers=6, n_heads=6, d_model=384, d_ff=1024),
    "124m": dict(n_layers=12, n_heads=12, d_model=768, d_ff=2048, tie_embeddings=True),
    "t5-large-dec": dict(n_layers=24, n_heads=64, d_model=1024, d_ff=2816, tie_embeddings=False),
}

_OVERRIDES = ("n_layers", "n_heads", "n_kv_heads", "d_model", "d_ff", "max_seq_len", "tie_embeddings",
              "rope_theta", "dropout")


def config_from_model_config(model_cfg: Any, *, vocab_size: int, seq_len: int) -> GPTConfig:
    """A GPTConfig from a study's ``model`` section: the preset, then every field set there.

    ``max_seq_len`` defaults to ``max(seq_len, 1024)`` so the exported model can score
    longer evaluation prompts than the pretraining sequences.
    """
    if model_cfg.preset not in PRESETS:
        raise ConfigError(f"model.preset={model_cfg.preset!r} is not a gpt preset; choose one of "
                          f"{sorted(PRESETS)} (or set model.arch=t5 for the encoder-decoder presets)")
    t5_only = [f"model.{name}" for name in ("n_decoder_layers", "d_kv") if getattr(model_cfg, name, None) is not None]
    if t5_only:
        raise ConfigError(f"{', '.join(t5_only)} only apply to model.arch=t5; remove them for a gpt model "
                          "(the head size of a gpt is d_model / n_heads)")
    values = dict(PRESETS[model_cfg.preset], max_seq_len=max(seq_len, 1024))
    for name in _OVERRIDES:
        value = getattr(model_cfg, name, None)
        if value is not None:
            values[name] = value
    if values["max_seq_len"] < seq_len:
        raise ConfigError(f"model.max_seq_len={values['max_seq_len']} is shorter than data.seq_len={seq_len}; "
                          "raise model.max_seq_len or lower data.seq_len")
    return GPTConfig(vocab_size=vocab_size, **values)


# ----------------------------------------------------------------------------- the loss


def lm_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the logits ``h @ weight.T`` (in float32): h (N, d), weight (V, d), targets (N,).

    Targets of -100 are ignored. Training on a CPU (eager, no autocast), the logits' gradient
    is taken in the forward pass, while they are still in the caches, and only the gradients
    of ``h`` and ``weight`` are kept for the backward (:class:`_HeadLoss`); everywhere else
    (a GPU, ``torch.compile``, evaluation) it is ``F.cross_entropy`` of ``F.linear``.
    """
    if (h.device.type == "cpu" and torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad)
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling()):
        return _HeadLoss.apply(h, weight, targets)
    return F.cross_entropy(F.linear(h, weight).float(), targets, ignore_index=-100)


class _HeadLoss(torch.autograd.Function):
    """The LM head and cross-entropy, with the logits' gradient taken in the forward pass.

    Autograd would keep the (N, V) log-probabilities until the backward, and write and read
    two more (N, V) tensors there, long after they left the caches. Here the forward turns
    the log-probabilities in place into the gradient ``(softmax - onehot) / n`` and multiplies
    it out at once; only the (N, d) and (V, d) results wait for the backward. At a tiny GPT's
    2K vocabulary the logits are most of a step's memory, and the two threads of a CPU pack
    (:mod:`codemix.train.pack`) share one cache: a pack of 8 on 2 cores trained 4-8 % faster
    (medians of 16 alternating rounds), a single run as fast as before. The loss is
    ``F.cross_entropy``'s to the bit; the gradients differ from autograd's by float rounding.
    """

    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(F.linear(h, weight).float(), dim=-1)
        loss = F.nll_loss(logp, targets, ignore_index=-100)
        grad = logp.exp_()  # softmax, in place
        valid = targets != -100
        rows = valid.nonzero().squeeze(1)
        grad.index_put_((rows, targets[rows]), torch.tensor(-1.0), accumulate=True)
        if rows.numel() < len(targets):
            grad[~valid] = 0
        grad.div_(rows.numel() or 1)
        ctx.save_for_backward((grad @ weight.float()).to(h.dtype), (grad.t() @ h.float()).to(weight.dtype))
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        grad_h, grad_weight = ctx.saved_tensors
        return grad_h * grad, grad_weight * grad, None


# ----------------------------------------------------------------------------- model


class GPT(nn.Module):
    """Token ids (B, T) -> next-token logits (B, T, vocab_size)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        # Non-persistent: recomputed from the config, never saved in checkpoints.
        cos, sin = rope_cache(cfg.max_seq_len, cfg.head_dim, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch adds to the stream, so the output
        # projections are shrunk by sqrt(2 * n_layers) to keep the stream's variance flat.
        for name, p in self.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                nn.init.normal_(p, mean=0.0, std=cfg.init_std / math.sqrt(2 * cfg.n_layers))

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, T, V); with ``targets`` (B, T), the mean next-token cross-entropy instead.

        The loss is computed here, not by the caller, so that under ``torch.compile`` it is
        part of the model's graph: the float32 upcast, log-softmax and loss fuse into the
        kernels that read the logits, instead of materializing a float32 copy of a
        (B, T, V) tensor — at a 32K vocabulary, the largest activation of a small model.
        Training on a CPU, :func:`lm_loss` keeps no logits for the backward. Targets of -100
        are ignored.
        """
        B, T = idx.shape
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence of {T} tokens is longer than max_seq_len={self.cfg.max_seq_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]  # (T, hs)
        x = self.embed(idx)  # (B, T, d)
        for block in self.blocks:
            x = block(x, cos, sin)
        if targets is None:
            return self.lm_head(self.norm(x))  # (B, T, V)
        return self.head_loss(x, targets)

    def head_loss(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The last block's output (B, T, d) -> the final norm, the LM head and the mean cross-entropy."""
        return lm_loss(self.norm(x).flatten(0, 1), self.lm_head.weight, targets.flatten())

    def compile_regions(self, **options: Any) -> None:
        """``torch.compile`` each block and :meth:`head_loss` in place (``options`` go to torch.compile).

        The blocks share one shape, so torch.compile traces and generates the code of one block
        and reuses it for all of them (their weights are the graph's inputs), where compiling the
        whole model traces every layer: the first training step (compilation) took 2.4x less time
        at ``124m`` (36 s -> 15 s) and 3.2x less at ``t5-large-dec`` (66 s -> 21 s) on a CPU
        (``benchmarks/compile_time.py``); a study on a GPU pays it in every run.
        The head's upcast, log-softmax and loss stay one fused region, and nothing changes in
        the state dict (the modules are compiled in place, not wrapped).
        """
        for block in self.blocks:
            block.compile(**options)
        self.head_loss = torch.compile(self.head_loss, **options)

    def num_params(self, *, non_embedding: bool = False) -> int:
        """Parameter count (shared tensors once); ``non_embedding`` leaves out the token embedding."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.embed.weight.numel()
        return n
