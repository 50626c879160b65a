"""Bimodal dual generation (CodeT5 §3.2): NL -> code and code -> NL for documented functions.

CodeT5 trains, in a second phase, on (docstring, function) pairs in both directions:
generate the function from its documentation, and the documentation from the function
(with the documentation removed). Here the pairs come from the training sequences
themselves: every function that lies wholly inside a code sequence and carries a
docstring (Python) or doc comment (Rust ``///``, Go ``//``) gives one pair, found by
:func:`codemix.data.identifiers.token_doc_pairs`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from codemix.data.identifiers import TokenDocPair

__all__ = ["DIRECTIONS", "dual_generation"]

#: ``nl2code``: documentation in, function out; ``code2nl``: function in, documentation out.
DIRECTIONS = ("nl2code", "code2nl")


def dual_generation(tokens: Sequence[int] | np.ndarray, pair: TokenDocPair, direction: str, *, eos_id: int,
                    max_target: int) -> tuple[np.ndarray, np.ndarray]:
    """``(inputs, targets)`` of one direction for one documented function of ``tokens``.

    The target is cut to ``max_target - 1`` tokens and ends with ``<eos>``.
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    tokens = np.asarray(tokens, dtype=np.int64)
    doc, code = tokens[pair.doc], tokens[pair.code]
    source, target = (doc, code) if direction == "nl2code" else (code, doc)
    return source.copy(), np.concatenate([target[: max_target - 1], [eos_id]]).astype(np.int64)
