"""Compile time: codemix's models compiled block by block vs whole. Prints one JSON line per preset.

``parallelize(compile=True)`` compiles a GPT or a CodeT5 block by block (``compile_regions``):
torch.compile traces one block of each kind and reuses its code for every block of that kind.
This times what that saves: the first training step (forward and backward, almost all of it
compilation) of the same model compiled both ways, each in a fresh process with an empty
Inductor cache, so neither reuses the other's work. ``ratio`` = whole seconds / regions
seconds; ``graphs`` counts the graphs each way traced (dynamo's ``unique_graphs``), and
``max_abs_loss_diff`` compares the two first losses (the same model, the same batch).

    python benchmarks/compile_time.py                                  # 124m, t5-large-dec, codet5-small/-base
    python benchmarks/compile_time.py --presets tiny --backend aot_eager   # seconds: tracing only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

from codemix.models import gpt, t5

#: benchmark preset -> (family, the family's preset), as benchmarks/train_throughput.py names them
PRESETS = {**{name: ("gpt", name) for name in gpt.PRESETS},
           **{name: ("t5", name) for name in t5.PRESETS if name != "tiny"}, "t5-tiny": ("t5", "tiny")}


def _model(preset: str, vocab: int, seq_len: int) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The model and one batch of random tokens (B = 2)."""
    family, name = PRESETS[preset]
    g = torch.Generator().manual_seed(0)
    if family == "gpt":
        model = gpt.GPT(gpt.GPTConfig(vocab_size=vocab, max_seq_len=seq_len, **gpt.PRESETS[name]))
        tokens = torch.randint(0, vocab, (2, seq_len + 1), generator=g)
        return model, {"idx": tokens[:, :-1], "targets": tokens[:, 1:]}
    # a plain namespace for the study's `model` section, as train_throughput.py builds it (no pydantic needed)
    cfg = t5.t5_config(types.SimpleNamespace(arch="t5", preset=name, dropout=0.0), vocab_size=vocab, pad_id=0,
                       eos_id=1)
    batch = {"input_ids": torch.randint(2, vocab, (2, seq_len), generator=g), "attention_mask": None,
             "labels": torch.randint(2, vocab, (2, max(seq_len // 4, 1)), generator=g),
             "tags": torch.randint(0, 2, (2, seq_len), generator=g), "objective": torch.tensor([0, 1]),
             "n_objectives": 2}
    return t5.CodeT5(cfg), batch


def _child(mode: str, preset: str, args: argparse.Namespace) -> dict[str, float]:
    """One first training step, compiled ``mode`` (whole, regions): its seconds, graphs and loss."""
    from torch._dynamo.utils import counters

    device = torch.device(args.device)
    torch.manual_seed(0)
    model, batch = _model(preset, args.vocab, args.seq_len)
    model = model.to(device)
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if mode == "whole":
        fn = torch.compile(model, backend=args.backend)
    else:
        model.compile_regions(backend=args.backend)
        fn = model
    start = time.perf_counter()
    with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
        out = fn(**batch)
        loss = out if isinstance(out, torch.Tensor) else out["seq2seq"].sum() + out["tagging"]
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - start, "graphs": counters["stats"]["unique_graphs"],
            "loss": loss.item()}


def _fresh(mode: str, preset: str, argv: list[str]) -> dict[str, float]:
    """:func:`_child` in a new process with an empty Inductor cache."""
    with tempfile.TemporaryDirectory(prefix="codemix-compile-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TORCHINDUCTOR_FX_GRAPH_CACHE": "0",
               "TORCHINDUCTOR_AUTOGRAD_CACHE": "0"}
        proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--child", mode, preset],
                              env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"compiling {preset} ({mode}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="124m,t5-large-dec,codet5-small,codet5-base",
                        help=f"comma-separated, of {', '.join(sorted(PRESETS))} (default: %(default)s)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor; "
                        "aot_eager: tracing without code generation)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda where there is one)")
    parser.add_argument("--vocab", type=int, default=512, help="vocabulary (default 512: compile time hardly "
                        "depends on shapes)")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per row (default 64)")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "PRESET"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child, args)))
        return 0
    presets = [p for p in args.presets.split(",") if p]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        parser.error(f"unknown preset(s) {unknown}; choose from {sorted(PRESETS)}")
    passed = ["--backend", args.backend, "--device", args.device, "--vocab", str(args.vocab),
              "--seq-len", str(args.seq_len)]
    for preset in presets:
        whole, regions = (_fresh(mode, preset, passed) for mode in ("whole", "regions"))
        print(json.dumps({"benchmark": "compile_time", "preset": preset, "device": args.device,
                          "backend": args.backend, "torch": torch.__version__,
                          "whole_s": round(whole["seconds"], 1), "regions_s": round(regions["seconds"], 1),
                          "ratio": round(whole["seconds"] / regions["seconds"], 2),
                          "graphs": {"whole": whole["graphs"], "regions": regions["graphs"]},
                          "max_abs_loss_diff": float(f"{abs(whole['loss'] - regions['loss']):.3g}")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
