"""Packs vs one model at a time: training throughput of K models. Prints one JSON line per K.

For each K (default 1, 2, 4, 8, 16) it trains K GPTs of one preset for the same steps twice,
in this process, on the same random token rows:

- ``sequential``: each model on its own, one after another (the way a study ran them before
  packs): the single-model path, ``GPT.forward(idx, targets)``;
- ``pack``: the K models as one :class:`codemix.train.pack.PackedGPT` (every parameter with a
  leading model dimension; batched matrix products; attention over all K·B sequences).

Both go through the one loop (:func:`codemix.train.loop.run_loop`: AdamW, clipping per model,
bf16 autocast and torch.compile on CUDA, fp32 eager on a CPU). After ``--warmup`` untimed
steps (compilation), ``--steps`` steps are timed. ``ratio`` = pack tokens/s over sequential
tokens/s, each path's fastest of ``--rounds`` rounds (these machines are noisy; each round
times both paths back to back, and ``round_ratios`` lists every round's ratio);
``max_abs_loss_diff`` is the largest difference between a member's loss in the pack and the
same model's loss trained alone (they are the same runs), over the timed steps the loop logs:
every 10th and the last, as a study's runs log (``pretrain.log_every``). A logged loss is read
back from the device, so logging every step would make a GPU wait for the host at every step,
a wait that a single run's short steps feel more than a pack's long ones (the tests compare
every step's loss).
``pack_tflops_per_s`` and ``sequential_tflops_per_s`` are the model FLOPs each path achieved
(tokens/s times :meth:`GPTConfig.flops_per_token`, ``flops_per_token`` in the line); on a GPU,
``pack_mfu`` and ``sequential_mfu`` divide them by the dense bf16 peak
(:data:`codemix.models.GPU_PEAK_FLOPS`, 989 TFLOP/s on an H100 or H200), which bounds the ratio
a pack can reach (ratio = pack MFU / sequential MFU).

Threads on a CPU: each path runs with the threads a study gives it — a single run one torch
thread (:func:`codemix.study.scheduler.limit_cpu_threads`), a pack every core, as groups of
members in threads of one torch thread each (:func:`codemix.train.pack.member_threads`) — and
``ratio_same_threads`` compares the pack with the sequential runs on the pack's thread count
of torch threads too (what the pack gains over giving a single run every core).

    python benchmarks/pack_throughput.py                      # CPU, `tiny`
    python benchmarks/pack_throughput.py --preset 20m --ks 8  # GPU (the target: ratio >= 3 at K = 8)
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch

from codemix.models import GPU_PEAK_FLOPS
from codemix.models.gpt import GPT, PRESETS, GPTConfig
from codemix.train.distributed import DistContext, parallelize, resolve_device, unwrap
from codemix.train.loop import LoopSpec, LoopState, RunLogger, build_optimizer, run_loop
from codemix.train.pack import PackedGPT, clip_per_member, member_threads


class _Rows:
    """The same random rows every time it is iterated (one list per model)."""

    def __init__(self, rows: list[torch.Tensor]):
        self.rows = rows

    def __iter__(self):
        return iter(self.rows)


def _train(model: torch.nn.Module, batches: list[torch.Tensor], loss, *, clip, steps: int, device: torch.device,
           compile_model: bool) -> tuple[float, list[float]]:
    """Seconds for ``steps`` steps after the warm-up ones, and the loss of every timed step the loop logs."""
    amp = torch.bfloat16 if device.type == "cuda" else None
    ctx = DistContext.single(device)
    model = parallelize(model, ctx, compile=compile_model)  # as runs train: a GPT by block, a pack whole
    optimizer = build_optimizer(model, lr=1e-3, member_dim=isinstance(unwrap(model), PackedGPT))
    losses: list[float] = []

    class Logger(RunLogger):
        def log(self, record):  # noqa: D401 - keep every logged loss
            if "step" in record and "member_loss" in record:
                losses.append(record["member_loss"])
            elif "step" in record and "loss" in record and record.get("kind") is None:
                losses.append(record["loss"])

    warm = len(batches) - steps
    state = LoopState()
    for total, timed in ((warm, False), (len(batches), True)):
        if timed:
            losses.clear()
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        spec = LoopSpec(total_steps=total, lr=lambda s: 1e-3, grad_clip=1.0, amp_dtype=amp, clip=clip,
                        batches_to_device=True)  # logging every log_every steps, as a study's runs do
        run_loop(model, optimizer, _Rows(batches), loss, spec=spec, state=state, ctx=ctx,
                 logger=Logger(None, progress=False))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="GPT preset (default tiny)")
    parser.add_argument("--ks", default="1,2,4,8,16", help="pack sizes (default 1,2,4,8,16)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per model and step (default: 8 CPU, 32 GPU)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per row (default: 128 CPU, 512 GPU)")
    parser.add_argument("--vocab", type=int, default=None, help="vocabulary (default: 2048 CPU, 32768 GPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 CPU, 30 GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 3 CPU, 10 GPU)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="time each K this many times, keep each path's fastest (default: 3 CPU, 1 GPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="torch.compile both paths (default: on CUDA only)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads of the pack, one per group of members (default: every core, as a "
                             "study runs a pack)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    pack_threads = args.threads or len(os.sched_getaffinity(0))
    thread_counts = {1, pack_threads} if not gpu else {torch.get_num_threads()}
    batch, seq_len = args.batch_size or (32 if gpu else 8), args.seq_len or (512 if gpu else 128)
    vocab, steps, warmup = args.vocab or (32768 if gpu else 2048), args.steps or (30 if gpu else 20), \
        args.warmup or (10 if gpu else 3)
    compile_model = gpu if args.compile == "auto" else args.compile == "on"
    rounds = args.rounds or (1 if gpu else 3)
    cfg = GPTConfig(vocab_size=vocab, **{**PRESETS[args.preset], "max_seq_len": max(seq_len, 1024)})

    for k in [int(x) for x in args.ks.split(",")]:
        gen = torch.Generator().manual_seed(k)
        rows = [[torch.randint(0, vocab, (batch, seq_len + 1), generator=gen) for _ in range(warmup + steps)]
                for _ in range(k)]
        models = []
        for m in range(k):
            torch.manual_seed(m)
            models.append(GPT(cfg).to(device))
        pack = PackedGPT(models, [{"cpu": torch.get_rng_state(), **({"cuda": torch.cuda.get_rng_state(device)}
                                                                      if gpu else {})}] * k).to(device)
        packed_rows = [torch.stack([rows[m][i] for m in range(k)]) for i in range(warmup + steps)]

        def pack_loss(mod, b, s):
            losses = mod(b[..., :-1], b[..., 1:])
            return {"loss": losses.sum(), "member_loss": losses.detach()}

        single = min(thread_counts)  # the threads a study gives one run
        seq_times: dict[int, list[float]] = {t: [] for t in thread_counts}
        pack_times, diff = [], 0.0
        for _ in range(rounds):  # every round trains the same models from the same weights on the same rows
            for threads in sorted(thread_counts):
                if not gpu:
                    torch.set_num_threads(threads)
                seconds_all, seq_losses = 0.0, []
                for m, model in enumerate(models):
                    model = copy.deepcopy(model)
                    seconds, losses = _train(model, rows[m], lambda mod, b, s: {"loss": mod(b[:, :-1], b[:, 1:])},
                                             clip=None, steps=steps, device=device, compile_model=compile_model)
                    seconds_all += seconds
                    seq_losses.append(losses)
                seq_times[threads].append(seconds_all)
            if not gpu:
                torch.set_num_threads(pack_threads)
            packed = copy.deepcopy(pack)
            with member_threads(packed, compiled=compile_model):  # as train_pack runs it
                pack_seconds, pack_losses = _train(packed, packed_rows, pack_loss, clip=clip_per_member,
                                                   steps=steps, device=device, compile_model=compile_model)
            members = [x if isinstance(x, list) else [x] for x in pack_losses]  # K = 1 logs a number, not a list
            for m in range(k):  # the same logged steps on both paths
                diff = max(diff, *(abs(step[m] - alone) for step, alone in zip(members, seq_losses[m], strict=True)))
            pack_times.append(pack_seconds)
        tokens = k * steps * batch * seq_len
        seq_best, pack_best = min(seq_times[single]), min(pack_times)
        flops = cfg.flops_per_token(seq_len)
        line = {"preset": args.preset, "device": torch.cuda.get_device_name(device) if gpu else "cpu",
                "k": k, "batch_size": batch, "seq_len": seq_len, "steps": steps, "compile": compile_model,
                "pack_tokens_per_s": round(tokens / pack_best, 1),
                "sequential_tokens_per_s": round(tokens / seq_best, 1),
                "ratio": round(seq_best / pack_best, 3), "max_abs_loss_diff": float(f"{diff:.3g}"),
                "flops_per_token": flops, "pack_tflops_per_s": float(f"{tokens / pack_best * flops / 1e12:.4g}"),
                "sequential_tflops_per_s": float(f"{tokens / seq_best * flops / 1e12:.4g}"),
                "round_ratios": [round(a / b, 3) for a, b in zip(seq_times[single], pack_times)]}
        if gpu:
            line.update({f"{path}_mfu": round(line[f"{path}_tflops_per_s"] * 1e12 / GPU_PEAK_FLOPS, 4)
                         for path in ("pack", "sequential")})
        else:
            line.update(sequential_threads=single, pack_threads=pack_threads,
                        ratio_same_threads=round(min(seq_times[pack_threads]) / pack_best, 3))
        print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
