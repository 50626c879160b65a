"""CodeT5 (Wang et al., EMNLP 2021): Hugging Face T5 plus an identifier-tagging head.

CodeT5 *is* T5 v1.0 (ReLU feed-forward, tied embeddings, relative position buckets), so
the network is ``transformers.T5ForConditionalGeneration`` as is; the only addition is
the per-token binary classifier on the encoder that identifier tagging trains (§3.2).
The head is a pretraining device: :func:`to_hf` drops it, and the exported directory
loads with ``AutoModelForSeq2SeqLM``.

Presets follow the CodeT5 releases (``Salesforce/codet5-small``, ``-base``): their
≈60M / ≈220M parameters assume CodeT5's 32K vocabulary; with a study tokenizer the
embedding matrix, and so the count, follows ``data.tokenizer.vocab_size``.

Every pretraining objective goes through *one* call of :meth:`CodeT5.forward` per
micro-batch (one encoder pass, the tagging head, one decoder pass over every row), so
DDP/FSDP see a single forward, every parameter takes part in it, and ``torch.compile``
traces it as one graph.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import T5Config, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from codemix.checkpoint import resolve_checkpoint
from codemix.errors import CheckpointError, ConfigError

__all__ = ["CodeT5", "PRESETS", "t5_config", "to_hf"]

#: name -> T5Config fields. Dropout 0.1 as in T5 v1.0 / CodeT5; none for the CPU debug model.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(d_model=64, d_kv=16, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4, dropout_rate=0.0),
    "codet5-small": dict(d_model=512, d_kv=64, d_ff=2048, num_layers=6, num_decoder_layers=6, num_heads=8,
                         dropout_rate=0.1),
    "codet5-base": dict(d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12,
                        dropout_rate=0.1),
}

# ModelConfig field -> T5Config field
_OVERRIDES = {"n_layers": "num_layers", "n_decoder_layers": "num_decoder_layers", "n_heads": "num_heads",
              "d_model": "d_model", "d_ff": "d_ff", "d_kv": "d_kv", "tie_embeddings": "tie_word_embeddings",
              "dropout": "dropout_rate"}


def t5_config(model_cfg: Any, *, vocab_size: int, pad_id: int, eos_id: int) -> dict[str, Any]:
    """The T5Config fields (a JSON-able dict) for a study's ``model`` section: the preset, then overrides.

    ``decoder_start_token_id`` is the pad id, T5's convention.
    """
    if model_cfg.preset not in PRESETS:
        raise ConfigError(f"model.preset={model_cfg.preset!r} is not a t5 preset; choose one of {sorted(PRESETS)} "
                          "(or set model.arch=gpt for the decoder-only presets)")
    gpt_only = [f"model.{name}={getattr(model_cfg, name)}" for name in ("n_kv_heads", "rope_theta")
                if getattr(model_cfg, name, None) is not None]
    if gpt_only:
        raise ConfigError([f"{item}: applies to arch gpt only (T5 has neither grouped-query attention nor RoPE); "
                           "remove it" for item in gpt_only])
    values: dict[str, Any] = dict(PRESETS[model_cfg.preset], feed_forward_proj="relu", tie_word_embeddings=True)
    for ours, theirs in _OVERRIDES.items():
        value = getattr(model_cfg, ours, None)
        if value is not None:
            values[theirs] = value
    values.update(vocab_size=vocab_size, pad_token_id=pad_id, eos_token_id=eos_id, decoder_start_token_id=pad_id)
    return values


class CodeT5(nn.Module):
    """T5 with an identifier-tagging head; :meth:`forward` returns every objective's loss at once."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = dict(config)
        self.t5 = T5ForConditionalGeneration(T5Config(**config))
        self.tagger = nn.Linear(config["d_model"], 1)  # is this token part of an identifier?

    def _shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs: the start token, then the labels without their last position (-100 -> pad)."""
        pad = self.config["pad_token_id"]
        start = torch.full_like(labels[:, :1], self.config["decoder_start_token_id"])
        shifted = torch.cat([start, labels[:, :-1]], dim=1)
        return shifted.masked_fill(shifted == -100, pad)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
                tags: torch.Tensor, objective: torch.Tensor, n_objectives: int) -> dict[str, torch.Tensor]:
        """Per-objective mean losses for one batch.

        input_ids, attention_mask: (B, T) encoder inputs; pass None for a mask when no row is
        padded (HF T5 then keeps one position bias for the batch instead of one per row).
        labels: (B, S) decoder targets, -100 where none (a tagging row has no target at all).
        tags: (B, T) identifier labels in {0, 1}, -100 where not trained. objective: (B,) the
        objective index of each row.
        Returns ``{"seq2seq": (n_objectives,), "tagging": scalar, "counts": (n_objectives,)}``:
        the mean target-token cross-entropy of each objective's rows (0 where it has none), the
        mean tagging loss (0 without tagged tokens), and the number of target tokens per objective.

        There is no data-dependent branch or indexing: the decoder runs on every row (a row
        without targets adds nothing to the sums), and masked sums replace boolean selection.
        So ``torch.compile`` traces one graph whose shapes depend only on (B, T, S), and every
        parameter is in the graph of every batch, as DDP needs.
        """
        hidden = self.t5.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # (B, T, d)
        tag_logits = self.tagger(hidden).squeeze(-1).float()  # (B, T)
        tagged = (tags >= 0).float()
        tag_loss = F.binary_cross_entropy_with_logits(tag_logits, tags.clamp(min=0).float(), reduction="none")
        tagging = (tag_loss * tagged).sum() / tagged.sum().clamp(min=1)

        out = self.t5(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=attention_mask,
                      decoder_input_ids=self._shift_right(labels), use_cache=False)
        token_loss = self.token_loss(out.logits, labels)  # (B, S), 0 where ignored
        valid = (labels >= 0).float()
        zeros = torch.zeros(n_objectives, device=hidden.device)
        sums = zeros.index_add(0, objective, token_loss.sum(1))
        counts = zeros.index_add(0, objective, valid.sum(1))
        return {"seq2seq": sums / counts.clamp(min=1), "tagging": tagging, "counts": counts}

    def token_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(B, S) cross-entropy of each target token, 0 where ignored; softmax in float32 under bf16 autocast."""
        return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100,
                               reduction="none").view_as(labels)

    def compile_regions(self, **options: Any) -> None:
        """``torch.compile`` each T5 block and :meth:`token_loss` in place (``options`` go to torch.compile).

        T5's blocks come in four kinds (the first block of each stack computes the relative
        position bias, the decoder's add cross-attention), and torch.compile traces each kind
        once and reuses it for every block of that kind (their weights are the graph's inputs),
        where compiling the whole model traces every layer: on a CPU the first training step
        (compilation) took 1.2x less time at ``codet5-small`` (67 s -> 54 s) and 1.7x less at
        ``codet5-base`` (105 s -> 60 s) (``benchmarks/compile_time.py``); at 2 + 2 layers (the
        ``tiny`` preset) every block is a kind of its own, and compiling the whole is faster.
        The loss keeps its float32 upcast fused into the cross-entropy, and nothing changes in
        the state dict (the modules are compiled in place, not wrapped).
        """
        for block in [*self.t5.encoder.block, *self.t5.decoder.block]:
            block.compile(**options)
        self.token_loss = torch.compile(self.token_loss, **options)


