"""The `t5` pretraining task: CodeT5's identifier-aware denoising on mixture sequences.

CodeT5 (Wang et al., EMNLP 2021, §3.2) pretrains T5 with four objectives:

- masked span prediction (MSP, T5 span corruption) — :mod:`~codemix.objectives.span_corruption`;
- identifier tagging (IT): a binary label per encoder token — is it part of an identifier
  (found by :mod:`~codemix.data.identifiers`);
- masked identifier prediction (MIP): every occurrence of one identifier hidden by one sentinel —
  :mod:`~codemix.objectives.identifiers`;
- bimodal dual generation: documentation <-> function — :mod:`~codemix.objectives.bimodal`.

Natural-language sequences always get span corruption. Each code sequence (Python, Rust or
Go) draws one objective with probabilities proportional to ``pretrain.objectives`` weights;
the defaults (MSP, IT, MIP equally, bimodal off) are CodeT5's first, identifier-aware phase,
"alternately optimized with equal probability". Its second phase continues a run with
bimodal generation on (:func:`codemix.train.pretrain.train` with ``resume=True`` on a copy of the
first phase's run directory, ``pretrain.objectives.bimodal=1`` and a larger ``pretrain.max_steps``:
the objectives are not part of the checkpointed model). A code
sequence for which the drawn objective has nothing to work on (no identifier that can be
masked cleanly, no complete documented function) falls back to span corruption.

The task needs to know each sequence's source: training batches are
``{"tokens": (B, L), "source": (B,), "offset": (B,)}`` (``MixtureLoader(..., with_sources=True)``,
asked for through :attr:`CodeT5Task.needs_sources`). The offset (where the row starts in its
stream) locates the row in the identifier annotations that the data stage precomputed for
each code stream (:mod:`codemix.data.annotations`), so no training step runs tree-sitter.
A plain ``(B, L)`` tensor — the held-out
evaluation, which scores every source separately — gets span corruption only, with the
same masks at every evaluation so that held-out losses are comparable across steps.

``loss`` returns ``"loss"`` (the mean of the objectives' losses weighted by their numbers
of sequences) and one entry per objective; an objective with no sequence in a batch logs
NaN for that batch. Every batch returns the same keys, as distributed averaging needs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from codemix.data.annotations import StreamAnnotations
from codemix.data.identifiers import (
    LANGUAGES,
    TokenBytes,
    TokenDocPair,
    TokenIdentifiers,
    token_doc_pairs,
    token_identifiers,
)
from codemix.data.tokenizer import EOS, PAD, SENTINELS, load_tokenizer
from codemix.errors import ConfigError, DataError
from codemix.models.t5 import CodeT5, t5_config
from codemix.objectives.bimodal import DIRECTIONS, dual_generation
from codemix.objectives.identifiers import mask_identifiers
from codemix.objectives.span_corruption import corruption_lengths, span_corrupt_batch

__all__ = ["OBJECTIVES", "CodeT5Task", "Example", "RowAnnotator", "build_examples", "collate"]

#: Objective names, in index order (keys of the loss dict and fields of ObjectivesConfig).
OBJECTIVES = ("span_corruption", "identifier_tagging", "masked_identifier", "bimodal")
SPAN, TAGGING, MASKED_IDENTIFIER, BIMODAL = range(len(OBJECTIVES))


@dataclass(frozen=True)
class Example:
    """One training row: encoder input and either decoder targets or identifier tags."""

    objective: int
    inputs: np.ndarray
    targets: np.ndarray | None = None
    tags: np.ndarray | None = None


@dataclass(frozen=True)
class Vocab:
    """The token ids the objectives need."""

    eos: int
    pad: int
    sentinels: tuple[int, ...]


class RowAnnotator:
    """Identifiers and documented functions of each code row of a ``(B, L)`` batch.

    Where the stream of a row was annotated in the data stage (``windows[i]`` = its
    :class:`~codemix.data.annotations.StreamAnnotations` and the row's start offset), this
    slices the precomputed arrays; otherwise it parses the row with tree-sitter, a few
    milliseconds a row — fine for tests and held-out evaluation, too slow for a GPU step.
    """

    def __init__(self, tokens: np.ndarray, langs: Sequence[str | None], token_bytes: TokenBytes | None,
                 windows: Sequence[tuple[Any, int] | None] | None = None):
        self.tokens, self.langs, self.token_bytes = tokens, langs, token_bytes
        self.windows = windows or [None] * len(tokens)

    def identifiers(self, i: int) -> TokenIdentifiers:
        if self.windows[i] is not None:
            annotations, lo = self.windows[i]
            return annotations.identifiers(lo, lo + self.tokens.shape[1])
        return token_identifiers(self.tokens[i], self.langs[i], self.token_bytes)

    def doc_pairs(self, i: int) -> list[TokenDocPair]:
        if self.windows[i] is not None:
            annotations, lo = self.windows[i]
            return annotations.doc_pairs(lo, lo + self.tokens.shape[1])
        return token_doc_pairs(self.tokens[i], self.langs[i], self.token_bytes)


def build_examples(
    tokens: np.ndarray,
    langs: Sequence[str | None],
    *,
    weights: Sequence[float],
    vocab: Vocab,
    rows: RowAnnotator | None,
    noise_density: float,
    mean_span: float,
    target_len: int,
    rng: np.random.Generator,
) -> list[Example]:
    """One example per row of ``tokens`` (B, L); ``langs[i]`` is row i's code language, None for text.

    ``weights`` (one per :data:`OBJECTIVES`) are the sampling weights of a code row's objective;
    ``rows`` finds the identifiers and documented functions of code rows (None: no code rows).
    Every encoder input ends with ``<eos>``, as T5's (and the evaluation handle's) do.

    Encoder inputs of span corruption, identifier tagging and masked identifier prediction
    have one length, span corruption's (``input_len`` + ``<eos>``): tagging keeps the start of
    its row that fits; MIP masks names only while its input stays that long, then keeps the
    start (dropping the names whose every occurrence falls past the cut). So such a batch
    needs no attention mask, which Hugging Face's T5 would otherwise add to its position
    bias once per row. Only bimodal rows are shorter (padded).
    """
    probs = np.asarray(weights, dtype=np.float64) / float(np.sum(weights))
    tokens = np.asarray(tokens, dtype=np.int64)
    width = corruption_lengths(tokens.shape[1], noise_density=noise_density, mean_span=mean_span,
                               max_spans=len(vocab.sentinels)).input_len
    drawn = rng.choice(len(OBJECTIVES), size=len(tokens), p=probs)
    out: list[Example | None] = []
    for i, (row, lang, objective) in enumerate(zip(tokens, langs, drawn.tolist())):
        objective = objective if lang is not None else SPAN
        example = None
        if objective == TAGGING:
            found = rows.identifiers(i)
            if found.tagged[:width].any():
                example = Example(TAGGING, row[:width].copy(), tags=found.tagged[:width].astype(np.int64))
        elif objective == MASKED_IDENTIFIER:
            found = rows.identifiers(i)
            inputs, targets, names = mask_identifiers(row, found, sentinels=vocab.sentinels, eos_id=vocab.eos,
                                                      max_target=target_len, input_len=width)
            if names:
                example = Example(MASKED_IDENTIFIER, inputs, targets=targets)
        elif objective == BIMODAL:
            pairs = rows.doc_pairs(i)
            if pairs:
                pair = pairs[int(rng.integers(len(pairs)))]
                direction = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
                inputs, targets = dual_generation(row, pair, direction, eos_id=vocab.eos, max_target=target_len)
                example = Example(BIMODAL, inputs, targets=targets)
        out.append(example)  # None: span corruption, or the fallback of a code objective with nothing to do
    span_rows = [i for i, e in enumerate(out) if e is None]
    if span_rows:  # all at once: fixed-length rows corrupt to equal lengths
        inputs, targets = span_corrupt_batch(tokens[span_rows], sentinels=vocab.sentinels, eos_id=vocab.eos,
                                             noise_density=noise_density, mean_span=mean_span, rng=rng)
        for i, x, y in zip(span_rows, inputs, targets):
            out[i] = Example(SPAN, x, targets=y)
    # tags stop before the <eos>: collate pads its position with -100 (not trained)
    return [Example(e.objective, np.append(e.inputs, vocab.eos), e.targets, e.tags) for e in out]


def collate(examples: Sequence[Example], *, pad_id: int) -> dict[str, torch.Tensor]:
    """Pad examples into the tensors :meth:`codemix.models.t5.CodeT5.forward` takes.

    Inputs are padded with ``pad_id`` (attention mask 0), targets and tags with -100. Rows of
    one objective from fixed-length sequences (span corruption) have equal lengths, so a
    batch of them has no padding at all.
    """
    n = len(examples)
    width = max(len(e.inputs) for e in examples)
    target_width = max([len(e.targets) for e in examples if e.targets is not None] or [1])
    input_ids = np.full((n, width), pad_id, dtype=np.int64)
    attention_mask = np.zeros((n, width), dtype=np.int64)
    labels = np.full((n, target_width), -100, dtype=np.int64)
    tags = np.full((n, width), -100, dtype=np.int64)
    for i, e in enumerate(examples):
        input_ids[i, : len(e.inputs)] = e.inputs
        attention_mask[i, : len(e.inputs)] = 1
        if e.targets is not None:
            labels[i, : len(e.targets)] = e.targets
        if e.tags is not None:
            tags[i, : len(e.tags)] = e.tags
    objective = np.array([e.objective for e in examples], dtype=np.int64)
    arrays = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "tags": tags,
              "objective": objective}
    return {k: torch.from_numpy(v) for k, v in arrays.items()}


class CodeT5Task:
    """CodeT5 pretraining (docs/interfaces.md, "pretraining task") for ``model.arch: t5``."""

    arch = "t5"
    #: Training batches must carry each sequence's source id (``{"tokens", "source", "offset"}``).
    needs_sources = True
    #: Inputs are built on the CPU: ``run_loop`` hands over CPU batches (see LoopSpec.batches_to_device).
    cpu_batches = True

    def __init__(self, cfg: Any, *, tokenizer_path: str | Path):
        tokenizer = load_tokenizer(tokenizer_path)
        ids = {t: tokenizer.token_to_id(t) for t in (EOS, PAD, *SENTINELS)}
        missing = [t for t, i in ids.items() if i is None]
        if missing:
            raise ConfigError(f"tokenizer {tokenizer_path} lacks the special tokens {missing[:3]}...; the t5 "
                              "objectives need <eos>, <pad> and <extra_id_0..99>: let codemix build the tokenizer")
        self.vocab = Vocab(eos=ids[EOS], pad=ids[PAD], sentinels=tuple(ids[t] for t in SENTINELS))
        self.objectives = cfg.pretrain.objectives
        self.weights = [float(getattr(self.objectives, name)) for name in OBJECTIVES]
        problems = []
        if sum(self.weights) <= 0:
            problems.append("pretrain.objectives: every weight is 0; give at least one objective a positive weight")
        self.seq_len = cfg.data.seq_len
        lengths = corruption_lengths(self.seq_len, noise_density=self.objectives.noise_density,
                                     mean_span=self.objectives.mean_span, max_spans=len(self.vocab.sentinels))
        if lengths.target_len > self.objectives.target_len:
            problems.append(f"pretrain.objectives.target_len={self.objectives.target_len} is shorter than the span "
                            f"corruption targets of data.seq_len={self.seq_len} ({lengths.target_len} tokens at "
                            f"noise_density {self.objectives.noise_density}); raise target_len to at least "
                            f"{lengths.target_len} or lower data.seq_len")
        if problems:
            raise ConfigError(problems)
        # source id (mixture.json "sources" = data.sources order) -> code language, None for text
        self.langs: list[str | None] = [s.lang if s.code and s.lang in LANGUAGES else None for s in cfg.data.sources]
        self.token_bytes = TokenBytes(tokenizer) if any(self.langs) else None
        self.config = t5_config(cfg.model, vocab_size=tokenizer.get_vocab_size(), pad_id=self.vocab.pad,
                                eos_id=self.vocab.eos)
        # Drawn from the global RNG that train() seeds, so masks depend on the run's seed only.
        self.seed = int(np.random.randint(0, 2**31 - 1))
        self._warned = False
        self._annotations: list[Any] = [None] * len(self.langs)  # source id -> StreamAnnotations, see bind_streams

    def bind_streams(self, stream_dirs: Sequence[str | Path]) -> None:
        """Use the data stage's identifier annotations of the training streams (source-id order).

        ``codemix mix`` annotates every code stream of a t5 study
        (:func:`codemix.data.annotations.build_annotations`); with them a training step slices
        arrays instead of parsing each code row. A stream without them is parsed row by row,
        with a warning, since that is correct but slow.
        """
        missing = []
        for sid, (lang, stream_dir) in enumerate(zip(self.langs, stream_dirs)):
            if lang is None:
                continue
            try:
                self._annotations[sid] = StreamAnnotations(stream_dir)
            except DataError as e:
                missing.append(str(e))
        if missing:
            Console(stderr=True).print("[yellow]warning:[/yellow] code rows of these streams are parsed with "
                                       "tree-sitter at every step (slow): " + "; ".join(missing))

    def build_model(self) -> nn.Module:
        return CodeT5(self.config)

    def model_config(self) -> dict[str, Any]:
        return dict(self.config)

    def examples(self, batch: Any, step: int, *, training: bool = True) -> list[Example]:
        """The examples of a batch: ``{"tokens", "source"[, "offset"]}``, ``(tokens, source)`` or a tokens tensor.

        ``offset`` (each row's start in its stream, from the loader) lets code rows use the
        stream's precomputed annotations (:meth:`bind_streams`).
        """
        offsets = None
        if isinstance(batch, dict):
            tokens, sources, offsets = batch["tokens"], batch.get("source"), batch.get("offset")
        elif isinstance(batch, (tuple, list)):
            tokens, sources = batch
        else:
            tokens, sources = batch, None
        tokens = tokens.detach().cpu().numpy()
        if sources is None:
            if training and not self._warned and any(self.langs):
                Console(stderr=True).print("[yellow]warning:[/yellow] training batches carry no source ids; code "
                                           "sequences get span corruption only (the loader needs with_sources=True)")
                self._warned = True
            langs: list[str | None] = [None] * len(tokens)
        else:
            source_ids = sources.detach().cpu().tolist()
            langs = [self.langs[s] for s in source_ids]
        windows = None
        if sources is not None and offsets is not None:
            windows = [None if self._annotations[s] is None else (self._annotations[s], int(lo))
                       for s, lo in zip(source_ids, offsets.detach().cpu().tolist())]
        salt = int(tokens[:, :16].sum()) % (2**32)  # tells the micro-batches of one step apart
        # evaluation: the same objectives and masks for a batch at every step, so losses compare
        rng = np.random.default_rng([self.seed, step if training else 0xE7A1, salt])
        rows = RowAnnotator(tokens, langs, self.token_bytes, windows)
        return build_examples(tokens, langs, weights=self.weights, vocab=self.vocab, rows=rows,
                              noise_density=self.objectives.noise_density, mean_span=self.objectives.mean_span,
                              target_len=self.objectives.target_len, rng=rng)

    def loss(self, model: nn.Module, batch: Any, step: int) -> dict[str, torch.Tensor]:
        return self.loss_of_inputs(model, self.inputs(batch, step, training=model.training))

    def inputs(self, batch: Any, step: int, *, training: bool = True) -> dict[str, torch.Tensor]:
        """The model's CPU input tensors for a batch (:meth:`examples`, then :func:`collate`)."""
        return collate(self.examples(batch, step, training=training), pad_id=self.vocab.pad)

    def loss_of_inputs(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`loss` from inputs already built by :meth:`inputs`."""
        device = next(model.parameters()).device
        counts = torch.bincount(tensors["objective"], minlength=len(OBJECTIVES))  # rows per objective, on the CPU
        if bool(tensors["attention_mask"].all()):  # no padded row: no mask (see CodeT5.forward)
            tensors = {**tensors, "attention_mask": None}
        if device.type == "cuda":  # pinned: the copy runs behind the GPU's queue instead of waiting for it
            tensors = {k: v if v is None else v.pin_memory() for k, v in tensors.items()}
        inputs = {k: v if v is None else v.to(device, non_blocking=True) for k, v in tensors.items()}
        out = model(**inputs, n_objectives=len(OBJECTIVES))
        per_objective = out["seq2seq"].clone()
        per_objective[TAGGING] = out["tagging"]
        share = (counts.float() / counts.sum()).to(device)
        result = {"loss": (per_objective * share).sum()}
        nan = torch.tensor(math.nan, device=device)
        for i, name in enumerate(OBJECTIVES):
            result[name] = per_objective[i].detach() if counts[i] > 0 else nan
        return result
