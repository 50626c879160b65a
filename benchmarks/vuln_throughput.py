"""Throughput of the `vuln` benchmark: classification finetuning and scoring. Prints one JSON line.

Usage::

    python benchmarks/vuln_throughput.py                    # a random `tiny` GPT (CPU, seconds)
    python benchmarks/vuln_throughput.py --model RUN_OR_HF_DIR --device cuda --max-tokens 512

Each figure is compared with a plain reference measured in the same run, on the same model
and the same Juliet C/Java functions (ratios, not absolute times: these machines are noisy):

- ``finetune_examples_per_s``: :func:`codemix.evals.vuln.train_classifier` (the linear head on
  pooled hidden states, finetuned end to end through the one training loop) vs
  ``reference_finetune_examples_per_s``: a hand-written loop over the same batches (AdamW,
  forward, cross-entropy, backward, step) — the ratio is what the one loop costs over bare PyTorch.
- ``score_examples_per_s``: the benchmark's scoring (length-sorted batches) vs
  ``reference_score_examples_per_s``: one forward pass per example. Their probabilities must
  agree (``max_abs_prob_diff``).
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
    parser.add_argument("--steps", type=int, default=20, help="finetuning steps (default 20)")
    parser.add_argument("--batch-size", type=int, default=16, help="finetuning batch (default 16)")
    parser.add_argument("--score", type=int, default=256, help="examples scored (default 256)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per example (default 128)")
    add_model_options(parser)
    args = parser.parse_args(argv)
    setup_torch(args)

    import numpy as np
    import torch

    from codemix.config import FinetuneConfig, VulnEvalConfig
    from codemix.data.vuln import load_sets
    from codemix.evals.handle import load_handle
    from codemix.evals.vuln import Classifier, _collate, encode_examples, train_classifier

    examples = load_sets(["juliet_c", "juliet_java"])
    rng = np.random.default_rng(0)
    picked = [examples[i] for i in rng.permutation(len(examples))[: args.steps * args.batch_size + args.score]]
    train, scored = picked[: args.steps * args.batch_size], picked[args.steps * args.batch_size:]
    cfg = VulnEvalConfig(max_tokens=args.max_tokens, balance="none", finetune=FinetuneConfig(
        steps=args.steps, batch_size=args.batch_size, lr=1e-4, warmup_steps=0))
    with tempfile.TemporaryDirectory() as tmp:
        path = model_path(args, Path(tmp))
        handle = load_handle(path, device=args.device)
        model = handle.model
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        max_tokens = min(args.max_tokens, handle.train_length or handle.max_length, handle.max_length)
        seqs = encode_examples(handle, train, max_tokens)
        labels = [e.label for e in train]
        score_seqs = encode_examples(handle, scored, max_tokens)
        device = torch.device(handle.device)

        # classification finetuning: the benchmark's path vs a bare loop over the same number of examples
        start = time.perf_counter()
        score, info = train_classifier(handle, seqs, labels, cfg, out_dir=Path(tmp) / "ours")
        ours_train = args.steps * args.batch_size / (time.perf_counter() - start)

        start = time.perf_counter()
        ours = score(score_seqs)
        ours_score = len(score_seqs) / (time.perf_counter() - start)

        torch.manual_seed(cfg.seed)
        clf = Classifier(model, seq2seq=bool(handle.is_seq2seq)).to(device)
        clf.head.load_state_dict(info["head"].state_dict())  # the backbone is the finetuned model itself
        clf.eval()
        with torch.no_grad():  # one forward per example, the trained weights
            start = time.perf_counter()
            reference = [float(torch.softmax(clf(torch.tensor([s], device=device),
                                                 torch.ones(1, len(s), dtype=torch.long, device=device)).float(),
                                             -1)[0, 1]) for s in score_seqs]
            ref_score = len(score_seqs) / (time.perf_counter() - start)
        diff = float(np.max(np.abs(np.asarray(reference) - ours)))

        model.load_state_dict(state)
        torch.manual_seed(cfg.seed)
        clf = Classifier(model, seq2seq=bool(handle.is_seq2seq)).to(device)
        optimizer = torch.optim.AdamW(clf.parameters(), lr=1e-4, weight_decay=0.0)
        clf.train()
        order = rng.permutation(len(seqs))
        start = time.perf_counter()
        for i in range(0, args.steps * args.batch_size, args.batch_size):
            chunk = order[i:i + args.batch_size]
            ids, mask = _collate([seqs[j] for j in chunk], handle.pad_id)
            y = torch.tensor([labels[j] for j in chunk], device=device)
            loss = torch.nn.functional.cross_entropy(clf(ids.to(device), mask.to(device)), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(clf.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        ref_train = args.steps * args.batch_size / (time.perf_counter() - start)
        model.load_state_dict(state)

    print(json.dumps({
        "benchmark": "vuln_throughput", "device": str(handle.device), "params": sum(p.numel() for p in model.parameters()),
        "max_tokens": max_tokens, "steps": args.steps, "batch_size": args.batch_size,
        "finetune_examples_per_s": round(ours_train, 2), "reference_finetune_examples_per_s": round(ref_train, 2),
        "finetune_ratio": round(ours_train / ref_train, 3),
        "scored": len(score_seqs), "score_examples_per_s": round(ours_score, 2),
        "reference_score_examples_per_s": round(ref_score, 2), "score_ratio": round(ours_score / ref_score, 3),
        "max_abs_prob_diff": round(diff, 6),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
