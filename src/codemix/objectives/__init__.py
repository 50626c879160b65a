"""Pretraining objectives: one task per architecture, in one registry.

A task (:class:`PretrainTask`) turns token batches from a mixture into losses:
``task.build_model()``, ``task.loss(model, batch, step) -> {"loss": ..., ...}``,
``task.model_config()``. Tasks are built as ``TASKS[arch](cfg, tokenizer_path=...)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from codemix.objectives.causal import CausalLMTask
from codemix.objectives.codet5 import CodeT5Task

__all__ = ["TASKS", "PretrainTask"]


class PretrainTask(Protocol):
    """What the training loop needs of a pretraining objective."""

    arch: str
    needs_sources: bool
    """Batches carry each row's source id and stream offset (``{"tokens", "source", "offset"}``)."""
    cpu_batches: bool
    """The task builds its inputs on the CPU: the loop hands it CPU batches."""

    def build_model(self) -> nn.Module: ...

    def model_config(self) -> dict[str, Any]: ...

    def loss(self, model: nn.Module, batch: Any, step: int) -> dict[str, torch.Tensor]: ...

    def bind_streams(self, stream_dirs: Sequence[str | Path]) -> None:
        """Called with the training stream directories (source-id order) before the first step."""


#: arch -> task class (``model.arch`` of a study).
TASKS: dict[str, type[PretrainTask]] = {"gpt": CausalLMTask, "t5": CodeT5Task}
