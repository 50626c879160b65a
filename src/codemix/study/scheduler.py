"""Running a study's jobs: one job safely (:func:`run_job`), many with one loop (:func:`run_jobs`).

:func:`run_job` runs one job and guarantees, whatever runs it: a job directory is either
complete (with ``DONE``) or absent, because a job writes into ``<out>/work/`` and is renamed
into ``<out>/jobs/`` only on success; a job that raises records its traceback in
``<out>/failures/``; and no two drivers run one job at once (:mod:`codemix.study.locks`).

:func:`run_jobs` is the one scheduling loop: it starts every job whose inputs are done,
as many at a time as its launcher has slots, marks what depends on a failure as blocked,
waits for jobs another driver is running, and retries failures up to ``max_retries``.
The members of a :class:`~codemix.study.jobs.Pack` start together as one :class:`Unit`
(one slot, one process, each member under its own lock and with its own ``DONE``).
Where jobs run is the launcher's business:

- :class:`InProcess`: one job at a time in this process (a CPU or one GPU);
- :class:`Subprocesses`: one process per slot (a slot is a ``CUDA_VISIBLE_DEVICES`` value,
  so several GPUs of one machine each run a job);
- :class:`Submitit`: SLURM job arrays through submitit (``submitit-local`` runs the same
  path as local processes). Preempted or timed-out jobs are requeued by submitit's
  checkpointing; jobs are idempotent and locked, so a resubmission is always safe.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import resource
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from rich.console import Console

from codemix.config import StudyConfig
from codemix.errors import CodemixError
from codemix.io import atomic_write_json, read_json, replace_dir
from codemix.study.jobs import STAGES, Job, JobContext, Plan
from codemix.study.locks import JobLock, lock_is_live
from codemix.study.store import Store, clear_failure, record_failure

__all__ = ["InProcess", "Launcher", "RunSummary", "Submitit", "Subprocesses", "Unit", "launcher_for", "run_job",
           "run_jobs", "run_unit"]

LOG_FILE = "job.log"


# ----------------------------------------------------------------------------- one job


def _resolve(target: str) -> Callable[[JobContext], None]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


class _Tee:
    """A text stream writing to several files (a pack's output goes to each member's log)."""

    def __init__(self, files: list[Any]):
        self.files = files

    def write(self, text: str) -> int:
        for f in self.files:
            f.write(text)
        return len(text)

    def flush(self) -> None:
        for f in self.files:
            f.flush()


@contextlib.contextmanager
def _capture(log_paths: list[Path]) -> Iterator[None]:
    """Send the Python-level stdout/stderr of a job (or pack) to its log files (the console shows one line per job)."""
    if not log_paths:
        yield
        return
    with contextlib.ExitStack() as stack:
        files = []
        for path in log_paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            files.append(stack.enter_context(open(path, "a", buffering=1)))
        tee = files[0] if len(files) == 1 else _Tee(files)
        with contextlib.redirect_stdout(tee), contextlib.redirect_stderr(tee):  # type: ignore[type-var]
            yield


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (compute cost, unlike wall time on a busy box)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


@dataclass(frozen=True)
class Unit:
    """What a launcher starts: one job, or the members of a :class:`~codemix.study.jobs.Pack` run by its function."""

    jobs: tuple[Job, ...]
    fn: str | None = None
    """A pack's function (called with the members' contexts); None: each job's own ``fn``."""

    @property
    def id(self) -> str:
        return self.jobs[0].id

    @classmethod
    def of(cls, job: Job) -> Unit:
        return cls((job,))


def run_job(plan: Plan, job: Job, *, capture: bool = True) -> str:
    """Run one job unless it is done; return ``"done"`` (it ran), ``"found"`` (it was done already, e.g. by
    another driver), ``"failed"`` or ``"busy"`` (another driver is running it).

    Outputs are written to ``<root>/work/<id>`` and renamed to ``<root>/jobs/<id>`` after the
    ``DONE`` marker is written. An exception is recorded in ``<root>/failures/<id>/FAILED``
    (traceback and the end of the job's log) and ``"failed"`` is returned; ``KeyboardInterrupt``
    and ``SystemExit`` propagate. A resumable job's work directory survives interruptions and
    failures so the next attempt continues from its checkpoints; any other job starts afresh.
    A job that must grow (:class:`~codemix.study.jobs.Growth`) gets its existing output as
    ``ctx.previous`` and replaces it when done.
    """
    return run_unit(plan, Unit.of(job), capture=capture)[job.id]


