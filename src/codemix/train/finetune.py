"""Finetuning a pretrained model: on input -> output pairs, or on documents (continued pretraining).

Petty et al. (2024, §4.2.1) finetune every pretrained model on the task's training set
and then measure generalization; :func:`finetune` is that finetuning, for both architectures:

- a **decoder-only** model learns ``input <sep> output <eos>``; the loss counts only
  ``output <eos>`` (predicting the input would spend capacity on the task's sentences
  rather than on the mapping), and at test time the model continues ``input <sep>``.
  With ``separator=False`` it learns ``input output <eos>``, a plain continuation (code:
  a prompt and the function body that follows it);
- a **T5** model maps ``input <eos>`` (encoder) to ``output <eos>`` (decoder).

Every ``eval_every`` steps (and after the last step) the model decodes each evaluation
set greedily, in batches, through the model handle; the decoded outputs are saved each
time (``evals/step-NNNNNNN.json``) so that learning curves can be recomputed with any
metric later. A ``select_on`` set is scored (its mean loss) at the same steps and the
weights of the best step are kept (model selection, early stopping's outcome). Training
lines and evaluation summaries go to ``log.jsonl``.

:func:`continue_pretraining` trains on documents instead: the model's own pretraining
objective (next-token prediction, or T5 span corruption) on exactly K tokens of a corpus,
through the same training core.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codemix.config import FinetuneConfig
from codemix.data.tokenizer import SENTINELS
from codemix.errors import CodemixError, DataError
from codemix.io import atomic_dir, atomic_write_json
from codemix.objectives.span_corruption import span_corrupt_batch
from codemix.train.distributed import DistContext
from codemix.train.loop import LoopSpec, LoopState, RunLogger, build_optimizer, lr_at, run_loop, warn

__all__ = [
    "FinetuneResult",
    "check_tokenizer",
    "collate",
    "continue_pretraining",
    "decode",
    "encode_pairs",
    "exact_match_rate",
    "finetune",
    "prompt_texts",
]

#: One example: (input text, output text).
Pair = tuple[str, str]

IGNORE = -100  # label of positions that carry no loss (HF convention)
LOG_EVERY = 10  # steps between training lines in log.jsonl


@dataclass
class FinetuneResult:
    """What :func:`finetune` did: the final evaluation's outputs and every evaluation's summary."""

    steps: int
    outputs: dict[str, list[str]]
    """Decoded outputs of the last evaluation, per evaluation set, in the sets' order."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """One record per evaluation and set: step, source (the set's name), n, examples_per_s, ``summarize``'s numbers."""
    out_dir: Path | None = None
    skipped_train: int = 0
    """Training examples left out because they do not fit the model's context."""
    selected_step: int | None = None
    """With ``select_on``: the step whose weights were kept (lowest selection loss)."""


# ----------------------------------------------------------------------------- formatting


def check_tokenizer(tokenizer: Any, *, seq2seq: bool, where: str = "the model", separator: bool = True) -> None:
    """Raise a clear error if the tokenizer lacks the special tokens finetuning needs."""
    missing = []
    if tokenizer.eos_token_id is None:
        missing.append("an end-of-sequence token (eos_token, codemix: <eos>)")
    if not seq2seq and separator and tokenizer.sep_token_id is None:
        missing.append("a separator token (sep_token, codemix: <sep>) between input and output")
    if missing:
        raise CodemixError(
            f"the tokenizer of {where} has no {' and no '.join(missing)}; finetuning ends each output with <eos> "
            f"and gives decoder-only models `input <sep> output <eos>`. Use a tokenizer built by codemix (it has "
            f"<eos>, <pad> and <sep>), or add the token to the HF tokenizer (tokenizer.add_special_tokens("
            f"{{'sep_token': '<sep>'}}), then model.resize_token_embeddings(len(tokenizer))) and save both again"
        )


def prompt_texts(tokenizer: Any, inputs: Sequence[str], *, seq2seq: bool, separator: bool = True) -> list[str]:
    """What the model is given at test time: the input, followed by ``<sep>`` for decoder-only models
    finetuned with the separator."""
    return list(inputs) if seq2seq or not separator else [f"{text}{tokenizer.sep_token}" for text in inputs]


