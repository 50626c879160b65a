"""A real (tiny) study through `codemix study run`: real data prep, pretraining, eval and analysis.

Kill tests: the study is killed while it pretrains, rerun and killed again while it
evaluates, then rerun to the end; its results must equal an uninterrupted run's. The
runs use one torch thread (OMP_NUM_THREADS=1) so both are bitwise comparable.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from codemix.cli import main

STUDY = """
name: e2e
out: {out}
data:
  seq_len: 64
  heldout_docs: 4
  tokenizer: {{vocab_size: 512, sample_bytes_per_source: 40000}}
  sources:
    - {{name: c4, kind: jsonl, lang: en, paths: [nl_text/c4_sample_1000docs.json.gz], max_docs: 80}}
    - {{name: python, kind: jsonl, lang: python, code: true, paths: [code/code_python.jsonl.gz], max_docs: 24}}
mixtures:
  settings: [competitive]
  m: [0.0, 0.5]
  baselines: false
  n_tokens: 12800
model: {{arch: gpt, preset: tiny}}
pretrain: {{batch_size: 4, lr: 3.0e-3, warmup_steps: 2, max_steps: {steps}, eval_every: 100, eval_batches: 1, log_every: 5}}
seeds: [0]
evals:
  perplexity: {{max_docs: 2, next_line_samples: 2}}
