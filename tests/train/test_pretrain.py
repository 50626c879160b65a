"""The pretraining loop on a real (tiny) mixture: learning, exact resume, checkpoint safety, CLI."""

from __future__ import annotations

import errno
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from codemix.checkpoint import checkpoint_info, checkpoint_problem, latest_checkpoint
from codemix.cli import main
from codemix.config import StudyConfig, load_study, validate_study
from codemix.errors import CheckpointError, DataError
from codemix.models import count_parameters
from codemix.models.gpt import GPT, GPTConfig
from codemix.objectives import TASKS
from codemix.study.commands import StudyData, build_data
from codemix.study.graph import find_pretrain, plan_study
from codemix.train.loop import RunLogger, build_optimizer, lr_at
from codemix.train.pretrain import train

#: A study small enough for CPU tests: 512-token BPE, 64-token sequences, slices of the mirror.
TINY_STUDY = {
    "name": "tiny",
    "data": {
        "seq_len": 64, "heldout_docs": 5,
        "tokenizer": {"vocab_size": 512, "sample_bytes_per_source": 100_000},
        "sources": [
            {"name": "c4", "paths": ["nl_text/c4_sample_1000docs.json.gz"], "max_docs": 150},
            {"name": "python", "lang": "python", "code": True, "paths": ["code/code_python.jsonl.gz"], "max_docs": 60},
            {"name": "rust", "lang": "rust", "code": True, "paths": ["code/code_rust.jsonl.gz"], "max_docs": 20},
        ],
    },
    "mixtures": {"settings": ["competitive"], "m": [0.25], "baselines": False, "n_tokens": 120_000,
                 "code_weights": {"python": 1.0}},
    "model": {"arch": "gpt", "preset": "tiny"},
    "pretrain": {"batch_size": 8, "lr": 3.0e-3, "warmup_steps": 5, "max_steps": 24, "eval_every": 12,
                 "eval_batches": 1, "log_every": 1, "device": "cpu"},
}


def tiny_raw(root: Path, **sections) -> dict:
    """The tiny study's raw dict rooted at ``root``, with ``sections`` updated (a list replaces)."""
    raw = json.loads(json.dumps(TINY_STUDY))
    raw["out"] = str(root)
    for name, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(name, {}).update(values)
        else:
            raw[name] = values
    return raw


def tiny_study(root: Path, **sections) -> tuple[StudyConfig, StudyData]:
    """The tiny study rooted at ``root`` (data built once: build_data reuses the done jobs)."""
    cfg = validate_study(tiny_raw(root, **sections))
    return cfg, build_data(cfg)


@pytest.fixture(scope="module")
def study_root(tmp_path_factory, data_dir) -> Path:
    root = tmp_path_factory.mktemp("tiny-study")
    tiny_study(root)
    return root


def run(cfg: StudyConfig, data: StudyData, out: Path, *, resume: bool = False, seed: int = 0) -> Path:
    heldout = {s.name: data.heldout_dir(s.name) for s in cfg.data.sources}
    return train(cfg, mixture_dir=data.mixture_dir("competitive", 0.25), heldout=heldout,
                 tokenizer_path=data.tokenizer_path, seed=seed, out_dir=out, resume=resume)


def log_lines(run_dir: Path, kind: str | None = None) -> list[dict]:
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in lines if r.get("kind") == kind]


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in log_lines(run_dir)]


# ----------------------------------------------------------------------------- schedule and optimizer


def test_lr_warms_up_then_decays_to_min_ratio():
    lrs = [lr_at(s, warmup=10, total=100, lr=1.0, min_ratio=0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(lrs[:10], lrs[1:10]))
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert lrs[-1] == pytest.approx(0.1)
    assert lrs[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 89)))
    assert {lr_at(s, warmup=0, total=50, lr=2.0, min_ratio=1.0) for s in range(50)} == {2.0}


def test_optimizer_does_not_decay_norm_gains():
    model = GPT(GPTConfig(vocab_size=64))
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    norm_ids = {id(p) for n, p in model.named_parameters() if "norm" in n}
    assert {id(p) for p in no_decay["params"]} == norm_ids
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == model.num_params()


# ----------------------------------------------------------------------------- training


