"""Shared test setup: real data from ../shared/data, CPU only, one thread per worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_DEFAULT_DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("CODEMIX_DATA", str(_DEFAULT_DATA))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ["CODEMIX_DATA"])
    if not (path / "SOURCES.md").exists():
        pytest.fail(f"CODEMIX_DATA={path} is not the shared data mirror (no SOURCES.md); set CODEMIX_DATA")
    return path


@pytest.fixture(scope="session")
def pretrain_study():
    """``pretrain_study(raw, root, heldout=False) -> (config, run directory)``, for module fixtures.

    Validates a test study with one mixture, builds its data under ``root`` and pretrains it
    (seed 0) into ``root / "run"``; with ``heldout`` the run scores every source's held-out
    stream as it trains.
    """
    return _pretrain_study


def _pretrain_study(raw: dict, root: Path, *, heldout: bool = False):
    # imported here: the HF_* variables above must be set before transformers is imported
    from codemix.config import validate_study
    from codemix.data.mixture import mixture_specs
    from codemix.study.commands import build_data
    from codemix.train.pretrain import train

    cfg = validate_study({**raw, "out": str(root)})
    data = build_data(cfg)
    (spec,) = mixture_specs(cfg.mixtures)
    held = {s.name: data.heldout_dir(s.name) for s in cfg.data.sources} if heldout else {}
    train(cfg, mixture_dir=data.mixture_dir(spec.setting, spec.m, spec.baseline), heldout=held,
          tokenizer_path=data.tokenizer_path, seed=0, out_dir=root / "run")
    return cfg, root / "run"
