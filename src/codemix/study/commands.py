"""The commands that run a study, or targets of its graph: plan, run, status, mix, train, eval.

Every one of them plans the whole study (:func:`codemix.study.graph.plan_study`) and runs
what it is asked for, with its missing inputs, through the one scheduling loop
(:func:`codemix.study.scheduler.run_jobs`): there is one on-disk layout, whichever command
built a job. ``codemix eval NAME --model DIR`` on a model from outside a study runs the same
benchmark code with explicit paths.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from codemix.checkpoint import CheckpointInfo, checkpoint_info, is_codemix_checkpoint
from codemix.config import Labels, StudyConfig, configure, load_study, print_config, save_config
from codemix.data.mixture import mixture_specs, source_targets
from codemix.errors import CodemixError
from codemix.evals.benchmark import EvalContext, add_common_arguments
from codemix.evals.handle import load_handle
from codemix.evals.registry import BENCHMARKS
from codemix.evals.rows import labelled, read_rows, write_table
from codemix.io import atomic_dir, read_json
from codemix.models import count_parameters
from codemix.study.graph import find_pretrain, plan_study, print_plan
from codemix.study.jobs import Job, Plan
from codemix.study.scheduler import LOG_FILE, RunSummary, launcher_for, limit_cpu_threads, run_jobs
from codemix.study.stages import eval as eval_stage
from codemix.study.stages.analysis import CONTEXT_DIR
from codemix.study.stages.pretrain import checkpoint_of
from codemix.study.stages.tokenizer import TOKENIZER_FILE
from codemix.study.store import Store, plan_rows, print_status, read_failure

__all__ = ["StudyData", "add_eval_parsers", "build_data", "cmd_eval", "cmd_mix", "cmd_plan", "cmd_run", "cmd_status", "cmd_train",
           "publish_outputs", "run_study", "run_targets"]


# ----------------------------------------------------------------------------- running targets


def run_targets(plan: Plan, targets: list[Job] | None = None, *, executor: str | None = None,
                console: Console | None = None, show_plan: bool = True, fit_gpus: bool = True) -> RunSummary:
    """Run ``targets`` (default: the whole study) and their missing inputs; return what happened.

    ``fit_gpus``: ask no job for more GPUs than this machine has (off when the user chose a
    count for this run: on a machine without GPUs, N then means N CPU processes).
    """
    cfg = plan.cfg
    kind = executor or cfg.executor.kind
    sub = plan.with_inputs(targets) if targets is not None else plan
    save_config(cfg, plan.root)
    with contextlib.closing(Store(plan)) as store:
        states = store.rebuild()
        todo = [j for j in sub.jobs.values() if states[j.id] != "done"]
        if not todo:
            return RunSummary(already_done=len(sub.jobs))
        if console and show_plan:
            print_plan(sub, jobs=False, console=console)
            console.print(f"running {len(todo)} of {len(sub.jobs)} jobs with the {kind} executor; "
                          f"each job's output: {plan.root / 'work'}/<stage>/<job>.log")
        limit_cpu_threads(console)
        launcher = launcher_for(sub, kind, console, fit_gpus=fit_gpus)
        summary = run_jobs(sub, launcher, store=store, console=console,
                           max_retries=cfg.executor.max_retries if kind != "local" else 0)
        store.rebuild()
    for tidy in ("work", "locks"):
        _remove_empty_dirs(plan.root / tidy)
    return summary


def run_study(cfg: StudyConfig, *, executor: str | None = None, console: Console | None = None) -> RunSummary:
    """Plan the study, run every job that is not done, publish the report."""
    plan = plan_study(cfg)
    summary = run_targets(plan, executor=executor, console=console)
    report = publish_outputs(plan)
    if console:
        if not summary.ran and not summary.failed and not summary.blocked and not summary.elsewhere:
            console.print(f"nothing to do: all {len(plan.jobs)} jobs of study {cfg.name!r} are done"
                          + (f"; report: {report}" if report else ""))
        else:
            _print_summary(plan, summary, report, console)
    return summary


def _print_summary(plan: Plan, summary: RunSummary, report: Path | None, console: Console) -> None:
    console.print(f"ran {len(summary.ran)} job(s), {len(summary.failed)} failed, {len(summary.blocked)} blocked "
                  f"by failures, {summary.already_done} were already done"
                  + (f", {len(summary.elsewhere)} done by another driver" if summary.elsewhere else ""))
    for job_id in summary.failed:
        console.print(f"  [red]FAILED[/] {job_id}: {plan.failure_dir(job_id) / 'FAILED'}")
    if summary.failed:
        console.print("`codemix study status` shows each error; fix the cause and rerun: only jobs not done run.")
    if report:
        console.print(f"report: {report}")


def publish_outputs(plan: Plan) -> Path | None:
    """Copy the finished analysis (report/, tables, results.csv) to the study's out directory."""
    jobs = plan.by_stage("analysis")
    if not jobs or not plan.is_done(jobs[0]):
        return None
    src = plan.job_dir(jobs[0])
    stamp = plan.root / "report" / ".analysis-job"
    if stamp.is_file() and stamp.read_text().strip() == jobs[0].id:
        return plan.root / "report" / "index.html"
    for entry in sorted(src.iterdir()):
        if entry.name in ("DONE", "job.json", LOG_FILE, "report", CONTEXT_DIR):
            continue
        target = plan.root / entry.name
        if entry.is_dir():
            with atomic_dir(target, overwrite=True) as tmp:
                shutil.copytree(entry, tmp, dirs_exist_ok=True)
        else:
            shutil.copyfile(entry, target)
    if (src / "report").is_dir():
        with atomic_dir(plan.root / "report", overwrite=True) as tmp:
            shutil.copytree(src / "report", tmp, dirs_exist_ok=True)
            (tmp / ".analysis-job").write_text(jobs[0].id + "\n")
    return plan.root / "report" / "index.html"