def test_loss_falls_and_heldout_loss_is_logged_per_source(study_root, tmp_path):
    cfg, data = tiny_study(study_root, pretrain={"max_steps": 60, "batch_size": 16, "eval_every": 30,
                                                   "log_every": 10, "checkpoint_every": 20, "keep_checkpoints": 2})
    ckpt = run(cfg, data, tmp_path / "run")
    train_lines = log_lines(tmp_path / "run")
    assert [r["step"] for r in train_lines] == [1, 10, 20, 30, 40, 50, 60]
    assert train_lines[0]["loss"] == pytest.approx(math.log(512), abs=0.3)  # uniform at init
    assert train_lines[-1]["loss"] < train_lines[0]["loss"] - 0.8
    assert train_lines[-1]["tokens"] == 60 * 16 * 64
    evals = log_lines(tmp_path / "run", "eval")
    assert {(r["step"], r["source"]) for r in evals} == {(s, n) for s in (30, 60) for n in ("c4", "python", "rust")}
    by = {(r["step"], r["source"]): r["loss"] for r in evals}
    assert all(by[60, n] < by[30, n] for n in ("c4", "python", "rust"))
    # Only the last `keep_checkpoints` survive; the final one is what train returns.
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-0000040", "step-0000060"]
    assert ckpt == tmp_path / "run" / "checkpoints" / "step-0000060"
    for name in ("model.safetensors", "config.json", "optimizer.pt", "trainer_state.json", "tokenizer.json"):
        assert (ckpt / name).is_file()
    config = json.loads((ckpt / "config.json").read_text())["codemix"]
    assert config["arch"] == "gpt" and config["model"]["vocab_size"] == 512 and config["seq_len"] == 64
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["step"] == 60 and state["loader"]["batch"] == 60
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["pretrain"]["max_steps"] == 60


class Killed(Exception):
    pass


def test_killed_and_resumed_run_reproduces_losses_step_for_step(study_root, tmp_path, monkeypatch, capsys):
    cfg, data = tiny_study(study_root, model={"dropout": 0.1},
                             pretrain={"checkpoint_every": 8, "keep_checkpoints": 3})
    run(cfg, data, tmp_path / "straight")

    from codemix.objectives.causal import CausalLMTask

    real_loss = CausalLMTask.loss

    def dying_loss(self, model, tokens, step):
        if step == 13:  # 0-based: the 14th step; the last checkpoint is step 8
            raise Killed
        return real_loss(self, model, tokens, step)

    monkeypatch.setattr(CausalLMTask, "loss", dying_loss)
    with pytest.raises(Killed):
        run(cfg, data, tmp_path / "resumed")
    monkeypatch.setattr(CausalLMTask, "loss", real_loss)
    assert [s for s, _ in losses(tmp_path / "resumed")] == list(range(1, 14))
    run(cfg, data, tmp_path / "resumed", resume=True)
    assert losses(tmp_path / "resumed") == losses(tmp_path / "straight")  # exact, with dropout on
    assert log_lines(tmp_path / "resumed", "eval") == log_lines(tmp_path / "straight", "eval")

    # A corrupt newest checkpoint is reported and the previous one is used.
    shutil.copytree(tmp_path / "resumed", tmp_path / "corrupt")
    newest = tmp_path / "corrupt" / "checkpoints" / "step-0000024"
    (newest / "model.safetensors").write_bytes(b"\0" * 100)
    capsys.readouterr()
    assert latest_checkpoint(tmp_path / "corrupt") == tmp_path / "corrupt" / "checkpoints" / "step-0000016"
    assert "step-0000024 is unusable" in capsys.readouterr().err.replace("\n", "")
    final = run(cfg, data, tmp_path / "corrupt", resume=True)
    assert final == newest and checkpoint_problem(newest) is None
    assert losses(tmp_path / "corrupt") == losses(tmp_path / "straight")


def test_out_of_disk_during_checkpoint_keeps_the_last_good_one(study_root, tmp_path, monkeypatch):
    cfg, data = tiny_study(study_root, pretrain={"max_steps": 12, "checkpoint_every": 6})
    real_save, calls = torch.save, []

    def full_disk(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match=r"out of disk space.*step-0000006, is intact.*resumes from the last good checkpoint"):
        run(cfg, data, tmp_path / "run")
    root = tmp_path / "run" / "checkpoints"
    assert [p.name for p in root.iterdir()] == ["step-0000006"]  # no half-written step-0000012 or temp dir
    assert checkpoint_problem(root / "step-0000006") is None
    monkeypatch.setattr(torch, "save", real_save)
    assert run(cfg, data, tmp_path / "run", resume=True) == root / "step-0000012"


def test_missing_mixture_is_a_clear_error(study_root, tmp_path):
    cfg, data = tiny_study(study_root)
    with pytest.raises(DataError, match=r"no index.npy.*codemix mix"):
        train(cfg, mixture_dir=tmp_path / "nope", heldout={}, tokenizer_path=data.tokenizer_path, seed=0,
              out_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_existing_run_is_not_overwritten_without_resume(study_root, tmp_path):
    cfg, data = tiny_study(study_root, pretrain={"max_steps": 5, "warmup_steps": 1})
    run(cfg, data, tmp_path / "run")
    with pytest.raises(CheckpointError, match=r"already holds checkpoints \(newest step-0000005\); resume it"):
        run(cfg, data, tmp_path / "run")


def study_file(root: Path, tmp_path: Path, **sections) -> Path:
    """The tiny study (rooted at ``root``, so its built data is reused) as a YAML file for the CLI."""
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(tiny_raw(root, **sections)))
    return path


