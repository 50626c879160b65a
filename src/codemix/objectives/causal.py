"""Causal language modelling: predict every next token of a sequence (the `gpt` task)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from codemix.data.tokenizer import load_tokenizer
from codemix.models.gpt import GPT, GPTConfig, config_from_model_config

__all__ = ["CausalLMTask"]


class CausalLMTask:
    """Decoder-only pretraining on packed token sequences.

    A batch of sequences (B, T) gives inputs ``tokens[:, :-1]`` and targets ``tokens[:, 1:]``:
    T - 1 predictions per sequence, all of them from the same source (sequences never mix
    sources), so no masking is needed.
    """

    arch = "gpt"
    needs_sources = False
    cpu_batches = False

    def __init__(self, cfg: Any, *, tokenizer_path: str | Path):
        vocab_size = load_tokenizer(tokenizer_path).get_vocab_size()
        self.config: GPTConfig = config_from_model_config(cfg.model, vocab_size=vocab_size, seq_len=cfg.data.seq_len)

    def build_model(self) -> nn.Module:
        return GPT(self.config)

    def bind_streams(self, stream_dirs: Sequence[str | Path]) -> None:
        """Nothing to bind: every source is plain text to a decoder."""

    def loss(self, model: nn.Module, tokens: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        # the model computes the loss itself, inside its compiled graph (GPT.forward)
        return {"loss": model(tokens[:, :-1], tokens[:, 1:])}

    def model_config(self) -> dict[str, Any]:
        return self.config.to_dict()
