"""Export to Hugging Face: a trained checkpoint loads with AutoModelForCausalLM and gives the same logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from codemix.cli import main
from codemix.data.tokenizer import EOS, load_tokenizer
from codemix.errors import CheckpointError
from codemix.models.export import export, gpt_to_llama, load_gpt, load_hf
from codemix.models.gpt import GPT, GPTConfig

TEXTS = ["The river rose after three days of rain, and the town", "def area(r):\n    return 3.14159 * r ** 2\n"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, data_dir, pretrain_study) -> Path:
    """A tiny GPT trained for 40 steps on a real mixture (so its weights are far from init)."""
    _, run = pretrain_study({
        "name": "export",
        "data": {"seq_len": 64, "heldout_docs": 5, "tokenizer": {"vocab_size": 512, "sample_bytes_per_source": 100_000},
                 "sources": [{"name": "c4", "paths": ["nl_text/c4_sample_1000docs.json.gz"], "max_docs": 120},
                             {"name": "python", "lang": "python", "code": True,
                              "paths": ["code/code_python.jsonl.gz"], "max_docs": 40}]},
        "mixtures": {"settings": ["competitive"], "m": [0.5], "baselines": False, "n_tokens": 60_000},
        "model": {"arch": "gpt", "preset": "tiny", "n_kv_heads": 2, "tie_embeddings": False},
        "pretrain": {"batch_size": 8, "lr": 1.0e-2, "warmup_steps": 4, "max_steps": 40, "eval_every": 40,
                     "eval_batches": 1, "checkpoint_every": 20, "device": "cpu"},
    }, tmp_path_factory.mktemp("export-study"))
    return run


def test_exported_directory_loads_with_auto_classes_and_matches_logits(run_dir, tmp_path):
    out = export(run_dir, tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    assert isinstance(hf, LlamaForCausalLM)
    assert hf.config.num_key_value_heads == 2 and not hf.config.tie_word_embeddings
    ours = load_gpt(run_dir)  # the run directory resolves to its latest checkpoint
    assert ours.cfg.n_kv_heads == 2
    codemix_tok = load_tokenizer(run_dir / "checkpoints" / "step-0000040" / "tokenizer.json")
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == codemix_tok.encode(text).ids
        x = torch.tensor([ids])
        with torch.no_grad():
            expected, got = ours(x), hf(x).logits
        assert expected.abs().max() > 1.0  # trained weights, not a near-zero init
        torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert tok.eos_token == EOS and tok.pad_token is not None
    assert hf.config.eos_token_id == tok.eos_token_id


def test_load_hf_returns_model_and_tokenizer_in_memory(run_dir):
    model, tok = load_hf(run_dir / "checkpoints" / "step-0000020")
    assert isinstance(model, LlamaForCausalLM)
    ids = tok(TEXTS[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, load_gpt(run_dir / "checkpoints" / "step-0000020")(ids),
                                   atol=1e-4, rtol=0)


def test_tied_embeddings_export_as_tied_llama():
    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=128, tie_embeddings=True)).eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.mul_(20)  # large activations make any layout mistake visible
    hf = gpt_to_llama(ours)
    assert hf.config.tie_word_embeddings and hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    x = torch.randint(0, 128, (2, 33))
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, ours(x), atol=1e-4, rtol=1e-5)


def test_cli_export_prints_the_output_directory(run_dir, tmp_path, capsys):
    assert main(["export", str(run_dir), str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_export_never_replaces_an_unrelated_directory(run_dir, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="choose a new directory"):
        export(run_dir, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    export(run_dir, tmp_path / "hf")
    export(run_dir, tmp_path / "hf")  # an earlier export is replaced
    assert (tmp_path / "hf" / "config.json").is_file()


def test_exporting_something_that_is_not_a_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        export(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no usable checkpoint"):
        load_hf(tmp_path / "empty")
    assert main(["export", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