def run_unit(plan: Plan, unit: Unit, *, capture: bool = True) -> dict[str, str]:
    """Run a job or a pack (:func:`run_job`'s guarantees, for each member); job id -> state.

    Members done already are ``found``, members another driver holds ``busy``; the rest run
    together under their own locks (alone, with the job's own ``fn``, if only one is left).
    """
    states = {job.id: "found" for job in unit.jobs if plan.is_done(job)}
    locks = []
    try:
        for job in unit.jobs:
            if job.id in states:
                continue
            lock = JobLock(plan.lock_path(job))
            if not lock.acquire():
                states[job.id] = "busy"
                continue
            locks.append(lock)
            if plan.is_done(job):  # another driver finished it between our check and our lock
                states[job.id] = "found"
        todo = [job for job in unit.jobs if job.id not in states]
        if todo:
            states.update(_run_locked(plan, todo, unit.fn if len(todo) > 1 else None, capture=capture))
        return states
    finally:
        for lock in locks:
            lock.release()


def _log_path(plan: Plan, job: Job) -> Path:
    return plan.root / "work" / f"{job.id}.log"  # beside the work dir: a job may replace its out dir


def _run_locked(plan: Plan, jobs: list[Job], pack_fn: str | None, *, capture: bool) -> dict[str, str]:
    states: dict[str, str] = {}
    contexts = []
    for job in jobs:
        work = plan.work_dir(job)
        previous = plan.job_dir(job) if plan.needs_growth(job) else None
        if (work / "DONE").is_file() and work.joinpath("job.json").is_file():  # killed between DONE and the rename
            replace_dir(work, plan.job_dir(job))
            if plan.is_done(job):
                clear_failure(plan, job)
                states[job.id] = "done"
                continue
        if work.exists() and not job.resumable:
            shutil.rmtree(work)
        resume = work.is_dir() and any(p.name != LOG_FILE for p in work.iterdir())
        work.mkdir(parents=True, exist_ok=True)
        contexts.append(JobContext(cfg=plan.cfg, job=job, out=work, inputs=plan.input_dirs(job), root=plan.root,
                                   resume=resume, previous=previous))
    if not contexts:
        return states
    started, cpu0 = time.time(), _cpu_seconds()
    logs = [_log_path(plan, ctx.job) for ctx in contexts]
    try:
        for ctx in contexts:
            missing = [f"{role} ({path})" for role, path in ctx.inputs.items() if not (path / "DONE").is_file()]
            if missing:
                raise CodemixError(f"inputs of {ctx.job.id} are not done: {', '.join(missing)}; "
                                   "run the study with `codemix study run`, which runs jobs in stage order")
        with _capture(logs if capture else []):
            if len(contexts) > 1:
                assert pack_fn is not None, "several jobs run together only as a pack"
                _resolve(pack_fn)(contexts)
            else:
                _resolve(contexts[0].job.fn)(contexts[0])
    except Exception:  # the job's own error: recorded for `study status`, the study goes on without it
        error = traceback.format_exc()
        for ctx, log_path in zip(contexts, logs):
            log_tail = log_path.read_text(errors="replace")[-2000:] if log_path.is_file() else ""
            record_failure(plan, ctx.job, f"--- end of the job's output ({log_path}) ---\n{log_tail}\n"
                                          f"--- traceback ---\n{error}" if log_tail else error)
            if not ctx.job.resumable:
                shutil.rmtree(ctx.out, ignore_errors=True)
            states[ctx.job.id] = "failed"
        return states
    except BaseException:
        for ctx in contexts:
            if not ctx.job.resumable:
                shutil.rmtree(ctx.out, ignore_errors=True)
        raise
    seconds, cpu = round(time.time() - started, 3), round(_cpu_seconds() - cpu0, 3)
    for ctx, log_path in zip(contexts, logs):
        job, work = ctx.job, ctx.out
        work.mkdir(parents=True, exist_ok=True)  # (a job may have replaced it atomically)
        atomic_write_json(work / "job.json", job.describe())
        if log_path.is_file():
            shutil.copyfile(log_path, work / LOG_FILE)
        atomic_write_json(work / "DONE", {"id": job.id, "seconds": seconds, "cpu_seconds": cpu,
                                          "finished": time.time(), "host": socket.gethostname(),
                                          "resumed": ctx.resume, "grew": ctx.previous is not None,
                                          **({"pack": [c.job.id for c in contexts]} if len(contexts) > 1 else {})})
        replace_dir(work, plan.job_dir(job))  # (swaps out the output it grew, or a stray directory)
        clear_failure(plan, job)
        log_path.unlink(missing_ok=True)
        states[job.id] = "done"
    return states


