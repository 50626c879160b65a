"""Masked span prediction: T5 span corruption is invertible on real code and text."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codemix.data.streams import TokenStream
from codemix.data.tokenizer import EOS, SENTINELS
from codemix.objectives.span_corruption import corruption_lengths, span_corrupt, span_corrupt_batch, uncorrupt

SOURCES = ("c4", "python", "rust", "go")


@pytest.fixture(scope="module")
def streams(t5_study) -> dict[str, np.ndarray]:
    _, data = t5_study
    return {name: np.asarray(TokenStream(data.stream_dir(name)).tokens, dtype=np.int64) for name in SOURCES}


@pytest.fixture(scope="module")
def special(tokenizer) -> tuple[list[int], int]:
    return [tokenizer.token_to_id(t) for t in SENTINELS], tokenizer.token_to_id(EOS)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(source=st.sampled_from(SOURCES), start=st.floats(0, 1), length=st.integers(2, 600),
       noise_density=st.floats(0.01, 0.9), mean_span=st.floats(1.0, 10.0), seed=st.integers(0, 2**32 - 1))
def test_inputs_and_targets_reconstruct_real_slices(streams, special, tokenizer, source, start, length,
                                                    noise_density, mean_span, seed):
    sentinels, eos = special
    tokens = streams[source]
    offset = int(start * (len(tokens) - length))
    piece = tokens[offset:offset + length]
    inputs, targets = span_corrupt(piece, sentinels=sentinels, eos_id=eos, noise_density=noise_density,
                                   mean_span=mean_span, rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(uncorrupt(inputs, targets, sentinels=sentinels, eos_id=eos), piece)
    # the decoded text comes back too (what the model sees, as text)
    restored = uncorrupt(inputs, targets, sentinels=sentinels, eos_id=eos)
    assert tokenizer.decode(restored.tolist(), skip_special_tokens=False) == \
        tokenizer.decode(piece.tolist(), skip_special_tokens=False)

    lengths = corruption_lengths(length, noise_density=noise_density, mean_span=mean_span,
                                 max_spans=len(sentinels))
    assert len(inputs) == lengths.input_len and len(targets) == lengths.target_len
    used = [t for t in inputs.tolist() if t in set(sentinels)]
    assert used == sentinels[:lengths.spans]  # one sentinel per span, in order
    assert targets[-1] == eos and targets[0] == sentinels[0]
    assert inputs[0] == piece[0]  # like T5, a kept span comes first


def test_t5_counts_for_a_512_token_sequence():
    # seqio random_spans_noise_mask: round(512 * 0.15) = 77 noise tokens, round(77 / 3) = 26 spans
    lengths = corruption_lengths(512, noise_density=0.15, mean_span=3.0, max_spans=100)
    assert (lengths.noise_tokens, lengths.spans) == (77, 26)
    assert (lengths.input_len, lengths.target_len) == (461, 104)


def test_noise_is_spread_over_spans_of_the_requested_mean(streams, special):
    sentinels, eos = special
    rng = np.random.default_rng(0)
    piece = streams["python"][:512]
    hidden = []
    for _ in range(50):
        inputs, targets = span_corrupt(piece, sentinels=sentinels, eos_id=eos, rng=rng)
        n_spans = sum(t in set(sentinels) for t in targets.tolist())
        hidden.append((len(targets) - 1 - n_spans) / n_spans)
    assert 2.8 < float(np.mean(hidden)) < 3.2


def test_a_batch_of_fixed_length_sequences_needs_no_padding(streams, special):
    sentinels, eos = special
    rows = streams["c4"][: 8 * 128].reshape(8, 128)
    inputs, targets = span_corrupt_batch(rows, sentinels=sentinels, eos_id=eos, rng=np.random.default_rng(1))
    assert inputs.shape == (8, 115) and targets.shape == (8, 26)
    for row, i, t in zip(rows, inputs, targets):
        np.testing.assert_array_equal(uncorrupt(i, t, sentinels=sentinels, eos_id=eos), row)
    # different rows get different masks
    assert len({tuple(np.flatnonzero(np.isin(i, sentinels))) for i in inputs}) > 1
