"""Mixtures: which sequences of which source a model trains on, exactly.

For a code fraction ``m`` (DESIGN.md, "Mixtures"):

* competitive: ``N_code = m·N``, ``N_lang = (1−m)·N`` with ``N = mixtures.n_tokens``;
* additive: ``N_lang = N``, ``N_total = N/(1−m)``, ``N_code = m·N_total``;
* baseline (the additive setting's language-only twin): ``N_lang = N/(1−m)``, no code.

``N_code`` is split across code sources by ``code_weights`` (or the mixture's arm's weights,
``mixtures.arms``) and ``N_lang`` across
language sources by ``lang_weights``; a source absent from its weights (or at weight 0)
gets no training tokens and stays evaluation-only. Each source's target becomes a whole
number of sequences, ``round(target / seq_len)``, so the realized count is within half a
sequence of the formula. A source's sequences are its stream's first ``n`` windows of
``seq_len`` tokens; since every mixture reads the same stream in the same order, a
mixture with more of a source holds a superset of the documents of one with less.

A mixture directory holds ``index.npy`` (int64 ``(N, 2)``: source id, token offset, in a
seeded training order) and ``mixture.json`` (targets, realized counts, repetition).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from codemix.config import DataConfig, MixturesConfig
from codemix.data.streams import TokenStream
from codemix.errors import DataError
from codemix.io import atomic_dir, stable_hash

__all__ = [
    "MixtureSpec",
    "build_mixture",
    "mixture_name",
    "mixture_sequences",
    "mixture_specs",
    "source_targets",
    "stream_budgets",
]

_FORMAT_VERSION = 1


def mixture_name(setting: str, m: float, baseline: bool = False, arm: str | None = None) -> str:
    """Name of a mixture, e.g. ``competitive-m0.25``, ``baseline-m0.5``, ``competitive-m0.25-mixed`` (arm ``mixed``)."""
    return f"{'baseline' if baseline else setting}-m{float(m):g}" + (f"-{arm}" if arm else "")


@dataclass(frozen=True)
class MixtureSpec:
    """One mixture of a study: a setting, a code fraction, whether it is the language-only baseline,
    and the arm (code composition) it belongs to, when the study has several."""

    setting: str
    m: float
    baseline: bool = False
    arm: str | None = None

    @property
    def name(self) -> str:
        return mixture_name(self.setting, self.m, self.baseline, self.arm)


def mixture_specs(mixtures: MixturesConfig) -> list[MixtureSpec]:
    """Every mixture a study names: per arm, each setting × its m values, plus a baseline for each additive m.

    Specs of different arms (or settings) may have the same content (every language-only
    mixture: m = 0, the baselines); the study builds each content once.
    """
    specs = []
    for arm in mixtures.arm_names():
        specs += [MixtureSpec(setting, float(m), arm=arm) for setting in mixtures.settings
                  for m in mixtures.m_for(setting)]
        if mixtures.baselines and "additive" in mixtures.settings:
            specs += [MixtureSpec("additive", float(m), True, arm) for m in mixtures.m_for("additive")]
    return specs


def _weights(given: dict[str, float], pool: list[str]) -> dict[str, float]:
    """Normalized weights over ``pool``: the given ones (absent: 0), or equal when none are given."""
    raw = {name: float(given.get(name, 0.0)) for name in pool} if given else {name: 1.0 for name in pool}
    total = sum(raw.values())
    return {name: (w / total if total > 0 else 0.0) for name, w in raw.items()}


def source_targets(spec: MixtureSpec, mixtures: MixturesConfig, data: DataConfig) -> dict[str, float]:
    """Target training tokens per source (every source of the study, 0 for evaluation-only ones)."""
    n, m = mixtures.n_tokens, spec.m
    if spec.setting == "competitive":
        n_code, n_lang = m * n, (1 - m) * n
    elif spec.setting == "additive":
        total = n / (1 - m)
        n_code, n_lang = (0.0, total) if spec.baseline else (m * total, n)
    else:  # pragma: no cover - config validation allows only these two
        raise ValueError(f"unknown setting {spec.setting!r}")
    code = _weights(mixtures.code_weights_of(spec.arm), [s.name for s in data.sources if s.code])
    lang = _weights(mixtures.lang_weights, [s.name for s in data.sources if not s.code])
    return {s.name: (n_code * code[s.name] if s.code else n_lang * lang[s.name]) for s in data.sources}


def _sequences(target: float, seq_len: int) -> int:
    return math.floor(target / seq_len + 0.5)


def mixture_sequences(spec: MixtureSpec, mixtures: MixturesConfig, data: DataConfig) -> dict[str, int]:
    """Training sequences per source (every source, 0 for those the mixture does not read).

    This is a mixture's content: two specs with the same sequences (e.g. competitive, additive
    and baseline at m = 0) build the same index.
    """
    return {name: _sequences(t, data.seq_len) for name, t in source_targets(spec, mixtures, data).items()}


def stream_budgets(mixtures: MixturesConfig, data: DataConfig) -> dict[str, int]:
    """Training tokens each source's stream needs: the most any mixture of the study takes from it."""
    budgets = {s.name: 0 for s in data.sources}
    for spec in mixture_specs(mixtures):
        for name, n_seq in mixture_sequences(spec, mixtures, data).items():
            budgets[name] = max(budgets[name], n_seq * data.seq_len)
    return budgets


