"""benchmarks/gpu_check.sh --cpu: the GPU check at tiny sizes, so it cannot rot between GPU runs.

The data comes from the bundle builder (benchmarks/gpu_bundle.py, data only: no PyPI at test
time), so the bundle is checked to hold everything the check's study reads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_gpu_check_runs_every_check_on_a_cpu_from_the_bundle(tmp_path, data_dir):
    bundle = tmp_path / "bundle"
    built = subprocess.run([sys.executable, "benchmarks/gpu_bundle.py", "--no-wheels", "--out", str(bundle)],
                           cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr[-2000:]
    summary = json.loads(built.stdout.strip().splitlines()[-1])
    assert summary["mib"] < 60 and summary["data_files"] >= 5
    env = {**os.environ, "PYTHON": sys.executable, "CODEMIX_BUNDLE": str(bundle), "OMP_NUM_THREADS": "1"}
    env.pop("CODEMIX_DATA")  # the bundle's data/ alone
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--cpu"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=840)
    lines = {x["check"]: x for x in map(json.loads, (line for line in proc.stdout.splitlines()
                                                      if line.startswith("{")))}
    assert list(lines) == ["study", "pack_20m", "train_124m", "train_codet5_small", "train_t5_large_dec"], \
        proc.stdout + proc.stderr[-2000:]
    failed = [x for x in lines.values() if not x["ok"]]
    assert not failed and proc.returncode == 0, failed
    study = lines["study"]
    assert study["packs"] == [4] and study["report"] and study["result_rows"] > 0
    assert set(study["stage_seconds"]) == {"tokenizer", "stream", "mixture", "pretrain", "eval", "analysis"}
    pack = lines["pack_20m"]  # compiled (its single runs block by block): pack = single runs
    assert pack["k"] == 2 and pack["compile"] and pack["max_abs_loss_diff"] < 1e-4
    for path in ("pack", "sequential"):  # the model FLOPs each path achieved: a GPU's MFU once divided by its peak
        assert pack[f"{path}_tflops_per_s"] == pytest.approx(
            pack[f"{path}_tokens_per_s"] * pack["flops_per_token"] / 1e12, rel=1e-3)
    assert all(x["ratio"] > 0 for name, x in lines.items() if name != "study")
    assert all(set(x["warmup_seconds"]) == {"codemix", "hf_llama"} for name, x in lines.items() if name
               in ("train_124m", "train_t5_large_dec"))


def test_the_wrapper_runs_any_benchmark_script_with_the_checks_setup(tmp_path):
    """For a device session's own measurements after the checks (the bundle's wheels and data on the path)."""
    env = {**os.environ, "PYTHON": sys.executable, "CODEMIX_BUNDLE": str(tmp_path)}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "benchmarks/pack_throughput.py", "--ks", "2",
                           "--steps", "1", "--warmup", "1", "--rounds", "1", "--batch-size", "2", "--seq-len", "16",
                           "--vocab", "64"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert line["k"] == 2 and line["batch_size"] == 2, line


def test_gpu_check_runs_no_check_past_its_budget_and_says_how_to_run_it():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu", "--budget", "0",
                           "--only", "pack_20m,study"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 1 and [x["check"] for x in lines] == ["pack_20m", "study"]
    assert not any(x["ok"] for x in lines) and "--only study" in lines[1]["error"], lines


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the check would run for minutes")
def test_gpu_check_refuses_to_run_without_a_gpu_unless_asked_for_cpu():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "--cpu" in proc.stderr


def test_a_check_past_its_time_is_killed_with_what_it_started_and_reported():
    proc = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu", "--budget", "3", "--only", "study"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    (line,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert proc.returncode == 1 and not line["ok"] and line["error"].startswith("timed out after 3 s"), line
    assert line["seconds"] < 30
