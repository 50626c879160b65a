"""Checkpoints on disk, for every architecture: write, verify, find the latest, read, describe.

A checkpoint is a directory ``<run>/checkpoints/step-NNNNNNN`` holding

- ``model.safetensors``: the weights (a tied tensor is stored once, under its first name);
- ``optimizer.pt``: the optimizer state;
- ``config.json``: ``{"codemix": {...}}``: architecture, model config, tokenizer hash,
  sequence length, and what the model is in its study (:class:`CheckpointInfo`);
- ``tokenizer.json``;
- ``trainer_state.json``, written last: step, tokens, RNG and loader state, and the
  sha256 of every other file, so a checkpoint is either whole and verifiable or absent.

This module knows files, not training: gathering sharded state dicts (FSDP) is
``codemix.train.distributed``'s business, deciding when to save is the loop's.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file
from torch import nn

from codemix.config import Labels
from codemix.errors import CheckpointError
from codemix.io import atomic_dir, sha256_file

__all__ = [
    "CHECKPOINT_FILES",
    "CheckpointInfo",
    "checkpoint_dirs",
    "checkpoint_info",
    "checkpoint_problem",
    "is_codemix_checkpoint",
    "latest_checkpoint",
    "read_weights",
    "resolve_checkpoint",
    "tied_aliases",
    "write_checkpoint",
]

CHECKPOINT_FILES = ("model.safetensors", "config.json", "optimizer.pt", "tokenizer.json")


# ----------------------------------------------------------------------------- finding checkpoints


def _step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:07d}"


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """Checkpoint directories of a run (or of a ``checkpoints/`` directory), oldest first."""
    root = Path(run_dir)
    root = root / "checkpoints" if (root / "checkpoints").is_dir() else root
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and p.name[5:].isdigit())


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why ``ckpt`` cannot be used (missing file, bad JSON, checksum mismatch), or None if it is whole."""
    state_file = ckpt / "trainer_state.json"
    if not state_file.is_file():
        return "trainer_state.json is missing (the write did not finish)"
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"trainer_state.json is not valid JSON ({err})"
    for name, digest in state.get("files", {}).items():
        if not (ckpt / name).is_file():
            return f"{name} is missing"
        if sha256_file(ckpt / name) != digest:
            return f"{name} does not match its recorded sha256 (corrupt or modified)"
    return None


def latest_checkpoint(path: str | Path) -> Path:
    """The newest usable checkpoint for a checkpoint, ``checkpoints/`` or run directory.

    A corrupt newest checkpoint is reported (warning) and the previous one used; a
    :class:`CheckpointError` is raised when none is usable.
    """
    path = Path(path)
    if (path / "trainer_state.json").exists() or (path / "model.safetensors").exists():
        problem = checkpoint_problem(path)
        if problem:
            raise CheckpointError(f"checkpoint {path} is unusable: {problem}; use an earlier one from {path.parent}")
        return path
    candidates = checkpoint_dirs(path)
    for ckpt in reversed(candidates):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return ckpt
        Console(stderr=True).print(f"[yellow]warning:[/yellow] checkpoint {ckpt} is unusable ({problem}); "
                                   "trying the previous one", highlight=False)
    raise CheckpointError(f"no usable checkpoint under {path}: expected checkpoints/step-NNNNNNN directories "
                          f"with trainer_state.json, found {len(candidates)} candidate(s); train first "
                          "(`codemix train`) or pass a checkpoint directory")


def is_codemix_checkpoint(path: Path) -> bool:
    """A checkpoint or run directory written by codemix (not a Hugging Face directory)."""
    if (path / "checkpoints").is_dir() or (path / "trainer_state.json").is_file():
        return True
    try:
        return "codemix" in json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False