analysis: {{permutations: 20}}
"""


def _write(tmp: Path, name: str, steps: int = 12) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(STUDY.format(out=tmp / name, steps=steps))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(study: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "codemix.cli", "study", "run", str(study), *overrides],
                          env=_env(), capture_output=True, text=True, timeout=400)


def _run_until(study: Path, out: Path, stage: str, sig: int) -> None:
    """Start `study run`, kill it once a job of `stage` is running (its work dir exists)."""
    proc = subprocess.Popen([sys.executable, "-m", "codemix.cli", "study", "run", str(study)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not [p for p in (out / "work" / stage).glob("*") if p.is_dir()]:
            assert proc.poll() is None, f"the study ended before reaching {stage}"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # well inside the job
        proc.send_signal(sig)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()


def _complete_or_absent(out: Path) -> None:
    for d in (out / "jobs").glob("*/*"):
        assert (d / "DONE").is_file(), f"partial job directory {d}"


def _results(out: Path) -> pd.DataFrame:
    df = pd.read_csv(out / "results.csv")
    return df.sort_values(["setting", "m", "seed", "task", "subtask", "metric"]).reset_index(drop=True)


@pytest.mark.slow
def test_study_end_to_end_with_kills(tmp_path, data_dir, capsys):
    # reference: one uninterrupted run
    ref = _write(tmp_path, "ref")
    done = _run(ref)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ref" / "report" / "index.html").is_file()
    expected = _results(tmp_path / "ref")
    assert set(expected["m"]) == {0.0, 0.5} and (expected["task"] == "perplexity").all()
    runs = sorted((tmp_path / "ref" / "jobs" / "pretrain").glob("*"))  # the two runs trained as one pack
    assert len(runs) == 2 and all(len(json.loads((r / "DONE").read_text())["pack"]) == 2 for r in runs)

    # a second run does no work and says so
    again = _run(ref)
    assert again.returncode == 0 and "nothing to do" in again.stderr

    # killed while pretraining (SIGKILL: no cleanup at all), then while evaluating (Ctrl-C)
    study, out = _write(tmp_path, "killed"), tmp_path / "killed"
    _run_until(study, out, "pretrain", signal.SIGKILL)
    _complete_or_absent(out)
    assert not (out / "jobs" / "eval").exists()
    _run_until(study, out, "eval", signal.SIGINT)
    _complete_or_absent(out)
    assert len(list((out / "jobs" / "pretrain").glob("*"))) == 2 and not (out / "report").exists()
    final = _run(study)
    assert final.returncode == 0, final.stderr[-3000:]
    pd.testing.assert_frame_equal(_results(out), expected.assign(study="e2e"))

    # status and export read the same rows back (one row collector), and `codemix analyze` of the
    # export gives exactly the tables of the report `study run` published
    assert main(["study", "status", str(study), "--export", str(tmp_path / "rows.parquet")]) == 0
    exported = pd.read_parquet(tmp_path / "rows.parquet")
    assert len(exported) == len(expected) and set(exported["metric"]) == set(expected["metric"])
    assert main(["study", "status", str(study), "--export", str(tmp_path / "rows.csv")]) == 0
    assert main(["analyze", str(tmp_path / "rows.csv"), "--out", str(tmp_path / "again"), "--permutations", "20",
                 "--seed", "0"]) == 0
    for table in ("regressions.csv", "permutation.csv", "slopes.csv", "by_m.csv"):
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "again" / table), pd.read_csv(out / table))
    assert {"question_type", "primary", "arm"} <= set(pd.read_csv(out / "results.csv").columns)

    # a real job that raises: the others still run, the run exits non-zero, status shows the error
    broken = ("--set", "evals.perplexity.files=[no/such/file.txt]")
    bad = _run(study, *broken)
    assert bad.returncode == 1 and "2 failed, 1 blocked" in bad.stderr  # both evals tried, analysis waits
    capsys.readouterr()
    assert main(["study", "status", str(study), *broken]) == 0
    status = capsys.readouterr().out
    assert "no/such/file.txt" in status and "FAILED" in status and "blocked" in status


@pytest.mark.slow
def test_multi_gpu_job_runs_under_torchrun(tmp_path, data_dir, monkeypatch):
    """A job with 2 GPUs re-launches itself under torchrun: here 2 CPU ranks (gloo), one job dir."""
    from codemix.config import load_study
    from codemix.study.graph import plan_study
    from codemix.study.scheduler import InProcess, run_job, run_jobs

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cfg = load_study(_write(tmp_path, "ddp", steps=4), ["mixtures.m=[0.5]", "evals.perplexity=null"])
    plan = plan_study(cfg)
    assert run_jobs(plan.with_inputs(plan.by_stage("mixture")), InProcess()).ok
    job = plan.by_stage("pretrain")[0]
    job.gpus = 2  # not part of the key: how many devices, not what is computed
    assert run_job(plan, job) == "done", (plan.failure_dir(job) / "FAILED").read_text()
    ckpt = plan.job_dir(job) / (plan.job_dir(job) / "final_checkpoint").read_text().strip()
    assert json.loads((ckpt / "trainer_state.json").read_text())["world_size"] == 2
    assert not list((plan.root / "work" / "pretrain").glob("*/"))  # nothing left behind


@pytest.mark.slow
def test_packed_runs_write_the_job_directories_single_runs_write(tmp_path, data_dir, monkeypatch):
    """pretrain.pack is an execution detail: the same jobs, checkpoints and loss curves as one run per process."""
    from codemix.checkpoint import read_weights
    from codemix.config import load_study
    from codemix.study.graph import plan_study
    from codemix.study.scheduler import InProcess, run_jobs
    from codemix.study.stages.pretrain import checkpoint_of

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    plans = {}
    for pack in (1, 2):
        cfg = load_study(_write(tmp_path, f"pack{pack}", steps=8), [f"pretrain.pack={pack}", "evals.perplexity=null"])
        plan = plans[pack] = plan_study(cfg)
        assert len(plan.packs) == (pack == 2)
        assert run_jobs(plan.with_inputs(plan.by_stage("pretrain")), InProcess()).ok
    single, packed = ({j.id: j for j in plans[k].by_stage("pretrain")} for k in (1, 2))
    assert single.keys() == packed.keys() and len(single) == 2  # same keys: same job directories
    for job_id in single:
        a, b = plans[1].job_dir(job_id), plans[2].job_dir(job_id)
        assert "pack" not in json.loads((a / "DONE").read_text()) and json.loads((b / "DONE").read_text())["pack"]
        # a pack's output goes to each member's job log; the members' shared config is printed once
        assert (b / "job.log").read_text().count("codemix train (pack of 2)") == 1
        la, lb = ([json.loads(x)["loss"] for x in (d / "log.jsonl").read_text().splitlines()
                   if json.loads(x).get("kind") is None] for d in (a, b))
        assert len(la) == len(lb) > 0 and lb == pytest.approx(la, abs=2e-5)
        wa, wb = read_weights(checkpoint_of(a)), read_weights(checkpoint_of(b))
        assert wa.keys() == wb.keys() and max((wa[k] - wb[k]).abs().max().item() for k in wa) < 1e-5