def _remove_empty_dirs(root: Path) -> None:
    """Tidy ``work/`` and ``locks/`` after a run: keep only what an unfinished job (or another driver) left."""
    if not root.is_dir():
        return
    for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            path.rmdir()  # only succeeds when empty
    with contextlib.suppress(OSError):
        root.rmdir()


def _require(summary: RunSummary, plan: Plan, targets: list[Job]) -> None:
    """Raise a clear error, with each failure's own message, when a target did not get done."""
    missing = [t for t in targets if not plan.is_done(t)]
    if not missing:
        return
    errors = []
    for job_id in summary.failed:
        text = (read_failure(plan, job_id) or "").strip().splitlines()
        errors.append(f"{job_id}: {text[-1] if text else 'failed'}")
    raise CodemixError(f"{len(missing)} job(s) did not finish ({len(summary.failed)} failed, "
                       f"{len(summary.blocked)} blocked)" + (": " + "; ".join(errors) if errors else "")
                       + f". `codemix study status` shows each error in full ({plan.root / 'failures'})")


# ----------------------------------------------------------------------------- commands


def cmd_plan(args: argparse.Namespace) -> int:
    """``codemix study plan STUDY.yaml``: the job graph, its compute and what is already done."""
    print_plan(plan_study(load_study(args.study, args.overrides)))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """``codemix study run STUDY.yaml [--executor local|slurm|submitit-local]``."""
    cfg = load_study(args.study, args.overrides)
    signal.signal(signal.SIGTERM, _terminate)  # `kill`, `timeout`, scancel: clean up like Ctrl-C
    summary = run_study(cfg, executor=args.executor, console=Console(stderr=True))
    return 0 if summary.ok else 1


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"terminated by signal {signum}")


def cmd_status(args: argparse.Namespace) -> int:
    """``codemix study status STUDY.yaml [--export FILE]``."""
    plan = plan_study(load_study(args.study, args.overrides))
    with contextlib.closing(Store(plan)) as store:
        store.rebuild()
        print_status(store)
    if args.export:
        rows = plan_rows(plan)
        write_table(rows, args.export)
        print(f"wrote {len(rows)} result rows to {args.export}")
    return 0


