"""Growing a finished study: each extension adds jobs and invalidates none but the analysis.

One tiny study is run to the end, then grown step by step, as a researcher grows a real
one: another m (which needs a longer code stream), another arm (code composition; the
study's first composition becomes one of two), another setting, baselines, another seed,
another benchmark, more permutations. Before each rerun the plan must show exactly
the new jobs and the analysis as not done (and, where a mixture needs more tokens than a
stream holds, that stream as to be extended); the rerun must train only the new models and
leave every existing checkpoint byte for byte as it was.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import pytest
import yaml

from codemix.config import validate_study
from codemix.data.streams import TokenStream
from codemix.study.commands import run_study
from codemix.study.graph import plan_study

BASE = {
    "name": "grow",
    "data": {
        "seq_len": 64, "heldout_docs": 4,
        "tokenizer": {"vocab_size": 512, "sample_bytes_per_source": 40_000},
        "sources": [
            {"name": "c4", "kind": "jsonl", "lang": "en", "paths": ["nl_text/c4_sample_1000docs.json.gz"],
             "max_docs": 80},
            {"name": "python", "kind": "jsonl", "lang": "python", "code": True,
             "paths": ["code/code_python.jsonl.gz"], "max_docs": 40},
            {"name": "rust", "kind": "jsonl", "lang": "rust", "code": True,
             "paths": ["code/code_rust.jsonl.gz"], "max_docs": 30},
        ],
    },
    "mixtures": {"settings": ["competitive"], "m": [0.0, 0.25], "baselines": False, "n_tokens": 6400,
                 "code_weights": {"python": 1.0}},
    "model": {"arch": "gpt", "preset": "tiny"},
    "pretrain": {"batch_size": 4, "lr": 3.0e-3, "warmup_steps": 1, "max_steps": 3, "eval_every": 100,
                 "eval_batches": 1, "log_every": 5},
    "seeds": [0],
    "evals": {"perplexity": {"max_docs": 1, "next_line_samples": 0}},
    "analysis": {"permutations": 20},
}

#: Each step changes the study grown so far (dotted path -> new value).
STEPS = [
    ("another m (a longer python stream)", {"mixtures.m": [0.0, 0.25, 0.5]}),
    ("another arm (code composition)", {"mixtures.code_weights": {},
                                        "mixtures.arms": {"python-only": {"python": 1.0},
                                                          "mixed": {"python": 0.8, "rust": 0.2}}}),
    ("another setting", {"mixtures.settings": ["competitive", "additive"],
                         "mixtures.m_by_setting": {"additive": [0.0, 0.25]}}),
    ("baselines", {"mixtures.baselines": True}),
    ("another seed", {"seeds": [0, 1]}),
    ("another benchmark", {"evals.bigbench": {"tasks": ["arithmetic"], "limit": 2}}),
    ("more permutations", {"analysis.permutations": 40}),
]


def _set(raw: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for part in path:
        raw = raw[part]
    raw[last] = value


def _digests(root: Path) -> dict[str, str]:
    """sha256 of every file of every pretraining job (weights, optimizer, logs, config)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted((root / "jobs" / "pretrain").rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_growing_a_finished_study_reruns_only_what_is_new(tmp_path, data_dir):
    raw = yaml.safe_load(yaml.safe_dump(BASE))
    raw["out"] = str(tmp_path / "study")
    assert run_study(validate_study(raw)).ok
    grown_streams: set[str] = set()
    for what, changes in STEPS:
        before = plan_study(validate_study(raw))
        for dotted, value in changes.items():
            _set(raw, dotted, value)
        cfg = validate_study(raw)
        plan = plan_study(cfg)
        new = set(plan.jobs) - set(before.jobs)
        assert {j.id for j in before.jobs.values() if j.stage != "analysis"} <= set(plan.jobs), what
        grow = {j.id for j in plan.jobs.values() if plan.needs_growth(j)}
        not_done = {j.id for j in plan.jobs.values() if not plan.is_done(j)}
        analysis = {j.id for j in plan.by_stage("analysis")}
        assert not_done == new | grow and analysis <= new, what
        assert all(plan.jobs[g].stage == "stream" for g in grow), what
        streams = {g: TokenStream(plan.job_dir(g)).tokens.tobytes() for g in grow}
        grown_streams |= {plan.jobs[g].name for g in grow}

        digests = _digests(plan.root)
        summary = run_study(cfg)
        assert summary.ok, what
        trained = {j for j in summary.ran if plan.jobs[j].stage == "pretrain"}
        assert trained == {j for j in new if plan.jobs[j].stage == "pretrain"}, what
        assert set(summary.ran) == new | grow, what
        after = _digests(plan.root)
        assert {k: after[k] for k in digests} == digests, f"{what}: an existing checkpoint changed"
        for g, prefix in streams.items():  # a grown stream keeps every token it had, byte for byte
            grown = TokenStream(plan.job_dir(g)).tokens.tobytes()
            assert len(grown) > len(prefix) and grown[: len(prefix)] == prefix, what
        assert plan.is_done(plan.by_stage("analysis")[0]), what
    assert grown_streams >= {"python", "rust"}  # another m needed more python, the mixed arm more rust
    labels = {(lab["setting"], lab["m"], lab["baseline"], lab["arm"]) for j in plan.by_stage("pretrain")
              for lab in j.labels}
    assert {("additive", 0.25, True, "mixed"), ("competitive", 0.5, False, "mixed"),
            ("competitive", 0.0, False, "python-only")} <= labels
    # the language-only models stand for both arms; the rows say which arm
    shared = [j for j in plan.by_stage("pretrain") if j.name.startswith("lang-only-m0")]
    assert len(shared) == 2 and all({lab["arm"] for lab in j.labels} == {"python-only", "mixed"} for j in shared)
    results = pd.read_csv(plan.root / "results.csv")
    assert set(results["arm"]) == {"python-only", "mixed"}
    m0 = results[(results["m"] == 0) & (results["task"] == "perplexity")]
    by_arm = {arm: sorted(g["value"]) for arm, g in m0.groupby("arm")}
    assert by_arm["python-only"] == by_arm["mixed"]  # one model, reported under each arm