# ----------------------------------------------------------------------------- launchers


class Launcher(Protocol):
    """Where and how jobs run; :func:`run_jobs` decides which and when."""

    slots: int
    """How many units (jobs or packs) it runs at once."""

    def start(self, plan: Plan, units: list[Unit]) -> None:
        """Start these units (at most the free slots)."""

    def finished(self, plan: Plan, timeout: float) -> dict[str, str]:
        """Jobs of units that ended since the last call (waiting up to ``timeout`` s): id -> done | failed | busy
        | found."""

    def stop(self) -> None:
        """Stop whatever still runs (Ctrl-C); their work directories are not jobs."""


class InProcess:
    """One unit at a time, in this process; its output goes to the job's log file."""

    slots = 1

    def __init__(self, *, capture: bool = True):
        self.capture = capture
        self._done: dict[str, str] = {}

    def start(self, plan: Plan, units: list[Unit]) -> None:
        for unit in units:
            self._done.update(run_unit(plan, unit, capture=self.capture))

    def finished(self, plan: Plan, timeout: float) -> dict[str, str]:
        done, self._done = self._done, {}
        return done

    def stop(self) -> None:
        pass


def _payload(plan: Plan, unit: Unit) -> Path:
    path = plan.root / "work" / ".payloads" / f"{unit.jobs[0].hash}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"cfg": plan.cfg, "root": str(plan.root), "unit": unit}))
    return path


def _states_file(payload: Path) -> Path:
    return payload.with_suffix(".states.json")