def encode_pairs(tokenizer: Any, pairs: Sequence[Pair], *, seq2seq: bool, start_id: int | None = None,
                 separator: bool = True) -> list[tuple[list[int], list[int]]]:
    """Token ids of each example: ``(input_ids, labels)``.

    Decoder-only: ``input_ids = [start] input <sep> output <eos>`` (without ``<sep>`` when
    ``separator`` is false), where ``start`` is the token the model handle puts before every
    prompt (so training and decoding see the same prefix), and ``labels`` the same with every
    position of the input (and ``<sep>``) set to -100 (no loss). T5: ``input_ids = input <eos>``,
    ``labels = output <eos>``.
    """
    eos = tokenizer.eos_token_id
    sep = [tokenizer.sep_token_id] if separator else []
    prefix = [] if start_id is None else [start_id]
    sources = tokenizer([p[0] for p in pairs], add_special_tokens=False)["input_ids"]
    targets = tokenizer([p[1] for p in pairs], add_special_tokens=False)["input_ids"]
    out = []
    for src, tgt in zip(sources, targets):
        if seq2seq:
            out.append((src + [eos], tgt + [eos]))
        else:
            ids = prefix + src + sep + tgt + [eos]
            out.append((ids, [IGNORE] * (len(prefix) + len(src) + len(sep)) + tgt + [eos]))
    return out


