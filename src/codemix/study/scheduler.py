"""Running a study's jobs: one job safely (:func:`run_job`), many with one loop (:func:`run_jobs`).

:func:`run_job` runs one job and guarantees, whatever runs it: a job directory is either
complete (with ``DONE``) or absent, because a job writes into ``<out>/work/`` and is renamed
into ``<out>/jobs/`` only on success; a job that raises records its traceback in
``<out>/failures/``; and no two drivers run one job at once (:mod:`codemix.study.locks`).

:func:`run_jobs` is the one scheduling loop: it starts every job whose inputs are done,
as many at a time as its launcher has slots, marks what depends on a failure as blocked,
waits for jobs another driver is running, and retries failures up to ``max_retries``.
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
from codemix.io import atomic_write_json, replace_dir
from codemix.study.jobs import STAGES, Job, JobContext, Plan
from codemix.study.locks import JobLock, lock_is_live
from codemix.study.store import Store, clear_failure, record_failure

__all__ = ["InProcess", "Launcher", "RunSummary", "Submitit", "Subprocesses", "launcher_for", "run_job",
           "run_jobs"]

LOG_FILE = "job.log"
#: Exit status of a job process that found the job held by another driver, or done already.
_BUSY_EXIT, _FOUND_EXIT = 3, 4


# ----------------------------------------------------------------------------- one job


def _resolve(target: str) -> Callable[[JobContext], None]:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@contextlib.contextmanager
def _capture(log_path: Path | None) -> Iterator[None]:
    """Send the job's Python-level stdout/stderr to its log file (the console shows one line per job)."""
    if log_path is None:
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        yield


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (compute cost, unlike wall time on a busy box)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


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
    if plan.is_done(job):
        return "found"
    lock = JobLock(plan.lock_path(job))
    if not lock.acquire():
        return "busy"
    try:
        if plan.is_done(job):  # another driver finished it between our check and our lock
            return "found"
        return _run_locked(plan, job, capture=capture)
    finally:
        lock.release()


def _run_locked(plan: Plan, job: Job, *, capture: bool) -> str:
    work = plan.work_dir(job)
    previous = plan.job_dir(job) if plan.needs_growth(job) else None
    if (work / "DONE").is_file() and work.joinpath("job.json").is_file():  # killed between DONE and the rename
        replace_dir(work, plan.job_dir(job))
        if plan.is_done(job):
            clear_failure(plan, job)
            return "done"
    if work.exists() and not job.resumable:
        shutil.rmtree(work)
    resume = work.is_dir() and any(p.name != LOG_FILE for p in work.iterdir())
    work.mkdir(parents=True, exist_ok=True)
    log_path = plan.root / "work" / f"{job.id}.log"  # beside the work dir: a job may replace its out dir
    inputs = plan.input_dirs(job)
    started, cpu0 = time.time(), _cpu_seconds()
    try:
        missing = [f"{role} ({path})" for role, path in inputs.items() if not (path / "DONE").is_file()]
        if missing:
            raise CodemixError(f"inputs of {job.id} are not done: {', '.join(missing)}; "
                               "run the study with `codemix study run`, which runs jobs in stage order")
        with _capture(log_path if capture else None):
            _resolve(job.fn)(JobContext(cfg=plan.cfg, job=job, out=work, inputs=inputs, root=plan.root,
                                        resume=resume, previous=previous))
        work.mkdir(parents=True, exist_ok=True)  # (a job may have replaced it atomically)
        atomic_write_json(work / "job.json", job.describe())
        if log_path.is_file():
            shutil.copyfile(log_path, work / LOG_FILE)
        atomic_write_json(work / "DONE", {"id": job.id, "seconds": round(time.time() - started, 3),
                                          "cpu_seconds": round(_cpu_seconds() - cpu0, 3),
                                          "finished": time.time(), "host": socket.gethostname(),
                                          "resumed": resume, "grew": previous is not None})
        replace_dir(work, plan.job_dir(job))  # (swaps out the output it grew, or a stray directory)
        clear_failure(plan, job)
        log_path.unlink(missing_ok=True)
        return "done"
    except Exception:  # the job's own error: recorded for `study status`, the study goes on without it
        error = traceback.format_exc()
        log_tail = log_path.read_text(errors="replace")[-2000:] if log_path.is_file() else ""
        if log_tail:
            error = f"--- end of the job's output ({log_path}) ---\n{log_tail}\n--- traceback ---\n{error}"
        record_failure(plan, job, error)
        if not job.resumable:
            shutil.rmtree(work, ignore_errors=True)
        return "failed"
    except BaseException:
        if not job.resumable:
            shutil.rmtree(work, ignore_errors=True)
        raise


