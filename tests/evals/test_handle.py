"""The model handle: scores, generations and rolling log-probs checked against direct computations.

The reference computations below deliberately avoid the handle's machinery: one example
at a time, no padding, no KV cache, a full forward pass and a log-softmax.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from codemix.errors import CheckpointError
from codemix.evals.handle import Handle, load_handle, save_tiny_model

# One worker per module under `pytest -n 2 --dist loadgroup`: the module's fixtures are built once.
pytestmark = pytest.mark.xdist_group("evals-handle")

@pytest.fixture(scope="module")
def gpt(tokenizer, tmp_path_factory) -> Handle:
    path = save_tiny_model(tmp_path_factory.mktemp("gpt"), tokenizer, arch="gpt", max_length=64)
    return load_handle(path, device="cpu", batch_size=3)


@pytest.fixture(scope="module")
def t5(tokenizer, tmp_path_factory) -> Handle:
    path = save_tiny_model(tmp_path_factory.mktemp("t5"), tokenizer, arch="t5", max_length=64)
    return load_handle(path, device="cpu", batch_size=3)


CONTEXTS = ["Q: What is 1 plus 1?\nA: ", "Q: What is 1 plus 1?\nA: ", "Q: What is 1 plus 1?\nA: ",
            "def add(a, b):\n", "The weather today", ""]
CONTINUATIONS = ["2", "banana", "11 (eleven)", "    return a + b\n", " is sunny.", "Hello"]


def direct_causal(h: Handle, context: str, continuation: str) -> float:
    # The handle's documented convention: trailing spaces move to the continuation, one start token.
    stripped = context.rstrip(" ")
    continuation = context[len(stripped):] + continuation
    ctx = [h.tokenizer.eos_token_id] + h.tokenizer(stripped, add_special_tokens=False)["input_ids"]
    cont = h.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = h.model(input_ids=torch.tensor([ctx + cont])).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    return sum(float(logp[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))


def direct_seq2seq(h: Handle, context: str, continuation: str) -> float:
    enc = h.tokenizer(context, add_special_tokens=False)["input_ids"] + [h.tokenizer.eos_token_id]
    cont = h.tokenizer(continuation, add_special_tokens=False)["input_ids"]
    dec = [h.model.config.decoder_start_token_id] + cont[:-1]
    with torch.no_grad():
        logits = h.model(input_ids=torch.tensor([enc]), decoder_input_ids=torch.tensor([dec])).logits[0]
    logp = torch.log_softmax(logits.double(), -1)
    return sum(float(logp[k, t]) for k, t in enumerate(cont))


@pytest.mark.filterwarnings("error::FutureWarning")  # the KV cache passed under the installed version's name
def test_causal_scores_match_direct_computation(gpt, monkeypatch):
    full = gpt.score(CONTEXTS, CONTINUATIONS, share_context=False)
    with monkeypatch.context() as m:  # the shared path finds the model's KV cache, not the per-request fallback
        m.setattr(gpt, "_score_causal_full", lambda *a, **k: pytest.fail("the shared path found no KV cache"))
        shared = gpt.score(CONTEXTS, CONTINUATIONS)
    direct = [direct_causal(gpt, c, x) for c, x in zip(CONTEXTS, CONTINUATIONS)]
    np.testing.assert_allclose(shared, direct, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(full, direct, rtol=1e-4, atol=1e-4)
    assert len(set(np.round(direct, 3))) == len(direct)  # distinct requests really got distinct scores
    assert gpt.score(["abc"], [""]) == [0.0]


def test_seq2seq_scores_match_direct_computation(t5):
    scores = t5.score(CONTEXTS, CONTINUATIONS)
    direct = [direct_seq2seq(t5, c, x) for c, x in zip(CONTEXTS, CONTINUATIONS)]
    np.testing.assert_allclose(scores, direct, rtol=1e-4, atol=1e-4)


def greedy_reference(h: Handle, prompt: str, steps: int) -> str:
    ids = [h.tokenizer.eos_token_id] + h.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    out: list[int] = []
    for _ in range(steps):
        with torch.no_grad():
            nxt = int(h.model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
        if nxt == h.tokenizer.eos_token_id:
            break
        out.append(nxt)
    return h.tokenizer.decode(out, skip_special_tokens=True)


def test_batched_greedy_generation_matches_unbatched_reference(gpt):
    prompts = ["def f(x):", "The quick brown fox jumps over the lazy dog and then", "import os\n"]
    got = gpt.generate(prompts, max_new_tokens=8)
    assert got == [[greedy_reference(gpt, p, 8)] for p in prompts]


def test_stop_strings_cut_completion(gpt):
    full = gpt.generate(["def f(x):"], max_new_tokens=12)[0][0]
    assert len(full) > 2
    stop = full[1:3]  # a stop string the model is known to produce
    cut = gpt.generate(["def f(x):"], max_new_tokens=12, stop=[stop, "never-produced"])[0][0]
    assert cut == full[: full.find(stop)]
    assert stop not in cut


def test_sampling_is_seeded_and_returns_n(gpt):
    a = gpt.generate(["Hello", "def"], max_new_tokens=6, temperature=1.0, n=3, seed=1)
    b = gpt.generate(["Hello", "def"], max_new_tokens=6, temperature=1.0, n=3, seed=1)
    c = gpt.generate(["Hello", "def"], max_new_tokens=6, temperature=1.0, n=3, seed=2)
    assert a == b and [len(x) for x in a] == [3, 3]
    assert a != c


def test_seq2seq_generation_runs_batched(t5):
    single = [t5.generate([p], max_new_tokens=5)[0] for p in ["a b c", "def f(x): return x"]]
    assert t5.generate(["a b c", "def f(x): return x"], max_new_tokens=5) == single


def test_long_prompts_are_left_truncated_and_counted(gpt, t5):
    long_prompt = "word " * 200  # far beyond the 64-token context
    for h in (gpt, t5):
        before = h.truncated
        out = h.generate([long_prompt, "short"], max_new_tokens=4)
        assert len(out) == 2 and h.truncated == before + 1
        before = h.truncated
        (score,) = h.score([long_prompt], [" end"])
        assert np.isfinite(score) and h.truncated == before + 1
    # Left truncation keeps the end of the prompt: the score is that of the context's last tokens.
    prompt = "word " * 200 + "end"
    ids = [gpt.tokenizer.eos_token_id] + gpt.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    cont = gpt.tokenizer(" x", add_special_tokens=False)["input_ids"]
    kept = ids[-(gpt.max_length - len(cont)):]
    with torch.no_grad():
        logp = torch.log_softmax(gpt.model(input_ids=torch.tensor([kept + cont])).logits[0].double(), -1)
    expected = sum(float(logp[len(kept) - 1 + k, t]) for k, t in enumerate(cont))
    assert gpt.score([prompt], [" x"])[0] == pytest.approx(expected, abs=1e-4)


def test_rolling_logprobs_equal_direct_computation(gpt, t5, data_dir):
    import gzip

    with gzip.open(data_dir / "code" / "code_python.jsonl.gz", "rt") as f:
        text = json.loads(f.readline())["text"][:1500]
    short = "x = 1\n"
    ids = gpt.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) > 3 * gpt.max_length  # several windows
    long_scores, short_scores = gpt.rolling_logprobs([text, short], stride=16)
    assert long_scores.n_tokens == len(ids) and long_scores.n_bytes == len(text.encode())
    assert np.isfinite(long_scores.logprobs).all() and (long_scores.logprobs < 0).all()
    # The short text fits one window: equal to one full forward pass.
    seq = [gpt.tokenizer.eos_token_id] + gpt.tokenizer(short, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(gpt.model(input_ids=torch.tensor([seq])).logits[0].double(), -1)
    np.testing.assert_allclose(short_scores.logprobs, [float(logp[i, t]) for i, t in enumerate(seq[1:])], atol=1e-4)
    np.testing.assert_array_equal(short_scores.correct, (logp[:-1].argmax(-1) == torch.tensor(seq[1:])).numpy())
    # A token deep in the long text is scored with exactly max_length - stride tokens of context or more:
    # window starting at b = 16 * k predicts tokens [b + 48, b + 64) of [start] + ids.
    seq = [gpt.tokenizer.eos_token_id] + ids
    b = 16 * 3
    with torch.no_grad():
        logp = torch.log_softmax(gpt.model(input_ids=torch.tensor([seq[b:b + 64]])).logits[0].double(), -1)
    expected = [float(logp[i - 1, seq[b + i]]) for i in range(48, 64)]
    np.testing.assert_allclose(long_scores.logprobs[b + 47:b + 63], expected, atol=1e-4)
    (t5_scores,) = t5.rolling_logprobs([text], stride=32)
    assert t5_scores.n_tokens == len(ids) and np.isfinite(t5_scores.logprobs).all()


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        load_handle(tmp_path / "missing")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="neither a codemix checkpoint"):
        load_handle(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(CheckpointError, match="not a Hugging Face model config"):
        load_handle(tmp_path)


def test_load_handle_passes_handles_through(gpt):
    assert load_handle(gpt) is gpt
