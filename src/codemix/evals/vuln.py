"""Vulnerability detection in languages unseen in finetuning (``vuln``).

How does finetuning on security code change the F1 of vulnerability classification in
languages the classifier never saw, compared with general code? The protocol:

1. **Data** (:mod:`codemix.data.vuln`): the built-in sets (Juliet C/C++ and Java functions,
   OWASP Benchmark, SVEN, CWEval, gosec; CyberSecEval's positives for languages no other set
   covers, e.g. Rust) or a JSONL test file, cleaned of what gives the label away. The train
   languages' examples are split by group (Juliet family, fix, task), seeded: ``heldout`` of each
   set's groups are held out and scored in-language. A training example whose group also has
   test examples (a CWEval task exists in C and in Python) is left out of training, so no group
   is in two splits.
2. **Classifier**: a linear head on pooled hidden states — a decoder's last token (the ``<eos>``
   after the code), the mean of a T5 encoder's states — finetuned end to end with the model
   (``probe``: the head alone on frozen, standardized features) through the one training loop
   (:func:`codemix.train.loop.run_loop`); class imbalance by loss weights or balanced batches.
3. **Variants** of continued pretraining before that finetuning, each from the same weights
   (:func:`codemix.train.finetune.continue_pretraining`: the model's own objective on exactly K
   tokens): ``base`` (none), ``security`` (the train languages' vulnerable and fixed training
   code), ``general`` (general code: the study's code sources, else ``general_code``).
4. **Shortcut reference**: a bag-of-tokens logistic regression (scikit-learn) on the same splits.

Rows: ``task = "vuln"``, ``subtask = VARIANT/SCOPE`` where VARIANT is ``base``, ``security``,
``general`` or ``shortcut`` and SCOPE is a test language (``base/python``), a CWE in it with at
least ``min_cwe_examples`` examples (``base/python/CWE-89``), ``unseen`` (the test languages
pooled, those with both classes), ``seen/LANG`` (a train language's held-out groups) or ``seen``
(pooled); metrics ``f1``, ``precision``, ``recall``, ``balanced_accuracy``, ``auroc`` (vulnerable =
positive, threshold 0.5) — only ``recall`` where a scope has vulnerable examples alone (Rust).
With both ``security`` and ``general``, ``security-general/SCOPE`` rows carry ``f1_diff`` (or
``recall_diff``). The primary row is ``f1`` of ``FIRST_VARIANT/unseen``.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.console import Console
from scipy.stats import rankdata
from torch import nn

from codemix.config import SourceConfig, StudyConfig, VulnEvalConfig
from codemix.data.sources import iter_documents
from codemix.data.vuln import POSITIVE_ONLY_SETS, SETS, Example, load_sets, read_examples, split_by_group
from codemix.errors import DataError
from codemix.evals.benchmark import EvalContext, print_rows
from codemix.evals.handle import Handle
from codemix.io import atomic_dir, atomic_write_json, atomic_write_text
from codemix.train.distributed import DistContext
from codemix.train.finetune import continue_pretraining
from codemix.train.loop import LoopSpec, LoopState, RunLogger, build_optimizer, lr_at, run_loop

__all__ = ["METRICS", "Classifier", "Probe", "Splits", "Vuln", "classification_metrics", "encode_examples", "make_splits",
           "shortcut_scores", "train_classifier"]

METRICS = ("f1", "precision", "recall", "balanced_accuracy", "auroc")
DEFAULT_TEST_LANGS = ("python", "go")


# ----------------------------------------------------------------------------- metrics


def classification_metrics(labels: Sequence[int], scores: Sequence[float], *, threshold: float = 0.5
                           ) -> dict[str, float]:
    """F1, precision, recall, balanced accuracy and AUROC of ``scores`` (P(vulnerable)), vulnerable = positive.

    A prediction is positive when its score is at least ``threshold``. Precision (and F1) of no
    positive prediction is 0, as scikit-learn's ``zero_division=0``. AUROC is the Mann-Whitney
    statistic (ties count one half). With positives only, just ``recall``; with no positive, an error.
    """
    y = np.asarray(labels, dtype=int)
    s = np.asarray(scores, dtype=float)
    if y.shape != s.shape or y.ndim != 1 or not len(y):
        raise ValueError(f"labels and scores must be equal-length non-empty 1-D sequences; got {y.shape}, {s.shape}")
    pred = s >= threshold
    pos, neg = y == 1, y == 0
    if not pos.any():
        raise ValueError("no vulnerable example: recall, F1 and AUROC are undefined")
    tp, fn = int((pred & pos).sum()), int((~pred & pos).sum())
    recall = tp / (tp + fn)
    if not neg.any():
        return {"recall": recall}
    fp, tn = int((pred & neg).sum()), int((~pred & neg).sum())
    ranks = rankdata(s)  # average ranks of ties
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    return {
        "f1": 2 * tp / (2 * tp + fp + fn),
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": recall,
        "balanced_accuracy": (recall + tn / (tn + fp)) / 2,
        "auroc": float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)),
    }


# ----------------------------------------------------------------------------- splits


@dataclass
class Splits:
    """What the classifier trains on and is scored on."""

    train: list[Example]
    heldout: dict[str, list[Example]]
    """Train language -> its held-out groups' examples (scored in-language)."""
    test: dict[str, list[Example]]
    """Test language -> its examples."""
    left_out: int = 0
    """Training examples left out because their group has test examples."""