def test_cli_train_prints_the_checkpoint_last(study_root, tmp_path, capsys):
    study = study_file(study_root, tmp_path, seeds=[0, 1])
    overrides = ["pretrain.max_steps=6", "pretrain.warmup_steps=2"]
    args = ["train", str(study), "--setting", "competitive", "--m", "0.25", "--seed", "1",
            *(x for o in overrides for x in ("--set", o))]
    assert main(args) == 0
    # the run directory is the study's pretraining job
    plan = plan_study(load_study(study, overrides))
    run_dir = plan.job_dir(find_pretrain(plan, setting="competitive", m=0.25, seed=1))
    assert run_dir.parent == study_root / "jobs" / "pretrain"
    ckpt = run_dir / "checkpoints" / "step-0000006"
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(ckpt)
    assert json.loads((ckpt / "config.json").read_text())["codemix"]["seed"] == 1
    assert [r["step"] for r in log_lines(run_dir)] == [1, 2, 3, 4, 5, 6]

    # rerun: the finished job is reused, not retrained
    log = (run_dir / "log.jsonl").read_text()
    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(ckpt)
    assert (run_dir / "log.jsonl").read_text() == log
    assert [p.name for p in (run_dir / "checkpoints").iterdir()] == ["step-0000006"]


def test_checkpoint_trained_in_the_study_records_its_labels_and_heldout_streams(study_root, tmp_path, capsys):
    study = study_file(study_root, tmp_path, seeds=[0, 2], pretrain={"max_steps": 4, "warmup_steps": 1})
    assert main(["train", str(study), "--setting", "competitive", "--m", "0.25", "--seed", "2"]) == 0
    ckpt = Path(capsys.readouterr().out.strip().splitlines()[-1])
    info = checkpoint_info(ckpt)
    assert info.path == ckpt and info.arch == "gpt" and info.seq_len == 64
    assert [(lab.study, lab.setting, lab.m, lab.baseline, lab.seed) for lab in info.labels] == [
        ("tiny", "competitive", 0.25, False, 2)]
    assert info.study_root == study_root.resolve()
    _, data = tiny_study(study_root)
    assert info.heldout == {s: data.heldout_dir(s).resolve() for s in ("c4", "python", "rust")}
    assert all((d / "docs.jsonl.gz").is_file() and (d / "tokens.bin").is_file() for d in info.heldout.values())
    # the run directory resolves to the same checkpoint and labels
    assert checkpoint_info(ckpt.parent.parent).labels == info.labels


@pytest.mark.parametrize("arch", ["gpt", "t5"])
def test_count_parameters_is_the_real_models_count(study_root, arch):
    """The planner's parameter count (FLOPs, disk) is the model the task builds: one preset table per arch."""
    _, data = tiny_study(study_root)
    cfg = validate_study(tiny_raw(study_root, model={"arch": arch, "preset": "tiny"}))
    model = TASKS[arch](cfg, tokenizer_path=data.tokenizer_path).build_model()
    assert model.__class__.__name__ == {"gpt": "GPT", "t5": "CodeT5"}[arch]
    real = sum(p.numel() for p in model.parameters())  # tied tensors once
    assert count_parameters(cfg.model, vocab_size=cfg.data.tokenizer.vocab_size, seq_len=cfg.data.seq_len) == real


def test_gradient_accumulation_matches_one_big_batch(study_root, tmp_path):
    """batch 8 as 4 micro-batches of 2: the same step losses as one forward pass of 8."""
    cfg, data = tiny_study(study_root, pretrain={"max_steps": 3, "warmup_steps": 1, "eval_every": 100})
    run(cfg, data, tmp_path / "whole")
    cfg, data = tiny_study(study_root, pretrain={"max_steps": 3, "warmup_steps": 1, "eval_every": 100,
                                                   "micro_batch_size": 2})
    run(cfg, data, tmp_path / "accum")
    whole, accum = log_lines(tmp_path / "whole"), log_lines(tmp_path / "accum")
    for a, b in zip(whole, accum, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-4)


def test_log_lines_are_strict_json(tmp_path):
    logger = RunLogger(tmp_path / "log.jsonl", progress=False)
    logger.log({"step": 1, "loss": 2.5, "bimodal": float("nan")})
    logger.close()
    line = (tmp_path / "log.jsonl").read_text()
    assert json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}")) == {
        "step": 1, "loss": 2.5, "bimodal": None}
