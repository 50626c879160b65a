"""Every study file in studies/ loads, validates and plans (a broken study fails CI, not a cluster job)."""

from __future__ import annotations

from pathlib import Path

import pytest

from codemix.config import load_study
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
    wanted = [(s, m, b) for s in cfg.mixtures.settings for b in ([False, True] if s == "additive"
              and cfg.mixtures.baselines else [False]) for m in cfg.mixtures.m_for(s)]
    assert sorted((lab["setting"], lab["m"], lab["baseline"]) for lab in labels) == sorted(wanted)


def test_petty_small_is_the_papers_design():
    cfg = load_study(STUDIES[0].parent / "petty-small.yaml")
    assert cfg.mixtures.m_for("competitive") == pytest.approx([i / 10 for i in range(10)])
    assert cfg.mixtures.m_for("additive") == pytest.approx([i / 10 for i in range(6)])
    assert cfg.mixtures.baselines and len(cfg.seeds) == 3
    assert {"cogs", "cogs_vf", "passivization", "bigbench"} <= set(cfg.evals.enabled())


def test_py2rust_go_arms_differ_only_in_code_weights():
    a = load_study(STUDIES[0].parent / "py2rust-go.yaml").model_dump()
    b = load_study(STUDIES[0].parent / "py2rust-go-mixed.yaml").model_dump()
    assert a["mixtures"].pop("code_weights") == {"python": 1.0}
    assert set(b["mixtures"].pop("code_weights")) == {"python", "rust", "go"}
    for d in (a, b):
        d.pop("name"), d.pop("out")
    assert a == b
    pa = plan_study(load_study(STUDIES[0].parent / "py2rust-go.yaml"), root=Path("/x"))
    pb = plan_study(load_study(STUDIES[0].parent / "py2rust-go-mixed.yaml"), root=Path("/x"))
    # the same tokenizer in both arms (identical job), and the same language-only m=0 mixture
    assert [j.hash for j in pa.by_stage("tokenizer")] == [j.hash for j in pb.by_stage("tokenizer")]
    ma = [j.key for j in pa.by_stage("mixture") if j.name == "lang-only-m0"]
    mb = [j.key for j in pb.by_stage("mixture") if j.name == "lang-only-m0"]
    assert ma and ma == mb