def _sample(examples: list[Example], n: int | None, key: str) -> list[Example]:
    """At most ``n`` examples, a seeded draw that keeps both classes where there are both (in input order)."""
    if n is None or len(examples) <= n:
        return examples
    rng = random.Random(key)
    pos = [i for i, e in enumerate(examples) if e.label == 1]
    neg = [i for i, e in enumerate(examples) if e.label == 0]
    k = round(n * len(pos) / len(examples))
    k = min(max(k, 1 if pos else 0), n - (1 if neg else 0))
    keep = set(rng.sample(pos, k)) | set(rng.sample(neg, n - k))
    return [e for i, e in enumerate(examples) if i in keep]


def make_splits(cfg: VulnEvalConfig) -> Splits:
    """The train, held-out and test examples of ``cfg`` (one clear :class:`DataError` when one is unusable)."""
    examples = load_sets(cfg.sets)
    two_class = {e.lang for e in examples if e.dataset not in POSITIVE_ONLY_SETS}
    examples = [e for e in examples if e.dataset not in POSITIVE_ONLY_SETS or e.lang not in two_class]
    if cfg.test_data:
        tests = read_examples(cfg.test_data)
        test_langs = cfg.test_langs or sorted({e.lang for e in tests})
        where = f"--test-data {cfg.test_data}"
    else:
        tests = examples
        test_langs = cfg.test_langs or list(DEFAULT_TEST_LANGS)
        where = f"sets {', '.join(cfg.sets)}"
    both = sorted(set(cfg.train_langs) & set(test_langs))
    if both:
        raise DataError(f"{', '.join(both)} both trained on and tested on ({where}); set test_langs to languages "
                        "other than the train languages (those are scored on their held-out groups anyway)")
    test = {lang: [e for e in tests if e.lang == lang] for lang in test_langs}
    pool = [e for e in examples if e.lang in cfg.train_langs]
    langs_in = {e.lang for e in pool}
    empty = [f"train language {x}" for x in cfg.train_langs if x not in langs_in]
    empty += [f"test language {x}" for x, ex in test.items() if not ex]
    if empty:
        raise DataError(f"no examples for {', '.join(empty)} in {where}; pick languages the data has "
                        f"({', '.join(sorted({e.lang for e in examples} | {e.lang for e in tests}))})")
    no_pos = [x for x, ex in test.items() if not any(e.label for e in ex)]
    if no_pos:
        raise DataError(f"test language(s) {', '.join(no_pos)} have no vulnerable example in {where}: one class "
                        "only, nothing to measure; add vulnerable examples or drop the language")
    test_groups = {e.group for ex in test.values() for e in ex}
    kept = [e for e in pool if e.group not in test_groups]
    train, held = split_by_group(kept, heldout=cfg.heldout, seed=cfg.seed)
    if len({e.label for e in train}) < 2:
        raise DataError(f"the training examples of {', '.join(cfg.train_langs)} ({where}) are all of one class "
                        f"(label {train[0].label if train else '-'}); a classifier needs vulnerable and safe code")
    if cfg.finetune.max_train_examples is not None:
        train = _sample(train, cfg.finetune.max_train_examples, f"vuln:train:{cfg.seed}")
    heldout = {lang: _sample([e for e in held if e.lang == lang], cfg.limit, f"vuln:heldout:{cfg.seed}:{lang}")
               for lang in cfg.train_langs}
    test = {lang: _sample(ex, cfg.limit, f"vuln:test:{cfg.seed}:{lang}") for lang, ex in test.items()}
    return Splits(train, {k: v for k, v in heldout.items() if v}, test, left_out=len(pool) - len(kept))


