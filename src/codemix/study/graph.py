"""A study YAML becomes a graph of jobs: the one path through a study.

:func:`plan_study` asks each stage module (:mod:`codemix.study.stages`) for its jobs, in
stage order; every job is keyed by content (:mod:`codemix.study.jobs`), so identical jobs
are one job and growing a study (another m, seed, setting, baseline, benchmark) adds jobs
and invalidates none but the analysis. ``codemix study run`` runs the whole graph;
``codemix mix``, ``codemix train`` and ``codemix eval`` run some of its targets and their
missing inputs (:meth:`~codemix.study.jobs.Plan.with_inputs`).

The graph, in stage order (each stage reads only earlier stages)::

    tokenizer ─► stream (one per source) ─► mixture (setting × m, + baselines)
              ─► pretrain (mixture × seed) ─► eval (checkpoint × benchmark) ─► analysis
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from codemix.config import StudyConfig
from codemix.errors import CodemixError
from codemix.models import GPU_NAME, GPU_PEAK_FLOPS, count_parameters
from codemix.study.jobs import STAGES, Job, Plan
from codemix.study.stages import analysis, eval, mixture, pretrain, stream, tokenizer

__all__ = ["MFU", "find_pretrain", "gpu_hours", "plan_study", "print_plan"]

#: Model FLOPs utilization assumed for the GPU-hour estimate on one
#: :data:`~codemix.models.GPU_NAME` (a well-tuned small-model run).
MFU = 0.40


def plan_study(cfg: StudyConfig, root: str | Path | None = None) -> Plan:
    """Turn a validated study into its job graph (no side effects)."""
    root = Path(root if root is not None else cfg.out)
    tok = tokenizer.plan(cfg)
    streams = stream.plan(cfg, tok)
    mixtures = mixture.plan(cfg, streams)
    checkpoints = pretrain.plan(cfg, mixtures, tok, streams)
    evals = eval.plan(cfg, checkpoints, streams)
    final = analysis.plan(cfg, evals, mixtures, checkpoints)
    jobs: dict[str, Job] = {}
    for job in (tok, *streams.values(), *mixtures, *checkpoints, *evals, *final):
        jobs.setdefault(job.id, job)
    return Plan(cfg=cfg, root=root, jobs=jobs, packs=pretrain.packs(cfg, checkpoints, mixtures))


def find_pretrain(plan: Plan, *, setting: str, m: float, seed: int, baseline: bool = False,
                  arm: str | None = None) -> Job:
    """The pretraining job that stands for (setting, m, baseline, seed, arm); a clear error when none does."""
    want = {"setting": setting, "m": float(m), "baseline": baseline, "seed": seed, "arm": arm}
    for job in plan.by_stage("pretrain"):
        if any({k: lab.get(k) for k in want} == want for lab in job.labels):
            return job
    have = sorted({f"{lab['setting']}{' baseline' if lab['baseline'] else ''} m={lab['m']:g} seed={lab['seed']}"
                   + (f" arm={lab['arm']}" if lab.get("arm") else "")
                   for j in plan.by_stage("pretrain") for lab in j.labels})
    raise CodemixError(f"study {plan.cfg.name!r} has no model for setting={setting} m={m:g} seed={seed}"
                       f"{' (baseline)' if baseline else ''}{f' arm={arm}' if arm else ''}; it has: "
                       f"{', '.join(have)}. Add the m to mixtures.m (or the seed to seeds) in the study file, "
                       "or pick one of these" + ("; with arms, name one with --arm" if plan.cfg.mixtures.arms else ""))


# ----------------------------------------------------------------------------- `codemix study plan`


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _fmt_flops(f: float) -> str:
    if f <= 0:
        return "-"
    exp = int(math.floor(math.log10(f)))
    return f"{f / 10 ** exp:.1f}e{exp}"


def gpu_hours(flops: float) -> float:
    """Hours on one GPU of :data:`GPU_NAME` at :data:`MFU`."""
    return flops / (GPU_PEAK_FLOPS * MFU) / 3600.0


def stage_summary(plan: Plan) -> list[dict[str, Any]]:
    """One row per stage: jobs, done, failed, FLOPs, GPU-hours, disk."""
    rows = []
    for stage in STAGES:
        jobs = plan.by_stage(stage)
        if not jobs:
            continue
        done = sum(plan.is_done(j) for j in jobs)
        extend = sum(plan.needs_growth(j) for j in jobs)
        failed = sum((plan.failure_dir(j) / "FAILED").is_file() and not plan.is_done(j) for j in jobs)
        flops = sum(j.flops for j in jobs)
        rows.append({"stage": stage, "jobs": len(jobs), "done": done, "extend": extend, "failed": failed,
                     "flops": flops, "gpu_hours": gpu_hours(flops) if flops else 0.0,
                     "disk_bytes": sum(j.disk_bytes for j in jobs)})
    return rows


def print_plan(plan: Plan, *, jobs: bool = True, console: Any = None) -> None:
    """Print the job table (optional) and the per-stage compute, disk and progress."""
    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: do not squeeze the tables to 80 columns
            console = Console(width=140)
    cfg = plan.cfg
    if jobs:
        t = Table(title=f"jobs of study {cfg.name!r} in {plan.root} (eval jobs grouped per checkpoint)")
        for col in ("stage", "job", "hash", "stands for", "pack", "GPU-h", "done"):
            t.add_column(col, justify="right" if col in ("GPU-h", "done") else "left",
                         no_wrap=col == "hash")
        pack_no = {m: i + 1 for i, pack in enumerate(plan.packs) for m in pack.members}
        rows: dict[tuple[str, str], list[Job]] = {}
        for j in plan.jobs.values():  # eval rows grouped by the checkpoint they read
            rows.setdefault((j.stage, j.inputs["checkpoint"] if j.stage == "eval" else j.id), []).append(j)
        for (stage, group), js in rows.items():
            name = (f"{plan.jobs[group].name} × " + ",".join(j.key["benchmark"] for j in js) if stage == "eval"
                    else js[0].name)
            labels = "; ".join(f"{'baseline' if lab['baseline'] else lab['setting']} m={lab['m']:g}"
                               + (f" {lab['arm']}" if lab.get("arm") else "") for lab in js[0].labels)
            flops = sum(j.flops for j in js)
            done = sum(plan.is_done(j) for j in js)
            failed = sum((plan.failure_dir(j) / "FAILED").is_file() for j in js)
            grow = [j for j in js if plan.needs_growth(j)]
            state = f"[green]{done}/{len(js)}[/]" if done == len(js) else (
                f"{done}/{len(js)}" + (f" [red]{failed} failed[/]" if failed else "")
                + (f" extend to {grow[0].growth.need:,} tokens" if len(grow) == 1 and grow[0].growth else ""))
            t.add_row(stage, name, js[0].hash[:8] if len(js) == 1 else "…", labels,
                      str(pack_no.get(js[0].id, "")), f"{gpu_hours(flops):.2g}" if flops else "-", state)
        console.print(t)
    runs = plan.by_stage("pretrain")
    if plan.packs:
        packed = sum(len(p.members) for p in plan.packs)
        console.print(f"pretraining: {packed} of {len(runs)} runs in {len(plan.packs)} packs "
                      f"({', '.join(str(len(p.members)) for p in plan.packs)}), each trained as one model in one "
                      f"process; {plan.packs[0].note}")
    elif len(runs) > 1:
        console.print(f"pretraining: one run per process ({pretrain.pack_size(cfg)[1]})")

    n_params = count_parameters(cfg.model, vocab_size=cfg.data.tokenizer.vocab_size, seq_len=cfg.data.seq_len)
    s = Table(title=(f"compute per stage — model {cfg.model.arch}/{cfg.model.preset} ≈ {n_params / 1e6:.1f}M params; "
                     f"6·N·D training FLOPs (2·N·D inference); GPU-hours on one {GPU_NAME} at {MFU:.0%} MFU"))
    for col in ("stage", "jobs", "done", "extend", "failed", "FLOPs", "GPU-hours", "disk"):
        s.add_column(col, justify="left" if col == "stage" else "right")
    total = {"jobs": 0, "done": 0, "extend": 0, "failed": 0, "flops": 0.0, "gpu_hours": 0.0, "disk_bytes": 0.0}
    for row in stage_summary(plan):
        for k in total:
            total[k] += row[k]
        s.add_row(row["stage"], str(row["jobs"]), str(row["done"]), str(row["extend"]), str(row["failed"]),
                  _fmt_flops(row["flops"]), f"{row['gpu_hours']:.3g}" if row["flops"] else "CPU",
                  _fmt_bytes(row["disk_bytes"]))
    s.add_row("[bold]total[/]", str(total["jobs"]), str(total["done"]), str(total["extend"]), str(total["failed"]),
              _fmt_flops(total["flops"]), f"{total['gpu_hours']:.3g}", _fmt_bytes(total["disk_bytes"]))
    console.print(s)
    console.print("Eval FLOPs are rough (fixed prompt lengths); data stages run on CPU. "
                  "Disk: streams ≈ tokens × 2 bytes, checkpoints ≈ 12 bytes/param (weights + AdamW) each kept. "
                  "`extend`: done, and kept, but the study now needs more of it (a longer token stream).")