def resolve_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any]]:
    """A checkpoint directory (the latest one for a run directory) and its ``codemix`` config."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint path {path} does not exist; pass a checkpoint directory "
                              "(run_dir/checkpoints/step-NNNNNNN) or a run directory")
    ckpt = latest_checkpoint(path)
    try:
        config = json.loads((ckpt / "config.json").read_text())["codemix"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError) as err:
        raise CheckpointError(f"{ckpt}/config.json is missing or lacks the `codemix` section ({err}); "
                              "is this a codemix checkpoint?") from None
    return ckpt, config


# ----------------------------------------------------------------------------- what a checkpoint is


@dataclass(frozen=True)
class CheckpointInfo:
    """What a codemix checkpoint records about itself."""

    path: Path
    """The checkpoint directory."""
    arch: str
    seq_len: int | None
    labels: tuple[Labels, ...] = ()
    """The study labels this model stands for (several when one model serves several mixtures,
    e.g. the language-only m = 0 model); empty for a model trained outside a study."""
    heldout: dict[str, Path] = field(default_factory=dict)
    """Source name -> held-out stream directory of the study it was trained in (those that still exist)."""
    study_root: Path | None = None
    """The out directory of the study it was trained in, when it is still there."""


def checkpoint_info(path: str | Path) -> CheckpointInfo:
    """Describe a codemix checkpoint (or the latest of a run directory) from its ``config.json``.

    Paths of the study it came from are recorded relative to the checkpoint, so they are
    found again as long as the study directory is moved as a whole.
    """
    ckpt, config = resolve_checkpoint(path)
    seq_len = config.get("seq_len")
    root = ckpt / config["study_root"] if config.get("study_root") else None
    root = root.resolve() if root is not None and root.is_dir() else None
    heldout = {}
    if root is not None:
        for source, rel in (config.get("heldout") or {}).items():
            if (root / rel / "docs.jsonl.gz").is_file():
                heldout[source] = root / rel
    return CheckpointInfo(path=ckpt, arch=str(config.get("arch")),
                          seq_len=int(seq_len) if isinstance(seq_len, int) and seq_len > 0 else None,
                          labels=tuple(Labels.from_dict(d) for d in config.get("labels") or ()),
                          heldout=heldout, study_root=root)


# ----------------------------------------------------------------------------- writing and reading


def tied_aliases(module: nn.Module) -> dict[str, str]:
    """Parameters that are the same tensor as an earlier one (tied embeddings): alias -> first name.

    Checkpoints store a tied tensor once, under its first name.
    """
    seen: dict[int, str] = {}
    aliases = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            aliases[name] = seen[id(p)]
        else:
            seen[id(p)] = name
    return aliases


def _json(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    return str(obj)


def write_checkpoint(run_dir: str | Path, *, step: int, weights: dict[str, torch.Tensor],
                     optimizer_state: dict[str, Any], codemix_config: dict[str, Any],
                     trainer_state: dict[str, Any], tokenizer_path: str | Path, keep: int = 2) -> Path:
    """Write ``run_dir/checkpoints/step-NNNNNNN`` atomically, then keep only the last ``keep``.

    ``weights`` is the full state dict without tied aliases (see :func:`tied_aliases`).
    The files go into a temporary directory renamed into place once complete. Out of disk
    space, the partial copy is removed, older checkpoints are untouched, and a
    :class:`CheckpointError` says so.
    """
    run_dir = Path(run_dir)
    target = _step_dir(run_dir, step)
    tokenizer_path = Path(tokenizer_path)
    tokenizer_json = tokenizer_path / "tokenizer.json" if tokenizer_path.is_dir() else tokenizer_path
    try:
        with atomic_dir(target, overwrite=True) as tmp:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"),
                      metadata={"format": "pt"})
            torch.save(optimizer_state, tmp / "optimizer.pt")
            (tmp / "config.json").write_text(json.dumps({"codemix": codemix_config}, indent=2, default=_json))
            shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
            files = {name: sha256_file(tmp / name) for name in CHECKPOINT_FILES}
            (tmp / "trainer_state.json").write_text(json.dumps({**trainer_state, "files": files}, default=_json))
    except OSError as err:
        good = [p for p in checkpoint_dirs(run_dir) if checkpoint_problem(p) is None]
        kept = f"the last good checkpoint, {good[-1].name}, is intact" if good else "no earlier checkpoint exists"
        what = "out of disk space" if err.errno == errno.ENOSPC else f"OS error ({err})"
        raise CheckpointError(f"could not write checkpoint {target.name} under {target.parent}: {what}; {kept}. "
                              "Free space (or fix the directory) and run again: training resumes from the last "
                              "good checkpoint") from err
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def read_weights(ckpt: str | Path, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The weights of a checkpoint; with ``model``, its tied aliases restored and checked complete."""
    ckpt = Path(ckpt)
    weights = load_file(str(ckpt / "model.safetensors"))
    if model is None:
        return weights
    for alias, name in tied_aliases(model).items():  # tied tensors were saved once
        if name in weights:
            weights[alias] = weights[name]
    missing = sorted(set(model.state_dict()) - set(weights))
    if missing:
        raise CheckpointError(f"{ckpt}/model.safetensors lacks {missing[:5]}{'...' if len(missing) > 5 else ''}; "
                              "it was written for a different model shape (compare its config.json)")
    return weights


def relative_to(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` (``..`` allowed), for records that move with their directory."""
    return os.path.relpath(Path(path).resolve(), Path(start).resolve())
