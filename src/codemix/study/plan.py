"""A study YAML becomes a graph of jobs: ``codemix study plan``.

Every stage run is a :class:`Job`. Its directory under ``<out>/jobs/<stage>/`` is named
by a hash of the job's own config (:attr:`Job.key`) and of its inputs' hashes, so:

- changing a field re-runs exactly the jobs it affects and everything downstream;
- two jobs with the same content are one job. The planner relies on this to share the
  language-only mixture: competitive m=0, additive m=0 and the additive m=0 baseline all
  hold ``n_tokens`` language tokens and no code, so they are **one** mixture, one
  pretraining run per seed and one eval per benchmark, whose result rows are reported
  under each of the three labels (each job carries the list of labels it stands for).

The graph, in stage order (each stage reads only earlier stages)::

    tokenizer ─► stream (one per source) ─► mixture (setting × m, + baselines)
              ─► pretrain (mixture × seed) ─► eval (checkpoint × benchmark) ─► analysis

Job functions live in :mod:`codemix.study.jobs`; running them is
:mod:`codemix.study.executors`' business, recording them :mod:`codemix.study.store`'s.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codemix.config import StudyConfig
from codemix.io import stable_hash

__all__ = [
    "GPU_NAME",
    "GPU_PEAK_FLOPS",
    "MFU",
    "STAGES",
    "Job",
    "Plan",
    "cmd_plan",
    "count_params",
    "mixture_tokens",
    "plan_study",
]

#: Stages in the order they run. Jobs of a stage read only jobs of earlier stages.
STAGES = ("tokenizer", "stream", "mixture", "pretrain", "eval", "analysis")

#: The GPU that the compute estimate assumes: H100 SXM, dense bf16 peak.
GPU_NAME = "H100 (989 TFLOP/s bf16)"
GPU_PEAK_FLOPS = 989e12
#: Model FLOPs utilization assumed for the GPU-hour estimate (a well-tuned small-model run).
MFU = 0.40

#: Bumped when a job function's output format changes, so old job directories are not reused.
JOB_FORMAT = 1

_OPERATIONAL_PRETRAIN_FIELDS = {"device", "compile", "tensorboard", "wandb", "log_every"}
"""Pretraining fields that change how a run is executed or logged, not what it computes on a
given device; they are left out of the job hash so e.g. enabling W&B does not retrain."""


# ----------------------------------------------------------------------------- jobs


@dataclass(eq=False)
class Job:
    """One stage run: what it computes (``key``), from what (``inputs``), with which function.

    ``inputs`` maps a role (``"tokenizer"``, ``"stream:python"``, ``"mixture"``, ...) to the id
    of the job that provides it. ``labels`` are the study columns (setting, m, baseline, seed)
    that this job's results stand for; they are not hashed (they name, they do not compute).
    """

    stage: str
    name: str
    fn: str
    """``module:function`` called as ``fn(ctx: codemix.study.jobs.JobContext)``."""
    key: dict[str, Any]
    inputs: dict[str, str]
    hash: str
    labels: list[dict[str, Any]] = field(default_factory=list)
    gpus: int = 0
    """GPUs the job wants (0: a CPU job)."""
    resumable: bool = False
    """Keep the work directory of an interrupted attempt (checkpoints) instead of starting afresh."""
    flops: float = 0.0
    """Estimated model FLOPs (6·N·D for training, 2·N·D for inference)."""
    disk_bytes: float = 0.0
    """Estimated size of the job's directory."""

    @property
    def id(self) -> str:
        """``<stage>/<name>-<hash>``: the job's directory relative to ``<out>/jobs``."""
        return f"{self.stage}/{self.name}-{self.hash}"

    @classmethod
    def create(cls, stage: str, name: str, fn: str, key: Mapping[str, Any],
               inputs: Mapping[str, Job], **extra: Any) -> Job:
        assert stage in STAGES, stage
        digest = stable_hash({"format": JOB_FORMAT, "stage": stage, "fn": fn, "key": dict(key),
                              "inputs": {role: job.hash for role, job in inputs.items()}})
        return cls(stage=stage, name=name, fn=fn, key=dict(key),
                   inputs={role: job.id for role, job in inputs.items()}, hash=digest, **extra)

    def describe(self) -> dict[str, Any]:
        """What ``job.json`` records: enough to rebuild the study index without the YAML."""
        return {"id": self.id, "stage": self.stage, "name": self.name, "hash": self.hash, "fn": self.fn,
                "key": self.key, "inputs": self.inputs, "labels": self.labels, "gpus": self.gpus}