# ----------------------------------------------------------------------------- launchers


class Launcher(Protocol):
    """Where and how jobs run; :func:`run_jobs` decides which and when."""

    slots: int
    """How many jobs it runs at once."""

    def start(self, plan: Plan, jobs: list[Job]) -> None:
        """Start these jobs (at most the free slots)."""

    def finished(self, plan: Plan, timeout: float) -> dict[str, str]:
        """Jobs that ended since the last call (waiting up to ``timeout`` s): id -> done | failed | busy."""

    def stop(self) -> None:
        """Stop whatever still runs (Ctrl-C); their work directories are not jobs."""


class InProcess:
    """One job at a time, in this process; its output goes to the job's log file."""

    slots = 1

    def __init__(self, *, capture: bool = True):
        self.capture = capture
        self._done: dict[str, str] = {}

    def start(self, plan: Plan, jobs: list[Job]) -> None:
        for job in jobs:
            self._done[job.id] = run_job(plan, job, capture=self.capture)

    def finished(self, plan: Plan, timeout: float) -> dict[str, str]:
        done, self._done = self._done, {}
        return done

    def stop(self) -> None:
        pass


def _payload(plan: Plan, job: Job) -> Path:
    path = plan.root / "work" / ".payloads" / f"{job.hash}.pkl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps({"cfg": plan.cfg, "root": str(plan.root), "job": job}))
    return path


class Subprocesses:
    """One process per slot (``python -m codemix.study.scheduler PAYLOAD``).

    A slot is a ``CUDA_VISIBLE_DEVICES`` value (``"0"``, ``"2,3"``) or ``None`` (leave the
    environment as it is: CPU slots, used by tests). A process that dies without recording
    a failure (killed, out of memory) is recorded as failed with its exit code.
    """

    def __init__(self, slots: list[str | None]):
        self.free = list(slots)
        self.slots = len(slots)
        self.running: dict[str, tuple[subprocess.Popen, str | None, Job, Path]] = {}

    def start(self, plan: Plan, jobs: list[Job]) -> None:
        for job in jobs:
            slot = self.free.pop(0)
            env = dict(os.environ)
            if slot is not None:
                env["CUDA_VISIBLE_DEVICES"] = slot
            payload = _payload(plan, job)
            proc = subprocess.Popen([sys.executable, "-m", "codemix.study.scheduler", str(payload)], env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.running[job.id] = (proc, slot, job, payload)

    def finished(self, plan: Plan, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            out = {}
            for job_id, (proc, slot, job, payload) in list(self.running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del self.running[job_id]
                self.free.append(slot)
                payload.unlink(missing_ok=True)
                out[job_id] = _process_state(plan, job, code)
            if out or not self.running or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.05, timeout))

    def stop(self) -> None:
        for proc, *_ in self.running.values():
            proc.terminate()
        for proc, *_ in self.running.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)


def _process_state(plan: Plan, job: Job, code: int) -> str:
    if code == _FOUND_EXIT:
        return "found"
    if plan.is_done(job):
        return "done"
    if code == _BUSY_EXIT:
        return "busy"
    if not (plan.failure_dir(job) / "FAILED").is_file():
        record_failure(plan, job, f"the job's process exited with code {code} without recording an error "
                                  f"(killed? out of memory?); log: {plan.root / 'work' / (job.id + '.log')}")
    return "failed"


