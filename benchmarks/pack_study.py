"""A study's pretraining stage one run at a time vs in packs, end to end. Prints one JSON line.

Builds the study's data once (tokenizer, streams, mixtures) in a temporary directory, then
runs every pretraining job of the study twice, each time from a fresh copy of that data,
through the scheduler exactly as ``codemix study run`` runs them (on a machine without GPUs:
one CPU thread per job, every core for a pack): once with ``pretrain.pack=1`` (one run at a
time) and once with the study's ``pretrain.pack`` (default 8). Both write the same jobs
under the same keys, so ``max_abs_final_loss_diff`` (the largest difference between a run's
last logged training loss in the two) is float rounding, grown over the run's steps (batched
and single matrix products round differently; the demo's 150 steps end about 1e-3 apart).

``ratio`` = seconds one run at a time / seconds in packs; the target for the demo on 2 CPU
cores is 2. ``--repeat`` times each path that many times and keeps its fastest (these
machines are noisy).

    python benchmarks/pack_study.py                                  # studies/demo.yaml
    python benchmarks/pack_study.py studies/py2rust-go.yaml --set pretrain.max_steps=40
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("CODEMIX_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

from codemix.config import load_study  # noqa: E402
from codemix.study.commands import run_targets  # noqa: E402
from codemix.study.graph import plan_study  # noqa: E402
from codemix.study.jobs import Plan  # noqa: E402


def _plan(study: str, sets: list[str], out: Path, pack: int | None) -> Plan:
    return plan_study(load_study(study, [*sets, f"out={out}", *([f"pretrain.pack={pack}"] if pack else [])]))


def _final_losses(plan: Plan) -> dict[str, float]:
    losses = {}
    for job in plan.by_stage("pretrain"):
        lines = (plan.job_dir(job) / "log.jsonl").read_text().splitlines()
        train = [r for r in map(json.loads, lines) if "loss" in r and r.get("kind") is None]
        losses[job.id] = train[-1]["loss"]
    return losses


def _run(plan: Plan, stage: str, tmp: str) -> None:
    """Run the plan's jobs of ``stage``; a failure stops here and keeps ``tmp``, where its record is."""
    summary = run_targets(plan, plan.by_stage(stage), show_plan=False)
    if summary.failed or summary.blocked:
        raise SystemExit(f"{stage} failed: {summary.failed or summary.blocked}; `codemix study status` in "
                         f"{plan.root} shows the error (the directory {tmp} is kept)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("study", nargs="?", default="studies/demo.yaml", help="study YAML (default studies/demo.yaml)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a study field")
    parser.add_argument("--repeat", type=int, default=1, help="time each path this many times, keep the fastest")
    args = parser.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="codemix-pack-study-")  # kept if a job fails: its failure record is there
    data = Path(tmp) / "data"
    plan = _plan(args.study, args.set, data, None)
    _run(plan, "mixture", tmp)  # the tokenizer, streams and mixtures, once
    seconds: dict[str, float] = {}
    losses: dict[str, dict[str, float]] = {}
    for _ in range(args.repeat):
        for name, pack in (("single", 1), ("pack", None)):
            out = Path(tmp) / name
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(data, out)
            plan = _plan(args.study, args.set, out, pack)
            start = time.perf_counter()
            _run(plan, "pretrain", tmp)
            elapsed = time.perf_counter() - start
            seconds[name] = min(seconds.get(name, elapsed), elapsed)
            losses[name] = _final_losses(plan)
    shutil.rmtree(tmp)
    diff = max(abs(losses["single"][j] - losses["pack"][j]) for j in losses["single"])
    print(json.dumps({"study": args.study, "runs": len(losses["single"]), "packs": [len(p.members) for p in plan.packs],
                      "single_s": round(seconds["single"], 1), "pack_s": round(seconds["pack"], 1),
                      "ratio": round(seconds["single"] / seconds["pack"], 3),
                      "max_abs_final_loss_diff": float(f"{diff:.3g}")}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