@dataclass
class Plan:
    """The job graph of one study, jobs in an order where inputs come first."""

    cfg: StudyConfig
    root: Path
    jobs: dict[str, Job]

    # Directory layout of a study (all under cfg.out):
    #   jobs/<stage>/<name>-<hash>/   complete job outputs (DONE marker inside), never partial
    #   work/<stage>/<name>-<hash>/   a job being run (renamed into jobs/ on success)
    #   failures/<stage>/<name>-<hash>/FAILED   the error of the last failed attempt
    #   study.db                      SQLite index of jobs and result rows (rebuildable)
    #   results.csv, report/          the study's results and report, published after analysis

    def job_dir(self, job: Job | str) -> Path:
        return self.root / "jobs" / (job if isinstance(job, str) else job.id)

    def work_dir(self, job: Job | str) -> Path:
        return self.root / "work" / (job if isinstance(job, str) else job.id)

    def failure_dir(self, job: Job | str) -> Path:
        return self.root / "failures" / (job if isinstance(job, str) else job.id)

    def is_done(self, job: Job | str) -> bool:
        return (self.job_dir(job) / "DONE").is_file()

    def input_dirs(self, job: Job) -> dict[str, Path]:
        return {role: self.job_dir(dep) for role, dep in job.inputs.items()}

    def by_stage(self, stage: str) -> list[Job]:
        return [j for j in self.jobs.values() if j.stage == stage]


# ----------------------------------------------------------------------------- mixtures


def _weights(cfg: StudyConfig, code: bool) -> dict[str, float]:
    """Normalized training weights of code (or language) sources; zero-weight sources dropped."""
    pool = [s.name for s in cfg.data.sources if s.code == code]
    given = cfg.mixtures.code_weights if code else cfg.mixtures.lang_weights
    raw = {n: float(given.get(n, 0.0)) for n in pool} if given else {n: 1.0 for n in pool}
    total = sum(w for w in raw.values() if w > 0)
    return {n: w / total for n, w in sorted(raw.items()) if w > 0} if total > 0 else {}


def mixture_tokens(setting: str, m: float, baseline: bool, n_tokens: int) -> tuple[int, int]:
    """(language tokens, code tokens) of a mixture, per DESIGN.md "Mixtures"."""
    if setting == "competitive":
        code = round(m * n_tokens)
        return n_tokens - code, code
    total = n_tokens / (1.0 - m)
    if baseline:
        return round(total), 0
    return n_tokens, round(total) - n_tokens


def _mixture_label(setting: str, m: float, baseline: bool) -> str:
    return f"{'baseline' if baseline else setting}-m{m:g}"


# ----------------------------------------------------------------------------- compute estimates


_GPT_PRESETS = {  # (layers, d_model, d_ff) used only when the model code cannot be imported
    "tiny": (2, 64, 176), "20m": (6, 384, 1024), "124m": (12, 768, 2048), "t5-large-dec": (24, 1024, 2816),
}
_T5_PRESETS = {"tiny": (2, 64, 256), "codet5-small": (6, 512, 2048), "codet5-base": (12, 768, 3072)}


def count_params(cfg: StudyConfig) -> int:
    """Parameters of the study's model: built on the meta device when the model code is
    available (exact, no memory), else from the preset's shape (approximate)."""
    try:
        import torch

        from codemix.objectives import TASKS

        task = TASKS[cfg.model.arch](cfg, vocab_size=cfg.data.tokenizer.vocab_size)
        with torch.device("meta"):
            model = task.build_model()
        return int(sum(p.numel() for p in model.parameters()))
    except Exception:  # model code not importable or a different signature: estimate from the shape
        presets = _GPT_PRESETS if cfg.model.arch == "gpt" else _T5_PRESETS
        layers, d, ff = presets.get(cfg.model.preset, _GPT_PRESETS["124m"])
        layers = cfg.model.n_layers or layers
        d, ff = cfg.model.d_model or d, cfg.model.d_ff or ff
        vocab = cfg.data.tokenizer.vocab_size
        per_layer = 4 * d * d + 3 * d * ff
        if cfg.model.arch == "t5":
            per_layer = per_layer + per_layer + 4 * d * d  # encoder + decoder with cross-attention
        return int(layers * per_layer + vocab * d * (1 if cfg.model.tie_embeddings is not False else 2))