class Subprocesses:
    """One process per slot (``python -m codemix.study.scheduler PAYLOAD``).

    A slot is a ``CUDA_VISIBLE_DEVICES`` value (``"0"``, ``"2,3"``) or ``None`` (leave the
    environment as it is: CPU slots, used by tests). A process that dies without recording
    a failure (killed, out of memory) is recorded as failed with its exit code.
    """

    def __init__(self, slots: list[str | None]):
        self.free = list(slots)
        self.slots = len(slots)
        self.running: dict[str, tuple[subprocess.Popen, str | None, Unit, Path]] = {}

    def start(self, plan: Plan, units: list[Unit]) -> None:
        for unit in units:
            slot = self.free.pop(0)
            env = dict(os.environ)
            if slot is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot
            payload = _payload(plan, unit)
            proc = subprocess.Popen([sys.executable, "-m", "codemix.study.scheduler", str(payload)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.running[unit.id] = (proc, slot, unit, payload)

    def finished(self, plan: Plan, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            out = {}
            for unit_id, (proc, slot, unit, payload) in list(self.running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del self.running[unit_id]
                self.free.append(slot)
                reported = read_json(_states_file(payload))
                _states_file(payload).unlink(missing_ok=True)
                payload.unlink(missing_ok=True)
                for job in unit.jobs:
                    out[job.id] = reported.get(job.id) or _ended_state(
                        plan, job, f"the job's process exited with code {code}")
            if out or not self.running or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.05, timeout))

    def stop(self) -> None:
        for proc, *_ in self.running.values():
            proc.terminate()
        for proc, *_ in self.running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)


def _ended_state(plan: Plan, job: Job, how: str) -> str:
    """The state of a job whose process ended without reporting one (killed, out of memory)."""
    if plan.is_done(job):
        return "done"
    if not (plan.failure_dir(job) / "FAILED").is_file():
        record_failure(plan, job, f"{how} without finishing or recording an error (killed? out of memory?); "
                                  f"log: {_log_path(plan, job)}")
    return "failed"


class SubmititJob:
    """The callable submitit pickles: runs one unit; requeued (and resumed) on preemption or timeout."""

    def __init__(self, cfg: StudyConfig, root: str, unit: Unit):
        self.cfg, self.root, self.unit = cfg, root, unit

    def __call__(self) -> dict[str, str]:
        plan = Plan(cfg=self.cfg, root=Path(self.root), jobs={j.id: j for j in self.unit.jobs})
        return run_unit(plan, self.unit)

    def checkpoint(self) -> Any:
        """Called by submitit before preemption/timeout: requeue the same unit (it resumes from
        its work directories when resumable, otherwise restarts; its job dirs stay absent meanwhile)."""
        import submitit  # optional: only SLURM users need it

        return submitit.helpers.DelayedSubmission(SubmititJob(self.cfg, self.root, self.unit))


class Submitit:
    """SLURM (``cluster="slurm"``) or submitit's local executor (``"local"``, the same code path).

    Jobs started together are submitted as one job array per GPU count (one ``sbatch``);
    ``slots`` bounds how many are in flight (``executor.array_parallelism`` on SLURM).
    """

    def __init__(self, cfg: StudyConfig, *, cluster: str = "slurm", slots: int | None = None):
        self.cfg, self.cluster = cfg, cluster
        self.slots = slots or cfg.executor.array_parallelism
        self.running: dict[str, tuple[Unit, Any]] = {}

    def executor(self, plan: Plan, stage: str, gpus: int) -> Any:
        import submitit  # optional: only SLURM users need it

        ex_cfg = self.cfg.executor
        if self.cluster == "slurm" and not shutil.which("srun"):
            raise CodemixError("the slurm executor needs SLURM (srun, sbatch) on PATH, found none; run "
                               "`codemix study run` on the cluster's login node, or use --executor local / "
                               "submitit-local")
        executor = submitit.AutoExecutor(folder=str(plan.root / "submitit" / "%j"), cluster=self.cluster)
        params: dict[str, Any] = {
            "name": f"{self.cfg.name}-{stage}", "timeout_min": int(ex_cfg.time_limit_min),
            "gpus_per_node": int(gpus), "cpus_per_task": int(ex_cfg.cpus_per_task), "mem_gb": float(ex_cfg.mem_gb),
            "nodes": 1, "tasks_per_node": 1,
        }
        if self.cluster == "slurm":
            params["slurm_array_parallelism"] = int(ex_cfg.array_parallelism)
            if ex_cfg.partition:
                params["slurm_partition"] = ex_cfg.partition
            if ex_cfg.account:
                params["slurm_account"] = ex_cfg.account
            params.update({k if k.startswith("slurm_") else f"slurm_{k}": v for k, v in ex_cfg.slurm_args.items()})
        executor.update_parameters(**params)
        return executor

    def start(self, plan: Plan, units: list[Unit]) -> None:
        groups: dict[tuple[str, int], list[Unit]] = {}
        for unit in units:
            groups.setdefault((unit.jobs[0].stage, unit.jobs[0].gpus), []).append(unit)
        for (stage, gpus), group in groups.items():
            executor = self.executor(plan, stage, gpus)
            with executor.batch():  # one array (one sbatch) for the group
                subs = [executor.submit(SubmititJob(self.cfg, str(plan.root), u)) for u in group]
            for unit, sub in zip(group, subs):
                self.running[unit.id] = (unit, sub)

    def finished(self, plan: Plan, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            out = {}
            for unit_id, (unit, sub) in list(self.running.items()):
                if not sub.done():
                    continue
                del self.running[unit_id]
                error = sub.exception()  # None when the unit ran to its end and returned its states
                reported = sub.result() if error is None else {}
                stderr = "" if error is None else sub.stderr()
                how = f"submitit job {sub.job_id} ended ({error!r})" + (
                    f"\n--- stderr ---\n{stderr[-3000:]}\n" if stderr else "")
                for job in unit.jobs:
                    out[job.id] = reported.get(job.id) or _ended_state(plan, job, how)
            if out or not self.running or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.2, timeout))

    def stop(self) -> None:
        for _, sub in self.running.values():  # Ctrl-C: scancel what is still queued or running
            with contextlib.suppress(OSError, subprocess.CalledProcessError):
                sub.cancel(check=False)


# ----------------------------------------------------------------------------- the loop


@dataclass
class RunSummary:
    """What one run of :func:`run_jobs` did."""

    ran: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    elsewhere: list[str] = field(default_factory=list)
    """Jobs another driver ran while this one waited for them."""
    already_done: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed and not self.blocked