def collate(batch: Sequence[tuple[list[int], list[int]]], *, pad_id: int, seq2seq: bool) -> dict[str, torch.Tensor]:
    """Right-pad a batch into the tensors a HF model's forward takes (loss included via ``labels``)."""
    width = max(len(ids) for ids, _ in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    if seq2seq:
        label_width = max(len(labels) for _, labels in batch)
        labels = torch.full((len(batch), label_width), IGNORE, dtype=torch.long)
    else:
        labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    for i, (ids, lab) in enumerate(batch):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention[i, : len(ids)] = 1
        labels[i, : len(lab)] = torch.tensor(lab)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


# ----------------------------------------------------------------------------- decoding


def decode(handle: Any, inputs: Sequence[str], *, batch_size: int = 64, max_new_tokens: int = 160,
           progress: Any = None, description: str = "decoding", separator: bool = True) -> list[str]:
    """Greedy outputs for ``inputs``, in input order.

    Inputs are sorted by length so each batch pads little, then decoded batch by batch
    through ``handle.generate`` (greedy, KV cache, each sequence stops at ``<eos>``).
    """
    prompts = prompt_texts(handle.tokenizer, inputs, seq2seq=handle.is_seq2seq, separator=separator)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    task = progress.add_task(description, total=len(prompts)) if progress is not None else None
    was_training = handle.model.training
    handle.model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            texts = handle.generate([prompts[i] for i in chunk], max_new_tokens=max_new_tokens, temperature=0.0,
                                    n=1, batch_size=batch_size)
            for i, samples in zip(chunk, texts):
                outputs[i] = samples[0].strip()
            if progress is not None:
                progress.advance(task, len(chunk))
    finally:
        handle.model.train(was_training)
        if progress is not None:
            progress.remove_task(task)
    return outputs


def exact_match_rate(predictions: Sequence[str], targets: Sequence[str]) -> dict[str, float]:
    """The default evaluation summary: share of outputs equal to their target (whitespace aside)."""
    right = sum(p.split() == t.split() for p, t in zip(predictions, targets))
    return {"exact_match": right / max(len(targets), 1)}


# ----------------------------------------------------------------------------- training


class _Epochs:
    """The training batches: each pass over the examples in a fresh seeded order.

    Iterating yields one epoch of collated batches (the last incomplete batch is dropped,
    so every step sees ``batch_size`` examples); :func:`run_loop` iterates again for the
    next epoch, which gets the next permutation of the same seeded generator.
    """

    def __init__(self, examples: list[tuple[list[int], list[int]]], *, batch_size: int, seed: int, pad_id: int,
                 seq2seq: bool):
        self.examples, self.batch_size, self.pad_id, self.seq2seq = examples, batch_size, pad_id, seq2seq
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self.rng.permutation(len(self.examples))
        for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
            chunk = [self.examples[i] for i in order[start : start + self.batch_size]]
            yield collate(chunk, pad_id=self.pad_id, seq2seq=self.seq2seq)


def _loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
    """The HF model's own loss: mean cross-entropy over positions whose label is not -100."""
    return {"loss": model(**batch).loss}


def _train(handle: Any, examples: list[tuple[list[int], list[int]]], *, steps: int, batch_size: int, lr: float,
           warmup_steps: int, seed: int, out_dir: Path, eval_every: int | None = None,
           eval_fn: Callable[[torch.nn.Module, int], list[dict[str, Any]]] | None = None,
           start_record: dict[str, Any]) -> None:
    """The training core of :func:`finetune` and :func:`continue_pretraining`: ``steps`` AdamW steps of
    ``batch_size`` encoded examples through the one loop (:func:`codemix.train.loop.run_loop`): linear
    warmup, then a constant ``lr``, gradient norm clipped to 1, bf16 autocast on CUDA, no weight decay
    (a short run from pretrained weights)."""
    if warmup_steps > steps:
        warn(f"warmup_steps={warmup_steps} exceeds steps={steps}: the learning rate never reaches lr={lr}; "
             f"lower warmup_steps (e.g. to {steps // 10})")
    ctx = DistContext.single(handle.device)
    model = handle.model
    model.to(ctx.device)
    optimizer = build_optimizer(model, lr=lr, weight_decay=0.0, betas=(0.9, 0.999))
    batches = _Epochs(examples, batch_size=min(batch_size, len(examples)), seed=seed, pad_id=handle.pad_id,
                      seq2seq=bool(handle.is_seq2seq))
    spec = LoopSpec(
        total_steps=steps,
        lr=functools.partial(lr_at, warmup=warmup_steps, total=steps, lr=lr, min_ratio=1.0),
        grad_clip=1.0,
        amp_dtype=torch.bfloat16 if ctx.device.type == "cuda" else None,
        log_every=LOG_EVERY,
        eval_every=eval_every if eval_fn is not None else None,
    )
    logger = RunLogger(out_dir / "log.jsonl", config=start_record.get("config"))
    logger.log({"kind": "start", **start_record})
    run_loop(model, optimizer, batches, _loss, spec=spec, state=LoopState(), ctx=ctx, logger=logger,
             eval_fn=eval_fn)
    model.eval()


@torch.no_grad()
def example_loss(handle: Any, examples: list[tuple[list[int], list[int]]], *, batch_size: int = 16) -> float:
    """Mean loss per target token of encoded examples (a selection criterion: lower is better)."""
    model = handle.model
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(examples), batch_size):
            batch = collate(examples[start:start + batch_size], pad_id=handle.pad_id, seq2seq=handle.is_seq2seq)
            batch = {k: v.to(handle.device) for k, v in batch.items()}
            # HF averages over target tokens; weight each batch by its number of targets
            n = int((batch["labels"][:, 1:] != IGNORE).sum() if not handle.is_seq2seq
                    else (batch["labels"] != IGNORE).sum())
            total += float(model(**batch).loss) * n
            count += n
    finally:
        model.train(was_training)
    return total / max(count, 1)