def _train_tokens(cfg: StudyConfig, mixture_total: int) -> int:
    """Tokens one pretraining run sees: max_steps / max_tokens caps, else one pass over the mixture."""
    p = cfg.pretrain
    candidates = [mixture_total]
    if p.max_steps:
        candidates = [p.max_steps * p.batch_size * cfg.data.seq_len]
    if p.max_tokens:
        candidates.append(p.max_tokens)
    return int(min(candidates))


def _eval_flops(name: str, section: Any, n_params: int, cfg: StudyConfig) -> float:
    """A rough model-FLOPs estimate of one benchmark on one checkpoint (order of magnitude)."""
    if name in ("cogs", "cogs_vf", "passivization"):
        ft = section.finetune
        limit = section.limit or 21_000
        return 6.0 * n_params * ft.steps * ft.batch_size * 96 + 2.0 * n_params * limit * 3 * 128
    if name == "bigbench":
        return 2.0 * n_params * (section.limit or 1000) * max(len(section.tasks), 24) * 4 * 128
    if name == "perplexity":
        docs = (section.max_docs or 1000) * len(cfg.data.sources)
        return 2.0 * n_params * docs * 2 * cfg.data.seq_len
    if name == "mbpp":
        sec = dict(section or {})
        return 2.0 * n_params * int(sec.get("limit") or 400) * len(sec.get("langs") or [1, 2, 3]) \
            * int(sec.get("n") or 1) * 512
    return 0.0


# ----------------------------------------------------------------------------- the planner


def _source_key(cfg: StudyConfig, name: str) -> dict[str, Any]:
    """A source's config plus the size of each of its files (a re-fetched, changed file re-tokenizes)."""
    from codemix.data.fetch import data_path

    src = cfg.source(name)
    sizes = {}
    for p in src.paths:
        path = data_path(p, must_exist=False)
        sizes[p] = path.stat().st_size if path.is_file() else None
    return {"source": src.model_dump(mode="json"), "file_sizes": sizes}


def mixture_variants(cfg: StudyConfig) -> list[tuple[str, float, bool]]:
    """(setting, m, baseline) of every mixture the study names, before deduplication."""
    mix = cfg.mixtures
    out = []
    for setting in mix.settings:
        for baseline in [False] + ([True] if setting == "additive" and mix.baselines else []):
            out += [(setting, float(m), baseline) for m in mix.m_for(setting)]
    return out


def _stream_budgets(cfg: StudyConfig) -> dict[str, int]:
    """Training tokens each stream must hold: the most any mixture of the study takes from it."""
    from codemix.data.mixture import MixtureSpec, source_targets

    seq_len = cfg.data.seq_len
    budgets = {s.name: 0 for s in cfg.data.sources}
    for setting, m, baseline in mixture_variants(cfg):
        for name, target in source_targets(MixtureSpec(setting, m, baseline), cfg.mixtures, cfg.data).items():
            budgets[name] = max(budgets[name], math.floor(target / seq_len + 0.5) * seq_len)
    return budgets


def _section_dump(section: Any) -> Any:
    return section.model_dump(mode="json") if hasattr(section, "model_dump") else section


