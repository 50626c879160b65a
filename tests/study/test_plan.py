"""The planner: job graph shape, content hashes, deduplication, compute estimates, `study plan`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from codemix.cli import main
from codemix.config import load_study
from codemix.study.plan import GPU_PEAK_FLOPS, MFU, count_params, gpu_hours, mixture_tokens, plan_study

DEMO = Path(__file__).resolve().parents[2] / "studies" / "demo.yaml"


def _plan(*overrides: str):
    return plan_study(load_study(DEMO, list(overrides)), root=Path("/study"))


def test_demo_graph_shape_and_m0_dedupe():
    plan = _plan()
    counts = {s: len(plan.by_stage(s)) for s in ("tokenizer", "stream", "mixture", "pretrain", "eval", "analysis")}
    # 3 m × (competitive, additive, baseline) = 9 mixtures, the three m=0 ones are one
    assert counts == {"tokenizer": 1, "stream": 4, "mixture": 7, "pretrain": 14, "eval": 56, "analysis": 1}
    n = plan.cfg.mixtures.n_tokens
    m0 = [j for j in plan.by_stage("mixture") if j.key["code_tokens"] == 0 and j.key["lang_tokens"] == n]
    assert len(m0) == 1 and sorted((lab["setting"], lab["baseline"]) for lab in m0[0].labels) == [
        ("additive", False), ("additive", True), ("competitive", False)]
    # its pretraining and eval jobs stand for all three labels (per seed)
    pre = [j for j in plan.by_stage("pretrain") if j.inputs["mixture"] == m0[0].id]
    assert len(pre) == 2 and all(len(j.labels) == 3 for j in pre)
    # every input of every job is planned earlier
    seen = set()
    for job in plan.jobs.values():
        assert set(job.inputs.values()) <= seen
        seen.add(job.id)


def test_code_streams_of_a_t5_study_are_annotated_for_codet5():
    gpt = {j.name: j for j in _plan().by_stage("stream")}
    t5 = {j.name: j for j in _plan("model.arch=t5", "model.preset=tiny").by_stage("stream")}
    code = {s.name for s in _plan().cfg.data.sources if s.code}
    assert code and code < set(t5)
    assert all(t5[name].key.get("annotate") is (True if name in code else None) for name in t5)
    assert not any("annotate" in job.key for job in gpt.values())
    # only the annotated streams (and what reads them) are new jobs
    assert {name for name in t5 if t5[name].id != gpt[name].id} == code


def test_mixture_token_counts_follow_the_design():
    assert mixture_tokens("competitive", 0.25, False, 1000) == (750, 250)
    assert mixture_tokens("additive", 0.5, False, 1000) == (1000, 1000)
    assert mixture_tokens("additive", 0.5, True, 1000) == (2000, 0)
    assert mixture_tokens("additive", 0.0, True, 1000) == mixture_tokens("competitive", 0.0, False, 1000)


def _hashes(plan):
    return {j.id.rsplit("-", 1)[0]: j.hash for j in plan.jobs.values()}


def test_hashes_are_stable_and_changes_propagate_downstream_only():
    base = _hashes(_plan())
    assert base == _hashes(_plan())
    lr = _hashes(_plan("pretrain.lr=0.001"))
    changed = {k for k in base if base[k] != lr[k]}
    assert changed == {k for k in base if k.startswith(("pretrain/", "eval/", "analysis/"))}
    # how a run is executed or logged is not what it computes
    assert _hashes(_plan("pretrain.device=cpu", "pretrain.wandb=true", "executor.max_retries=5")) == base
    bench = _hashes(_plan("evals.bigbench.limit=7"))
    changed = {k for k in base if base[k] != bench[k]}
    assert changed and all("bigbench" in k or k.startswith("analysis/") for k in changed)
    seeds = _hashes(_plan("seeds=[0, 1, 2]"))
    assert {k: v for k, v in base.items() if not k.startswith("analysis/")}.items() <= seeds.items()


def test_compute_estimate_is_6ND_on_the_stated_gpu():
    plan = _plan("pretrain.max_steps=100")
    n = count_params(plan.cfg)
    assert 2e5 < n < 2e6  # the tiny preset
    job = plan.by_stage("pretrain")[0]
    tokens = 100 * plan.cfg.pretrain.batch_size * plan.cfg.data.seq_len
    assert job.flops == pytest.approx(6 * n * tokens)
    assert gpu_hours(job.flops) == pytest.approx(job.flops / (GPU_PEAK_FLOPS * MFU) / 3600)


def test_study_plan_command_prints_stages_compute_and_progress(capsys, tmp_path):
    study = tmp_path / "s.yaml"
    study.write_text(DEMO.read_text().replace("out: runs/demo", f"out: {tmp_path / 'out'}"))
    assert main(["study", "plan", str(study)]) == 0
    out = capsys.readouterr().out
    for word in ("tokenizer", "stream", "mixture", "pretrain", "eval", "analysis", "GPU-hours", "H100", "40%",
                 "lang-only-m0"):
        assert word in out, word
    assert re.search(r"pretrain\s*│\s*14\s*│\s*0\s*│", out)  # 14 jobs, none done
    # mark one job done: the plan shows it
    plan = plan_study(load_study(study), root=tmp_path / "out")
    tok = plan.by_stage("tokenizer")[0]
    plan.job_dir(tok).mkdir(parents=True)
    (plan.job_dir(tok) / "DONE").write_text("{}")
    assert main(["study", "plan", str(study)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"tokenizer\s*│\s*1\s*│\s*1\s*│", out) and "0/1" not in out.split("tokenizer")[1][:80]