class SubmititJob:
    """The callable submitit pickles: runs one job; requeued (and resumed) on preemption or timeout."""

    def __init__(self, cfg: StudyConfig, root: str, job: Job):
        self.cfg, self.root, self.job = cfg, root, job

    def __call__(self) -> str:
        return run_job(Plan(cfg=self.cfg, root=Path(self.root), jobs={self.job.id: self.job}), self.job)

    def checkpoint(self) -> Any:
        """Called by submitit before preemption/timeout: requeue the same job (it resumes from
        its work directory when resumable, otherwise restarts; its job dir stays absent meanwhile)."""
        import submitit  # optional: only SLURM users need it

        return submitit.helpers.DelayedSubmission(SubmititJob(self.cfg, self.root, self.job))


class Submitit:
    """SLURM (``cluster="slurm"``) or submitit's local executor (``"local"``, the same code path).

    Jobs started together are submitted as one job array per GPU count (one ``sbatch``);
    ``slots`` bounds how many are in flight (``executor.array_parallelism`` on SLURM).
    """

    def __init__(self, cfg: StudyConfig, *, cluster: str = "slurm", slots: int | None = None):
        self.cfg, self.cluster = cfg, cluster
        self.slots = slots or cfg.executor.array_parallelism
        self.running: dict[str, tuple[Job, Any]] = {}

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

    def start(self, plan: Plan, jobs: list[Job]) -> None:
        groups: dict[tuple[str, int], list[Job]] = {}
        for job in jobs:
            groups.setdefault((job.stage, job.gpus), []).append(job)
        for (stage, gpus), group in groups.items():
            executor = self.executor(plan, stage, gpus)
            with executor.batch():  # one array (one sbatch) for the group
                subs = [executor.submit(SubmititJob(self.cfg, str(plan.root), j)) for j in group]
            for job, sub in zip(group, subs):
                self.running[job.id] = (job, sub)

    def finished(self, plan: Plan, timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while True:
            out = {}
            for job_id, (job, sub) in list(self.running.items()):
                if not sub.done():
                    continue
                del self.running[job_id]
                out[job_id] = self._state(plan, job, sub)
            if out or not self.running or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.2, timeout))

    @staticmethod
    def _state(plan: Plan, job: Job, sub: Any) -> str:
        error = sub.exception()  # None when the job ran to its end and returned its state
        if error is None and sub.result() in ("busy", "found"):
            return sub.result()
        if plan.is_done(job):
            return "done"
        if not (plan.failure_dir(job) / "FAILED").is_file():  # killed, preempted for good, out of memory
            stderr = sub.stderr()
            record_failure(plan, job, f"submitit job {sub.job_id} ended without finishing: {error!r}"
                                      + (f"\n--- stderr ---\n{stderr[-3000:]}" if stderr else ""))
        return "failed"

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

    def start(self, job: Job) -> None:
        self.count += 1
        self.t0[job.id] = time.time()
        if self.console:
            grow = " (extending)" if self.plan.needs_growth(job) else ""
            self.console.print(f"[dim][{self.count}/{self.total}][/] [bold]{job.stage}[/] {job.name}{grow} "
                               f"[dim]{job.hash[:8]}[/]")

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
            start = []
            for job in ready:
                if len(start) + len(running) >= launcher.slots:
                    break
                pending.remove(job)
                if lock_is_live(plan.lock_path(job)):
                    elsewhere.add(job.id)
                    continue
                start.append(job)
                running.add(job.id)
                rep.start(job)
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
    """
    if "OMP_NUM_THREADS" in os.environ or torch.cuda.is_available():
        return
    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"
    if console:
        console.print("no GPU: jobs run with one CPU thread each (set OMP_NUM_THREADS to change)")


# ----------------------------------------------------------------------------- process entry point


def main(argv: list[str] | None = None) -> int:
    """Run one job from a pickled payload (a local GPU slot)."""
    argv = sys.argv[1:] if argv is None else argv
    payload = pickle.loads(Path(argv[0]).read_bytes())
    plan = Plan(cfg=payload["cfg"], root=Path(payload["root"]), jobs={payload["job"].id: payload["job"]})
    state = run_job(plan, payload["job"])
    return {"done": 0, "found": _FOUND_EXIT, "busy": _BUSY_EXIT}.get(state, 1)


if __name__ == "__main__":
    sys.exit(main())