def plan_study(cfg: StudyConfig, root: str | Path | None = None) -> Plan:
    """Turn a validated study into its job graph (no side effects)."""
    from codemix.data.annotations import needs_annotations

    root = Path(root if root is not None else cfg.out)
    jobs: dict[str, Job] = {}

    def add(job: Job) -> Job:
        return jobs.setdefault(job.id, job)

    d = cfg.data
    vocab = d.tokenizer.vocab_size
    token_bytes = 2 if vocab <= 65536 else 4
    all_sources = [s.name for s in d.sources]

    # tokenizer: trained on samples of every source (or copied from tokenizer.path)
    tok_key = {"tokenizer": d.tokenizer.model_dump(mode="json"),
               "sources": {n: _source_key(cfg, n) for n in all_sources}}
    if d.tokenizer.path:
        tok_key = {"tokenizer": d.tokenizer.model_dump(mode="json")}
    tokenizer = add(Job.create("tokenizer", "tokenizer", "codemix.study.jobs:tokenizer_job", tok_key, {},
                               disk_bytes=vocab * 60.0))

    # one token stream per source (training documents + held-out documents)
    streams: dict[str, Job] = {}
    budgets = _stream_budgets(cfg)
    for name in all_sources:
        key = {**_source_key(cfg, name), "heldout_docs": d.heldout_docs, "shuffle_seed": d.shuffle_seed,
               "budget_tokens": budgets[name]}
        annotate = needs_annotations(cfg, cfg.source(name))
        if annotate:  # CodeT5's objectives read identifier annotations of the stream (4-8 bytes a token)
            key["annotate"] = True
        streams[name] = add(Job.create("stream", name, "codemix.study.jobs:stream_job", key,
                                       {"tokenizer": tokenizer},
                                       disk_bytes=budgets[name] * (token_bytes + 0.1 + (8 if annotate else 0))))

    # mixtures, keyed by content so identical mixtures (all m=0 variants) are one job
    code_w, lang_w = _weights(cfg, code=True), _weights(cfg, code=False)
    mix = cfg.mixtures
    mixtures: list[tuple[Job, int]] = []
    for setting, m, baseline in mixture_variants(cfg):
        n_lang, n_code = mixture_tokens(setting, m, baseline, mix.n_tokens)
        used_code = code_w if n_code > 0 else {}
        key = {"lang_tokens": n_lang, "code_tokens": n_code, "lang_weights": lang_w,
               "code_weights": used_code, "seq_len": d.seq_len, "max_repetition": mix.max_repetition,
               "seed": mix.seed}
        inputs = {f"stream:{n}": streams[n] for n in all_sources}  # mixture.json names every source
        label = {"setting": setting, "m": m, "baseline": baseline}
        name = "lang-only-m0" if n_code == 0 and m == 0 else _mixture_label(setting, m, baseline)
        job = add(Job.create("mixture", name, "codemix.study.jobs:mixture_job", key, inputs,
                             disk_bytes=(n_lang + n_code) / d.seq_len * 16.0))
        if label not in job.labels:
            job.labels.append(label)
        if all(j is not job for j, _ in mixtures):
            mixtures.append((job, n_lang + n_code))

    # pretraining: one run per mixture and seed
    n_params = count_params(cfg)
    gpus = cfg.executor.gpus_per_job
    pre_key = {"model": cfg.model.model_dump(mode="json"),
               "pretrain": cfg.pretrain.model_dump(mode="json", exclude=_OPERATIONAL_PRETRAIN_FIELDS),
               "seq_len": d.seq_len}
    heldout_inputs = {f"stream:{n}": streams[n] for n in all_sources}
    checkpoints: list[Job] = []
    for mjob, total in mixtures:
        for seed in cfg.seeds:
            job = add(Job.create(
                "pretrain", f"{mjob.name}-seed{seed}", "codemix.study.jobs:pretrain_job", {**pre_key, "seed": seed},
                {"mixture": mjob, "tokenizer": tokenizer, **heldout_inputs},
                labels=[{**lab, "seed": seed} for lab in mjob.labels], gpus=gpus, resumable=True,
                flops=6.0 * n_params * _train_tokens(cfg, total),
                disk_bytes=n_params * 12.0 * cfg.pretrain.keep_checkpoints))
            checkpoints.append(job)

    # evaluation: one job per checkpoint and benchmark
    evals: list[Job] = []
    for ckpt in checkpoints:
        for bench, section in cfg.evals.enabled().items():
            inputs = {"checkpoint": ckpt, **(heldout_inputs if bench == "perplexity" else {})}
            evals.append(add(Job.create(
                "eval", f"{ckpt.name}-{bench}", "codemix.study.jobs:eval_job",
                {"benchmark": bench, "config": _section_dump(section)}, inputs,
                labels=list(ckpt.labels), gpus=min(gpus, 1),
                flops=_eval_flops(bench, section, n_params, cfg), disk_bytes=5e6)))

    # analysis: every result row of the study → regressions, permutation tests, report
    if evals:
        key = {"analysis": cfg.analysis.model_dump(mode="json"), "study": cfg.name,
               "labels": {e.id: e.labels for e in evals}}
        context = {f"{j.stage}:{j.id}": j for j in (*(m for m, _ in mixtures), *checkpoints)}  # report sections
        add(Job.create("analysis", "analysis", "codemix.study.jobs:analysis_job", key,
                       {**{f"eval:{e.id}": e for e in evals}, **context}, disk_bytes=5e6))
    return Plan(cfg=cfg, root=root, jobs=jobs)


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
        failed = sum((plan.failure_dir(j) / "FAILED").is_file() and not plan.is_done(j) for j in jobs)
        flops = sum(j.flops for j in jobs)
        rows.append({"stage": stage, "jobs": len(jobs), "done": done, "failed": failed,
                     "flops": flops, "gpu_hours": gpu_hours(flops) if flops else 0.0,
                     "disk_bytes": sum(j.disk_bytes for j in jobs)})
    return rows


