"""Throughput of the evaluation handle: BIG-bench examples/s, perplexity tokens/s. Prints one JSON line.

Usage::

    python benchmarks/eval_throughput.py                       # a random `tiny` GPT (CPU, seconds)
    python benchmarks/eval_throughput.py --model RUN_OR_HF_DIR --device cuda --batch-size 64

Without ``--model`` it builds the eval stage's debug preset: a randomly initialised Llama with
the shape of codemix's ``tiny`` preset (2 layers, d_model 64, 4 heads) and a byte-level BPE
trained on a slice of the data directory (vocab ``--vocab``). Random weights do not change
the cost of a forward pass, so the figures are those of a trained tiny model, except that
generative examples run to ``max_new_tokens`` more often (a random model rarely emits a
newline), which makes ``generative_examples_per_s`` a lower bound.

Measured (each after one warm-up call):

- ``mc_examples_per_s``: BIG-bench multiple-choice examples (all options scored, prompt
  forward shared across options) on ``general_knowledge`` + ``implicatures``;
- ``generative_examples_per_s``: greedy generation on ``arithmetic:2_digit_addition``
  (output regex, stop at newline);
- ``perplexity_tokens_per_s``: rolling log-likelihood over held-out-style Python documents.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def _tiny_model(out: Path, vocab: int) -> Path:
    from codemix.config import DataConfig
    from codemix.data.tokenizer import build_tokenizer, hf_tokenizer
    from codemix.evals.handle import save_tiny_model

    cfg = DataConfig.model_validate({
        "heldout_docs": 0, "tokenizer": {"vocab_size": vocab, "sample_bytes_per_source": 300_000},
        "sources": [{"name": "c4", "paths": ["nl_text/c4_sample_1000docs.json.gz"], "max_docs": 300},
                    {"name": "python", "lang": "python", "code": True, "paths": ["code/code_python.jsonl.gz"],
                     "max_docs": 100}]})
    tok = hf_tokenizer(build_tokenizer(cfg, out / "tok" / "tokenizer.json"))
    return save_tiny_model(out / "model", tok, arch="gpt", d_model=64, n_layers=2, n_heads=4, max_length=1024)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """The options the evaluation benchmarks share: the model (else a random tiny GPT), device, vocabulary, threads."""
    parser.add_argument("--model", help="codemix checkpoint/run directory or HF directory (default: random tiny GPT)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, ...")
    parser.add_argument("--vocab", type=int, default=4096, help="tokenizer vocabulary of the tiny model")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def setup_torch(args: argparse.Namespace) -> None:
    """Tokenizers single-threaded (the benchmark times torch), torch's CPU threads as asked."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def model_path(args: argparse.Namespace, tmp: Path) -> Path:
    """``--model``, else a random tiny GPT written under ``tmp``."""
    return Path(args.model) if args.model else _tiny_model(tmp, args.vocab)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per forward pass (default 16)")
    parser.add_argument("--limit", type=int, default=40, help="examples per BIG-bench task (default 40)")
    parser.add_argument("--docs", type=int, default=8, help="Python documents for perplexity (default 8)")
    parser.add_argument("--window", type=int, default=None,
                        help="perplexity window in tokens (default: the model's training length, else its context)")
    add_model_options(parser)
    args = parser.parse_args(argv)

    setup_torch(args)
    import torch

    from codemix.config import BigbenchEvalConfig
    from codemix.evals import bigbench as bb
    from codemix.evals.benchmark import EvalContext
    from codemix.evals.handle import load_handle
    from codemix.evals.perplexity import file_texts
    from codemix.evals.registry import BENCHMARKS

    with tempfile.TemporaryDirectory() as tmp:
        path = model_path(args, Path(tmp))
        handle = load_handle(path, device=args.device, batch_size=args.batch_size)
        n_params = sum(p.numel() for p in handle.model.parameters())

        def timed(fn):
            fn()  # warm-up (allocations, kernels, tokenizer caches)
            start = time.perf_counter()
            out = fn()
            return out, time.perf_counter() - start

        def bigbench(tasks: list[str]) -> int:
            cfg = BigbenchEvalConfig(tasks=tasks, limit=args.limit, batch_size=args.batch_size)
            rows = BENCHMARKS["bigbench"].evaluate(handle, cfg, EvalContext(out_dir=Path(tmp) / "bb"))
            return sum(r["n"] for r in rows if r["metric"] in ("multiple_choice_grade", "exact_str_match"))

        n_mc, t_mc = timed(lambda: bigbench(["general_knowledge", "implicatures"]))
        (addition,) = bb.select_tasks(bb.load_tasks(), ["arithmetic:2_digit_addition"])
        examples = addition.generative_examples(args.limit)
        _, t_gen = timed(lambda: bb._evaluate_generative(handle, addition, examples, args.batch_size))
        n_gen = len(examples)
        docs = [t for _, t in file_texts("code/code_python.jsonl.gz").docs[: args.docs]]
        scores, t_ppl = timed(lambda: handle.rolling_logprobs(docs, window=args.window,
                                                                       batch_size=args.batch_size))
        n_tokens = sum(s.n_tokens for s in scores)
    result = {
        "benchmark": "eval_throughput", "model": str(args.model or "random tiny gpt (2x64, 4 heads)"),
        "params": n_params, "device": str(handle.device),
        "device_name": torch.cuda.get_device_name(handle.device) if handle.device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(), "batch_size": args.batch_size,
        "mc_examples": n_mc, "mc_examples_per_s": round(n_mc / t_mc, 2),
        "generative_examples": n_gen, "generative_examples_per_s": round(n_gen / t_gen, 2),
        "perplexity_tokens": n_tokens, "perplexity_tokens_per_s": round(n_tokens / t_ppl, 1),
        "window": min(args.window or handle.train_length or handle.max_length, handle.max_length),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
