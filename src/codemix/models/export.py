"""codemix checkpoints as Hugging Face models: ``load_hf`` in memory, ``export`` to a directory.

A `gpt` checkpoint becomes a ``LlamaForCausalLM``: codemix's decoder uses the same RoPE
layout (rotate-half), RMSNorm and SwiGLU as HF Llama, so conversion is a renaming of
tensors and the logits agree to float32 rounding. A `t5` checkpoint is converted by
``codemix.models.t5.to_hf``. The exported directory loads with
``transformers.AutoModelForCausalLM.from_pretrained`` (or ``AutoModelForSeq2SeqLM``) as is,
so lm-evaluation-harness and the rest of the HF ecosystem can use any codemix model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file
from transformers import LlamaConfig, LlamaForCausalLM

from codemix.checkpoint import resolve_checkpoint
from codemix.data.tokenizer import hf_tokenizer
from codemix.errors import CheckpointError
from codemix.io import atomic_dir
from codemix.models.gpt import GPT, GPTConfig
from codemix.models.t5 import to_hf

__all__ = ["cmd_export", "export", "gpt_to_llama", "llama_config", "load_gpt", "load_hf"]


def load_gpt(path: str | Path):
    """The codemix ``GPT`` of a checkpoint (or run directory), in eval mode on the CPU."""
    ckpt, config = resolve_checkpoint(path)
    if config.get("arch") != "gpt":
        raise CheckpointError(f"{ckpt} holds a {config.get('arch')!r} model, not a gpt")
    model = GPT(GPTConfig.from_dict(config["model"]))
    weights = load_file(str(ckpt / "model.safetensors"))
    if model.cfg.tie_embeddings:
        weights.setdefault("lm_head.weight", weights["embed.weight"])
    model.load_state_dict(weights)
    return model.eval()


def llama_config(cfg: Any, *, eos_id: int | None = None, pad_id: int | None = None):
    """The ``LlamaConfig`` with the same shape as a codemix ``GPTConfig``."""
    return LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        head_dim=cfg.head_dim, max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings, attention_bias=False, mlp_bias=False, hidden_act="silu",
        bos_token_id=None, eos_token_id=eos_id, pad_token_id=pad_id, initializer_range=cfg.init_std,
    )


# codemix name -> HF Llama name; "{i}" is the layer index. Weights need no permutation:
# both implementations rotate the two halves of each head (HF's rotate_half).
_BLOCK_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn.q_proj.weight": "self_attn.q_proj.weight",
    "attn.k_proj.weight": "self_attn.k_proj.weight",
    "attn.v_proj.weight": "self_attn.v_proj.weight",
    "attn.o_proj.weight": "self_attn.o_proj.weight",
    "mlp_norm.weight": "post_attention_layernorm.weight",
    "mlp.gate_proj.weight": "mlp.gate_proj.weight",
    "mlp.up_proj.weight": "mlp.up_proj.weight",
    "mlp.down_proj.weight": "mlp.down_proj.weight",
}


def gpt_to_llama(model: Any, *, eos_id: int | None = None, pad_id: int | None = None):
    """A ``LlamaForCausalLM`` holding the same weights as a codemix ``GPT``."""
    cfg = model.cfg
    hf = LlamaForCausalLM(llama_config(cfg, eos_id=eos_id, pad_id=pad_id))
    src = model.state_dict()
    state = {"model.embed_tokens.weight": src["embed.weight"], "model.norm.weight": src["norm.weight"],
             "lm_head.weight": src["lm_head.weight"]}
    for i in range(cfg.n_layers):
        for ours, theirs in _BLOCK_NAMES.items():
            state[f"model.layers.{i}.{theirs}"] = src[f"blocks.{i}.{ours}"]
    hf.load_state_dict(state, strict=True)
    return hf.eval()


def load_hf(path: str | Path):
    """(transformers model, ``PreTrainedTokenizerFast``) for a codemix checkpoint or run directory."""
    ckpt, config = resolve_checkpoint(path)
    tokenizer = hf_tokenizer(ckpt / "tokenizer.json")
    arch = config.get("arch")
    if arch == "gpt":
        model = gpt_to_llama(load_gpt(ckpt), eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id)
    elif arch == "t5":
        model = to_hf(ckpt)
    else:
        raise CheckpointError(f"{ckpt}/config.json names arch {arch!r}; expected `gpt` or `t5`")
    return model, tokenizer


def export(ckpt: str | Path, out: str | Path) -> Path:
    """Write ``out``: a Hugging Face model directory (weights, config, tokenizer), atomically."""
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not _is_hf_export(out):
        raise CheckpointError(f"output directory {out} exists and does not hold an exported model; it would be "
                              "replaced, so choose a new directory (or delete it first)")
    model, tokenizer = load_hf(ckpt)
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out


def _is_hf_export(path: Path) -> bool:
    """Whether ``path`` looks like an earlier export (a transformers config.json), safe to replace."""
    try:
        return "architectures" in json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False


def cmd_export(args: Any) -> int:
    """`codemix export CHECKPOINT OUT`: prints the output directory."""
    print(export(args.checkpoint, args.out))
    return 0