def print_plan(plan: Plan, *, jobs: bool = True, console: Any = None) -> None:
    """Print the job table (optional) and the per-stage compute, disk and progress."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console()
        if not console.is_terminal:  # piped or captured: do not squeeze the tables to 80 columns
            console = Console(width=140)
    cfg = plan.cfg
    if jobs:
        t = Table(title=f"jobs of study {cfg.name!r} in {plan.root} (eval jobs grouped per checkpoint)")
        for col in ("stage", "job", "hash", "stands for", "GPU-h", "done"):
            t.add_column(col, justify="right" if col in ("GPU-h", "done") else "left",
                         no_wrap=col == "hash")
        rows: dict[tuple[str, str], list[Job]] = {}
        for j in plan.jobs.values():  # eval rows grouped by the checkpoint they read
            group = plan.jobs[j.inputs["checkpoint"]].name + " × " if j.stage == "eval" else j.name
            rows.setdefault((j.stage, group), []).append(j)
        for (stage, group), js in rows.items():
            name = group + ",".join(j.key["benchmark"] for j in js) if stage == "eval" else group
            labels = "; ".join(
                f"{'baseline' if lab['baseline'] else lab['setting']} m={lab['m']:g}" for lab in js[0].labels)
            flops = sum(j.flops for j in js)
            done = sum(plan.is_done(j) for j in js)
            failed = sum((plan.failure_dir(j) / "FAILED").is_file() for j in js)
            state = f"[green]{done}/{len(js)}[/]" if done == len(js) else (
                f"{done}/{len(js)}" + (f" [red]{failed} failed[/]" if failed else ""))
            t.add_row(stage, name, js[0].hash[:8] if len(js) == 1 else "…", labels,
                      f"{gpu_hours(flops):.2g}" if flops else "-", state)
        console.print(t)

    n_params = count_params(cfg)
    s = Table(title=(f"compute per stage — model {cfg.model.arch}/{cfg.model.preset} ≈ {n_params / 1e6:.1f}M params; "
                     f"6·N·D training FLOPs (2·N·D inference); GPU-hours on one {GPU_NAME} at {MFU:.0%} MFU"))
    for col in ("stage", "jobs", "done", "failed", "FLOPs", "GPU-hours", "disk"):
        s.add_column(col, justify="left" if col == "stage" else "right")
    total = {"jobs": 0, "done": 0, "failed": 0, "flops": 0.0, "gpu_hours": 0.0, "disk_bytes": 0.0}
    for row in stage_summary(plan):
        for k in total:
            total[k] += row[k]
        s.add_row(row["stage"], str(row["jobs"]), str(row["done"]), str(row["failed"]), _fmt_flops(row["flops"]),
                  f"{row['gpu_hours']:.3g}" if row["flops"] else "CPU", _fmt_bytes(row["disk_bytes"]))
    s.add_row("[bold]total[/]", str(total["jobs"]), str(total["done"]), str(total["failed"]),
              _fmt_flops(total["flops"]), f"{total['gpu_hours']:.3g}", _fmt_bytes(total["disk_bytes"]))
    console.print(s)
    console.print("Eval FLOPs are rough (fixed prompt lengths); data stages run on CPU. "
                  "Disk: streams ≈ tokens × 2 bytes, checkpoints ≈ 12 bytes/param (weights + AdamW) each kept.")


def cmd_plan(args: argparse.Namespace) -> int:
    """``codemix study plan STUDY.yaml``: the job graph, its compute and what is already done."""
    from codemix.config import load_study

    cfg = load_study(args.study, args.overrides)
    plan = plan_study(cfg)
    print_plan(plan)
    return 0

