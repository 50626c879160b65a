"""The model handle every benchmark talks to: score continuations, generate text.

A :class:`Handle` wraps a Hugging Face model and its tokenizer — a codemix checkpoint
(converted by :func:`codemix.models.export.load_hf`) or any local HF directory, causal or
seq2seq — behind three operations:

- :meth:`Handle.score` — summed log-probability of each continuation given its context
  (multiple choice, BIG-bench ``cond_log_prob``);
- :meth:`Handle.generate` — batched greedy or sampled decoding with the KV cache, cut at
  stop strings (generative tasks, COGS, MBPP, next-line completion);
- :meth:`Handle.rolling_logprobs` — the log-probability of every token of long texts,
  scored in overlapping windows of the model's context (perplexity, bits-per-byte).

Conventions (they matter for comparing numbers across models):

- **Start token.** A causal model reads one start token before any text: the tokenizer's
  BOS if it has one, else ``<eos>`` — codemix streams end every document with ``<eos>``,
  so the first token of a document is always predicted after it in pretraining. Text is
  tokenized without any other special tokens. A seq2seq encoder input ends with ``<eos>``
  (the T5 convention); its decoder starts from ``decoder_start_token_id``.
- **Trailing spaces.** For causal models, spaces at the end of a context move to the
  front of its continuation before tokenizing (as lm-evaluation-harness does): byte-level
  BPE vocabularies hold ``" 0"``, not ``" "`` then ``"0"``, so ``"A: "`` + ``"0"`` is scored
  as ``"A:"`` + ``" 0"``, the tokenization the model saw in pretraining.
- **Truncation.** Inputs longer than the model's context lose tokens from the *left*
  (the end of a prompt, next to the answer, matters most); every truncated input adds one
  to :attr:`Handle.truncated`, which benchmarks report.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    StoppingCriteria,
    StoppingCriteriaList,
    T5Config,
    T5ForConditionalGeneration,
)

from codemix.checkpoint import checkpoint_info, is_codemix_checkpoint
from codemix.errors import CheckpointError
from codemix.models.export import load_hf

__all__ = ["Handle", "TokenScores", "load_handle", "resolve_device", "save_tiny_model"]

#: Used when neither the model config nor the tokenizer states a usable context length.
_FALLBACK_MAX_LENGTH = 1024


@dataclass(frozen=True)
class TokenScores:
    """Per-token results of :meth:`Handle.rolling_logprobs` for one text.

    ``logprobs[i]`` is the natural-log probability of the text's i-th token given all the
    tokens before it that fit in the window; ``correct[i]`` whether it was the model's
    top-1 prediction. ``n_bytes`` is the UTF-8 length of the text (for bits-per-byte).
    """

    logprobs: np.ndarray
    correct: np.ndarray
    n_bytes: int

    @property
    def n_tokens(self) -> int:
        return int(self.logprobs.size)


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when available, else CPU; anything else is passed to torch."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as err:
        raise CheckpointError(f"unknown device {device!r} ({err}); use auto, cpu, cuda or cuda:N") from None


@dataclass
class Handle:
    """A loaded model and tokenizer with batched scoring and generation.

    Build it with :func:`load_handle`. ``batch_size`` is the default number of sequences
    per forward pass; ``truncated`` counts inputs cut from the left to fit ``max_length``.
    ``train_length`` is the sequence length the model was pretrained on, when known (codemix
    checkpoints record it); :meth:`rolling_logprobs` scores windows of that length, because
    positions beyond it were never trained even when the architecture allows them.
    """

    model: Any
    tokenizer: Any
    is_seq2seq: bool
    max_length: int
    device: torch.device
    batch_size: int = 16
    truncated: int = 0
    path: str | None = None
    train_length: int | None = None
    _keeps_logits: bool | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ tokens

    @property
    def eos_id(self) -> int:
        eos = self.tokenizer.eos_token_id
        if eos is None:
            eos = getattr(self.model.config, "eos_token_id", None)
            eos = eos[0] if isinstance(eos, list) else eos
        if eos is None:
            raise CheckpointError(f"the tokenizer of {self.path} has no eos token; "
                                  "set `eos_token` in its tokenizer config")
        return int(eos)

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else self.eos_id

    @property
    def start_id(self) -> int:
        """The token a causal model reads before any text (BOS if the tokenizer has one, else EOS)."""
        bos = self.tokenizer.bos_token_id
        return int(bos) if bos is not None else self.eos_id

    @property
    def decoder_start_id(self) -> int:
        for source in (self.model.config, getattr(self.model, "generation_config", None)):
            value = getattr(source, "decoder_start_token_id", None) if source is not None else None
            if value is not None:
                return int(value)
        return self.pad_id

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with no special tokens added."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _left_truncate(self, ids: list[int], budget: int) -> list[int]:
        if len(ids) <= budget:
            return ids
        self.truncated += 1
        return ids[len(ids) - budget:]

    # ------------------------------------------------------------------ score

    @torch.no_grad()
    def score(self, contexts: Sequence[str], continuations: Sequence[str], *, batch_size: int | None = None,
              share_context: bool = True) -> list[float]:
        """Summed natural-log probability of each continuation given its context.

        Requests that share a context share its forward pass: a causal model runs each
        distinct context once, keeps its KV cache and scores all of that context's
        continuations against copies of it; a seq2seq model encodes each distinct context
        once. ``share_context=False`` scores every (context, continuation) as one full
        sequence instead (same numbers; used to check the shared path).
        """
        if len(contexts) != len(continuations):
            raise ValueError(f"score: {len(contexts)} contexts but {len(continuations)} continuations; "
                             "pass one of each per request")
        batch_size = batch_size or self.batch_size
        if self.is_seq2seq:
            return self._score_seq2seq(contexts, continuations, batch_size)
        requests = [self._causal_request(c, x) for c, x in zip(contexts, continuations)]
        if share_context:
            return self._score_causal_shared(requests, batch_size)
        return self._score_causal_full(requests, batch_size)

    def _causal_request(self, context: str, continuation: str) -> tuple[tuple[int, ...], list[int]]:
        n_spaces = len(context) - len(context.rstrip(" "))
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        ctx = [self.start_id] + self.encode(context)
        cont = self.encode(continuation)
        if len(ctx) + len(cont) > self.max_length:
            self.truncated += 1
            if len(cont) >= self.max_length:  # keep one context token to predict from
                cont = cont[len(cont) - (self.max_length - 1):]
            ctx = ctx[len(ctx) - (self.max_length - len(cont)):]
        return tuple(ctx), cont

    def _keep_last(self, n: int) -> dict[str, int]:
        """``logits_to_keep=n`` where the model supports it (the LM head is most of a small model's cost)."""
        if self._keeps_logits is None:
            self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        return {"logits_to_keep": n} if self._keeps_logits else {}

    def _logits(self, **inputs: Any) -> Any:
        return self.model(**{k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()})

    def _score_causal_full(self, requests: list[tuple[tuple[int, ...], list[int]]], batch_size: int) -> list[float]:
        out = [0.0] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: -(len(requests[i][0]) + len(requests[i][1])))
        for start in range(0, len(order), batch_size):
            rows = [i for i in order[start:start + batch_size] if requests[i][1]]
            if not rows:
                continue
            seqs = [list(requests[i][0]) + requests[i][1] for i in rows]
            ids, mask = _pad_right(seqs, self.pad_id)
            # no padding, no mask: the model keeps its plain causal attention (much cheaper on a CPU)
            logits = self._logits(input_ids=ids, attention_mask=None if bool(mask.all()) else mask).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for r, i in enumerate(rows):
                ctx, cont = requests[i]
                pos = torch.arange(len(ctx) - 1, len(ctx) - 1 + len(cont))
                out[i] = float(logp[r, pos, torch.tensor(cont)].sum())
        return out

    def _score_causal_shared(self, requests: list[tuple[tuple[int, ...], list[int]]], batch_size: int) -> list[float]:
        out = [0.0] * len(requests)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, cont) in enumerate(requests):
            if cont:
                groups.setdefault(ctx, []).append(i)
        contexts = sorted(groups, key=len, reverse=True)
        # A batch holds whole groups: at most batch_size contexts and about batch_size continuations.
        batches: list[list[tuple[int, ...]]] = []
        for ctx in contexts:
            if batches and len(batches[-1]) < batch_size and \
                    sum(len(groups[c]) for c in batches[-1]) + len(groups[ctx]) <= max(batch_size, len(groups[ctx])):
                batches[-1].append(ctx)
            else:
                batches.append([ctx])
        for batch in batches:
            # Contexts left-padded: the last position is every context's last token, the only logit needed.
            ids, mask = _pad_left([list(c) for c in batch], self.pad_id)
            res = self._logits(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True,
                               **self._keep_last(1))
            ctx_len = mask.sum(1)
            last = torch.log_softmax(res.logits[:, -1].float(), dim=-1)  # (G, V)
            rows = [(g, i) for g, ctx in enumerate(batch) for i in groups[ctx]]
            for g, i in rows:
                out[i] = float(last[g, requests[i][1][0]])
            rest = [requests[i][1][:-1] for _, i in rows]  # tokens fed to predict cont[1:]
            if max(len(r) for r in rest) == 0:
                continue
            name = "cache" if "cache" in res else "past_key_values"  # newer transformers: `cache`
            cache = res.get(name)
            if not hasattr(cache, "batch_select_indices"):  # a model without a standard cache: no sharing
                for _, i in rows:
                    out[i] = self._score_causal_full([requests[i]], 1)[0]
                continue
            index = torch.tensor([g for g, _ in rows], device=self.device)
            cache.batch_select_indices(index)
            cont_ids, cont_mask = _pad_right(rest, self.pad_id, min_len=1)
            full_mask = torch.cat([mask.to(self.device)[index], cont_mask.to(self.device)], dim=1)
            positions = ctx_len.to(self.device)[index][:, None] + torch.arange(cont_ids.shape[1], device=self.device)
            logits = self._logits(input_ids=cont_ids, attention_mask=full_mask, position_ids=positions,
                                  **{name: cache}, use_cache=False).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for r, (_, i) in enumerate(rows):
                targets = requests[i][1][1:]
                if targets:
                    out[i] += float(logp[r, torch.arange(len(targets)), torch.tensor(targets)].sum())
        return out

    def _encoder_ids(self, text: str, budget: int | None = None) -> list[int]:
        ids = self.encode(text)
        return self._left_truncate(ids, (budget or self.max_length) - 1) + [self.eos_id]

    def _score_seq2seq(self, contexts: Sequence[str], continuations: Sequence[str], batch_size: int) -> list[float]:
        out = [0.0] * len(contexts)
        targets = [self.encode(x)[: self.max_length] for x in continuations]
        order = sorted(range(len(contexts)), key=lambda i: contexts[i])  # equal contexts end up together
        for start in range(0, len(order), batch_size):
            rows = [i for i in order[start:start + batch_size] if targets[i]]
            if not rows:
                continue
            unique = list(dict.fromkeys(contexts[i] for i in rows))
            enc_ids, enc_mask = _pad_right([self._encoder_ids(c) for c in unique], self.pad_id)
            hidden = self.model.get_encoder()(input_ids=enc_ids.to(self.device),
                                              attention_mask=enc_mask.to(self.device)).last_hidden_state
            index = torch.tensor([unique.index(contexts[i]) for i in rows], device=self.device)
            dec_ids, dec_mask = _pad_right([[self.decoder_start_id] + targets[i][:-1] for i in rows], self.pad_id)
            logits = self.model(encoder_outputs=(hidden[index],), attention_mask=enc_mask.to(self.device)[index],
                                decoder_input_ids=dec_ids.to(self.device),
                                decoder_attention_mask=dec_mask.to(self.device)).logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            for r, i in enumerate(rows):
                t = targets[i]
                out[i] = float(logp[r, torch.arange(len(t)), torch.tensor(t)].sum())
        return out

    # ------------------------------------------------------------------ generate

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], *, max_new_tokens: int, stop: Sequence[str] | str | None = None,
                 temperature: float = 0.0, top_p: float = 1.0, n: int = 1, seed: int = 0,
                 batch_size: int | None = None) -> list[list[str]]:
        """``n`` completions per prompt, each cut before the first stop string.

        Greedy when ``temperature == 0``, else sampling (nucleus ``top_p``) seeded by
        ``seed``. Decoding is batched (prompts of similar length together, left-padded
        for causal models) and uses the KV cache; a sequence stops at ``<eos>`` or when
        its completion contains a stop string, and a batch stops once every sequence has.
        Prompts that do not leave room for ``max_new_tokens`` lose tokens from the left.
        """
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1 or n < 1:
            raise ValueError(f"need temperature >= 0, 0 < top_p <= 1 and n >= 1; got {temperature}, {top_p}, {n}")
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        batch_size = batch_size or self.batch_size
        max_new_tokens = min(max_new_tokens, self.max_length - 1) if not self.is_seq2seq else max_new_tokens
        if self.is_seq2seq:
            encoded = [self._encoder_ids(p) for p in prompts]
        else:
            budget = self.max_length - max_new_tokens
            encoded = [self._left_truncate([self.start_id] + self.encode(p), budget) for p in prompts]
        sampling = temperature > 0
        gen_cfg = GenerationConfig(
            max_new_tokens=max_new_tokens, do_sample=sampling, num_return_sequences=n,
            pad_token_id=self.pad_id, eos_token_id=self.eos_id,
            decoder_start_token_id=self.decoder_start_id if self.is_seq2seq else None,
            **({"temperature": temperature, "top_p": top_p, "top_k": 0} if sampling else {}),
        )
        # Sampling is seeded per call; the caller's global RNG state is left as it was.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out: list[list[str]] = [[] for _ in prompts]
            order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                if self.is_seq2seq:
                    ids, mask = _pad_right([encoded[i] for i in rows], self.pad_id)
                    prompt_len = 0
                else:
                    ids, mask = _pad_left([encoded[i] for i in rows], self.pad_id)
                    prompt_len = ids.shape[1]
                criteria = StoppingCriteriaList([_StopOnStrings(self.tokenizer, stops, prompt_len)]) if stops else None
                seqs = self.model.generate(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                           generation_config=gen_cfg, stopping_criteria=criteria)
                new = seqs[:, prompt_len:].tolist()
                for r, i in enumerate(rows):
                    out[i] = [_cut_at_stop(self.decode(_until_eos(new[r * n + k], self.eos_id)), stops)
                              for k in range(n)]
        return out

    # ------------------------------------------------------------------ rolling log-likelihood

    @torch.no_grad()
    def rolling_logprobs(self, texts: Sequence[str], *, stride: int | None = None, window: int | None = None,
                         batch_size: int | None = None) -> list[TokenScores]:
        """Log-probability and top-1 correctness of every token of each text.

        Texts longer than the context are scored in windows of ``window`` tokens (default:
        ``train_length``, else ``max_length``) that advance by ``stride`` (default half a
        window): each window predicts only tokens no earlier window predicted, so every token
        is scored once, with at least ``window - stride`` tokens of context once the text is
        long enough. For a
        seq2seq model the encoder reads the preceding context and the decoder predicts the
        next ``stride`` tokens (a prefix-LM reading of the encoder-decoder).
        """
        window = min(window or self.train_length or self.max_length, self.max_length)
        stride = stride or max(1, window // 2)
        if not 0 < stride <= window - (0 if self.is_seq2seq else 1):
            raise ValueError(f"stride must be in [1, {window - 1}] for a window of {window} tokens, got {stride}")
        batch_size = batch_size or self.batch_size
        token_ids = [self.encode(t) for t in texts]
        # A window: (text index, context tokens, target tokens, offset of its first target in the text).
        windows: list[tuple[int, list[int], list[int], int]] = []
        for t, ids in enumerate(token_ids):
            if self.is_seq2seq:
                for b in range(0, len(ids), stride):
                    windows.append((t, ids[max(0, b - window + 1):b], ids[b:b + stride], b))
                continue
            seq = [self.start_id] + ids
            done = 1  # seq[0] is the start token, never predicted
            begin = 0
            while done < len(seq):
                end = min(begin + window, len(seq))
                windows.append((t, seq[begin:done], seq[done:end], done - 1))
                done, begin = end, begin + stride
        logprobs = [np.zeros(len(ids)) for ids in token_ids]
        correct = [np.zeros(len(ids), dtype=bool) for ids in token_ids]
        windows.sort(key=lambda w: -(len(w[1]) + len(w[2])))
        for start in range(0, len(windows), batch_size):
            batch = windows[start:start + batch_size]
            if self.is_seq2seq:
                enc_ids, enc_mask = _pad_right([w[1] + [self.eos_id] for w in batch], self.pad_id)
                dec_ids, dec_mask = _pad_right([[self.decoder_start_id] + w[2][:-1] for w in batch], self.pad_id)
                logits = self._logits(input_ids=enc_ids, attention_mask=enc_mask, decoder_input_ids=dec_ids,
                                      decoder_attention_mask=dec_mask).logits
                first = [0] * len(batch)
            else:
                # Left-padded, so every window's targets are its last positions: only those get logits.
                ids, mask = _pad_left([w[1] + w[2][:-1] for w in batch], self.pad_id)
                keep = max(len(w[2]) for w in batch)
                logits = self._logits(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),
                                      **self._keep_last(keep)).logits[:, -keep:]
                first = [keep - len(w[2]) for w in batch]
            lse = torch.logsumexp(logits.float(), dim=-1)  # (B, T): log-softmax without a (B, T, V) copy
            best = logits.argmax(-1)
            for r, (t, _, targets, offset) in enumerate(batch):
                pos = torch.arange(first[r], first[r] + len(targets), device=logits.device)
                tgt = torch.tensor(targets, device=logits.device)
                lp = logits[r, pos, tgt].float() - lse[r, pos]
                logprobs[t][offset:offset + len(targets)] = lp.double().cpu().numpy()
                correct[t][offset:offset + len(targets)] = (best[r, pos] == tgt).cpu().numpy()
        return [TokenScores(lp, c, len(text.encode("utf-8"))) for lp, c, text in zip(logprobs, correct, texts)]


