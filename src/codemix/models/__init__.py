"""The networks: a Llama-style decoder (:mod:`~codemix.models.gpt`) and CodeT5 (:mod:`~codemix.models.t5`).

Each architecture has one preset table (``gpt.PRESETS``, ``t5.PRESETS``); a study's
``model`` section picks a preset and overrides fields of it.
"""

from __future__ import annotations

import torch

from codemix.config import ModelConfig
from codemix.models.gpt import GPT, config_from_model_config
from codemix.models.t5 import CodeT5, t5_config

__all__ = ["GPU_NAME", "GPU_PEAK_FLOPS", "count_parameters"]

#: The GPU that model-FLOPs utilization (MFU) divides by: an H100 SXM's dense bf16 peak, which
#: an H200 shares. The planner's GPU-hour estimate and the throughput benchmarks both use it.
GPU_PEAK_FLOPS = 989e12
GPU_NAME = f"H100 ({GPU_PEAK_FLOPS / 1e12:.0f} TFLOP/s bf16)"


def count_parameters(model: ModelConfig, *, vocab_size: int, seq_len: int) -> int:
    """Parameters of a study's model: the real model class, built on the meta device (no memory).

    Tied tensors count once. Raises ConfigError for a preset or override the architecture lacks.
    """
    with torch.device("meta"):
        if model.arch == "gpt":
            net: torch.nn.Module = GPT(config_from_model_config(model, vocab_size=vocab_size, seq_len=seq_len))
        else:  # special-token ids do not change the shape
            net = CodeT5(t5_config(model, vocab_size=vocab_size, pad_id=0, eos_id=1))
    return sum(p.numel() for p in net.parameters())
