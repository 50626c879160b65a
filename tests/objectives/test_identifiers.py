"""Masked identifier prediction on real Python, Rust and Go streams."""

from __future__ import annotations

import numpy as np
import pytest

from codemix.data.identifiers import token_identifiers
from codemix.data.streams import TokenStream
from codemix.data.tokenizer import EOS, SENTINELS
from codemix.objectives.identifiers import mask_identifiers

from .conftest import SEQ_LEN


def _chunks(t5_study, lang: str, n: int) -> list[np.ndarray]:
    stream = TokenStream(t5_study[1].stream_dir(lang))
    tokens = np.asarray(stream.tokens, dtype=np.int64)
    step = len(tokens) // SEQ_LEN // n
    return [tokens[k * step * SEQ_LEN:(k * step + 1) * SEQ_LEN] for k in range(n)]


@pytest.mark.parametrize("lang", ["python", "rust", "go"])
def test_masked_identifier_prediction_hides_every_occurrence_and_nothing_else(t5_study, tokenizer, token_bytes,
                                                                              lang):
    sentinels = [tokenizer.token_to_id(t) for t in SENTINELS]
    eos = tokenizer.token_to_id(EOS)
    masked_any = 0
    for chunk in _chunks(t5_study, lang, 8):
        found = token_identifiers(chunk, lang, token_bytes)
        inputs, targets, names = mask_identifiers(chunk, found, sentinels=sentinels, eos_id=eos, max_target=1000)
        masked_any += len(names)
        sentinel_of = dict(zip(names, sentinels))
        occurrences = {name: {k for k, n in enumerate(found.names) if n == name} for name in names}
        # one sentinel per name, once per occurrence
        for name, s in sentinel_of.items():
            assert int((inputs == s).sum()) == len(occurrences[name])
        # removing the sentinels leaves exactly the unmasked tokens, unchanged and in order
        hidden = np.isin(found.occurrence, [k for ks in occurrences.values() for k in ks])
        np.testing.assert_array_equal(inputs[~np.isin(inputs, sentinels)], chunk[~hidden])
        # every maskable identifier was masked (the target budget is large here)
        assert set(names) == {n for n, ok in zip(found.names, found.maskable) if ok} - \
            {n for n, ok in zip(found.names, found.maskable) if not ok}
        # the target is `sentinel name` pairs, then <eos>
        assert targets[-1] == eos
        if not names:
            assert len(targets) == 1
            continue
        pairs = np.split(targets[:-1], np.flatnonzero(np.isin(targets[:-1], sentinels))[1:])
        assert [int(p[0]) for p in pairs] == sentinels[:len(names)]
        assert [tokenizer.decode(p[1:].tolist()).strip() for p in pairs] == [n.decode() for n in names]
    assert masked_any > 20


def test_masked_identifier_targets_respect_the_budget(t5_study, tokenizer, token_bytes):
    sentinels = [tokenizer.token_to_id(t) for t in SENTINELS]
    eos = tokenizer.token_to_id(EOS)
    chunk = _chunks(t5_study, "python", 1)[0]
    found = token_identifiers(chunk, "python", token_bytes)
    _, targets, names = mask_identifiers(chunk, found, sentinels=sentinels, eos_id=eos, max_target=12)
    assert len(targets) <= 12 and names
    full, _, all_names = mask_identifiers(chunk, found, sentinels=sentinels, eos_id=eos, max_target=1000)
    assert names == all_names[:len(names)]
    # a fixed input length: names are masked only while the input keeps it, then the input is cut
    floor = (len(chunk) + len(full)) // 2
    inputs, targets, some_names = mask_identifiers(chunk, found, sentinels=sentinels, eos_id=eos, max_target=1000,
                                                   input_len=floor)
    assert len(inputs) == floor and 0 < len(some_names) < len(all_names)
    assert set(some_names) <= set(all_names)
    predicted = [t for t in targets.tolist() if t in sentinels]  # every predicted name is still in the input
    assert len(predicted) == len(some_names) and set(predicted) <= set(inputs.tolist())