class _Reporter:
    """One console line per job start and end (job output goes to its log file)."""

    def __init__(self, plan: Plan, store: Store | None, console: Console | None, total: int):
        self.plan, self.store, self.console, self.total = plan, store, console, total
        self.count = 0
        self.t0: dict[str, float] = {}

    def start(self, job: Job, *, pack: int = 1) -> None:
        self.count += 1
        self.t0[job.id] = time.time()
        if self.console:
            grow = " (extending)" if self.plan.needs_growth(job) else ""
            together = f" [dim](in a pack of {pack})[/]" if pack > 1 else ""
            self.console.print(f"[dim][{self.count}/{self.total}][/] [bold]{job.stage}[/] {job.name}{grow} "
                               f"[dim]{job.hash[:8]}[/]{together}")

    def end(self, job: Job, state: str) -> None:
        dt = time.time() - self.t0.get(job.id, time.time())
        if self.store is not None:
            self.store.update(job, state)
        if not self.console:
            return
        if state == "done":
            self.console.print(f"    [green]done[/] {job.stage} {job.name} in {dt:.1f}s")
        elif state == "elsewhere":
            self.console.print(f"    [green]done[/] {job.stage} {job.name} by another driver")
        elif state == "busy":
            self.console.print(f"    {job.stage} {job.name} is running in another driver; waiting for it")
        else:
            fail = self.plan.failure_dir(job) / "FAILED"
            tail = fail.read_text(errors="replace").strip().splitlines()[-1:] if fail.is_file() else []
            self.console.print(f"    [red]FAILED[/] {job.stage} {job.name} after {dt:.1f}s: "
                               f"{tail[0] if tail else ''}\n    (see {fail})")

    def blocked(self, job: Job) -> None:
        if self.store is not None:
            self.store.update(job, "blocked")


def run_jobs(plan: Plan, launcher: Launcher, *, store: Store | None = None, console: Console | None = None,
             max_retries: int = 0, poll_s: float = 0.5) -> RunSummary:
    """Run every job of ``plan`` that is not done, each once its inputs are; return what happened.

    A job whose input failed (or is blocked) is blocked. A job another driver holds is waited
    for: done there is done here; if that driver dies (its lock goes stale) this one takes it
    over. A failed job is retried up to ``max_retries`` times (jobs are idempotent).
    """
    summary = RunSummary()
    pending = [j for j in plan.jobs.values() if not plan.is_done(j)]
    summary.already_done = len(plan.jobs) - len(pending)
    rep = _Reporter(plan, store, console, len(pending))
    bad: set[str] = set()
    running: set[str] = set()
    units_running: dict[str, set[str]] = {}  # unit id -> its members still running
    elsewhere: set[str] = set()
    attempts: dict[str, int] = {}
    try:
        while pending or running or elsewhere:
            for job in [j for j in pending if any(dep in bad for dep in j.inputs.values())]:
                pending.remove(job)
                bad.add(job.id)
                summary.blocked.append(job.id)
                rep.blocked(job)
            for job_id in list(elsewhere):  # jobs another driver holds
                job = plan.jobs[job_id]
                if plan.is_done(job):
                    elsewhere.discard(job_id)
                    summary.elsewhere.append(job_id)
                    rep.end(job, "elsewhere")
                elif not lock_is_live(plan.lock_path(job)):  # it ended without finishing (or died): ours again
                    elsewhere.discard(job_id)
                    pending.append(job)
            ready = [j for j in pending if all(plan.is_done(plan.jobs[d]) for d in j.inputs.values())]
            ready.sort(key=lambda j: STAGES.index(j.stage))  # stable: inputs stay first
            start: list[Unit] = []
            for unit in _units(plan, ready, pending):
                if len(start) + len(units_running) >= launcher.slots:
                    break
                members = []
                for job in unit.jobs:
                    pending.remove(job)
                    if lock_is_live(plan.lock_path(job)):
                        elsewhere.add(job.id)
                    else:
                        members.append(job)
                if not members:
                    continue
                unit = Unit(tuple(members), unit.fn)
                start.append(unit)
                units_running[unit.id] = {j.id for j in members}
                running.update(units_running[unit.id])
                for job in members:
                    rep.start(job, pack=len(members))
            if start:
                launcher.start(plan, start)
            if not running and not start:
                if elsewhere:
                    time.sleep(poll_s)
                    continue
                if pending:  # nothing runs and nothing can: waiting on failures upstream
                    for job in pending:
                        bad.add(job.id)
                        summary.blocked.append(job.id)
                        rep.blocked(job)
                    pending.clear()
                continue
            for job_id, state in launcher.finished(plan, timeout=poll_s).items():
                job = plan.jobs[job_id]
                running.discard(job_id)
                for unit_id, members in list(units_running.items()):
                    members.discard(job_id)
                    if not members:
                        del units_running[unit_id]
                if state == "busy":
                    rep.end(job, state)
                    elsewhere.add(job_id)
                    continue
                if state == "found":
                    rep.end(job, "elsewhere")
                    summary.elsewhere.append(job_id)
                    continue
                rep.end(job, state)
                if state == "done":
                    summary.ran.append(job_id)
                    continue
                attempts[job_id] = attempts.get(job_id, 0) + 1
                if attempts[job_id] <= max_retries:
                    if console:
                        console.print(f"    retrying {job_id} (attempt {attempts[job_id] + 1} of {max_retries + 1})")
                    pending.append(job)
                else:
                    bad.add(job_id)
                    summary.failed.append(job_id)
    finally:
        launcher.stop()
    return summary