# ---------------------------------------------------------------------- helpers


def _pad_right(seqs: Sequence[Sequence[int]], pad: int, min_len: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(min_len, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[r, :len(s)] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that start at 0 on each row's first real token (left padding)."""
    return (mask.cumsum(1) - 1).clamp(min=0)


def _pad_left(seqs: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            ids[r, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[r, width - len(s):] = 1
    return ids, mask


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos)] if eos in ids else ids


def _cut_at_stop(text: str, stops: Sequence[str]) -> str:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))
    return text[:cut]


class _StopOnStrings(StoppingCriteria):
    """Per-sequence stopping criterion: true once the completion contains a stop string.

    Only the tail of each completion is decoded each step (a stop string of k characters
    spans at most k + 1 tokens), so the check stays cheap for long generations.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str], prompt_len: int):
        self.tokenizer = tokenizer
        self.stops = list(stops)
        self.prompt_len = prompt_len
        self.tail = max(len(s) for s in self.stops) + 2

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_len:]
        tails = self.tokenizer.batch_decode(new[:, -self.tail:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stops) for t in tails], dtype=torch.bool,
                            device=input_ids.device)


# ---------------------------------------------------------------------- loading


def _max_length(model: Any, tokenizer: Any) -> int:
    cfg = model.config
    for name in ("max_position_embeddings", "n_positions", "max_seq_len", "n_ctx"):
        value = getattr(cfg, name, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", None)
    if isinstance(value, int) and 0 < value < 1_000_000:
        return value
    return _FALLBACK_MAX_LENGTH


def load_handle(path: str | Path | Handle, device: str = "auto", *, batch_size: int = 16,
                max_length: int | None = None) -> Handle:
    """Load a codemix checkpoint (or run directory) or a local Hugging Face model directory.

    A codemix checkpoint is recognised by ``config.json`` with a ``codemix`` section, a
    ``trainer_state.json``, or a ``checkpoints/`` folder (a run directory: its latest
    checkpoint); it is converted by :func:`codemix.models.export.load_hf`. Any other
    directory with a ``config.json`` is loaded with transformers' ``AutoModelForSeq2SeqLM``
    when the config says ``is_encoder_decoder``, else ``AutoModelForCausalLM``.
    ``max_length`` overrides the context length read from the config.
    """
    if isinstance(path, Handle):
        return path
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"model path {path} is not a directory; pass a codemix checkpoint or run directory, "
                              "or a Hugging Face model directory (with config.json)")
    dev = resolve_device(device)
    if is_codemix_checkpoint(path):
        model, tokenizer = load_hf(path)
        train_length = checkpoint_info(path).seq_len
    elif (path / "config.json").is_file():
        model, tokenizer = _load_hf_dir(path)
        train_length = None
    else:
        raise CheckpointError(
            f"{path} is neither a codemix checkpoint (config.json with a 'codemix' section, trainer_state.json, "
            f"or a run directory with checkpoints/) nor a Hugging Face model directory (config.json); "
            f"found {sorted(p.name for p in path.iterdir())[:10]}. Pass a checkpoint, or run `codemix export` first")
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(dev).eval()
    is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    handle = Handle(model=model, tokenizer=tokenizer, is_seq2seq=is_seq2seq,
                    max_length=max_length or _max_length(model, tokenizer), device=dev,
                    batch_size=batch_size, path=str(path), train_length=train_length)
    handle.eos_id  # fail now, not mid-benchmark, when there is no eos token
    return handle


def _load_hf_dir(path: Path) -> tuple[Any, Any]:
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise CheckpointError(f"{path}/config.json is not a Hugging Face model config ({err}); "
                              "pass a directory written by save_pretrained or `codemix export`") from None
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(path, config=config)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot load the model weights in {path} ({err})") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        raise CheckpointError(f"no usable tokenizer in {path} ({err}); save one there with "
                              "tokenizer.save_pretrained(path)") from None
    return model, tokenizer


# ---------------------------------------------------------------------- debug preset


def save_tiny_model(out_dir: str | Path, tokenizer: Any, *, arch: str = "gpt", seed: int = 0,
                    d_model: int = 64, n_layers: int = 2, n_heads: int = 4, max_length: int = 256) -> Path:
    """Write a randomly initialised tiny HF model plus ``tokenizer`` to ``out_dir``.

    The debug preset of the eval stage (tests, benchmarks): a ``LlamaForCausalLM``
    (``arch="gpt"``) or ``T5ForConditionalGeneration`` (``arch="t5"``) of a few layers that
    runs on a CPU in milliseconds and loads with :func:`load_handle` like any HF directory.
    """
    torch.manual_seed(seed)
    vocab = len(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if arch == "gpt":
        config = LlamaConfig(vocab_size=vocab, hidden_size=d_model, intermediate_size=4 * d_model,
                             num_hidden_layers=n_layers, num_attention_heads=n_heads, num_key_value_heads=n_heads,
                             max_position_embeddings=max_length, eos_token_id=tokenizer.eos_token_id,
                             bos_token_id=tokenizer.eos_token_id, pad_token_id=pad, tie_word_embeddings=True)
        model = LlamaForCausalLM(config)
    elif arch == "t5":
        config = T5Config(vocab_size=vocab, d_model=d_model, d_kv=d_model // n_heads, d_ff=4 * d_model,
                          num_layers=n_layers, num_decoder_layers=n_layers, num_heads=n_heads,
                          pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=pad,
                          n_positions=max_length)
        model = T5ForConditionalGeneration(config)
    else:
        raise ValueError(f"arch must be 'gpt' or 't5', got {arch!r}")
    out = Path(out_dir)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
