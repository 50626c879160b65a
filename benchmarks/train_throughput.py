"""Training throughput: codemix's decoder vs transformers' LlamaForCausalLM of the same shape.

Prints one JSON line: tokens/s and model FLOPs utilization (MFU) of a full training step
(forward, backward, AdamW) for codemix and for HF Llama, measured in the same run with
the same settings (fused AdamW everywhere; bf16 autocast and torch.compile on CUDA, fp32
eager on CPU), and their ratio. The two models are timed in alternating rounds and the median round
is reported, so background load on a shared machine hits both alike. Each model is compiled as its
library's users train it: codemix's GPT and CodeT5 block by block (``compile_regions``, as
``codemix train`` does), HF's models whole; ``warmup_seconds`` gives each one's warmup steps,
compilation included.

FLOPs per token follow the PaLM / nanoGPT accounting (:meth:`GPTConfig.flops_per_token`:
``6 N + 12 L d T``, with N the weights that take part in matrix products, L layers, d the
model width and T the sequence length). MFU divides by the bf16 dense peak of an H100, 989 TFLOP/s
(``codemix.models.GPU_PEAK_FLOPS``); on a CPU there is no meaningful peak and MFU is reported as null.

    python benchmarks/train_throughput.py --preset tiny            # CPU: seconds
    python benchmarks/train_throughput.py --preset 124m            # GPU: seq 1024, vocab 32768

Presets are registered in ``BENCHES`` (preset -> function(args) -> result dict); the
encoder-decoder presets (``codet5-small``, ``codet5-base``) plug in there.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import torch

from codemix.models import GPU_PEAK_FLOPS
from codemix.models.export import llama_config
from codemix.models.gpt import GPT, PRESETS, GPTConfig
from codemix.train.distributed import DistContext, parallelize


class Trainer:
    """Full training steps (loss, backward, clipping, AdamW) of one model on random token rows.

    ``loss_of(tokens)`` takes a CPU ``(B, T+1)`` batch and returns the loss and the number
    of tokens the step trained on (targets for a decoder; encoder plus decoder tokens for an
    encoder-decoder), which is what tokens/s counts.
    """

    def __init__(self, model: torch.nn.Module, loss_of: Callable[[torch.Tensor], tuple[torch.Tensor, int]], *,
                 device: torch.device):
        self.model, self.loss_of, self.device = model, loss_of, device
        cuda = device.type == "cuda"
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as codemix trains, on CUDA and CPUs
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    def step(self, tokens: torch.Tensor) -> int:
        with self.autocast:
            loss, n_tokens = self.loss_of(tokens)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return n_tokens

    def synchronize(self) -> None:
        """Wait for the device's queued work (a no-op on a CPU), so that a clock reads finished steps."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def tokens_per_s(self, batches: torch.Tensor) -> float:
        self.synchronize()
        t0 = time.perf_counter()
        seen = sum(self.step(tokens) for tokens in batches)
        self.synchronize()
        return seen / (time.perf_counter() - t0)


def causal_loss_of(loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], device: torch.device):
    """``loss_of`` for a decoder: ``loss(inputs, targets)`` is the model's own next-token loss."""

    def loss_of(tokens: torch.Tensor) -> tuple[torch.Tensor, int]:
        tokens = tokens.to(device, non_blocking=True)
        return loss(tokens[:, :-1], tokens[:, 1:].contiguous()), tokens[:, 1:].numel()

    return loss_of


def seq2seq_loss_of(loss: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                    make_batch: Callable[[Any], dict[str, torch.Tensor]]):
    """``loss_of`` for an encoder-decoder: ``make_batch`` turns a data item into CPU inputs, ``loss`` trains on them.

    Tokens are counted on the CPU, as trained: encoder positions that attend (all of them
    without an ``attention_mask``) plus decoder targets that are not -100 — padding is not work.
    """

    def loss_of(item: Any) -> tuple[torch.Tensor, int]:
        batch = make_batch(item)
        encoder = batch["attention_mask"].sum() if "attention_mask" in batch else batch["input_ids"].numel()
        return loss(batch), int(encoder) + int((batch["labels"] >= 0).sum())

    return loss_of