def mixture_table(plan: Plan) -> Table:
    """Target vs realized tokens per mixture (every label) and source."""
    cfg = plan.cfg
    table = Table(title=f"mixtures of {cfg.name} ({plan.root / 'jobs' / 'mixture'})")
    for col, justify in (("mixture", "left"), ("source", "left"), ("target", "right"), ("realized", "right"),
                         ("diff", "right"), ("repetition", "right")):
        table.add_column(col, justify=justify)
    by_label = {(lab["setting"], lab["m"], lab["baseline"], lab["arm"]): job
                for job in plan.by_stage("mixture") for lab in job.labels}
    for spec in mixture_specs(cfg.mixtures):
        info = read_json(plan.job_dir(by_label[(spec.setting, spec.m, spec.baseline, spec.arm)]) / "mixture.json")
        targets = source_targets(spec, cfg.mixtures, cfg.data)
        for name in info["sources"]:
            target, real = round(targets[name]), info["tokens"][name]
            if not target and not real:
                continue
            rep = info["repetition"][name]
            table.add_row(spec.name, name, f"{target:,}", f"{real:,}", f"{real - target:+,}",
                          f"[yellow]{rep:.2f}x[/yellow]" if rep > 1 else "none")
        table.add_row(spec.name, "[bold]total[/bold]", f"{round(sum(targets.values())):,}",
                      f"{info['tokens_total']:,}", f"m={spec.m:g}", f"realized m={info['realized_m']:.4f}",
                      end_section=True)
    return table


@dataclass(frozen=True)
class StudyData:
    """Where a study's data jobs keep their outputs, for code that calls the stages' library
    functions with explicit paths (e.g. :func:`codemix.train.pretrain.train`)."""

    plan: Plan

    @property
    def root(self) -> Path:
        return self.plan.root

    def _job(self, stage: str, **label: Any) -> Job:
        for job in self.plan.by_stage(stage):
            if stage == "stream" and job.key["source"]["name"] == label["source"]:
                return job
            if stage == "mixture" and label in [{k: lab[k] for k in label} for lab in job.labels]:
                return job
        raise CodemixError(f"study {self.plan.cfg.name!r} has no {stage} for {label}")

    @property
    def tokenizer_path(self) -> Path:
        return self.plan.job_dir(self.plan.by_stage("tokenizer")[0]) / TOKENIZER_FILE

    def stream_dir(self, source: str) -> Path:
        return self.plan.job_dir(self._job("stream", source=source))

    def heldout_dir(self, source: str) -> Path:
        return self.stream_dir(source) / "heldout"

    def mixture_dir(self, setting: str, m: float, baseline: bool = False, arm: str | None = None) -> Path:
        return self.plan.job_dir(self._job("mixture", setting=setting, m=float(m), baseline=baseline, arm=arm))


def build_data(cfg: StudyConfig, *, console: Console | None = None) -> StudyData:
    """Build what is missing of the study's tokenizer, token streams and mixtures (``codemix mix``)."""
    plan = plan_study(cfg)
    targets = plan.by_stage("mixture")
    summary = run_targets(plan, targets, console=console, show_plan=False)
    _require(summary, plan, targets)
    return StudyData(plan)