def _units(plan: Plan, ready: list[Job], pending: list[Job]) -> Iterator[Unit]:
    """The ready jobs as units, in order: a pack starts once all its pending members are ready, as one unit."""
    ready_ids, pending_ids, seen = {j.id for j in ready}, {j.id for j in pending}, set()
    for job in ready:
        if job.id in seen:
            continue
        pack = plan.pack_of(job)
        members = [m for m in pack.members if m in pending_ids] if pack else [job.id]
        seen.update(members)
        if not all(m in ready_ids for m in members):
            continue  # wait for the pack's other members' inputs (they start together)
        yield Unit(tuple(plan.jobs[m] for m in members), pack.fn if pack and len(members) > 1 else None)


# ----------------------------------------------------------------------------- choosing a launcher


def local_gpu_slots(gpus_per_job: int) -> list[str] | None:
    """GPU slots when this machine has more than one GPU, else None (run in-process)."""
    n = torch.cuda.device_count()
    per = max(1, gpus_per_job)
    if n < 2 or n < per:
        return None
    return [",".join(str(i) for i in range(k * per, (k + 1) * per)) for k in range(n // per)]


def fit_to_local_gpus(plan: Plan, console: Console | None) -> None:
    """Ask no job for more GPUs than this machine has (a GPU count is not part of a job's key)."""
    n = torch.cuda.device_count()
    cap = max(n, 1)
    wide = [j for j in plan.jobs.values() if j.gpus > cap]
    for job in wide:
        job.gpus = cap
    if wide and console:
        console.print(f"{len(wide)} job(s) ask for more GPUs than this machine has ({n}); they run on {cap} "
                      "device(s) (executor.gpus_per_job)")


def launcher_for(plan: Plan, kind: str, console: Console | None = None, *, fit_gpus: bool = True) -> Launcher:
    """The launcher of an executor kind: ``local`` (in-process, or a process per GPU), ``slurm``, ``submitit-local``.

    ``fit_gpus``: locally, ask no job for more GPUs than the machine has.
    """
    if kind == "local":
        if fit_gpus:
            fit_to_local_gpus(plan, console)
        slots = local_gpu_slots(plan.cfg.executor.gpus_per_job)
        return Subprocesses(slots) if slots else InProcess()
    if kind == "slurm":
        return Submitit(plan.cfg, cluster="slurm")
    if kind == "submitit-local":
        return Submitit(plan.cfg, cluster="local", slots=len(local_gpu_slots(1) or [None]))
    raise CodemixError(f"unknown executor {kind!r}; use local, slurm or submitit-local")


def limit_cpu_threads(console: Console | None) -> None:
    """On a machine without GPUs, run each job with one torch thread unless OMP_NUM_THREADS says otherwise.

    CPU studies are tiny models, which gain little from intra-op threads, and OpenMP threads
    spin-wait: on shared or busy cores a 2-thread tiny-GPT step measured 15x the CPU time of
    a 1-thread step. Set OMP_NUM_THREADS to choose another count (child processes inherit it).
    A pack of runs takes every core again, one per group of its members
    (``CODEMIX_AUTO_THREADS`` tells it the count was chosen here, not by the user).
    """
    if "OMP_NUM_THREADS" in os.environ or torch.cuda.is_available():
        return
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["CODEMIX_AUTO_THREADS"] = "1"
    if console:
        console.print("no GPU: jobs run with one CPU thread each (set OMP_NUM_THREADS to change)")


# ----------------------------------------------------------------------------- process entry point


def main(argv: list[str] | None = None) -> int:
    """Run one unit from a pickled payload (a local GPU slot); its states go to ``<payload>.states.json``."""
    argv = sys.argv[1:] if argv is None else argv
    payload = Path(argv[0])
    data = pickle.loads(payload.read_bytes())
    unit: Unit = data["unit"]
    plan = Plan(cfg=data["cfg"], root=Path(data["root"]), jobs={j.id: j for j in unit.jobs})
    states = run_unit(plan, unit)
    atomic_write_json(_states_file(payload), states)
    return 0 if all(state != "failed" for state in states.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