def random_rows(args: argparse.Namespace) -> list[torch.Tensor]:
    """Data items for every step: random token rows (B, T + 1), seeded."""
    gen = torch.Generator().manual_seed(0)
    return list(torch.randint(0, args.vocab, (max(args.steps, args.warmup), args.batch_size, args.seq_len + 1),
                              generator=gen))


def compare(trainers: dict[str, Trainer], data: list[Any], *, steps: int, warmup: int,
            rounds: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median tokens/s of each trainer over ``rounds`` alternating timed blocks of ``steps`` steps,
    and the seconds of each trainer's warmup steps (torch.compile's time, where it compiles).

    Alternating the models block by block exposes them to the same background load, which
    matters on a shared machine; warmup steps (and torch.compile) come first. ``data`` holds
    one item per step (at least ``max(steps, warmup)``), given to every trainer alike.
    """
    warm: dict[str, float] = {}
    for name, trainer in trainers.items():
        t0 = time.perf_counter()
        for item in data[:warmup]:
            trainer.step(item)
        trainer.synchronize()
        warm[name] = round(time.perf_counter() - t0, 1)
    measured: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            measured[name].append(trainer.tokens_per_s(data[:steps]))
    return {name: statistics.median(values) for name, values in measured.items()}, warm


def bench_gpt(preset: str, args: argparse.Namespace) -> dict[str, Any]:
    """codemix GPT vs HF LlamaForCausalLM, both built with the preset's shape."""
    from transformers import LlamaForCausalLM

    device = torch.device(args.device)
    compile_ = device.type == "cuda" and not args.no_compile
    cfg = GPTConfig(vocab_size=args.vocab, **{**PRESETS[preset], "max_seq_len": args.seq_len})
    torch.manual_seed(0)
    ours = GPT(cfg).to(device)
    hf = LlamaForCausalLM._from_config(llama_config(cfg), attn_implementation="sdpa").to(device)
    ours_fn = parallelize(ours, DistContext.single(device), compile=compile_)  # as codemix trains: block by block
    hf_fn = torch.compile(hf) if compile_ else hf  # as HF's users do: the whole model
    # Both compute the loss inside the compiled forward, each library's own training path
    # (HF: labels=...; shift_labels says they are already shifted, as codemix's targets are).
    hf_loss = lambda x, y: hf_fn(input_ids=x, labels=y, shift_labels=y, use_cache=False).loss  # noqa: E731
    trainers = {
        "codemix": Trainer(ours, causal_loss_of(ours_fn, device), device=device),
        "hf_llama": Trainer(hf, causal_loss_of(hf_loss, device), device=device),
    }
    tps, warm = compare(trainers, random_rows(args), steps=args.steps, warmup=args.warmup, rounds=args.rounds)
    fpt = cfg.flops_per_token(args.seq_len)
    peak = GPU_PEAK_FLOPS if device.type == "cuda" else None
    return {
        "benchmark": "train_throughput", "preset": preset, "device": _device_name(device),
        "torch": torch.__version__, "compile": compile_, "precision": "bf16" if device.type == "cuda" else "fp32",
        "batch_size": args.batch_size, "seq_len": args.seq_len, "vocab_size": args.vocab,
        "params": ours.num_params(), "flops_per_token": fpt, "peak_flops": peak,
        **{name: {"tokens_per_s": round(v, 1), "mfu": round(v * fpt / peak, 4) if peak else None}
           for name, v in tps.items()},
        "ratio": round(tps["codemix"] / tps["hf_llama"], 3), "warmup_seconds": warm,
    }