# ----------------------------------------------------------------------------- the shortcut reference


def shortcut_scores(train: Sequence[Example], tests: Sequence[Sequence[Example]], *, balance: str = "weights"
                    ) -> list[np.ndarray]:
    """P(vulnerable) of each test set from a logistic regression on binary bags of lexical tokens
    (identifiers, numbers, single punctuation characters) of the training code."""
    # scikit-learn takes seconds to import, and the registry imports every benchmark module
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    vectorizer = CountVectorizer(token_pattern=r"[A-Za-z_]\w*|\d+|[^\s\w]", lowercase=False, binary=True)
    x = vectorizer.fit_transform([e.code for e in train])
    model = LogisticRegression(solver="liblinear", class_weight="balanced" if balance != "none" else None)
    model.fit(x, [e.label for e in train])
    return [model.predict_proba(vectorizer.transform([e.code for e in t]))[:, 1] if len(t) else np.zeros(0)
            for t in tests]


# ----------------------------------------------------------------------------- the classifier


class Classifier(nn.Module):
    """A linear head on the pooled hidden states of ``model`` (its weights are shared, not copied).

    Decoder-only: the state of the last real token (inputs end in ``<eos>``); T5: the mean of the
    encoder's states over real tokens.
    """

    def __init__(self, model: nn.Module, *, seq2seq: bool):
        super().__init__()
        self.seq2seq = seq2seq
        self.backbone = model.get_encoder() if seq2seq else model.base_model
        self.head = nn.Linear(model.config.hidden_size, 2)

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {} if self.seq2seq else {"use_cache": False}
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state  # (B,T,D)
        if self.seq2seq:
            mask = attention_mask.unsqueeze(-1).to(states.dtype)  # (B, T, 1)
            return (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        last = attention_mask.sum(1) - 1  # right padding: the last real token
        return states[torch.arange(states.shape[0], device=states.device), last]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask).float())  # (B, 2)


class Probe(nn.Module):
    """The head of a frozen-feature probe: standardized features -> logits."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, *, head: nn.Linear):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.head = head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head((features - self.mean) / self.std)


def _code_ids(handle: Handle, codes: Sequence[str], budget: int) -> list[list[int]]:
    """The first ``budget`` tokens of each code. Only a prefix of the text is tokenized (whole files take
    long with a small vocabulary) when it yields a margin of tokens beyond the budget: past the margin,
    where the cut falls cannot change the tokens kept."""
    margin = 32
    cut = [c[: 8 * (budget + margin)] for c in codes]
    ids = handle.tokenizer(cut, add_special_tokens=False)["input_ids"]
    short = [i for i, (c, x) in enumerate(zip(codes, ids)) if len(x) < budget + margin and len(c) > len(cut[i])]
    if short:
        for i, x in zip(short, handle.tokenizer([codes[i] for i in short], add_special_tokens=False)["input_ids"]):
            ids[i] = x
    return [list(x[:budget]) for x in ids]


def encode_examples(handle: Handle, examples: Sequence[Example], max_tokens: int) -> list[list[int]]:
    """Token ids per example: decoder ``[start] code <eos>``, T5 ``code <eos>``; long code keeps its start."""
    if handle.is_seq2seq:
        return [x + [handle.eos_id] for x in _code_ids(handle, [e.code for e in examples], max_tokens - 1)]
    return [[handle.start_id] + x + [handle.eos_id]
            for x in _code_ids(handle, [e.code for e in examples], max_tokens - 2)]


def example_tokens(handle: Handle, cfg: VulnEvalConfig) -> int:
    """Tokens per example: ``max_tokens``, at most the model's context and pretraining length."""
    return min(cfg.max_tokens, handle.train_length or handle.max_length, handle.max_length)