def build_mixture(
    spec: MixtureSpec,
    mixtures: MixturesConfig,
    data: DataConfig,
    stream_dirs: dict[str, Path],
    out_dir: str | Path,
) -> dict[str, Any]:
    """Write one mixture's ``index.npy`` and ``mixture.json`` to ``out_dir``; return ``mixture.json``'s content.

    ``stream_dirs`` maps every source of ``data.sources`` to its training stream directory.
    Idempotent: an existing mixture built from the same streams (their identity, not their
    length: a stream extended since is the same stream) and settings is kept.
    Raises DataError ``insufficient tokens for source X: need N, have M`` when a stream is
    too short and ``mixtures.max_repetition`` does not allow repeating it enough.
    """
    out_dir = Path(out_dir)
    seq_len = data.seq_len
    names = [s.name for s in data.sources]
    streams = {name: TokenStream(stream_dirs[name]) for name in names}
    sequences = mixture_sequences(spec, mixtures, data)
    key = stable_hash({"sequences": sequences, "max_repetition": mixtures.max_repetition, "seed": mixtures.seed,
                       "seq_len": seq_len, "sources": names, "streams": {n: s.meta["key"] for n, s in streams.items()},
                       "version": _FORMAT_VERSION})
    existing = out_dir / "mixture.json"
    if existing.is_file() and (out_dir / "index.npy").is_file():
        info = json.loads(existing.read_text())
        if info.get("key") == key:
            return info

    targets = source_targets(spec, mixtures, data)
    problems, parts = [], []
    tokens, repetition, repeats = {}, {}, {}
    for sid, name in enumerate(names):
        n_seq = sequences[name]
        have = streams[name].n_tokens
        available = have // seq_len
        need = n_seq * seq_len
        if n_seq > available and (available == 0 or n_seq > available * mixtures.max_repetition):
            hint = f"allow repetition with mixtures.max_repetition={n_seq / available:.2f}, " if available else ""
            problems.append(f"insufficient tokens for source {name}: need {need}, have {have} "
                            f"(mixture {spec.name}, seq_len {seq_len}, max_repetition {mixtures.max_repetition:g}); "
                            f"{hint}lower mixtures.n_tokens, or add documents (max_docs, more paths)")
            continue
        offsets = (np.arange(n_seq, dtype=np.int64) % max(available, 1)) * seq_len
        parts.append(np.stack([np.full(n_seq, sid, dtype=np.int64), offsets], axis=1))
        tokens[name] = need
        repeats[name] = max(0, n_seq - available)
        repetition[name] = round(max(1.0, n_seq / available), 4) if n_seq else 0.0
    if problems:
        raise DataError("; ".join(problems))

    index = np.concatenate(parts) if parts else np.zeros((0, 2), np.int64)
    index = index[np.random.default_rng(mixtures.seed).permutation(len(index))]
    code_tokens = sum(tokens[s.name] for s in data.sources if s.code)
    total = sum(tokens.values())
    info = {
        "name": spec.name, "setting": spec.setting, "m": spec.m, "baseline": spec.baseline, "arm": spec.arm,
        "seq_len": seq_len,
        "n_sequences": int(len(index)), "seed": mixtures.seed,
        "target_tokens": {n: round(t) for n, t in targets.items()},
        "tokens": tokens, "repetition": repetition, "repeated_sequences": repeats,
        "target_total": round(sum(targets.values())), "tokens_total": total,
        "realized_m": code_tokens / total if total else 0.0,
        "sources": names,
        "streams": {n: os.path.relpath(Path(stream_dirs[n]).resolve(), out_dir.resolve()) for n in names},
        "tokenizer_hash": streams[names[0]].meta["tokenizer_hash"],
        "key": key, "version": _FORMAT_VERSION,
    }
    with atomic_dir(out_dir, overwrite=True) as tmp:
        np.save(tmp / "index.npy", index)
        (tmp / "mixture.json").write_text(json.dumps(info, indent=2) + "\n")
    return info