def bench_t5(preset: str, args: argparse.Namespace) -> dict[str, Any]:
    """codemix CodeT5 (packed rows, CodeT5's objectives, tagging head) vs plain HF T5, same shape.

    codemix: every step builds its inputs on the CPU as ``CodeT5Task`` does, then runs
    :class:`~codemix.models.t5.CodeT5` (one encoder pass, the tagging head, one decoder pass).
    HF: ``T5ForConditionalGeneration`` on the rows cut to span corruption's fixed lengths
    (seq_len 568: encoder 511 + <eos>, decoder 114; T5's seqio pads targets to 128).

    Without ``--study``, rows are random tokens: text to codemix, so every row is span
    corrupted (no identifiers to find). With ``--study STUDY.yaml`` the rows are that study's
    real mixture, read as ``codemix train`` reads it (sources, offsets, the data stage's
    identifier annotations bound): code rows draw CodeT5's identifier objectives, so this
    times the whole CodeT5 step, CPU side included. The study's data is built first if missing.
    """
    import numpy as np
    from transformers import T5Config, T5ForConditionalGeneration

    from codemix.models.t5 import CodeT5, t5_config
    from codemix.objectives.codet5 import OBJECTIVES, Vocab, build_examples, collate
    from codemix.objectives.span_corruption import corruption_lengths

    device = torch.device(args.device)
    compile_ = device.type == "cuda" and not args.no_compile
    model_preset = "tiny" if preset == "t5-tiny" else preset
    steps = itertools.count()  # each codemix step draws its objectives and masks anew
    task = None
    if args.study:
        task, data = study_data(args, model_preset)
        cfg, vocab = task.config, task.vocab
    else:
        # a plain namespace for the study's `model` section: this path runs without pydantic (the GPU box has none)
        model_cfg = types.SimpleNamespace(arch="t5", preset=model_preset, dropout=0.0)
        cfg = t5_config(model_cfg, vocab_size=args.vocab, pad_id=1, eos_id=0)
        vocab = Vocab(eos=0, pad=1, sentinels=tuple(range(3, 103)))
        data = random_rows(args)
    lengths = corruption_lengths(args.seq_len, noise_density=0.15, mean_span=3.0, max_spans=len(vocab.sentinels))

    def codemix_batch(item: Any) -> dict[str, torch.Tensor]:
        if task is not None:  # the study's rows, as CodeT5Task builds them in training
            return task.inputs(item, next(steps))
        tokens = item[:, :-1].numpy()  # random rows: text, span corrupted
        examples = build_examples(tokens, [None] * len(tokens), weights=[1, 0, 0, 0], vocab=vocab, rows=None,
                                  noise_density=0.15, mean_span=3.0, target_len=lengths.target_len,
                                  rng=np.random.default_rng(next(steps)))
        return collate(examples, pad_id=vocab.pad)

    def hf_batch(item: Any) -> dict[str, torch.Tensor]:
        tokens = item["tokens"] if isinstance(item, dict) else item
        return {"input_ids": tokens[:, :lengths.input_len + 1].contiguous(),  # + <eos>, as codemix's
                "labels": tokens[:, :lengths.target_len].contiguous()}

    torch.manual_seed(0)
    ours = CodeT5(cfg).to(device)
    hf = T5ForConditionalGeneration(T5Config(**cfg)).to(device)
    ours_fn = parallelize(ours, DistContext.single(device), compile=compile_)  # as codemix trains: block by block
    hf_fn = torch.compile(hf) if compile_ else hf

    def ours_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if task is not None:  # the task's own loss: pinned copies, objectives weighted by their rows
            return task.loss_of_inputs(ours_fn, batch)["loss"]
        out = ours_fn(**{k: v.to(device, non_blocking=True) for k, v in batch.items()}, n_objectives=len(OBJECTIVES))
        return out["seq2seq"][0] + out["tagging"]

    def hf_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return hf_fn(**{k: v.to(device, non_blocking=True) for k, v in batch.items()}).loss

    trainers = {
        "codemix": Trainer(ours, seq2seq_loss_of(ours_loss, codemix_batch), device=device),
        "hf_t5": Trainer(hf, seq2seq_loss_of(hf_loss, hf_batch), device=device),
    }
    tps, warm = compare(trainers, data, steps=args.steps, warmup=args.warmup, rounds=args.rounds)
    return {
        "benchmark": "train_throughput", "preset": preset, "device": _device_name(device),
        "torch": torch.__version__, "compile": compile_, "precision": "bf16" if device.type == "cuda" else "fp32",
        "data": str(args.study) if args.study else "random", "batch_size": args.batch_size, "seq_len": args.seq_len,
        "vocab_size": cfg["vocab_size"], "encoder_len": lengths.input_len + 1, "decoder_len": lengths.target_len,
        "params": sum(p.numel() for p in ours.t5.parameters()),
        **{name: {"tokens_per_s": round(v, 1), "mfu": None} for name, v in tps.items()},
        "ratio": round(tps["codemix"] / tps["hf_t5"], 3), "warmup_seconds": warm,
    }


