"""Models trained the way a user trains one: ``codemix train STUDY.yaml`` (a job of the study's graph)."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path

import pytest
import yaml


@pytest.fixture(scope="session")
def train_in_study():
    """``train_in_study(raw, study_file, out, *, setting, m, steps) -> run directory``, for module fixtures.

    Writes the study ``raw`` (with ``out``) to ``study_file`` and runs ``codemix train`` on it with
    ``--set pretrain.max_steps=STEPS``; returns the job directory of the run, whose final checkpoint
    records the model's study labels and where the study's held-out documents are.
    """
    return _train_in_study


def _train_in_study(raw: dict, study_file: Path, out: Path, *, setting: str, m: float, steps: int) -> Path:
    from codemix.cli import main  # imported here: the root conftest sets HF_* before transformers loads

    study_file.write_text(yaml.safe_dump({**raw, "out": str(out)}))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["train", str(study_file), "--setting", setting, "--m", str(m),
                     "--set", f"pretrain.max_steps={steps}"]) == 0
    checkpoint = Path(printed.getvalue().strip().splitlines()[-1])  # printed last: the final checkpoint
    run_dir = checkpoint.parents[1]  # <run>/checkpoints/step-NNNNNNN
    assert run_dir.parent == out / "jobs" / "pretrain", run_dir
    return run_dir


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, data_dir):
    """A real byte-level BPE (vocab 512) trained on a slice of the mirror's English and Python text."""
    from codemix.config import DataConfig
    from codemix.data.tokenizer import build_tokenizer, hf_tokenizer

    cfg = DataConfig.model_validate({
        "heldout_docs": 5, "tokenizer": {"vocab_size": 512, "sample_bytes_per_source": 100_000},
        "sources": [{"name": "c4", "paths": ["nl_text/c4_sample_1000docs.json.gz"], "max_docs": 100},
                    {"name": "python", "lang": "python", "code": True, "paths": ["code/code_python.jsonl.gz"],
                     "max_docs": 60}]})
    return hf_tokenizer(build_tokenizer(cfg, tmp_path_factory.mktemp("tok") / "tokenizer.json"))


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a result table, which has the contract columns (study, setting, m, ..., primary) in order."""
    from codemix.evals.rows import COLUMNS

    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == list(COLUMNS)
    return rows
