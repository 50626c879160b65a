"""How much faster a code row gets its identifiers from stream annotations than from parsing the row.

Before annotations, CodeT5 pretraining parsed every code row of every batch with tree-sitter
on the main thread (``token_identifiers``, ``token_doc_pairs``). Now the data stage annotates
each code stream once (``build_annotations``, worker processes) and a row slices arrays
(``StreamAnnotations.identifiers``, ``.doc_pairs``).

This trains a byte-level BPE on the mirror's Python, Rust and Go code, builds one stream per
language, annotates them (timed: the one-off cost, in stream tokens per second), then takes
the same rows of ``seq_len`` tokens from the streams, at offsets that are multiples of
``seq_len`` as a mixture cuts them, and times both ways on them in the same run (best of
``--repeat``). Prints one JSON line: rows/s of both, their ratio, and the share of tokens
whose identifier tag both ways agree on (rows cut from documents parse a little differently).
It also times what a CodeT5 training step does on the CPU for a batch of ``--batch-size``
code rows — draw objectives, mask, corrupt, collate (``build_examples`` + ``collate``, CodeT5's
first-phase weights plus bimodal) — both ways: ``batch_ms_*`` is to be set against the GPU
step it must hide behind (≈ 30 ms for codet5-small at batch 32 on an H100).

    CODEMIX_DATA=../shared/data .venv/bin/python benchmarks/annotation_throughput.py [--rows 600]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from codemix.config import DataConfig, SourceConfig
from codemix.data.annotations import StreamAnnotations, build_annotations
from codemix.data.identifiers import TokenBytes, token_doc_pairs, token_identifiers
from codemix.data.streams import build_stream
from codemix.data.tokenizer import build_tokenizer, load_tokenizer
from codemix.io import available_cpus
from codemix.objectives.codet5 import RowAnnotator, Vocab, build_examples, collate

LANGS = ("python", "rust", "go")


def best_time(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=600, help="code rows, split equally over Python, Rust and Go")
    parser.add_argument("--seq-len", type=int, default=568, help="tokens per row (default 568, CodeT5's inputs)")
    parser.add_argument("--stream-tokens", type=int, default=1_000_000, help="tokens per language's stream")
    parser.add_argument("--vocab-size", type=int, default=32768, help="BPE vocabulary (default 32768, as the studies)")
    parser.add_argument("--workers", type=int, default=0, help="annotation worker processes (0: one per CPU)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over the rows; the best is reported")
    parser.add_argument("--batch-size", type=int, default=32, help="code rows per training batch (default 32)")
    args = parser.parse_args()
    os.environ.setdefault("CODEMIX_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

    per_lang = args.rows // len(LANGS)
    sources = [SourceConfig(name=lang, lang=lang, code=True, paths=[f"code/code_{lang}.jsonl.gz"]) for lang in LANGS]
    data = DataConfig(seq_len=args.seq_len, heldout_docs=0, sources=sources,
                      tokenizer={"vocab_size": args.vocab_size, "sample_bytes_per_source": 3_000_000})
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tok_path = build_tokenizer(data, tmp / "tokenizer.json")
        token_bytes = TokenBytes(load_tokenizer(tok_path))
        streams = {s.lang: build_stream(s, data, tok_path, tmp / s.name, budget_tokens=args.stream_tokens,
                                        progress=False) for s in sources}

        t0 = time.perf_counter()
        for lang, stream in streams.items():
            build_annotations(stream.dir, lang, tok_path, workers=args.workers or None, progress=False)
        build_s = time.perf_counter() - t0
        found = {lang: StreamAnnotations(stream.dir) for lang, stream in streams.items()}

        rows = []  # (lang, lo, tokens)
        for lang, stream in streams.items():
            n_seq = stream.n_tokens // args.seq_len
            for k in np.linspace(0, n_seq - 1, per_lang).astype(int).tolist():
                lo = k * args.seq_len
                rows.append((lang, lo, np.asarray(stream.tokens[lo:lo + args.seq_len], dtype=np.int64)))

        def parse_rows() -> None:
            for lang, _, row in rows:
                token_identifiers(row, lang, token_bytes)
                token_doc_pairs(row, lang, token_bytes)

        def slice_rows() -> None:
            for lang, lo, _ in rows:
                found[lang].identifiers(lo, lo + args.seq_len)
                found[lang].doc_pairs(lo, lo + args.seq_len)

        parse_rows()  # warm-up: grammars, queries and pages of the memory maps load once
        slice_rows()
        parse_s, slice_s = best_time(parse_rows, args.repeat), best_time(slice_rows, args.repeat)
        agree = np.mean([np.mean(token_identifiers(row, lang, token_bytes).tagged
                                 == found[lang].identifiers(lo, lo + args.seq_len).tagged)
                         for lang, lo, row in rows])
        n_tokens = sum(s.n_tokens for s in streams.values())

        vocab = Vocab(eos=0, pad=1, sentinels=tuple(range(3, 103)))  # ids only label inputs here
        batches = [rows[i:i + args.batch_size] for i in range(0, len(rows) - args.batch_size + 1, args.batch_size)]

        def build_batches(annotated: bool) -> None:
            for step, batch in enumerate(batches):
                tokens = np.stack([row for _, _, row in batch])
                langs = [lang for lang, _, _ in batch]
                windows = [(found[lang], lo) for lang, lo, _ in batch] if annotated else None
                examples = build_examples(tokens, langs, weights=[1, 1, 1, 1], vocab=vocab,
                                          rows=RowAnnotator(tokens, langs, token_bytes, windows), noise_density=0.15,
                                          mean_span=3.0, target_len=256, rng=np.random.default_rng(step))
                collate(examples, pad_id=vocab.pad)

        batch_parsed_s = best_time(lambda: build_batches(False), args.repeat) / len(batches)
        batch_annotated_s = best_time(lambda: build_batches(True), args.repeat) / len(batches)

    print(json.dumps({
        "benchmark": "annotation_throughput", "rows": len(rows), "seq_len": args.seq_len,
        "vocab_size": args.vocab_size, "cpus": available_cpus(), "stream_tokens": n_tokens,
        "build_tokens_per_s": round(n_tokens / build_s), "build_s": round(build_s, 2),
        "row_parse_rows_per_s": round(len(rows) / parse_s, 1),
        "row_parse_ms_per_row": round(1e3 * parse_s / len(rows), 3),
        "annotated_rows_per_s": round(len(rows) / slice_s, 1),
        "annotated_ms_per_row": round(1e3 * slice_s / len(rows), 4),
        "speedup": round(parse_s / slice_s, 1), "tagged_agreement": round(float(agree), 4),
        "batch_size": args.batch_size, "batch_ms_parsed": round(1e3 * batch_parsed_s, 2),
        "batch_ms_annotated": round(1e3 * batch_annotated_s, 2),
        "batch_speedup": round(batch_parsed_s / batch_annotated_s, 1),
    }))


if __name__ == "__main__":
    main()
