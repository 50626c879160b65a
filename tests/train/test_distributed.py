"""Ranks: batch splitting rules, and a two-process gloo DDP run against a single-process one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_pretrain import log_lines, study_file, tiny_raw

from codemix.cli import main
from codemix.config import validate_study
from codemix.errors import ConfigError
from codemix.study.graph import find_pretrain, plan_study
from codemix.study.stages.pretrain import checkpoint_of
from codemix.train.distributed import DistContext, accum_steps_for, init_distributed, parallelize


def test_accumulation_steps_follow_batch_ranks_and_micro_batch():
    assert accum_steps_for(16, None, 1) == 1
    assert accum_steps_for(16, 4, 1) == 4
    assert accum_steps_for(16, 4, 2) == 2
    assert accum_steps_for(16, None, 4) == 1


def test_batch_not_divisible_by_ranks_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"batch_size=10 is not divisible by the 4 ranks.*multiple of 4"):
        accum_steps_for(10, None, 4)
    with pytest.raises(ConfigError, match=r"micro_batch_size=3 does not divide the per-rank batch 8"):
        accum_steps_for(16, 3, 2)


def test_without_torchrun_there_is_one_process_and_no_process_group(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    ctx = init_distributed(device="cpu")
    assert ctx == DistContext.single("cpu") and ctx.is_main and not ctx.distributed


def test_codemix_train_under_torchrun_refuses_and_says_to_use_gpus(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    study = study_file(tmp_path / "study", tmp_path)
    assert main(["train", str(study), "--setting", "competitive", "--m", "0.25"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "`codemix train` starts torchrun itself: run it once, without torchrun, with --gpus N" in err
    assert not (tmp_path / "study").exists()  # refused before building anything


@pytest.mark.parametrize("fsdp, compiled", [(False, False), (True, False), (True, True)],
                         ids=["ddp", "fsdp2", "fsdp2-compiled"])
def test_two_gloo_ranks_match_the_single_process_run(data_dir, tmp_path, capsys, fsdp, compiled):
    """Same global batch split over two ranks (replicated or sharded): the same losses and update.

    Both runs are the same job of the tiny study (parallel settings, compilation and the GPU
    count are not part of its key), so each has its own study directory. ``fsdp2-compiled``
    shards blocks that ``pretrain.compile`` compiled in place first (inductor, as on a GPU),
    against the eager single process.
    """
    overrides = {"max_steps": 3, "warmup_steps": 1, "eval_every": 3}
    study = study_file(tmp_path / "single", tmp_path, pretrain=overrides)
    assert main(["train", str(study), "--setting", "competitive", "--m", "0.25"]) == 0
    single = Path(capsys.readouterr().out.strip().splitlines()[-1]).parents[1]  # the final checkpoint's run

    # Two ranks: `codemix train --gpus 2` (2 gloo CPU ranks here); the pretrain stage launches torchrun.
    rank_overrides = {**overrides, "compile": compiled}
    ranks = study_file(tmp_path / "ranks", tmp_path, pretrain=rank_overrides, parallel={"fsdp": fsdp})
    assert main(["train", str(ranks), "--setting", "competitive", "--m", "0.25", "--gpus", "2"]) == 0
    printed = Path(capsys.readouterr().out.strip().splitlines()[-1])
    plan = plan_study(validate_study(tiny_raw(tmp_path / "ranks", pretrain=rank_overrides, parallel={"fsdp": fsdp})))
    job = find_pretrain(plan, setting="competitive", m=0.25, seed=0)
    assert printed == checkpoint_of(plan.job_dir(job))

    ddp = plan.job_dir(job)
    assert single == tmp_path / "single" / ddp.relative_to(tmp_path / "ranks")  # the same job
    assert checkpoint_of(ddp) == ddp / "checkpoints" / "step-0000003"
    # Rank 0 alone writes the log.
    single_log, ddp_log = log_lines(single), log_lines(ddp)
    assert [r["step"] for r in ddp_log] == [1, 2, 3]
    assert ddp_log[0]["loss"] == pytest.approx(single_log[0]["loss"], abs=1e-5)
    assert ddp_log[0]["grad_norm"] == pytest.approx(single_log[0]["grad_norm"], rel=1e-4)
    assert ddp_log[1]["loss"] == pytest.approx(single_log[1]["loss"], abs=1e-4)  # gradients were all-reduced
    assert [r["tokens"] for r in ddp_log] == [r["tokens"] for r in single_log]
    evals = {(r["source"], round(r["loss"], 4)) for r in log_lines(ddp, "eval")}
    assert evals == {(r["source"], round(r["loss"], 4)) for r in log_lines(single, "eval")}
    state = json.loads((ddp / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["step"] == 3
    assert yaml.safe_load((ddp / "config.yaml").read_text())["pretrain"]["compile"] is compiled
    single_state = json.loads((single / "checkpoints" / "step-0000003" / "trainer_state.json").read_text())
    assert single_state["world_size"] == 1


def test_compiling_a_gpt_or_codet5_compiles_its_blocks_in_place_and_other_models_whole():
    """parallelize(compile=True): a GPT or a CodeT5 keeps its identity and state dict (regions compiled in
    place); a pack, which has no regions, is wrapped by torch.compile as a whole."""
    import torch

    from codemix.config import ModelConfig
    from codemix.models.gpt import GPT, PRESETS, GPTConfig
    from codemix.models.t5 import CodeT5, t5_config
    from codemix.train.pack import PackedGPT

    ctx = DistContext.single(torch.device("cpu"))
    gpt = GPT(GPTConfig(vocab_size=256, **PRESETS["tiny"]))
    keys = list(gpt.state_dict())
    try:
        assert parallelize(gpt, ctx, compile=True) is gpt
        assert all(block._compiled_call_impl is not None for block in gpt.blocks)
        assert list(gpt.state_dict()) == keys
        t5 = CodeT5(t5_config(ModelConfig(arch="t5", preset="tiny"), vocab_size=256, pad_id=1, eos_id=0))
        assert parallelize(t5, ctx, compile=True) is t5
        assert all(block._compiled_call_impl is not None for block in [*t5.t5.encoder.block, *t5.t5.decoder.block])
        pack = PackedGPT([GPT(GPTConfig(vocab_size=256, **PRESETS["tiny"])) for _ in range(2)],
                         [{"cpu": torch.get_rng_state()}] * 2)
        assert isinstance(parallelize(pack, ctx, compile=True), torch._dynamo.eval_frame.OptimizedModule)
        assert parallelize(GPT(GPTConfig(vocab_size=256, **PRESETS["tiny"])), ctx).blocks[0]._compiled_call_impl \
            is None  # compile off: nothing compiled
    finally:
        torch._dynamo.reset()
