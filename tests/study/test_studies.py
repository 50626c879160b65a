"""Every study file in studies/ loads, validates and plans (a broken study fails CI, not a cluster job)."""

from __future__ import annotations

from pathlib import Path

import pytest

from codemix.config import load_study
from codemix.evals.registry import BENCHMARKS
from codemix.study.graph import plan_study

STUDIES = sorted((Path(__file__).resolve().parents[2] / "studies").glob("*.yaml"))


def test_the_shipped_studies_are_there():
    assert {p.name for p in STUDIES} >= {"demo.yaml", "petty-small.yaml", "py2rust-go.yaml"}


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_study_file_validates_and_plans(path, data_dir):
    cfg = load_study(path)
    for source in cfg.data.sources:  # every data file it names is in the mirror
        for rel in source.paths:
            assert (data_dir / rel).is_file(), f"{path.name}: {source.name} names missing {rel}"
    plan = plan_study(cfg, root=Path("/nonexistent"))
    stages = {j.stage for j in plan.jobs.values()}
    assert stages == {"tokenizer", "stream", "mixture", "pretrain", "eval", "analysis"}
    labels = [lab for j in plan.by_stage("mixture") for lab in j.labels]
    wanted = [(s, m, b, arm) for arm in cfg.mixtures.arm_names() for s in cfg.mixtures.settings
              for b in ([False, True] if s == "additive" and cfg.mixtures.baselines else [False])
              for m in cfg.mixtures.m_for(s)]
    assert sorted((lab["setting"], lab["m"], lab["baseline"], lab["arm"] or "") for lab in labels) == sorted(
        (s, m, b, arm or "") for s, m, b, arm in wanted)
    for data_file in (f for section in cfg.evals.enabled().values()  # and every file its benchmarks read
                      for f in BENCHMARKS[section.section].data_files(section)):
        assert (data_dir / data_file).is_file(), f"{path.name}: a benchmark reads missing {data_file}"


def test_petty_small_is_the_papers_design():
    cfg = load_study(STUDIES[0].parent / "petty-small.yaml")
    assert cfg.mixtures.m_for("competitive") == pytest.approx([i / 10 for i in range(10)])
    assert cfg.mixtures.m_for("additive") == pytest.approx([i / 10 for i in range(6)])
    assert cfg.mixtures.baselines and len(cfg.seeds) == 3
    assert {"cogs", "cogs_vf", "passivization", "bigbench"} <= set(cfg.evals.enabled())


def test_the_transfer_studies_hold_both_arms_and_share_the_language_only_models():
    for name, arch in (("py2rust-go.yaml", "gpt"), ("codet5-py2rust-go.yaml", "t5")):
        cfg = load_study(STUDIES[0].parent / name)
        assert cfg.model.arch == arch and set(cfg.mixtures.arms) == {"python-only", "mixed"}
        assert {"mbpp_transfer", "solutions", "adapt", "perplexity"} <= set(cfg.evals.enabled())
        assert set(cfg.evals.adapt.corpora) == {"exercism_rust", "exercism_go"} and len(cfg.seeds) == 3
        plan = plan_study(cfg, root=Path("/x"))
        m0 = [j for j in plan.by_stage("mixture") if j.name == "lang-only-m0"]
        assert len(m0) == 1 and {lab["arm"] for lab in m0[0].labels} == {"python-only", "mixed"}
        with_code = [j for j in plan.by_stage("mixture") if j.name != "lang-only-m0"]
        assert len(with_code) == 2 * 4 and {j.labels[0]["arm"] for j in with_code} == {"python-only", "mixed"}
        assert len(plan.by_stage("pretrain")) == (1 + 2 * 4) * 3  # one m = 0 model per seed, shared by the arms
    gpt, t5 = (plan_study(load_study(STUDIES[0].parent / n), root=Path("/x"))
               for n in ("py2rust-go.yaml", "codet5-py2rust-go.yaml"))
    assert [j.hash for j in gpt.by_stage("tokenizer")] == [j.hash for j in t5.by_stage("tokenizer")]
