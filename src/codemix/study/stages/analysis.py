"""The analysis stage: every result row of the study → regressions, permutation tests, report.

Its key is the ``analysis`` section, the study name and the labels of every eval it reads.
It collects the rows with the one row collector (:func:`codemix.evals.rows.collect_rows`), writes them as ``results.csv`` and reads
them back exactly as ``codemix analyze`` reads a file, so the published report is the
report of ``codemix study status --export`` → ``codemix analyze`` on the same rows.
"""

from __future__ import annotations

import shutil

from codemix.analysis.report import analyze, load_results
from codemix.config import StudyConfig, save_config
from codemix.evals.rows import collect_rows, write_table
from codemix.study.jobs import Job, JobContext

__all__ = ["CONTEXT_DIR", "RESULTS_FILE", "plan", "run"]

RESULTS_FILE = "results.csv"
CONTEXT_DIR = "context"
#: Files of mixture and pretraining jobs that the report's study sections show.
_RECORDS = {"mixture": "mixture.json", "pretrain": "log.jsonl"}


def plan(cfg: StudyConfig, evals: list[Job], mixtures: list[Job], checkpoints: list[Job]) -> list[Job]:
    """One analysis job over every eval of the study (none when there is nothing to analyze)."""
    if not evals:
        return []
    key = {"analysis": cfg.analysis.model_dump(mode="json"), "study": cfg.name,
           "labels": {e.id: e.labels for e in evals}}
    context = {f"{j.stage}:{j.id}": j for j in (*mixtures, *checkpoints)}  # report sections
    return [Job.create("analysis", "analysis", f"{__name__}:run", key,
                       {**{f"eval:{e.id}": e for e in evals}, **context}, disk_bytes=5e6)]


def run(ctx: JobContext) -> None:
    """Collect the rows, analyze them, write ``results.csv``, tables and ``report/``.

    The report's study sections (config, mixture table, loss curves) are read from a small
    ``context/`` copy of this plan's mixture and pretraining records, so jobs of earlier
    versions of the study that are still on disk do not show up in it.
    """
    labels = ctx.job.key["labels"]
    evals = [(ctx.inputs[f"eval:{job_id}"], labs) for job_id, labs in labels.items()]
    write_table(collect_rows(ctx.job.key["study"], evals), ctx.out / RESULTS_FILE)

    context = ctx.out / CONTEXT_DIR
    save_config(ctx.cfg, context)
    for role, path in sorted(ctx.inputs.items()):
        stage, _, job_id = role.partition(":")
        record = _RECORDS.get(stage)
        if record and (path / record).is_file():
            target = context / stage / job_id.split("/", 1)[1].rsplit("-", 1)[0]
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path / record, target / record)
    a = ctx.cfg.analysis
    analyze(load_results(ctx.out / RESULTS_FILE), ctx.out, permutations=a.permutations, seed=a.seed,
            control_draws=a.control_draws, study_dir=context)
