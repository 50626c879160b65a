"""Finetuning: example formatting, the tokenizer check, and learning COGS-vf on a CPU.

The learning test pretrains a tiny codemix model with codemix's own pipeline (tokenizer,
streams, mixture, pretraining loop), loads its checkpoint through the model handle and
finetunes it on short COGS-vf sentences.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from codemix.checkpoint import latest_checkpoint
from codemix.config import FinetuneConfig
from codemix.data.tokenizer import SPECIAL_TOKENS, hf_tokenizer
from codemix.errors import CodemixError
from codemix.evals.cogs import COGS_VF, load_split, summarize
from codemix.evals.handle import load_handle, save_tiny_model
from codemix.train.finetune import IGNORE, check_tokenizer, collate, decode, encode_pairs, finetune, prompt_texts

PAIRS = [("A rose was helped by a dog .", "help ( theme = rose , agent = dog )"),
         ("Emma rolled a teacher .", "roll ( agent = Emma , theme = teacher )")]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory) -> Path:
    """A byte-level BPE with codemix's special tokens, trained on a COGS-vf slice."""
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    texts = [f"{ex.input}\n{ex.target}" for ex in itertools.islice(load_split(COGS_VF, "train"), 300)]
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    tok.save(str(path))
    return path


def test_decoder_only_examples_train_on_the_output_only_and_match_the_test_time_prompt(bpe, tmp_path):
    handle = load_handle(save_tiny_model(tmp_path / "gpt", hf_tokenizer(bpe), arch="gpt", d_model=32, n_layers=1,
                                         n_heads=2), device="cpu")
    tok = handle.tokenizer
    (ids, labels), _ = encode_pairs(tok, PAIRS, seq2seq=False, start_id=handle.start_id)
    prompt = prompt_texts(tok, [PAIRS[0][0]], seq2seq=False)[0]
    assert prompt.endswith("<sep>")
    n_prompt = 1 + len(handle.encode(prompt))  # the handle prefixes its start token when generating
    assert ids[:n_prompt] == [handle.start_id] + handle.encode(prompt)
    assert ids[n_prompt - 1] == tok.sep_token_id and ids[-1] == tok.eos_token_id
    assert labels[:n_prompt] == [IGNORE] * n_prompt  # no loss on the input or <sep>
    assert labels[n_prompt:] == ids[n_prompt:] == handle.encode(PAIRS[0][1]) + [tok.eos_token_id]
    assert tok.decode(ids[n_prompt:-1]) == PAIRS[0][1]


def test_t5_examples_map_input_to_output(bpe):
    tok = hf_tokenizer(bpe)
    (ids, labels), _ = encode_pairs(tok, PAIRS, seq2seq=True)
    eos = tok.eos_token_id
    assert ids == tok(PAIRS[0][0], add_special_tokens=False)["input_ids"] + [eos]
    assert labels == tok(PAIRS[0][1], add_special_tokens=False)["input_ids"] + [eos]
    assert tok.sep_token_id not in ids


@pytest.mark.parametrize("seq2seq", [False, True])
def test_collate_pads_right_and_masks_padding_out_of_the_loss(bpe, seq2seq):
    tok = hf_tokenizer(bpe)
    encoded = encode_pairs(tok, PAIRS, seq2seq=seq2seq, start_id=None if seq2seq else tok.eos_token_id)
    batch = collate(encoded, pad_id=tok.pad_token_id, seq2seq=seq2seq)
    lengths = [len(ids) for ids, _ in encoded]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    short = lengths.index(min(lengths))
    assert (batch["input_ids"][short, min(lengths):] == tok.pad_token_id).all()
    label_len = len(encoded[short][1])
    assert (batch["labels"][short, label_len:] == IGNORE).all()
    assert batch["labels"][short, :label_len].tolist() == encoded[short][1]


def test_a_tokenizer_without_sep_is_a_clear_error(bpe, tmp_path):
    no_sep = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_file(str(bpe)), eos_token="<eos>",
                                     pad_token="<pad>")
    handle = load_handle(save_tiny_model(tmp_path / "m", no_sep, arch="gpt", d_model=32, n_layers=1, n_heads=2),
                         device="cpu")
    cfg = FinetuneConfig(steps=2, batch_size=2)
    with pytest.raises(CodemixError, match=r"no a separator token \(sep_token, codemix: <sep>\).*codemix"):
        finetune(handle, PAIRS, cfg, eval_sets={}, out_dir=tmp_path / "ft")
    assert not (tmp_path / "ft" / "log.jsonl").exists()
    check_tokenizer(no_sep, seq2seq=True)  # T5 needs no separator


