"""The decoder: shapes, causality, presets and overrides, and the causal LM task."""

from __future__ import annotations

import copy
import math
import typing

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models

from codemix.config import ModelConfig, validate_study
from codemix.errors import ConfigError
from codemix.models.gpt import GPT, PRESETS, GPTConfig, config_from_model_config
from codemix.objectives import TASKS
from codemix.objectives.causal import CausalLMTask


def test_logits_have_vocab_shape_and_depend_only_on_the_past():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=97, n_kv_heads=2)).eval()
    idx = torch.randint(0, 97, (3, 20))
    logits = model(idx)
    assert logits.shape == (3, 20, 97)
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % 97
    other = model(changed)
    torch.testing.assert_close(other[:, :12], logits[:, :12])
    assert not torch.allclose(other[:, 12:], logits[:, 12:])


def test_rope_makes_attention_order_aware():
    """Without positions, attention over {a, b} is order-blind; with RoPE, `a b c` != `b a c` at c."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11)).eval()
    logits = model(torch.tensor([[3, 7, 5], [7, 3, 5]]))
    assert not torch.allclose(logits[0, 2], logits[1, 2], atol=1e-4)


def test_tied_embeddings_share_one_tensor():
    tied = GPT(GPTConfig(vocab_size=50, tie_embeddings=True))
    untied = GPT(GPTConfig(vocab_size=50, tie_embeddings=False))
    assert tied.lm_head.weight is tied.embed.weight
    assert untied.num_params() - tied.num_params() == 50 * 64


def test_paper_preset_has_about_374m_parameters():
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=32768, **PRESETS["t5-large-dec"]))
    assert (model.cfg.n_layers, model.cfg.d_model, model.cfg.d_ff, model.cfg.n_heads) == (24, 1024, 2816, 64)
    assert model.cfg.head_dim == 16
    assert model.num_params() / 1e6 == pytest.approx(374, abs=3)


@pytest.mark.parametrize("shape", [dict(PRESETS["20m"]), dict(PRESETS["124m"], n_kv_heads=4),
                                   dict(PRESETS["t5-large-dec"])])
def test_flops_per_token_count_every_weight_of_a_matrix_product_and_the_attention_scores(shape):
    with torch.device("meta"):
        model = GPT(GPTConfig(vocab_size=32768, **shape))
    cfg = model.cfg
    # every weight but the input embedding lookup; the output projection counts, tied or not
    n_matmul = model.num_params(non_embedding=True) + (model.lm_head.weight.numel() if cfg.tie_embeddings else 0)
    assert cfg.flops_per_token(512) == 6 * n_matmul + 12 * cfg.n_layers * cfg.d_model * 512


def test_study_fields_override_the_preset():
    cfg = config_from_model_config(ModelConfig(preset="20m", n_layers=3, n_kv_heads=2, d_ff=512, dropout=0.1),
                                   vocab_size=1000, seq_len=2048)
    assert (cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, cfg.d_model, cfg.d_ff) == (3, 6, 2, 384, 512)
    assert cfg.dropout == 0.1 and cfg.vocab_size == 1000 and cfg.max_seq_len == 2048


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match=r"model.preset='huge'.*\['124m', '20m', 't5-large-dec', 'tiny'\]"):
        config_from_model_config(ModelConfig(preset="huge"), vocab_size=100, seq_len=64)


def test_inconsistent_shapes_are_reported_together():
    with pytest.raises(ConfigError) as err:
        GPTConfig(vocab_size=10, d_model=60, n_heads=8, n_kv_heads=3)
    assert len(err.value.problems) == 2
    with pytest.raises(ConfigError, match="max_seq_len=32 is shorter than data.seq_len=64"):
        config_from_model_config(ModelConfig(max_seq_len=32), vocab_size=100, seq_len=64)
    with pytest.raises(ConfigError, match="model.d_kv only apply to model.arch=t5"):
        config_from_model_config(ModelConfig(d_kv=32), vocab_size=100, seq_len=64)


def _study(**model):
    return validate_study({"data": {"seq_len": 16, "sources": [{"name": "en", "paths": ["x"]}]},
                           "mixtures": {"m": [0.0], "settings": ["competitive"], "baselines": False},
                           "model": {"preset": "tiny", **model}})


def test_causal_task_predicts_the_next_token(tmp_path):
    cfg = _study(n_layers=1)
    tokenizer = tmp_path / "tokenizer.json"  # the task sizes the model from the tokenizer: 40 tokens
    Tokenizer(models.WordLevel({f"w{i}": i for i in range(40)}, unk_token="w0")).save(str(tokenizer))
    task = TASKS["gpt"](cfg, tokenizer_path=tokenizer)
    assert task.config.vocab_size == 40
    assert isinstance(task, CausalLMTask) and task.model_config()["n_layers"] == 1
    torch.manual_seed(0)
    model = task.build_model()
    tokens = torch.randint(0, 40, (4, 16))
    loss = task.loss(model, tokens, step=0)["loss"]
    logits = model(tokens[:, :-1])
    expected = -torch.log_softmax(logits, -1).gather(-1, tokens[:, 1:, None]).mean()
    torch.testing.assert_close(loss, expected)
    assert loss.item() == pytest.approx(math.log(40), abs=0.2)  # near-uniform at init


def test_unknown_arch_is_a_config_error_and_every_arch_has_a_task():
    with pytest.raises(ConfigError, match=r"model.arch='rnn': Input should be 'gpt' or 't5'"):
        _study(arch="rnn")
    assert set(TASKS) == set(typing.get_args(ModelConfig.model_fields["arch"].annotation)) == {"gpt", "t5"}


@pytest.mark.parametrize("with_targets", [False, True])
def test_forward_traces_as_one_graph_for_torch_compile(with_targets):
    """torch.compile is on by default on CUDA; a graph break there would cost throughput silently."""
    model = GPT(GPTConfig(vocab_size=512, **PRESETS["tiny"]))
    tokens = torch.randint(0, 512, (2, 33))
    args = (tokens[:, :-1], tokens[:, 1:]) if with_targets else (tokens[:, :-1],)
    explanation = torch._dynamo.explain(model)(*args)
    torch._dynamo.reset()
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


def test_compiled_regions_train_as_the_eager_model_and_trace_one_block_for_all():
    """parallelize(compile=True) compiles a GPT block by block: the same losses and gradients as eager,
    one traced graph for every block (plus the head's), and the state dict of the plain model."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    eager = GPT(GPTConfig(vocab_size=512, **{**PRESETS["tiny"], "n_layers": 3}))
    compiled = copy.deepcopy(eager)
    torch._dynamo.reset()
    counters.clear()
    try:
        compiled.compile_regions(backend="aot_eager")  # torch.compile's own tracing, no code generation
        tokens = torch.randint(0, 512, (2, 33))
        losses = [m(tokens[:, :-1], tokens[:, 1:]) for m in (eager, compiled)]
        for loss in losses:
            loss.backward()
        assert counters["stats"]["unique_graphs"] == 2  # one block graph serves all three, and the head's
        assert counters["frames"]["ok"] == 2
        torch.testing.assert_close(losses[1], losses[0])
        for (name, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)
        assert list(compiled.state_dict()) == list(eager.state_dict())
    finally:
        torch._dynamo.reset()


def test_forward_with_targets_is_the_mean_next_token_cross_entropy():
    model = GPT(GPTConfig(vocab_size=512, **PRESETS["tiny"]))
    tokens = torch.randint(0, 512, (3, 17))
    targets = tokens[:, 1:].clone()
    targets[0, :4] = -100  # ignored positions
    logits = model(tokens[:, :-1])
    expected = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    torch.testing.assert_close(model(tokens[:, :-1], targets), expected)


def _saved_shapes(fn) -> tuple[torch.Tensor, list[tuple[int, ...]]]:
    """``fn()`` and the shapes of every tensor autograd kept for its backward."""
    shapes = []

    def pack(t):
        shapes.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        return fn(), shapes


def test_cpu_training_loss_is_cross_entropys_and_keeps_no_logits_for_the_backward():
    """On a CPU the logits' gradient is taken in the forward (lm_loss); loss and gradients are autograd's."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=512, **PRESETS["tiny"]))
    tokens = torch.randint(0, 512, (3, 17))
    targets = tokens[:, 1:].clone()
    targets[0, :4] = -100
    expected, autograd_saved = _saved_shapes(
        lambda: F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1), targets.flatten(), ignore_index=-100))
    expected.backward()
    want = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    loss, saved = _saved_shapes(lambda: model(tokens[:, :-1], targets))
    loss.backward()
    assert torch.equal(loss, expected)  # the same kernels: to the bit
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[name], rtol=1e-5, atol=1e-7, msg=name)
    logits = (3 * 16, 512)
    assert logits in autograd_saved and logits not in saved

    model.zero_grad()  # every target ignored: cross-entropy's nan, and no gradient
    loss = model(tokens[:, :-1], torch.full_like(targets, -100))
    loss.backward()
    assert loss.isnan() and all(not p.grad.any() for p in model.parameters())
