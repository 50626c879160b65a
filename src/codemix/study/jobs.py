"""Jobs and the study's on-disk layout: what a stage run is, where it lives, when it is done.

A :class:`Job` is one run of one stage. Its directory ``<out>/jobs/<stage>/<name>-<hash>/``
is named by a hash of exactly what determines its output: the stage's ``key`` (its config
section and the settings that change what it computes) and the hashes of its inputs.
Execution details (device, compilation, logging, how many GPUs, pack size) and quantities
that only bound how much is built (a token stream's budget) are never part of it, and
neither are ``labels`` (which mixtures, settings and seeds a job stands for: they name,
they do not compute). So growing a study adds jobs and invalidates none but the analysis.

Layout of a study (all under ``cfg.out``)::

    jobs/<stage>/<name>-<hash>/      complete outputs (DONE inside), never partial
    work/<stage>/<name>-<hash>/      a job being run (renamed into jobs/ on success)
    locks/<stage>/<name>-<hash>      the driver running the job, with a heartbeat
    failures/<stage>/<name>-<hash>/  FAILED: the error of the last failed attempt
    study.db                         SQLite index of jobs and result rows (rebuildable)
    results.csv, report/             the study's results and report, published after analysis
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codemix.config import StudyConfig
from codemix.io import read_json, stable_hash

__all__ = ["JOB_FORMAT", "STAGES", "Growth", "Job", "JobContext", "Pack", "Plan"]

#: Stages in the order they run. Jobs of a stage read only jobs of earlier stages.
STAGES = ("tokenizer", "stream", "mixture", "pretrain", "eval", "analysis")

#: Bumped when a stage's output format changes, so old job directories are not reused.
JOB_FORMAT = 2


@dataclass(frozen=True)
class Growth:
    """A job whose output can be extended in place (a token stream): done only while it holds ``need``.

    The job directory's ``file`` (JSON) records its current ``size_field``; ``final_field``
    true means it cannot grow any more (its source ran out), which also counts as done.
    """

    need: int
    file: str = "meta.json"
    size_field: str = "n_tokens"
    final_field: str = "exhausted"

    def satisfied(self, job_dir: Path) -> bool:
        record = read_json(job_dir / self.file)
        return bool(record) and (record.get(self.size_field, 0) >= self.need or bool(record.get(self.final_field)))


@dataclass(eq=False)
class Job:
    """One stage run: what it computes (``key``), from what (``inputs``), with which function."""

    stage: str
    name: str
    fn: str
    """``module:function`` called as ``fn(ctx: JobContext)`` (the stage module's ``run``)."""
    key: dict[str, Any]
    inputs: dict[str, str]
    """Role (``"tokenizer"``, ``"stream:python"``, ``"mixture"``, ...) -> id of the job that provides it."""
    hash: str
    labels: list[dict[str, Any]] = field(default_factory=list)
    """Study columns (setting, m, baseline, seed, arm) this job's results stand for (not hashed)."""
    growth: Growth | None = None
    """For an extensible output: how much of it this plan needs (not hashed)."""
    gpus: int = 0
    """GPUs the job wants (0: a CPU job; not hashed)."""
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
        digest = stable_hash({"format": JOB_FORMAT, "stage": stage, "key": dict(key),
                              "inputs": {role: job.hash for role, job in inputs.items()}})
        return cls(stage=stage, name=name, fn=fn, key=dict(key),
                   inputs={role: job.id for role, job in inputs.items()}, hash=digest, **extra)

    def describe(self) -> dict[str, Any]:
        """What ``job.json`` records: enough to rebuild the study index without the YAML."""
        return {"id": self.id, "stage": self.stage, "name": self.name, "hash": self.hash, "fn": self.fn,
                "key": self.key, "inputs": self.inputs, "labels": self.labels, "gpus": self.gpus}


@dataclass(frozen=True)
class Pack:
    """Jobs run together in one process by one function (a pack of pretraining runs).

    Purely an execution choice: each member keeps its own key, directory, lock and ``DONE``,
    and a member can equally run alone (``Job.fn``). ``fn`` is ``module:function`` called as
    ``fn(ctxs: list[JobContext])`` with the members that are not done.
    """

    fn: str
    members: tuple[str, ...]
    """Job ids."""
    note: str = ""
    """Why the pack has this size (printed by ``codemix study plan``)."""


@dataclass
class Plan:
    """The job graph of one study, jobs in an order where inputs come first."""

    cfg: StudyConfig
    root: Path
    jobs: dict[str, Job]
    packs: list[Pack] = field(default_factory=list)
    """Groups of jobs the scheduler starts together (each job is in at most one)."""

    def pack_of(self, job: Job | str) -> Pack | None:
        job_id = job if isinstance(job, str) else job.id
        return next((p for p in self.packs if job_id in p.members), None)

    def job_dir(self, job: Job | str) -> Path:
        return self.root / "jobs" / (job if isinstance(job, str) else job.id)

    def work_dir(self, job: Job | str) -> Path:
        return self.root / "work" / (job if isinstance(job, str) else job.id)

    def failure_dir(self, job: Job | str) -> Path:
        return self.root / "failures" / (job if isinstance(job, str) else job.id)

    def lock_path(self, job: Job | str) -> Path:
        return self.root / "locks" / (job if isinstance(job, str) else job.id)

    def has_output(self, job: Job | str) -> bool:
        """A complete job directory exists (it may still need to grow: see :meth:`is_done`)."""
        return (self.job_dir(job) / "DONE").is_file()

    def is_done(self, job: Job | str) -> bool:
        """Complete, and (for an extensible output) holding what this plan needs of it."""
        job = self.jobs[job] if isinstance(job, str) else job
        if not self.has_output(job):
            return False
        return job.growth is None or job.growth.satisfied(self.job_dir(job))

    def needs_growth(self, job: Job) -> bool:
        """Done once, but this plan needs more of it (a stream whose study grew)."""
        return self.has_output(job) and not self.is_done(job)

    def input_dirs(self, job: Job) -> dict[str, Path]:
        return {role: self.job_dir(dep) for role, dep in job.inputs.items()}

    def by_stage(self, stage: str) -> list[Job]:
        return [j for j in self.jobs.values() if j.stage == stage]

    def with_inputs(self, targets: Iterable[Job]) -> Plan:
        """The sub-plan of ``targets`` and everything they read (in the same order)."""
        wanted: set[str] = set()
        todo = [t.id for t in targets]
        while todo:
            job_id = todo.pop()
            if job_id not in wanted:
                wanted.add(job_id)
                todo.extend(self.jobs[job_id].inputs.values())
        packs = [Pack(p.fn, tuple(i for i in p.members if i in wanted), p.note) for p in self.packs]
        return Plan(cfg=self.cfg, root=self.root, jobs={i: j for i, j in self.jobs.items() if i in wanted},
                    packs=[p for p in packs if len(p.members) > 1])

    def describe_done(self, job: Job) -> dict[str, Any]:
        """The ``DONE`` record of a done job (timings, host)."""
        return read_json(self.job_dir(job) / "DONE")


@dataclass
class JobContext:
    """What a stage's ``run`` gets: the study, its job, where to write, and its inputs."""

    cfg: StudyConfig
    job: Job
    out: Path
    """The work directory: write every output here (it becomes the job directory on success)."""
    inputs: dict[str, Path]
    """Role -> directory of the (done) input job."""
    root: Path
    """The study's out directory."""
    resume: bool = False
    """``out`` holds what an interrupted attempt left (only for resumable jobs, e.g. checkpoints)."""
    previous: Path | None = None
    """The job's existing directory, when it runs to grow it (see :class:`Growth`)."""

    def input(self, role: str) -> Path:
        return self.inputs[role]

    def stream_dirs(self) -> dict[str, Path]:
        return {role.split(":", 1)[1]: p for role, p in self.inputs.items() if role.startswith("stream:")}

