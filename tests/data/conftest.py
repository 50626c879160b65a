"""One small study on real mirror corpora, built once per test session.

Two language sources (C4, WikiText-2 lines) and three code sources: Python and Rust train
(90/10), Go is evaluation-only. A tiny vocabulary and budget keep the whole build to a
few seconds on two cores.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

import pytest

from codemix.config import StudyConfig, validate_study
from codemix.study.commands import StudyData, build_data

SEQ_LEN = 64
N_TOKENS = 12_000


def small_study_raw(**mixtures: Any) -> dict[str, Any]:
    return {
        "name": "datatest",
        "out": "unused",
        "data": {
            "seq_len": SEQ_LEN,
            "heldout_docs": 5,
            "workers": 2,
            "tokenizer": {"vocab_size": 512, "sample_bytes_per_source": 60_000},
            "sources": [
                {"name": "c4", "kind": "jsonl", "lang": "en", "max_docs": 200,
                 "paths": ["nl_text/c4_sample_1000docs.json.gz", "nl_text/c4_en_train00000_first1000.jsonl.gz"]},
                {"name": "wiki", "kind": "text", "lang": "en", "split": "line", "max_docs": 300,
                 "paths": ["nl_text/wikitext2_valid.txt.gz"]},
                {"name": "python", "kind": "jsonl", "lang": "python", "code": True, "max_docs": 60,
                 "paths": ["code/code_python.jsonl.gz"]},
                {"name": "rust", "kind": "jsonl", "lang": "rust", "code": True, "max_docs": 40,
                 "paths": ["code/code_rust.jsonl.gz"]},
                {"name": "go", "kind": "jsonl", "lang": "go", "code": True, "max_docs": 20,
                 "paths": ["code/code_go.jsonl.gz"]},
            ],
        },
        "mixtures": {
            "settings": ["competitive", "additive"],
            "m": [0.0, 0.2, 0.4, 0.5],
            "baselines": True,
            "n_tokens": N_TOKENS,
            "code_weights": {"python": 0.9, "rust": 0.1},
            "lang_weights": {"c4": 1.0, "wiki": 1.0},
            **mixtures,
        },
    }


@pytest.fixture(scope="session")
def study(data_dir: Path) -> StudyConfig:
    return validate_study(small_study_raw())


@pytest.fixture(scope="session")
def built(study: StudyConfig, tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> StudyData:
    """The small study's tokenizer, streams and mixtures, built once for all xdist workers.

    The first worker builds under a lock in the directory the workers share; the others
    wait, then find every job of the study's graph done and reuse it.
    """
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if worker_id != "master" else base
    with open(shared / "codemix-data-built.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return build_data(study.model_copy(update={"out": str(shared / "codemix-data-built")}))
