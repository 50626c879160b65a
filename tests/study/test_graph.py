"""The job graph: shape, content keys, deduplication, compute estimates, `study plan`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from codemix.cli import main
from codemix.config import load_study
from codemix.data.mixture import MixtureSpec, source_targets
from codemix.models import GPU_PEAK_FLOPS, count_parameters
from codemix.study.graph import MFU, gpu_hours, plan_study

DEMO = Path(__file__).resolve().parents[2] / "studies" / "demo.yaml"


def _plan(*overrides: str):
    return plan_study(load_study(DEMO, list(overrides)), root=Path("/study"))


def test_demo_graph_shape_and_m0_dedupe():
    plan = _plan()
    counts = {s: len(plan.by_stage(s)) for s in ("tokenizer", "stream", "mixture", "pretrain", "eval", "analysis")}
    # 3 m × (competitive, additive, baseline) = 9 mixtures, the three m=0 ones are one
    # one eval job per checkpoint and benchmark section of the study file
    assert counts == {"tokenizer": 1, "stream": 4, "mixture": 7, "pretrain": 14,
                      "eval": 14 * len(plan.cfg.evals.model_dump(exclude_none=True)), "analysis": 1}
    assert len(plan.cfg.evals.model_dump(exclude_none=True)) >= 7
    code = {s.name for s in plan.cfg.data.sources if s.code}
    lang_only = round(plan.cfg.mixtures.n_tokens / plan.cfg.data.seq_len)
    m0 = [j for j in plan.by_stage("mixture")
          if not any(j.key["sequences"][c] for c in code) and j.key["sequences"]["c4"] == lang_only]
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
    cfg = _plan("mixtures.n_tokens=1000").cfg

    def tokens(setting, m, baseline):  # (language, code)
        t = source_targets(MixtureSpec(setting, m, baseline), cfg.mixtures, cfg.data)
        return tuple(round(sum(v for k, v in t.items() if cfg.source(k).code == code)) for code in (False, True))

    assert tokens("competitive", 0.25, False) == (750, 250)
    assert tokens("additive", 0.5, False) == (1000, 1000)
    assert tokens("additive", 0.5, True) == (2000, 0)
    assert tokens("additive", 0.0, True) == tokens("competitive", 0.0, False)


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
    n = count_parameters(plan.cfg.model, vocab_size=plan.cfg.data.tokenizer.vocab_size, seq_len=plan.cfg.data.seq_len)
    assert 2e5 < n < 2e6  # the tiny preset
    job = plan.by_stage("pretrain")[0]
    tokens = 100 * plan.cfg.pretrain.batch_size * plan.cfg.data.seq_len
    assert job.flops == pytest.approx(6 * n * tokens)
    assert gpu_hours(job.flops) == pytest.approx(job.flops / (GPU_PEAK_FLOPS * MFU) / 3600)


def test_study_plan_command_prints_stages_compute_and_progress(capsys, tmp_path, monkeypatch):
    _cpu_threads_for_packs(monkeypatch, 2)  # as on a 2-core laptop
    study = tmp_path / "s.yaml"
    study.write_text(DEMO.read_text().replace("out: runs/demo", f"out: {tmp_path / 'out'}"))
    assert main(["study", "plan", str(study)]) == 0
    out = capsys.readouterr().out
    for word in ("tokenizer", "stream", "mixture", "pretrain", "eval", "analysis", "GPU-hours", "H100", "40%",
                 "lang-only-m0"):
        assert word in out, word
    assert re.search(r"pretrain\s*│\s*14\s*│\s*0\s*│", out)  # 14 jobs, none done
    assert "14 of 14 runs in 2 packs (6, 8)" in out and "pretrain.pack=8 (1: one run per process); sizes in " \
        "multiples of 2" in re.sub(r"\s+", " ", out)
    # mark one job done: the plan shows it
    plan = plan_study(load_study(study), root=tmp_path / "out")
    tok = plan.by_stage("tokenizer")[0]
    plan.job_dir(tok).mkdir(parents=True)
    (plan.job_dir(tok) / "DONE").write_text("{}")
    assert main(["study", "plan", str(study)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"tokenizer\s*│\s*1\s*│\s*1\s*│", out) and "0/1" not in out.split("tokenizer")[1][:80]


PY2RUST = Path(__file__).resolve().parents[2] / "studies" / "py2rust-go.yaml"

#: Ways a study grows (issue: "extending a study retrains everything"): (base, grown) overrides of
#: py2rust-go.yaml (competitive only, no baselines, two arms). None may change an existing job.
GROWTH = {
    "m": ([], ["mixtures.m=[0.0,0.1,0.2,0.3,0.5,0.7]"]),
    "seed": ([], ["seeds=[0,1,2,3]"]),
    "setting": ([], ["mixtures.settings=[competitive,additive]"]),
    "baseline": (["mixtures.settings=[competitive,additive]"],
                 ["mixtures.settings=[competitive,additive]", "mixtures.baselines=true"]),
    "benchmark": ([], ["evals.bigbench={tasks: [arithmetic], limit: 5}"]),
    "permutations": ([], ["analysis.permutations=20000"]),
    "arm": (["mixtures.arms={python-only: {python: 1.0}}"], []),
}


@pytest.mark.parametrize("growth", sorted(GROWTH))
def test_growing_a_study_adds_jobs_and_keeps_every_existing_one(growth):
    """Every job of the smaller study is a job of the grown one (same key), except the analysis."""
    base, grown = GROWTH[growth]
    small = plan_study(load_study(PY2RUST, base), root=Path("/study"))
    large = plan_study(load_study(PY2RUST, grown), root=Path("/study"))
    kept = {j.id for j in small.jobs.values() if j.stage != "analysis"}
    assert kept <= set(large.jobs), sorted(kept - set(large.jobs))[:3]
    assert len(large.jobs) > len(small.jobs) or growth == "permutations"
    assert {j.id for j in small.by_stage("analysis")} != {j.id for j in large.by_stage("analysis")}
    # the language-only m = 0 model reads no code: its mixture, models and evals are shared
    m0 = [j for j in small.by_stage("pretrain") if j.name.startswith("lang-only-m0")]
    assert m0 and all(j.id in large.jobs for j in m0)


def test_a_grown_study_extends_streams_instead_of_rekeying_them():
    """A larger code budget (m = 0.7) keeps the stream's identity; the plan asks it to grow."""
    small = plan_study(load_study(PY2RUST), root=Path("/study"))
    large = plan_study(load_study(PY2RUST, GROWTH["m"][1]), root=Path("/study"))
    s, g = ({j.name: j for j in p.by_stage("stream")} for p in (small, large))
    assert {n: j.id for n, j in s.items()} == {n: j.id for n, j in g.items()}
    assert g["python"].growth.need > s["python"].growth.need
    assert g["c4"].growth.need == s["c4"].growth.need