def test_t5_finetuning_lowers_the_loss_and_the_saved_model_decodes_the_same(bpe, tmp_path):
    handle = load_handle(save_tiny_model(tmp_path / "t5", hf_tokenizer(bpe), arch="t5", d_model=32, n_layers=1,
                                         n_heads=2), device="cpu")
    train = [(ex.input, ex.target) for ex in itertools.islice(load_split(COGS_VF, "train"), 200)]
    dev = [(ex.input, ex.target) for ex in load_split(COGS_VF, "dev")[:8]]
    cfg = FinetuneConfig(steps=40, batch_size=8, lr=3e-3, warmup_steps=4, eval_every=20)
    result = finetune(handle, train, cfg, eval_sets={"dev": dev}, out_dir=tmp_path / "ft", max_new_tokens=16,
                      save_to=tmp_path / "saved")
    log = [json.loads(line) for line in (tmp_path / "ft" / "log.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in log if "loss" in r and r.get("kind") != "eval"]
    assert losses[-1] < losses[0] - 1.0
    assert [r["step"] for r in result.history] == [20, 40]
    reloaded = load_handle(tmp_path / "saved", device="cpu")
    assert reloaded.is_seq2seq
    assert decode(reloaded, [s for s, _ in dev], max_new_tokens=16) == result.outputs["dev"]


# ----------------------------------------------------------------------------- learning


def _short(ex) -> bool:
    return ex.type == "in_distribution" and len(ex.input.split()) <= 5


@pytest.fixture(scope="module")
def pretrained_checkpoint(tmp_path_factory, pretrain_study) -> Path:
    """A tiny gpt pretrained for a few steps by codemix on a 50% code mixture (C4 + Python)."""
    _, run = pretrain_study({
        "name": "finetune-test",
        "data": {"seq_len": 64, "heldout_docs": 5, "workers": 1,
                 "tokenizer": {"vocab_size": 1024, "sample_bytes_per_source": 60_000},
                 "sources": [
                     {"name": "c4", "kind": "jsonl", "lang": "en", "max_docs": 100,
                      "paths": ["nl_text/c4_sample_1000docs.json.gz"]},
                     {"name": "python", "kind": "jsonl", "lang": "python", "code": True, "max_docs": 30,
                      "paths": ["code/code_python.jsonl.gz"]}]},
        "mixtures": {"settings": ["competitive"], "m": [0.5], "baselines": False, "n_tokens": 8000},
        "model": {"arch": "gpt", "preset": "tiny", "max_seq_len": 256},
        "pretrain": {"batch_size": 8, "lr": 3e-3, "warmup_steps": 5, "max_steps": 20, "eval_every": 20,
                     "eval_batches": 1},
        "seeds": [0],
    }, tmp_path_factory.mktemp("pretrained"))
    return latest_checkpoint(run)


def test_a_pretrained_codemix_model_learns_short_cogs_vf_sentences(pretrained_checkpoint, tmp_path):
    """400 steps on the ~6,300 COGS-vf training sentences of at most five words.

    The bar: at least 20% exact match on 100 dev sentences of the same kind (this setup
    reaches ~40%). It is meaningful because exact match of a logical form by chance is
    ~0: a short target is ~10 tokens from a vocabulary of about 1,000, every one of
    which must be right, including the verb's lemma and the definiteness marks; the same
    model before finetuning scores exactly 0, which the test measures. Token accuracy
    (a softer, secondary bar) must reach 0.7.
    """
    handle = load_handle(pretrained_checkpoint, device="cpu")
    assert type(handle.model).__name__ == "LlamaForCausalLM"
    train = [(ex.input, ex.target) for ex in load_split(COGS_VF, "train") if _short(ex)]
    dev = [(ex.input, ex.target) for ex in load_split(COGS_VF, "dev") if _short(ex)][:100]
    before = summarize(decode(handle, [s for s, _ in dev], max_new_tokens=48), [t for _, t in dev])
    assert before["exact_match"] == 0.0

    torch.manual_seed(0)
    cfg = FinetuneConfig(steps=400, batch_size=16, lr=3e-3, warmup_steps=20, eval_every=400)
    result = finetune(handle, train, cfg, eval_sets={"dev": dev}, out_dir=tmp_path / "ft", max_new_tokens=48,
                      summarize=summarize)
    after = result.history[-1]
    assert after["step"] == 400 and after["n"] == 100
    assert after["exact_match"] >= 0.2, after
    assert after["token_accuracy"] >= 0.7, after
    saved = json.loads((tmp_path / "ft" / "evals" / "step-0000400.json").read_text())["dev"]
    assert [r["prediction"] for r in saved] == result.outputs["dev"]
    assert sum(r["prediction"] == r["target"] for r in saved) == round(after["exact_match"] * 100)
    # Batched decoding (left-padded, sorted by length) gives what one example at a time gives.
    assert decode(handle, [s for s, _ in dev[:16]], batch_size=1, max_new_tokens=48) == result.outputs["dev"][:16]