def cmd_mix(args: argparse.Namespace) -> int:
    """``codemix mix STUDY``: the study's tokenizer, token streams and mixtures; prints target vs realized."""
    cfg = load_study(args.study, args.overrides)
    print_config(cfg)
    data = build_data(cfg, console=Console(stderr=True))
    console = Console()
    console.print(mixture_table(data.plan))
    console.print(f"data ready in {data.plan.root / 'jobs'}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """``codemix train STUDY --setting S --m M [--seed N] [--baseline] [--gpus N]``: one model of the study.

    Builds the data it needs, trains (or resumes), and prints the final checkpoint directory last.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise CodemixError("`codemix train` starts torchrun itself: run it once, without torchrun, with "
                           "--gpus N (or executor.gpus_per_job) to train on N GPUs of this machine")
    cfg = load_study(args.study, args.overrides)
    plan = plan_study(cfg)
    job = find_pretrain(plan, setting=args.setting, m=args.m, seed=args.seed, baseline=args.baseline, arm=args.arm)
    if args.gpus is not None:
        job.gpus = args.gpus  # how many devices, not what is computed: not part of the key
    summary = run_targets(plan, [job], console=Console(stderr=True), fit_gpus=args.gpus is None)
    _require(summary, plan, [job])
    print(checkpoint_of(plan.job_dir(job)), flush=True)
    return 0


# ----------------------------------------------------------------------------- codemix eval NAME


def add_eval_parsers(ev: argparse.ArgumentParser) -> None:
    """``codemix eval NAME``: one subcommand per registered benchmark."""
    esub = ev.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, bench in BENCHMARKS.items():
        bp = esub.add_parser(name, help=(bench.config.__doc__ or name).strip().splitlines()[0])
        add_common_arguments(bp, bench)
        bp.set_defaults(func=cmd_eval)


def _study_job(plan: Plan, model: Path) -> Job | None:
    """The study's pretraining job whose run directory (or final checkpoint) ``model`` is, if any."""
    model = model.resolve()
    for job in plan.by_stage("pretrain"):
        run_dir = plan.job_dir(job).resolve()
        if model == run_dir or (plan.is_done(job) and model == checkpoint_of(run_dir).resolve()):
            return job
    return None


def cmd_eval(args: argparse.Namespace) -> int:
    """``codemix eval NAME [--model PATH] [--study STUDY.yaml] [--set K=V] [--out FILE]``."""
    name = args.benchmark
    bench = BENCHMARKS[name]
    console = Console(stderr=True)
    study = load_study(args.study) if args.study else None
    base = getattr(study.evals, name) if study is not None else None
    cfg = configure(bench.config, base, args.overrides, where=f"codemix eval {name}", **bench.options(args))
    if bench.needs_model(cfg) and not args.model:
        raise CodemixError(f"codemix eval {name}: give --model PATH (a codemix checkpoint or run directory, or a "
                           "Hugging Face model directory)")
    print_config(cfg, title=f"{name} config")
    out = Path(args.out)
    if out.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise CodemixError(f"--out {out}: expected a file ending in .csv or .parquet, e.g. {name}-results.csv")
    out_dir = out.with_suffix("")
    model = Path(args.model) if args.model else None
    finetuned_out = Path(args.finetuned_out) if bench.finetunes and args.finetuned_out else None
    start = time.perf_counter()

    plan = plan_study(study) if study is not None else None
    job = _study_job(plan, model) if plan is not None and model is not None and finetuned_out is None else None
    if job is not None:  # a model of the study: the eval is a job of its graph (kept and reused)
        rows, labels, where = _eval_in_study(plan, job, cfg, console)
    else:
        info = checkpoint_info(model) if model is not None and is_codemix_checkpoint(model) else None
        if not bench.needs_heldout:  # do not build a study's streams for a benchmark that never reads them
            heldout = {}
        elif plan is not None:
            heldout = _heldout_dirs(plan, console)
        else:
            heldout = info.heldout if info else {}
        handle = load_handle(model, device=args.device) if bench.needs_model(cfg) else None
        ctx = EvalContext(out_dir=out_dir, heldout=heldout, device=args.device, finetuned_out=finetuned_out,
                          sources=list(study.data.sources) if study is not None else [])
        rows = bench.evaluate(handle, cfg, ctx)
        labels, where = _labels(info), out_dir
    write_table(labelled(rows, labels), out)
    status = bench.report(rows, cfg, EvalContext(out_dir=where), Console())
    console.print(f"done in {time.perf_counter() - start:.1f} s; rows: {out}; details: {where}")
    return status


def _labels(info: CheckpointInfo | None) -> list[Labels]:
    if info is None:
        return []
    if not info.labels:
        Console(stderr=True).print(f"[yellow]warning:[/yellow] {info.path} records no study labels (trained "
                                   "before codemix recorded them); its rows have empty study columns")
    return list(info.labels)


def _heldout_dirs(plan: Plan, console: Console) -> dict[str, Path]:
    """The study's held-out documents, per source: its stream jobs, run when missing."""
    streams = plan.by_stage("stream")
    summary = run_targets(plan, streams, console=console, show_plan=False)
    _require(summary, plan, streams)
    return {j.key["source"]["name"]: plan.job_dir(j) / "heldout" for j in streams}


def _eval_in_study(plan: Plan, checkpoint: Job, cfg: Any, console: Console
                   ) -> tuple[list[dict[str, Any]], list[Labels], Path]:
    """Run the eval job of ``cfg`` on the study's ``checkpoint`` job (and what it needs) through the graph."""
    cfg_study = plan.cfg
    n_params = count_parameters(cfg_study.model, vocab_size=cfg_study.data.tokenizer.vocab_size,
                                seq_len=cfg_study.data.seq_len)
    streams = {j.key["source"]["name"]: j for j in plan.by_stage("stream")}
    job = eval_stage.eval_job(cfg_study, checkpoint, cfg, streams, n_params=n_params)
    plan.jobs.setdefault(job.id, job)
    summary = run_targets(plan, [job], console=console, show_plan=False)
    _require(summary, plan, [job])
    labels = [Labels.from_dict({**lab, "study": cfg_study.name}) for lab in job.labels]
    return read_rows(plan.job_dir(job)), labels, plan.job_dir(job)