def to_hf(ckpt_dir: str | Path):
    """The ``T5ForConditionalGeneration`` of a codemix t5 checkpoint (docs/interfaces.md).

    ``ckpt_dir`` is a checkpoint directory (or a run directory: its latest checkpoint). The
    identifier-tagging head is dropped; the model is in eval mode on the CPU. The tokenizer
    is the checkpoint's ``tokenizer.json`` (``codemix.data.tokenizer.hf_tokenizer``);
    ``codemix.models.export.load_hf`` returns both.
    """
    ckpt, config = resolve_checkpoint(ckpt_dir)
    if config.get("arch") != "t5":
        raise CheckpointError(f"{ckpt} holds a {config.get('arch')!r} model, not a t5; "
                              "use codemix.models.export.load_hf for any arch")
    model = CodeT5(config["model"])
    weights = load_file(str(ckpt / "model.safetensors"))
    # Tied tensors (T5's shared embedding, encoder/decoder embed_tokens, lm_head) were saved once.
    seen: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen and name not in weights and seen[id(p)] in weights:
            weights[name] = weights[seen[id(p)]]
        seen.setdefault(id(p), name)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt}/model.safetensors does not match its config.json "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]}); the checkpoint is not a "
                              "codemix t5 checkpoint of this version")
    hf = model.t5.eval()
    hf.generation_config.decoder_start_token_id = config["model"]["decoder_start_token_id"]
    hf.generation_config.eos_token_id = config["model"]["eos_token_id"]
    hf.generation_config.pad_token_id = config["model"]["pad_token_id"]
    return hf
