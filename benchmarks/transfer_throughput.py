"""Throughput of the transfer measures: solution scoring and adaptation finetuning. Prints one JSON line.

Usage::

    python benchmarks/transfer_throughput.py                    # a random `tiny` GPT (CPU, seconds)
    python benchmarks/transfer_throughput.py --model RUN_OR_HF_DIR --device cuda

Each figure is compared with a plain reference measured in the same run, on the same model
and the same inputs (ratios, not absolute times: these machines are noisy):

- ``solution_examples_per_s``: HumanEval-X solutions scored by the ``solutions`` benchmark
  (:func:`codemix.evals.solutions.score_solutions`: batched, one forward per distinct prompt)
  vs ``reference_solution_examples_per_s``: one full forward pass per (prompt, solution), the
  way a straightforward loop over ``model(input_ids).logits`` does it. Their log-likelihoods
  must agree (``max_abs_logprob_diff``).
- ``adapt_sequences_per_s``: :func:`codemix.train.finetune.continue_pretraining` on Exercism's
  Rust track vs ``reference_adapt_sequences_per_s``: a hand-written loop over the same
  sequences (AdamW, ``model(input_ids, labels=...)``, backward, step) — the ratio is what the
  one training loop costs over bare PyTorch.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from eval_throughput import add_model_options, model_path, setup_torch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=24, help="HumanEval-X problems per language (default 24)")
    parser.add_argument("--batch-size", type=int, default=8,
                        help="solution scoring batch (default 8, the config's; on a CPU 1 is fastest: no padding)")
    parser.add_argument("--tokens", type=int, default=20_000, help="adaptation budget in tokens (default 20000)")
    parser.add_argument("--seq-len", type=int, default=128, help="adaptation sequence length (default 128)")
    add_model_options(parser)
    args = parser.parse_args(argv)
    setup_torch(args)

    import torch

    from codemix.config import SolutionsEvalConfig
    from codemix.evals.adapt import load_corpus, split_corpus
    from codemix.evals.handle import load_handle
    from codemix.evals.solutions import load_solutions, score_solutions
    from codemix.train.finetune import continue_pretraining

    with tempfile.TemporaryDirectory() as tmp:
        path = model_path(args, Path(tmp))
        handle = load_handle(path, device=args.device, batch_size=16)
        model = handle.model

        # solution scoring: the benchmark's path vs one full forward pass per request
        sols = load_solutions(SolutionsEvalConfig(sets=["humaneval_x"], langs=["python", "rust", "go"],
                                                  limit=args.problems))
        score_solutions(handle, sols[:4], task="solutions", batch_size=args.batch_size)  # warm-up
        start = time.perf_counter()
        _, records = score_solutions(handle, sols, task="solutions", batch_size=args.batch_size)
        ours = len(sols) / (time.perf_counter() - start)

        @torch.no_grad()
        def naive(s) -> float:
            ctx = [handle.start_id] + handle.encode(s.prompt)
            cont = handle.encode(s.solution)
            ids = torch.tensor([ctx + cont], device=handle.device)
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
            return float(logp[torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1), torch.tensor(cont)].sum())

        naive(sols[0])
        start = time.perf_counter()
        reference = [naive(s) for s in sols]
        ref = len(sols) / (time.perf_counter() - start)
        diff = max(abs(r["logprob"] - v) for r, v in zip(records, reference))

        # adaptation finetuning: the one training loop vs a bare PyTorch loop on the same sequences
        train, _ = split_corpus(load_corpus("exercism_rust"), heldout=0.2, seed=0)
        texts = [d.text for d in train]
        state = {k: v.clone() for k, v in model.state_dict().items()}
        start = time.perf_counter()
        steps = continue_pretraining(handle, texts, tokens=args.tokens, seq_len=args.seq_len, batch_size=8,
                                     lr=1e-4, warmup_steps=0, out_dir=Path(tmp) / "adapt")
        adapt_s = time.perf_counter() - start
        sequences = -(-args.tokens // args.seq_len)

        model.load_state_dict(state)
        ids = []
        for t in texts:
            ids += handle.encode(t) + [handle.eos_id]
            if len(ids) >= args.tokens:
                break
        windows = [[handle.start_id] + ids[i:i + args.seq_len] for i in range(0, args.tokens, args.seq_len)]
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0)
        start = time.perf_counter()
        for i in range(0, len(windows), 8):
            batch = windows[i:i + 8]
            width = max(len(w) for w in batch)
            x = torch.full((len(batch), width), handle.pad_id, dtype=torch.long)
            labels = torch.full_like(x, -100)
            for r, w in enumerate(batch):
                x[r, : len(w)] = torch.tensor(w)
                labels[r, 1: len(w)] = torch.tensor(w[1:])
            loss = model(input_ids=x.to(handle.device), labels=labels.to(handle.device)).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        ref_adapt_s = time.perf_counter() - start
        model.eval()

    print(json.dumps({
        "benchmark": "transfer_throughput", "device": str(handle.device), "params": sum(p.numel() for p in model.parameters()),
        "solutions": len(sols), "batch_size": args.batch_size, "solution_examples_per_s": round(ours, 2),
        "reference_solution_examples_per_s": round(ref, 2), "solution_ratio": round(ours / ref, 3),
        "max_abs_logprob_diff": round(diff, 5),
        "adapt_tokens": args.tokens, "adapt_steps": steps, "adapt_sequences_per_s": round(sequences / adapt_s, 2),
        "reference_adapt_sequences_per_s": round(sequences / ref_adapt_s, 2),
        "adapt_ratio": round(ref_adapt_s / adapt_s, 3),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
