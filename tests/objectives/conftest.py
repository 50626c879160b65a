"""A small NL + Python/Rust/Go study on real mirror corpora, built once for the objective tests.

The tokenizer is the study's own byte-level BPE (the one the objectives run on in a real
study), trained on a sample of the same corpora; a tiny budget keeps the build to seconds.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from codemix.config import StudyConfig, validate_study
from codemix.study.commands import StudyData, build_data

SEQ_LEN = 128


def t5_study_raw(out: str) -> dict[str, Any]:
    code = [
        {"name": lang, "kind": "jsonl", "lang": lang, "code": True, "max_docs": 40,
         "paths": [f"code/code_{lang}.jsonl.gz"]}
        for lang in ("python", "rust", "go")
    ]
    return {
        "name": "t5test",
        "out": out,
        "data": {
            "seq_len": SEQ_LEN,
            "heldout_docs": 4,
            "workers": 2,
            "tokenizer": {"vocab_size": 2048, "sample_bytes_per_source": 150_000},
            "sources": [{"name": "c4", "kind": "jsonl", "lang": "en", "max_docs": 150,
                         "paths": ["nl_text/c4_en_train00000_first1000.jsonl.gz"]}, *code],
        },
        "mixtures": {"settings": ["competitive"], "m": [0.5], "baselines": False, "n_tokens": 40_000,
                     "code_weights": {"python": 0.5, "rust": 0.2, "go": 0.3}},
        "model": {"arch": "t5", "preset": "tiny"},
        "pretrain": {"batch_size": 8, "lr": 3.0e-3, "warmup_steps": 5, "max_steps": 6, "eval_every": 3,
                     "eval_batches": 1, "log_every": 1},
        "seeds": [0],
    }


@pytest.fixture(scope="session")
def t5_study(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[StudyConfig, StudyData]:
    out = tmp_path_factory.mktemp("t5study")
    cfg = validate_study(t5_study_raw(str(out)))
    return cfg, build_data(cfg)


@pytest.fixture(scope="session")
def tokenizer(t5_study):
    from codemix.data.tokenizer import load_tokenizer

    return load_tokenizer(t5_study[1].tokenizer_path)


@pytest.fixture(scope="session")
def token_bytes(tokenizer):
    from codemix.data.identifiers import TokenBytes

    return TokenBytes(tokenizer)


def corpus_docs(data_dir: Path, lang: str, n: int) -> list[dict[str, str]]:
    """The first ``n`` records of a code corpus of the mirror."""
    out = []
    with gzip.open(data_dir / "code" / f"code_{lang}.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line))
            if len(out) == n:
                break
    return out


def corpus_doc(data_dir: Path, lang: str, path: str) -> str:
    """The text of the record with ``path`` in a code corpus of the mirror."""
    with gzip.open(data_dir / "code" / f"code_{lang}.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            if record["path"] == path:
                return record["text"]
    raise AssertionError(f"{path} is not in code_{lang}.jsonl.gz")


def mixture_batches(data: StudyData, cfg: StudyConfig, *, batch_size: int, seed: int = 0,
                    ) -> Iterator[dict[str, torch.Tensor]]:
    """Training batches ``{"tokens", "source"}`` of the study's mixture, as `codemix train` reads them, forever."""
    from codemix.data.loader import MixtureLoader

    loader = MixtureLoader(data.mixture_dir("competitive", 0.5), batch_size=batch_size, seed=seed,
                           with_sources=True)
    while True:
        yield from loader
