"""Masked identifier prediction (CodeT5, Wang et al., EMNLP 2021, §3.2, MIP) on a token chunk.

Every identifier of a code sequence is hidden, one sentinel per distinct name, and the
decoder predicts each name after its sentinel. Which tokens belong to which identifier comes
from the tree-sitter parse in :mod:`codemix.data.identifiers` (:class:`~codemix.data.identifiers.TokenIdentifiers`,
per row or sliced from the stream annotations of :mod:`codemix.data.annotations`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from codemix.data.identifiers import TokenIdentifiers

__all__ = ["mask_identifiers"]


def mask_identifiers(
    tokens: Sequence[int] | np.ndarray,
    found: TokenIdentifiers,
    *,
    sentinels: Sequence[int],
    eos_id: int,
    max_target: int,
    input_len: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[Hashable]]:
    """Masked identifier prediction (CodeT5 §3.2, MIP): hide every identifier, one sentinel per name.

    Each distinct identifier (in order of first appearance) gets the next sentinel; every
    occurrence of it — each one a run of tokens — becomes that single sentinel in the
    encoder input. The target lists ``sentinel, identifier tokens`` pairs (the tokens of the
    first occurrence), then ``<eos>``. Identifiers that cannot be masked cleanly (a token shared
    with other text, see :class:`~codemix.data.identifiers.TokenIdentifiers`), or that no longer fit into
    ``max_target`` target tokens or the available sentinels, stay visible and are not
    predicted. With ``input_len`` the input is exactly that long (a batch of inputs of one
    length needs no padding; ``tokens`` must be at least that long): names are masked only
    while the input keeps ``input_len`` tokens, the input is then cut to them, and names with
    no occurrence left before the cut are not predicted. Returns ``(inputs, targets, masked
    names)``.
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    bad = {name for name, ok in zip(found.names, found.maskable) if not ok}
    first: dict[Hashable, int] = {}  # name -> first occurrence
    for k, name in enumerate(found.names):
        if name not in bad and name not in first:
            first[name] = k
    # tokens each name's masking removes from the input: all but one of each occurrence's
    occurrence_len = np.bincount(found.occurrence[found.occurrence >= 0], minlength=len(found.names))
    shrink: dict[Hashable, int] = {}
    for name, n in zip(found.names, occurrence_len.tolist()):
        shrink[name] = shrink.get(name, 0) + n - 1
    sentinel_of: dict[Hashable, int] = {}
    targets: list[int] = []
    length = len(tokens)
    for name, k in first.items():
        name_tokens = tokens[found.occurrence == k].tolist()
        if len(sentinel_of) == len(sentinels) or len(targets) + 1 + len(name_tokens) + 1 > max_target:
            break
        if input_len is not None and length - shrink[name] < input_len:
            continue
        length -= shrink[name]
        sentinel_of[name] = int(sentinels[len(sentinel_of)])
        targets += [sentinel_of[name], *name_tokens]

    inputs: list[int] = []
    previous = -1
    for tok, occ in zip(tokens.tolist(), found.occurrence.tolist()):
        sentinel = sentinel_of.get(found.names[occ]) if occ >= 0 else None
        if sentinel is None:
            inputs.append(tok)
        elif occ != previous:  # the first token of an occurrence stands for all of it
            inputs.append(sentinel)
        previous = occ
    if input_len is not None:
        inputs = inputs[:input_len]
        # sentinels go by first occurrence, so the names the cut removed are the last ones
        visible = set(inputs)
        cut = [name for name, sentinel in sentinel_of.items() if sentinel not in visible]
        if cut:
            targets = targets[: targets.index(sentinel_of[cut[0]])]
            sentinel_of = {name: sentinel for name, sentinel in sentinel_of.items() if sentinel in visible}
    targets.append(eos_id)
    return np.asarray(inputs, dtype=np.int64), np.asarray(targets, dtype=np.int64), list(sentinel_of)
