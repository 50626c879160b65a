"""CodeT5 model: presets, the tagging head, and losses that agree with Hugging Face T5's own."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from codemix.config import ModelConfig
from codemix.errors import ConfigError
from codemix.models.t5 import PRESETS, CodeT5, t5_config


def _config(preset: str = "tiny", vocab_size: int = 300, **overrides) -> dict:
    return t5_config(ModelConfig(arch="t5", preset=preset, **overrides), vocab_size=vocab_size, pad_id=1, eos_id=0)


@pytest.mark.parametrize(("preset", "millions"), [("codet5-small", 60.5), ("codet5-base", 222.9)])
def test_presets_match_the_codet5_releases_with_their_vocabulary(preset, millions):
    # Salesforce/codet5-small and -base: T5 v1.0 shapes with a 32,100-token vocabulary
    with torch.device("meta"):
        model = CodeT5(_config(preset, vocab_size=32_100))
    n = sum(p.numel() for p in model.t5.parameters())
    assert abs(n / 1e6 - millions) < 0.5
    assert model.t5.config.feed_forward_proj == "relu" and model.t5.config.tie_word_embeddings


def test_overrides_and_unknown_presets():
    cfg = _config("tiny", n_layers=3, n_decoder_layers=1, d_model=32, d_kv=8, n_heads=2, d_ff=64, dropout=0.2)
    assert (cfg["num_layers"], cfg["num_decoder_layers"], cfg["d_model"], cfg["dropout_rate"]) == (3, 1, 32, 0.2)
    assert cfg["decoder_start_token_id"] == cfg["pad_token_id"] == 1 and cfg["eos_token_id"] == 0
    assert set(PRESETS) == {"tiny", "codet5-small", "codet5-base"}
    with pytest.raises(ConfigError, match="not a t5 preset"):
        _config("124m")
    with pytest.raises(ConfigError, match="n_kv_heads=2: applies to arch gpt only"):
        _config("tiny", n_kv_heads=2)


def test_seq2seq_losses_per_objective_agree_with_hf_t5():
    torch.manual_seed(0)
    model = CodeT5(_config()).eval()
    input_ids = torch.randint(3, 300, (4, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[3, 9:] = 0
    labels = torch.randint(3, 300, (4, 5))
    labels[1, 3:] = -100
    objective = torch.tensor([0, 0, 2, 1])  # row 3 is a tagging row: no decoder target
    labels[3] = -100
    tags = torch.full_like(input_ids, -100)
    tags[3, :9] = torch.tensor([0, 1, 1, 0, 0, 1, 0, 0, 1])
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, tags=tags,
                    objective=objective, n_objectives=4)
        for rows, k in (([0, 1], 0), ([2], 2)):
            reference = model.t5(input_ids=input_ids[rows], attention_mask=attention_mask[rows],
                                 labels=labels[rows]).loss  # HF's mean over target tokens
            torch.testing.assert_close(out["seq2seq"][k], reference)
        hidden = model.t5.encoder(input_ids=input_ids[3:], attention_mask=attention_mask[3:]).last_hidden_state
        logits = model.tagger(hidden).squeeze(-1)[0, :9]
        torch.testing.assert_close(out["tagging"], F.binary_cross_entropy_with_logits(logits, tags[3, :9].float()))
    assert out["counts"].tolist() == [8.0, 0.0, 5.0, 0.0]
    assert out["seq2seq"][1] == 0 and out["seq2seq"][3] == 0


def test_a_tagging_only_batch_still_reaches_every_parameter():
    model = CodeT5(_config())
    input_ids = torch.randint(3, 300, (2, 8))
    out = model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                labels=torch.full((2, 1), -100), tags=torch.randint(0, 2, (2, 8)),
                objective=torch.tensor([1, 1]), n_objectives=4)
    (out["tagging"] + out["seq2seq"].sum()).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_forward_traces_as_one_graph_for_torch_compile():
    """A batch mixing every objective (a tagging row without targets included) compiles without breaks."""
    model = CodeT5(_config())
    input_ids = torch.randint(3, 300, (4, 16))
    labels = torch.randint(3, 300, (4, 6))
    labels[1] = -100  # the tagging row
    tags = torch.full_like(input_ids, -100)
    tags[1] = torch.randint(0, 2, (16,))
    explanation = torch._dynamo.explain(model)(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                               labels=labels, tags=tags, objective=torch.tensor([0, 1, 2, 3]),
                                               n_objectives=4)
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_regions_train_as_the_eager_model_and_trace_each_kind_of_block_once():
    """compile_regions (what parallelize(compile=True) does): the same losses and gradients as eager, one
    traced graph per kind of block whatever the depth (4: each stack's first block, which computes the
    position bias, and the rest), one for the loss, and the state dict of the plain model."""
    import copy

    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    eager = CodeT5(_config(n_layers=3, n_decoder_layers=3))
    compiled = copy.deepcopy(eager)
    input_ids = torch.randint(3, 300, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[2, 8:] = 0
    labels = torch.randint(3, 300, (3, 5))
    labels[1, 2:] = -100
    tags = torch.randint(0, 2, (3, 12))
    batch = dict(input_ids=input_ids, attention_mask=attention_mask, labels=labels, tags=tags,
                 objective=torch.tensor([0, 1, 1]), n_objectives=2)
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled.compile_regions(backend="aot_eager")  # torch.compile's own tracing, no code generation
        outs = [m(**batch) for m in (eager, compiled)]
        for out in outs:
            (out["seq2seq"].sum() + out["tagging"]).backward()
        assert counters["stats"]["unique_graphs"] == 5  # 6 blocks in 4 kinds, and the loss
        assert not counters["graph_break"]
        for key in ("seq2seq", "tagging", "counts"):
            torch.testing.assert_close(outs[1][key], outs[0][key])
        for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)
        assert list(compiled.state_dict()) == list(eager.state_dict())
    finally:
        torch._dynamo.reset()