def finetune(
    handle: Any,
    train: Sequence[Pair],
    cfg: FinetuneConfig,
    *,
    eval_sets: dict[str, Sequence[Pair]],
    out_dir: str | Path,
    decode_batch_size: int = 64,
    max_new_tokens: int = 160,
    summarize: Callable[[Sequence[str], Sequence[str]], dict[str, float]] = exact_match_rate,
    save_to: str | Path | None = None,
    separator: bool = True,
    select_on: Sequence[Pair] | None = None,
) -> FinetuneResult:
    """Finetune ``handle.model`` in place on ``train`` pairs, evaluating on ``eval_sets`` along the way.

    Runs ``cfg.steps`` AdamW steps of ``cfg.batch_size`` examples through the one training loop.
    Every evaluation set is decoded every ``cfg.eval_every`` steps and after the last step;
    ``summarize(predictions, targets)`` gives the numbers logged for each. With ``select_on``,
    its mean loss is measured at the same steps and the weights of the step where it was lowest
    are restored at the end. Returns the last evaluation's outputs. ``save_to`` receives the
    finetuned model and tokenizer in Hugging Face format.
    """
    seq2seq = bool(handle.is_seq2seq)
    tokenizer = handle.tokenizer
    check_tokenizer(tokenizer, seq2seq=seq2seq, where=str(handle.path or "the model"), separator=separator)
    if not train:
        raise CodemixError("no training examples to finetune on; check the task's train split")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # A rerun in the same directory starts a fresh log and fresh saved outputs.
    (out_dir / "log.jsonl").unlink(missing_ok=True)
    shutil.rmtree(out_dir / "evals", ignore_errors=True)

    if cfg.max_train_examples is not None and cfg.max_train_examples < len(train):
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(len(train))[: cfg.max_train_examples])
        train = [train[i] for i in keep]
    start_id = None if seq2seq else handle.start_id
    encode = functools.partial(encode_pairs, tokenizer, seq2seq=seq2seq, start_id=start_id, separator=separator)
    fits_context = (lambda e: len(e[0]) <= handle.max_length and len(e[1]) <= handle.max_length)
    encoded = encode(train)
    fits = [e for e in encoded if fits_context(e)]
    if not fits:
        raise CodemixError(f"none of the {len(encoded)} training examples fits the model's context of "
                           f"{handle.max_length} tokens; use a model with a longer context")
    if len(fits) < len(encoded):
        warn(f"{len(encoded) - len(fits)} of {len(encoded)} training examples are longer than the model's context "
             f"of {handle.max_length} tokens and are left out")
    selection = [e for e in encode(select_on) if fits_context(e)] if select_on else []
    history: list[dict[str, Any]] = []
    outputs: dict[str, list[str]] = {}
    best: dict[str, Any] = {"loss": float("inf"), "step": None, "state": None}

    def evaluate(model: torch.nn.Module, step: int) -> list[dict[str, Any]]:
        """Decode every evaluation set, save this step's outputs, score the selection set; one summary per set."""
        summary, saved = [], {}
        for split, pairs in eval_sets.items():
            start = time.perf_counter()
            preds = decode(handle, [p[0] for p in pairs], batch_size=decode_batch_size,
                           max_new_tokens=max_new_tokens, separator=separator)
            seconds = time.perf_counter() - start
            outputs[split] = preds
            saved[split] = [{"input": s, "target": t, "prediction": p} for (s, t), p in zip(pairs, preds)]
            summary.append({"source": split, "n": len(pairs), **summarize(preds, [t for _, t in pairs]),
                            "examples_per_s": round(len(pairs) / seconds, 2) if seconds > 0 else None})
        if selection:
            loss = example_loss(handle, selection, batch_size=decode_batch_size)
            summary.append({"source": "selection", "n": len(selection), "loss": loss})
            if loss < best["loss"]:  # keep this step's weights (on the CPU: one copy of the model)
                best.update(loss=loss, step=step,
                            state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
        if saved:
            atomic_write_json(out_dir / "evals" / f"step-{step:07d}.json", saved)
        history.extend({"step": step, **record} for record in summary)
        return summary

    _train(handle, fits, steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
           seed=cfg.seed, out_dir=out_dir, eval_every=cfg.eval_every,
           eval_fn=evaluate if eval_sets or selection else None,
           start_record={"config": cfg.model_dump(), "train_examples": len(fits),
                         "skipped_train": len(encoded) - len(fits), "seq2seq": seq2seq,
                         "selection_examples": len(selection)})
    if best["state"] is not None:
        handle.model.load_state_dict(best["state"])
    if save_to is not None:
        with atomic_dir(save_to, overwrite=True) as tmp:
            handle.model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return FinetuneResult(steps=cfg.steps, outputs=outputs, history=history, out_dir=out_dir,
                          skipped_train=len(encoded) - len(fits), selected_step=best["step"])


# ----------------------------------------------------------------------------- continued pretraining


def _document_tokens(handle: Any, texts: Sequence[str], tokens: int) -> np.ndarray:
    """The first ``tokens`` tokens of the documents, each followed by ``<eos>`` (as in pretraining streams)."""
    out: list[int] = []
    for text in texts:
        out += handle.encode(text) + [handle.eos_id]
        if len(out) >= tokens:
            return np.asarray(out[:tokens], dtype=np.int64)
    raise DataError(f"the corpus holds {len(out):,} tokens, fewer than the budget of {tokens:,}; lower the budget "
                    "or use a larger corpus")


def continue_pretraining(handle: Any, texts: Sequence[str], *, tokens: int, seq_len: int, epochs: int = 1,
                         batch_size: int = 8, lr: float = 1.0e-4, warmup_steps: int = 10, seed: int = 0,
                         out_dir: str | Path, noise_density: float = 0.15, mean_span: float = 3.0) -> int:
    """Train ``handle.model`` in place on exactly ``tokens`` tokens of ``texts``, with its pretraining objective.

    The documents (each ending in ``<eos>``) are cut into sequences of ``seq_len`` tokens
    (the last may be shorter). A decoder-only model predicts every next token; a T5 model
    learns T5 span corruption (15% of each sequence in spans of mean length 3, its
    tokenizer's ``<extra_id_N>`` sentinels). ``epochs`` passes over the sequences in a seeded
    order, ``batch_size`` at a time. Returns the number of optimizer steps. A budget larger
    than the corpus is a :class:`DataError`.
    """
    if tokens <= 0:
        raise ValueError(f"tokens must be positive, got {tokens}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "log.jsonl").unlink(missing_ok=True)
    ids = _document_tokens(handle, texts, tokens)
    windows = [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)]
    windows = [w for w in windows if len(w) >= 2]
    if handle.is_seq2seq:
        examples = _span_corrupted(handle, windows, seed=seed, noise_density=noise_density, mean_span=mean_span)
    else:  # HF shifts the labels inside the model
        examples = [([handle.start_id] + w.tolist(), [IGNORE] + w.tolist()) for w in windows]
    steps = epochs * -(-len(examples) // min(batch_size, len(examples)))
    _train(handle, examples, steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(warmup_steps, steps - 1),
           seed=seed, out_dir=out_dir,
           start_record={"config": {"tokens": tokens, "seq_len": seq_len, "epochs": epochs, "batch_size": batch_size,
                                    "lr": lr, "warmup_steps": warmup_steps, "seed": seed},
                         "sequences": len(examples), "steps": steps, "seq2seq": bool(handle.is_seq2seq)})
    return steps


def _span_corrupted(handle: Any, windows: list[np.ndarray], *, seed: int, noise_density: float,
                    mean_span: float) -> list[tuple[list[int], list[int]]]:
    """T5 span corruption of each window: (encoder input ``... <eos>``, target ``<extra_id_0> ... <eos>``)."""
    sentinels = [handle.tokenizer.convert_tokens_to_ids(t) for t in SENTINELS]
    sentinels = [s for s in sentinels if s is not None and s != handle.tokenizer.unk_token_id]
    if not sentinels:
        raise CodemixError(f"the tokenizer of {handle.path} has no <extra_id_N> sentinel tokens, which T5 span "
                           "corruption needs; use the model's own T5 tokenizer (or a codemix one)")
    rng = np.random.default_rng(seed)
    out = []
    for w in windows:
        inputs, targets = span_corrupt_batch(w[None, :], sentinels=sentinels, eos_id=handle.eos_id,
                                             noise_density=noise_density, mean_span=mean_span, rng=rng)
        out.append((inputs[0].tolist() + [handle.eos_id], targets[0].tolist()))
    return out