def _collate(seqs: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


class _Batches:
    """Training batches, one epoch per iteration: a seeded permutation, or (``balanced``) as many batches
    whose examples are drawn half from each class. Items are token sequences or feature rows."""

    def __init__(self, items: Sequence[Any], labels: Sequence[int], *, batch_size: int, seed: int, pad_id: int,
                 balanced: bool):
        self.items, self.labels = items, np.asarray(labels)
        self.batch_size, self.pad_id, self.balanced = min(batch_size, len(items)), pad_id, balanced
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        n, b = len(self.items), self.batch_size
        if self.balanced:
            by_class = [np.flatnonzero(self.labels == c) for c in (0, 1)]
            order = np.concatenate([
                self.rng.permutation(np.concatenate([self.rng.choice(by_class[0], b - b // 2),
                                                     self.rng.choice(by_class[1], b // 2)]))
                for _ in range(n // b)])
        else:
            order = self.rng.permutation(n)
        for start in range(0, len(order) - b + 1, b):
            chunk = order[start:start + b]
            labels = torch.as_tensor(self.labels[chunk], dtype=torch.long)
            if isinstance(self.items, torch.Tensor):
                yield {"features": self.items[torch.as_tensor(chunk)], "labels": labels}
            else:
                ids, mask = _collate([self.items[i] for i in chunk], self.pad_id)
                yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _loss(model: nn.Module, batch: dict[str, torch.Tensor], step: int, *, weight: torch.Tensor | None
          ) -> dict[str, torch.Tensor]:
    logits = model(batch["features"]) if "features" in batch else model(batch["input_ids"], batch["attention_mask"])
    labels = batch["labels"]
    loss = nn.functional.cross_entropy(logits.float(), labels, weight=None if weight is None else weight.to(labels.device))
    return {"loss": loss, "accuracy": (logits.argmax(-1) == labels).float().mean()}


@torch.no_grad()
def _batched(fn: Any, seqs: Sequence[list[int]], *, batch_size: int, device: torch.device, pad_id: int,
             amp: bool) -> torch.Tensor:
    """``fn(input_ids, attention_mask)`` over sequences in length-sorted batches; rows in input order (CPU, float)."""
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out: list[torch.Tensor] = [torch.empty(0)] * len(seqs)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if amp else torch.autocast(device.type, enabled=False)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = _collate([seqs[i] for i in chunk], pad_id)
        with autocast:
            rows = fn(ids.to(device), mask.to(device)).float().cpu()
        for i, row in zip(chunk, rows):
            out[i] = row
    return torch.stack(out) if seqs else torch.zeros(0)


def train_classifier(handle: Handle, seqs: Sequence[list[int]], labels: Sequence[int], cfg: VulnEvalConfig, *,
                     out_dir: Any, progress: bool = False) -> tuple[Any, dict[str, Any]]:
    """Finetune a :class:`Classifier` on encoded examples (:func:`encode_examples`) and their labels (or,
    with ``cfg.probe``, a :class:`Probe` on frozen features); returns ``score(encoded) -> P(vulnerable)``
    and what the training did."""
    ft = cfg.finetune
    seq2seq = bool(handle.is_seq2seq)
    device = torch.device(handle.device)
    amp = device.type == "cuda"
    torch.manual_seed(cfg.seed)
    clf = Classifier(handle.model, seq2seq=seq2seq).to(device)
    counts = np.bincount(labels, minlength=2)
    weight = (torch.tensor(len(labels) / (2.0 * counts), dtype=torch.float32)
              if cfg.balance == "weights" else None)
    start = time.perf_counter()
    if cfg.probe:
        clf.backbone.requires_grad_(False)
        clf.eval()
        feats = _batched(clf.features, seqs, batch_size=cfg.batch_size, device=device, pad_id=handle.pad_id, amp=amp)
        model: nn.Module = Probe(feats.mean(0), feats.std(0).clamp(min=1e-6), head=clf.head).to(device)
        items: Any = feats
        lr = cfg.probe_lr
    else:
        model, items, lr = clf, seqs, ft.lr
    optimizer = build_optimizer(model, lr=lr, weight_decay=0.0, betas=(0.9, 0.999))
    spec = LoopSpec(total_steps=ft.steps, lr=functools.partial(lr_at, warmup=min(ft.warmup_steps, ft.steps - 1),
                                                             total=ft.steps, lr=lr, min_ratio=1.0),
                    grad_clip=1.0, amp_dtype=torch.bfloat16 if amp else None, log_every=10)
    batches = _Batches(items, labels, batch_size=ft.batch_size, seed=ft.seed, pad_id=handle.pad_id,
                       balanced=cfg.balance == "sample")
    logger = RunLogger(out_dir / "log.jsonl", progress=progress)
    logger.log({"kind": "start", "config": cfg.finetune.model_dump(), "probe": cfg.probe, "balance": cfg.balance,
                "train_examples": len(seqs), "positives": int(counts[1]),
                "max_tokens": max(len(x) for x in seqs)})
    run_loop(model, optimizer, batches, functools.partial(_loss, weight=weight), spec=spec, state=LoopState(),
             ctx=DistContext.single(device), logger=logger)
    seconds = time.perf_counter() - start
    clf.eval()
    clf.backbone.requires_grad_(True)

    def score(encoded: Sequence[list[int]]) -> np.ndarray:
        if not encoded:
            return np.zeros(0)
        if cfg.probe:
            feats = _batched(clf.features, encoded, batch_size=cfg.batch_size, device=device, pad_id=handle.pad_id,
                             amp=amp)
            with torch.no_grad():
                logits = model(feats.to(device)).float().cpu()
        else:
            logits = _batched(clf, encoded, batch_size=cfg.batch_size, device=device, pad_id=handle.pad_id, amp=amp)
        return torch.softmax(logits, -1)[:, 1].numpy()

    return score, {"steps": ft.steps, "seconds": round(seconds, 3),
                   "examples_per_s": round(ft.steps * batches.batch_size / seconds, 2) if seconds > 0 else None,
                   "head": model if cfg.probe else clf.head}


# ----------------------------------------------------------------------------- continued pretraining


def _take_tokens(handle: Handle, docs: Iterator[str], tokens: int) -> tuple[list[str], int]:
    """Documents from ``docs`` until they hold ``tokens`` tokens (each followed by ``<eos>``); (texts, tokens found)."""
    texts, found = [], 0
    for text in docs:
        texts.append(text)
        found += len(handle.encode(text)) + 1
        if found >= tokens:
            break
    return texts, found


def _round_robin(sources: list[SourceConfig]) -> Iterator[str]:
    """Documents of the sources in turn (a source that runs out drops from the turn)."""
    iters = [iter(iter_documents(s)) for s in sources]
    while iters:
        for it in list(iters):
            doc = next(it, None)
            if doc is None:
                iters.remove(it)
            else:
                yield doc.text


def pretraining_texts(handle: Handle, cfg: VulnEvalConfig, splits: Splits, sources: list[SourceConfig]
                      ) -> dict[str, list[str]]:
    """The documents of each continued-pretraining variant, at least ``pretrain_tokens`` of each (else one error)."""
    out: dict[str, list[str]] = {}
    if "security" in cfg.variants:
        codes = [e.code for e in splits.train]
        random.Random(f"vuln:security:{cfg.seed}").shuffle(codes)
        out["security"], found = _take_tokens(handle, iter(codes), cfg.pretrain_tokens)
        if found < cfg.pretrain_tokens:
            raise DataError(f"the security corpus (training code of {', '.join(cfg.train_langs)}, {len(codes)} "
                            f"examples) holds {found:,} tokens, fewer than pretrain_tokens = {cfg.pretrain_tokens:,}; "
                            "lower pretrain_tokens")
    if "general" in cfg.variants:
        code_sources = [s for s in sources if s.code] or [
            SourceConfig(name="general_code", kind="jsonl", lang="code", code=True, paths=list(cfg.general_code))]
        out["general"], found = _take_tokens(handle, _round_robin(code_sources), cfg.pretrain_tokens)
        if found < cfg.pretrain_tokens:
            raise DataError(f"the general code ({', '.join(s.name for s in code_sources)}) holds {found:,} tokens, "
                            f"fewer than pretrain_tokens = {cfg.pretrain_tokens:,}; lower pretrain_tokens")
    return out


# ----------------------------------------------------------------------------- rows


def _rows(variant: str, scope: str, labels: Sequence[int], scores: Sequence[float]) -> list[dict[str, Any]]:
    measured = classification_metrics(labels, scores)
    n = len(labels) if "f1" in measured else int(np.sum(labels))
    return [{"task": "vuln", "subtask": f"{variant}/{scope}", "metric": name, "value": float(value), "n": n,
             "primary": False} for name, value in measured.items()]


def _scope_rows(variant: str, splits: Splits, scores: dict[str, np.ndarray], min_cwe: int) -> list[dict[str, Any]]:
    """Rows of one variant (or the shortcut): per test language and CWE, unseen, per held-out language, seen."""
    rows: list[dict[str, Any]] = []
    for lang, examples in splits.test.items():
        labels, s = [e.label for e in examples], scores[f"test/{lang}"]
        rows += _rows(variant, lang, labels, s)
        for cwe in sorted({e.cwe for e in examples if e.cwe}, key=lambda c: int(c.split("-")[1])):
            idx = [i for i, e in enumerate(examples) if e.cwe == cwe]
            if len(idx) >= min_cwe and any(labels[i] for i in idx):
                rows += _rows(variant, f"{lang}/{cwe}", [labels[i] for i in idx], s[idx])
    two_class = [x for x, ex in splits.test.items() if len({e.label for e in ex}) == 2] or list(splits.test)
    rows += _rows(variant, "unseen", [e.label for x in two_class for e in splits.test[x]],
                  np.concatenate([scores[f"test/{x}"] for x in two_class]))
    seen = [x for x, ex in splits.heldout.items() if any(e.label for e in ex)]
    for lang in seen:
        rows += _rows(variant, f"seen/{lang}", [e.label for e in splits.heldout[lang]], scores[f"heldout/{lang}"])
    if len(seen) > 1:
        rows += _rows(variant, "seen", [e.label for x in seen for e in splits.heldout[x]],
                      np.concatenate([scores[f"heldout/{x}"] for x in seen]))
    return rows


def _diff_rows(rows: list[dict[str, Any]], splits: Splits) -> list[dict[str, Any]]:
    """``security-general/SCOPE``: the F1 (recall, for positives only) of security minus that of general."""
    value = {(r["subtask"], r["metric"]): r for r in rows}
    out = []
    for scope in [*splits.test, "unseen"]:
        metric = "f1" if ("security/" + scope, "f1") in value else "recall"
        a, b = value[("security/" + scope, metric)], value[("general/" + scope, metric)]
        out.append({"task": "vuln", "subtask": f"security-general/{scope}", "metric": f"{metric}_diff",
                    "value": a["value"] - b["value"], "n": a["n"], "primary": False})
    return out


def _split_sets(splits: Splits) -> dict[str, list[Example]]:
    return {**{f"test/{k}": v for k, v in splits.test.items()}, **{f"heldout/{k}": v for k, v in splits.heldout.items()}}


def _counts(examples: Sequence[Example]) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {}
    for e in examples:
        by = out.setdefault(e.dataset, {}).setdefault(e.lang, {"vulnerable": 0, "safe": 0})
        by["vulnerable" if e.label else "safe"] += 1
    return out


class Vuln:
    """The ``vuln`` benchmark (registry entry)."""

    needs_heldout = False
    finetunes = True

    def __init__(self, config: type[VulnEvalConfig]):
        self.config = config

    def evaluate(self, handle: Handle | None, cfg: VulnEvalConfig, ctx: EvalContext) -> list[dict[str, Any]]:
        """Rows per variant and scope (module docstring); ``ctx.out_dir`` receives ``vuln.json`` (counts,
        splits, each run's training), ``predictions.jsonl`` and each variant's training logs.

        Every variant starts from the weights the model came in with, which it has again at the end.
        """
        assert handle is not None
        splits = make_splits(cfg)
        sets = _split_sets(splits)
        texts = pretraining_texts(handle, cfg, splits, ctx.sources)  # every corpus is checked before any training
        details: dict[str, Any] = {
            "train": _counts(splits.train), "heldout": _counts([e for v in splits.heldout.values() for e in v]),
            "test": _counts([e for v in splits.test.values() for e in v]), "left_out_shared_groups": splits.left_out,
            "groups": {"train": len({e.group for e in splits.train}),
                       "heldout": len({e.group for v in splits.heldout.values() for e in v}),
                       "test": len({e.group for v in splits.test.values() for e in v})},
            "variants": {}}
        predictions: list[str] = []
        rows: list[dict[str, Any]] = []
        max_tokens = example_tokens(handle, cfg)
        train_ids = encode_examples(handle, splits.train, max_tokens)
        train_labels = [e.label for e in splits.train]
        encoded = {name: encode_examples(handle, examples, max_tokens) for name, examples in sets.items()}
        details["max_tokens"] = max_tokens
        original = {k: v.detach().to("cpu", copy=True) for k, v in handle.model.state_dict().items()}
        try:
            for variant in cfg.variants:
                handle.model.load_state_dict(original)
                out = ctx.out_dir / variant
                info: dict[str, Any] = {}
                if variant != "base":
                    seq_len = cfg.pretrain_seq_len or min(handle.train_length or handle.max_length, 512,
                                                          handle.max_length)
                    info["pretrain_steps"] = continue_pretraining(
                        handle, texts[variant], tokens=cfg.pretrain_tokens, seq_len=seq_len,
                        batch_size=cfg.pretrain_batch_size, lr=cfg.pretrain_lr,
                        warmup_steps=cfg.pretrain_warmup_steps, seed=cfg.seed, out_dir=out / "pretrain")
                score, trained = train_classifier(handle, train_ids, train_labels, cfg, out_dir=out / "classify",
                                                  progress=ctx.progress)
                start = time.perf_counter()
                scores = {name: score(ids) for name, ids in encoded.items()}
                n_scored = sum(len(v) for v in sets.values())
                seconds = time.perf_counter() - start
                head = trained.pop("head")
                info.update(trained, scoring_examples_per_s=round(n_scored / seconds, 2) if seconds > 0 else None)
                details["variants"][variant] = info
                rows += _scope_rows(variant, splits, scores, cfg.min_cwe_examples)
                predictions += _prediction_lines(variant, sets, scores)
                if variant == cfg.variants[0] and ctx.finetuned_out is not None:
                    _save_classifier(handle, head, ctx.finetuned_out)
        finally:
            handle.model.load_state_dict(original)
        if "security" in cfg.variants and "general" in cfg.variants:
            rows += _diff_rows(rows, splits)
        if cfg.shortcut:
            names = list(sets)
            found = shortcut_scores(splits.train, [sets[k] for k in names], balance=cfg.balance)
            scores = dict(zip(names, found))
            rows += _scope_rows("shortcut", splits, scores, cfg.min_cwe_examples)
            predictions += _prediction_lines("shortcut", sets, scores)
        for r in rows:
            r["primary"] = r["subtask"] == f"{cfg.variants[0]}/unseen" and r["metric"] == "f1"
        atomic_write_json(ctx.out_dir / "vuln.json", details)
        atomic_write_text(ctx.out_dir / "predictions.jsonl", "".join(predictions))
        return rows

    def needs_model(self, cfg: VulnEvalConfig) -> bool:
        return True

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = (
            "Vulnerability detection in languages unseen in finetuning: finetune a classifier (a linear head on "
            "pooled hidden states) on the train languages' Juliet, OWASP, SVEN and CWEval code, then score F1, "
            "precision, recall, balanced accuracy and AUROC per test language, per CWE, and on the train "
            "languages' held-out groups; beside it a bag-of-tokens logistic regression. Continued pretraining "
            "on security vs general code first: --set 'variants=[base,security,general]' --set pretrain_tokens=K. "
            "Finetuning: --set finetune.steps=N, finetune.lr, finetune.batch_size; --set probe=true for a "
            "frozen-feature probe.")
        parser.add_argument("--train-langs", metavar="L,L,...", help="languages to finetune on (default c,cpp,java)")
        parser.add_argument("--test-langs", metavar="L,L,...",
                            help="languages to test on (default python,go; rust: recall on positives only)")
        parser.add_argument("--test-data", metavar="FILE",
                            help="JSONL of test examples with lang, label (1 = vulnerable) and code [, cwe, group, id]")
        parser.add_argument("--limit", type=int, metavar="N",
                            help="at most N examples per test language and per held-out train language")

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        def langs(value: str | None) -> list[str] | None:
            return [x.strip() for x in value.split(",") if x.strip()] if value else None

        return {"train_langs": langs(args.train_langs), "test_langs": langs(args.test_langs),
                "test_data": args.test_data, "limit": args.limit}

    def data_files(self, cfg: VulnEvalConfig) -> list[str]:
        files = [SETS[s][0] for s in cfg.sets]
        files += [cfg.test_data] if cfg.test_data else []
        files += list(cfg.general_code) if "general" in cfg.variants else []
        return files

    def flops(self, cfg: VulnEvalConfig, n_params: int, study: StudyConfig) -> float:
        ft, tokens = cfg.finetune, min(cfg.max_tokens, study.data.seq_len)
        train = (2.0 * n_params * 8_000 * tokens if cfg.probe else 6.0 * n_params * ft.steps * ft.batch_size * tokens)
        score = 2.0 * n_params * (cfg.limit * 5 if cfg.limit else 6_000) * tokens
        pretrain = 6.0 * n_params * cfg.pretrain_tokens * sum(v != "base" for v in cfg.variants)
        return len(cfg.variants) * (train + score) + pretrain

    def report(self, rows: list[dict[str, Any]], cfg: VulnEvalConfig, ctx: EvalContext, console: Console) -> int:
        first = cfg.variants[0]
        shown = [r for r in rows if (r["subtask"].count("/") == 1 and r["metric"] in ("f1", "recall", "f1_diff",
                                                                                     "recall_diff", "auroc"))
                 or (r["subtask"].startswith((f"{first}/seen/", "shortcut/seen/")) and r["metric"] == "f1")]
        print_rows(shown, "vulnerability detection: per variant and test language (seen = in-language held-out)",
                   console)
        return 0


def _prediction_lines(variant: str, sets: dict[str, list[Example]], scores: dict[str, np.ndarray]) -> list[str]:
    return [json.dumps({"variant": variant, "split": name, "id": e.id, "lang": e.lang, "cwe": e.cwe,
                        "label": e.label, "score": round(float(s), 6)}) + "\n"
            for name, examples in sets.items() for e, s in zip(examples, scores[name])]


def _save_classifier(handle: Handle, head: nn.Module, out: Any) -> None:
    """The finetuned model (Hugging Face format) with its tokenizer and the head (``classifier_head.pt``: the
    linear layer's ``weight`` and ``bias``, for a probe under ``head.`` with the standardization's ``mean``, ``std``)."""
    with atomic_dir(out, overwrite=True) as tmp:
        handle.model.save_pretrained(tmp)
        handle.tokenizer.save_pretrained(tmp)
        torch.save({k: v.detach().cpu() for k, v in head.state_dict().items()}, tmp / "classifier_head.pt")
        atomic_write_json(tmp / "classifier.json", {
            "pooling": "encoder mean" if handle.is_seq2seq else "last token", "labels": ["safe", "vulnerable"]})