def study_data(args: argparse.Namespace, preset: str) -> tuple[Any, list[dict[str, torch.Tensor]]]:
    """A ``CodeT5Task`` for ``--study`` (with the preset, batch and sequence length of this run) and its batches.

    The batches come from the study's first mixture with the most code, as ``codemix train``
    reads them; its data (tokenizer, streams, annotations, mixtures) is built if missing.
    """
    from codemix.config import load_study
    from codemix.data.loader import MixtureLoader
    from codemix.data.mixture import mixture_specs
    from codemix.objectives.codet5 import CodeT5Task
    from codemix.study.commands import build_data

    overrides = [*args.set, "model.arch=t5", f"model.preset={preset}", "model.dropout=0.0",
                 f"data.seq_len={args.seq_len}", f"pretrain.batch_size={args.batch_size}"]
    cfg = load_study(args.study, overrides)
    data = build_data(cfg)  # the study's own data jobs, under its out directory
    spec = max((s for s in mixture_specs(cfg.mixtures) if not s.baseline), key=lambda s: s.m)
    loader = MixtureLoader(data.mixture_dir(spec.setting, spec.m, spec.baseline), batch_size=args.batch_size,
                           seed=0, with_sources=True)
    task = CodeT5Task(cfg, tokenizer_path=data.tokenizer_path)
    task.bind_streams([stream.dir for stream in loader.streams])
    needed = max(args.steps, args.warmup)
    return task, list(itertools.islice((batch for _ in range(needed) for batch in loader), needed))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


T5_PRESETS = ("t5-tiny", "codet5-small", "codet5-base")

#: preset -> benchmark function. One place to add a preset (e.g. codet5-small / codet5-base).
BENCHES: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    name: (lambda args, name=name: bench_gpt(name, args)) for name in PRESETS
} | {name: (lambda args, name=name: bench_t5(name, args)) for name in T5_PRESETS}

#: Defaults per preset where they differ from the CPU-friendly ones: (batch_size, seq_len, vocab).
GPU_SHAPES = {"124m": (16, 1024, 32768), "t5-large-dec": (16, 1024, 32768), "20m": (32, 1024, 32768),
              "codet5-small": (32, 568, 32768), "codet5-base": (32, 568, 32768)}  # t5: encoder 512, decoder 114


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, choices=sorted(BENCHES), help="model shape to benchmark")
    parser.add_argument("--batch-size", type=int, help="sequences per step (default: 16)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default: 128 for tiny, 1024 otherwise)")
    parser.add_argument("--vocab", type=int, help="vocabulary size (default: 4096 for tiny, 32768 otherwise)")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timed rounds per model; the median "
                                                              "is reported (default 3)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first, incl. compilation (default 5)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile on CUDA")
    parser.add_argument("--study", help="t5 presets: time training on this study's real mixture (code objectives "
                                        "included; its data is built if missing) instead of random tokens")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field of --study (repeatable), e.g. mixtures.n_tokens=2000000")
    args = parser.parse_args(argv)
    if args.study and args.preset not in T5_PRESETS:
        parser.error(f"--study applies to the t5 presets {sorted(T5_PRESETS)}")
    batch, seq, vocab = GPU_SHAPES.get(args.preset, (16, 128, 4096))
    args.batch_size = args.batch_size or batch
    args.seq_len = args.seq_len or seq
    args.vocab = args.vocab or vocab
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available; use --device cpu (with --preset tiny)")
    print(json.dumps(BENCHES[args.preset](args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