def test_t5_parameter_counts_come_from_the_model_class():
    """No second preset table: the planner's count is the real CodeT5's (codet5-small ≈ 60M at 32K vocab)."""
    cfg = _plan("model.arch=t5", "model.preset=codet5-small", "data.tokenizer.vocab_size=32100").cfg
    n = count_parameters(cfg.model, vocab_size=32100, seq_len=cfg.data.seq_len)
    assert 59e6 < n < 62e6


def _cpu_threads_for_packs(monkeypatch, n: int | None) -> None:
    """A pack gets n CPU threads as `codemix study run` gives them (every core: n of them); None: 1 (a GPU's)."""
    monkeypatch.setenv("CODEMIX_AUTO_THREADS", "1")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(n or 1)))


def test_pretraining_runs_are_packed_by_steps_size_and_memory_and_packs_never_change_a_key(monkeypatch):
    _cpu_threads_for_packs(monkeypatch, None)
    plan = _plan()
    runs = plan.by_stage("pretrain")
    # 14 runs of 150 steps, pretrain.pack = 8: two packs of 7, every run in exactly one
    assert sorted(len(p.members) for p in plan.packs) == [7, 7]
    assert sorted(m for p in plan.packs for m in p.members) == sorted(j.id for j in runs)
    single = _plan("pretrain.pack=1")
    assert single.packs == [] and set(single.jobs) == set(plan.jobs)  # an execution detail: same jobs, same keys
    assert sorted(len(p.members) for p in _plan("pretrain.pack=4").packs) == [3, 3, 4, 4]
    # memory: a pack holds only what fits (a tiny member is ≈ 47 MB here)
    assert sorted(len(p.members) for p in _plan("pretrain.pack_memory_gb=0.1").packs) == [2] * 7
    assert _plan("pretrain.pack_memory_gb=0.04").packs == []
    # one pass over each mixture: runs of different step counts are never packed together
    epoch = _plan("pretrain.max_steps=null")
    steps = {j.inputs["mixture"]: sum(plan.jobs[j.inputs["mixture"]].key["sequences"].values()) // 8 for j in runs}
    for pack in epoch.packs:
        assert len({steps[epoch.jobs[m].inputs["mixture"]] for m in pack.members}) == 1
    assert epoch.packs
    # not packed: T5, several GPUs per job, gradient accumulation
    assert _plan("model.arch=t5").packs == []
    assert _plan("executor.gpus_per_job=2").packs == []
    assert _plan("pretrain.micro_batch_size=4").packs == []
    # a sub-plan keeps the packs of its own runs
    sub = plan.with_inputs(runs[:3])
    assert all(set(p.members) <= set(sub.jobs) for p in sub.packs) and sub.packs


@pytest.mark.parametrize(("threads", "pack", "sizes"), [(2, 8, [6, 8]), (2, 4, [2, 4, 4, 4]), (3, 8, [3, 5, 6]),
                                                         (16, 8, [6, 8]), (1, 8, [7, 7])])
def test_cpu_packs_come_in_multiples_of_the_threads_that_train_their_members(monkeypatch, threads, pack, sizes):
    """On a CPU a pack takes as long as its largest group of members (one group per thread): 14 runs on 2 threads
    train as 6 + 8 (3 + 4 members a thread in turn), not as 7 + 7 (4 + 4)."""
    _cpu_threads_for_packs(monkeypatch, threads)
    plan = _plan(f"pretrain.pack={pack}")
    assert sorted(len(p.members) for p in plan.packs) == sizes
    assert sorted(m for p in plan.packs for m in p.members) == sorted(j.id for j in plan.by_stage("pretrain"))
    assert ("multiples of" in plan.packs[0].note) == (threads > 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's count, not every core
    monkeypatch.delenv("CODEMIX_AUTO_THREADS")
    slurm = _plan(f"pretrain.pack={pack}", "executor.kind=slurm", "executor.partition=gpu")  # 1 at a time
    assert sorted(len(p.members) for p in _plan(f"pretrain.pack={pack}").packs) == \
        sorted(len(p.members) for p in slurm.packs)
