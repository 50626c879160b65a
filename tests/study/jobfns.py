"""Small but real job functions for testing the study machinery without the heavy stages.

They follow the stage-function contract (``fn(ctx: JobContext)``, outputs in ``ctx.out``).
``CODEMIX_TEST_CALLS`` names a file each call appends its job id to, so tests can count
how often a job ran; ``CODEMIX_TEST_FAIL`` names a file whose presence makes jobs whose
key has ``fail: true`` raise (delete it and rerun: the job succeeds).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from codemix.config import StudyConfig
from codemix.study.jobs import Job, Pack, Plan


def _note_call(ctx) -> None:
    calls = os.environ.get("CODEMIX_TEST_CALLS")
    if calls:
        with open(calls, "a") as f:
            f.write(ctx.job.id + "\n")


def value_job(ctx) -> None:
    """``value.json`` = own value + sum of the inputs' values; ``rows.jsonl`` for eval jobs."""
    _note_call(ctx)
    key = ctx.job.key
    (ctx.out / "started").write_text("1")  # a first output, so a kill can leave a partial dir
    time.sleep(float(key.get("sleep", 0)))
    flag = os.environ.get("CODEMIX_TEST_FAIL")
    if key.get("fail") and flag and Path(flag).exists():
        raise RuntimeError(f"boom in {ctx.job.name}: the test asked this job to fail")
    total = key["value"] + sum(json.loads((p / "value.json").read_text()) for p in ctx.inputs.values())
    (ctx.out / "value.json").write_text(json.dumps(total))
    if ctx.job.stage == "eval":
        rows = [{"task": "toy", "subtask": "sum", "metric": "value", "value": float(total), "n": 1},
                {"task": "toy", "subtask": "", "metric": "double", "value": 2.0 * total, "n": 1}]
        (ctx.out / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def value_pack(ctxs) -> None:
    """A pack's function: one call (noted as ``pack:<id>,<id>``) that runs every member's :func:`value_job`."""
    calls = os.environ.get("CODEMIX_TEST_CALLS")
    if calls:
        with open(calls, "a") as f:
            f.write("pack:" + ",".join(c.job.id for c in ctxs) + "\n")
    for ctx in ctxs:
        value_job(ctx)


FN = "study.jobfns:value_job"
PACK_FN = "study.jobfns:value_pack"


def toy_plan(root: Path, *, n: int = 3, sleep: float = 0.0, fail: set[int] = frozenset(), name: str = "toy",
             pack: bool = False) -> Plan:
    """tokenizer → n streams → n evals (one per stream) → analysis; job i of streams may fail.

    ``pack``: the streams are one pack (:class:`~codemix.study.jobs.Pack` run by :func:`value_pack`).
    """
    cfg = StudyConfig(name=name, out=str(root))
    jobs: dict[str, Job] = {}

    def add(job: Job) -> Job:
        jobs[job.id] = job
        return job

    tok = add(Job.create("tokenizer", "tok", FN, {"value": 1}, {}))
    evals = []
    for i in range(n):
        s = add(Job.create("stream", f"s{i}", FN, {"value": 10 * i, "sleep": sleep, "fail": i in fail},
                           {"tokenizer": tok}))
        evals.append(add(Job.create("eval", f"e{i}", FN, {"value": 100 * i, "sleep": sleep},
                                    {"stream": s},
                                    labels=[{"setting": "competitive", "m": i / 10, "baseline": False, "seed": 0}])))
    add(Job.create("analysis", "all", FN, {"value": 0}, {f"eval:{e.id}": e for e in evals}))
    streams = tuple(j.id for j in jobs.values() if j.stage == "stream")
    return Plan(cfg=cfg, root=Path(root), jobs=jobs, packs=[Pack(PACK_FN, streams)] if pack else [])


def values(plan: Plan) -> dict[str, float]:
    """Final value of every done job, by job name."""
    return {j.name: json.loads((plan.job_dir(j) / "value.json").read_text())
            for j in plan.jobs.values() if plan.is_done(j)}
