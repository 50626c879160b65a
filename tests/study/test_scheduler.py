"""The job runner and the scheduling loop with each launcher, on small real jobs (study.jobfns):
results, failures, reruns, kills, and two drivers sharing one study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codemix.study.jobs import STAGES
from codemix.study.scheduler import InProcess, Submitit, Subprocesses, run_job, run_jobs
from codemix.study.store import Store, plan_rows, read_failure

from .conftest import read_calls
from .jobfns import toy_plan, values

EXPECTED = {"tok": 1, "s0": 1, "s1": 11, "s2": 21, "e0": 1, "e1": 111, "e2": 221, "all": 333}


def _tree(root: Path) -> list[str]:
    """Every job directory, checking each is complete (DONE, job.json) — never partial."""
    jobs = root / "jobs"
    dirs = sorted(str(p.relative_to(jobs)) for p in jobs.glob("*/*") if p.is_dir()) if jobs.exists() else []
    for d in dirs:
        assert (jobs / d / "DONE").is_file() and (jobs / d / "job.json").is_file(), d
        assert (jobs / d / "value.json").is_file(), d
    return dirs


def test_local_runs_every_job_once_in_stage_order(toy_env):
    plan = toy_plan(toy_env["root"])
    summary = run_jobs(plan, InProcess())
    assert summary.ok and len(summary.ran) == 8
    assert values(plan) == EXPECTED
    calls = read_calls(toy_env["calls"])
    stages = [c.split("/")[0] for c in calls]
    assert stages == sorted(stages, key=STAGES.index) and len(stages) == 8
    assert not (toy_env["root"] / "failures").exists() and _tree(toy_env["root"])
    # a second run does nothing
    again = run_jobs(plan, InProcess())
    assert again.ran == [] and again.already_done == 8
    assert len(read_calls(toy_env["calls"])) == 8
    # the job's config is recorded beside its outputs
    job = next(iter(plan.jobs.values()))
    assert json.loads((plan.job_dir(job) / "job.json").read_text())["hash"] == job.hash


def test_failure_blocks_only_dependents_and_rerun_retries_only_it(toy_env):
    toy_env["fail"].write_text("on")
    plan = toy_plan(toy_env["root"], fail={1})
    summary = run_jobs(plan, InProcess())
    failed = [j for j in plan.jobs.values() if j.name == "s1"][0]
    assert summary.failed == [failed.id]
    assert sorted(plan.jobs[b].name for b in summary.blocked) == ["all", "e1"]
    assert values(plan) == {k: v for k, v in EXPECTED.items() if k not in ("s1", "e1", "all")}
    assert not plan.job_dir(failed).exists() and not plan.work_dir(failed).exists()
    error = read_failure(plan, failed)
    assert "RuntimeError: boom in s1" in error and "Traceback" in error

    with Store(plan) as store:
        states = store.rebuild()
        assert states[failed.id] == "failed"
        assert {plan.jobs[i].name for i, s in states.items() if s == "blocked"} == {"e1", "all"}
        assert ("stream", "failed") in store.counts() and "boom in s1" in store.failures()[0][1]

    toy_env["fail"].unlink()
    before = len(read_calls(toy_env["calls"]))
    summary = run_jobs(plan, InProcess())
    assert summary.ok and sorted(plan.jobs[i].name for i in summary.ran) == ["all", "e1", "s1"]
    assert read_calls(toy_env["calls"])[before:] == [plan.jobs[i].id for i in summary.ran]
    assert values(plan) == EXPECTED
    assert read_failure(plan, failed) is None  # a success clears the old failure


def test_a_job_dir_appears_only_when_complete(toy_env):
    plan = toy_plan(toy_env["root"], n=1)
    job = next(j for j in plan.jobs.values() if j.stage == "stream")
    # a stale work dir of a non-resumable job (a SIGKILLed attempt) is discarded, not trusted
    stale = plan.work_dir(job)
    stale.mkdir(parents=True)
    (stale / "value.json").write_text("999")
    run_jobs(plan, InProcess(capture=False))
    assert values(plan)["s0"] == 1 and not stale.exists()


def test_ctrl_c_leaves_no_partial_job_dir(toy_env, monkeypatch):
    plan = toy_plan(toy_env["root"], n=2)
    import study.jobfns as fns

    real = fns.value_job

    def interrupted(ctx):
        if ctx.job.name == "s1":
            (ctx.out / "half").write_text("x")
            raise KeyboardInterrupt
        real(ctx)

    monkeypatch.setattr(fns, "value_job", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_jobs(plan, InProcess())
    s1 = next(j for j in plan.jobs.values() if j.name == "s1")
    assert not plan.job_dir(s1).exists() and not plan.work_dir(s1).exists()
    assert not plan.failure_dir(s1).exists()  # an interruption is not a failure
    assert set(values(plan)) == {"tok", "s0"}


_DRIVER = """
import sys
from pathlib import Path
from study.jobfns import toy_plan
from codemix.study.scheduler import InProcess, run_jobs
plan = toy_plan(Path(sys.argv[1]), sleep=float(sys.argv[2]))
run_jobs(plan, InProcess())
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_killed_run_resumes_to_the_same_results(toy_env, sig):
    """Kill a study process mid-job; every job dir is complete or absent; a rerun finishes it."""
    root = toy_env["root"]
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, str(root), "0.3"])
    try:
        # wait until the second stream job is running (its work dir holds `started`), then kill
        deadline = time.monotonic() + 60
        while not list((root / "work" / "stream").glob("s1-*/started")):
            assert time.monotonic() < deadline and proc.poll() is None, "the study never reached s1"
            time.sleep(0.05)
        os.kill(proc.pid, sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    done_before = _tree(root)
    assert any(d.startswith("stream/s0-") for d in done_before)
    assert not any(d.startswith("stream/s1-") for d in done_before)
    plan = toy_plan(root, sleep=0.3)  # the same study: the same job hashes
    summary = run_jobs(plan, InProcess())
    assert summary.ok and values(plan) == EXPECTED
    assert sorted(plan.jobs[i].name for i in summary.ran) == sorted(set(EXPECTED) - {"tok", "s0"})


def test_gpu_slot_executor_runs_jobs_in_parallel_processes(toy_env):
    toy_env["fail"].write_text("on")
    plan = toy_plan(toy_env["root"], fail={2})
    summary = run_jobs(plan, Subprocesses([None, None]), poll_s=0.05)
    assert values(plan) == {k: v for k, v in EXPECTED.items() if k not in ("s2", "e2", "all")}
    assert [plan.jobs[i].name for i in summary.failed] == ["s2"]
    assert "boom in s2" in read_failure(plan, summary.failed[0])
    toy_env["fail"].unlink()
    again = run_jobs(plan, Subprocesses([None, None]), poll_s=0.05)
    assert again.ok and values(plan) == EXPECTED


def test_submitit_local_executor_same_path_as_slurm(toy_env):
    """submitit's LocalExecutor: pickled jobs, job arrays per stage, retries of failed jobs."""
    toy_env["fail"].write_text("on")
    plan = toy_plan(toy_env["root"], n=2, fail={1})
    summary = run_jobs(plan, Submitit(plan.cfg, cluster="local", slots=2), max_retries=1, poll_s=0.1)
    s1 = next(j for j in plan.jobs.values() if j.name == "s1")
    assert summary.failed == [s1.id]
    assert read_calls(toy_env["calls"]).count(s1.id) == 2  # the first attempt and one resubmission
    assert "boom in s1" in read_failure(plan, s1)
    assert (toy_env["root"] / "submitit").is_dir()
    toy_env["fail"].unlink()
    summary = run_jobs(plan, Submitit(plan.cfg, cluster="local", slots=2), max_retries=1, poll_s=0.1)
    assert summary.ok
    assert values(plan) == {"tok": 1, "s0": 1, "s1": 11, "e0": 1, "e1": 111, "all": 112}
    rows = plan_rows(plan)
    assert {(r["m"], r["metric"], r["value"]) for r in rows} == {
        (0.0, "value", 1.0), (0.0, "double", 2.0), (0.1, "value", 111.0), (0.1, "double", 222.0)}


def test_run_job_refuses_missing_inputs(toy_env):
    plan = toy_plan(toy_env["root"], n=1)
    e0 = next(j for j in plan.jobs.values() if j.name == "e0")
    assert run_job(plan, e0) == "failed"
    assert "are not done" in read_failure(plan, e0)


def test_slurm_submission_carries_the_executor_settings(toy_env, tmp_path, monkeypatch):
    """The sbatch script submitit writes for a stage: partition, account, GPUs, time, extra args."""
    from codemix.errors import CodemixError

    plan = toy_plan(toy_env["root"])
    ex = plan.cfg.executor
    ex.partition, ex.account, ex.time_limit_min, ex.slurm_args = "gpu", "lab", 90, {"constraint": "h100"}
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    with pytest.raises(CodemixError, match="needs SLURM"):
        Submitit(plan.cfg).executor(plan, "pretrain", 4)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}/usr/bin:/bin")
    executor = Submitit(plan.cfg).executor(plan, "pretrain", 4)
    script = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in ("--partition=gpu", "--account=lab", "--gpus-per-node=4", "--time=90", "--constraint=h100",
                 "--job-name=toy-pretrain"):
        assert line in script, line
    assert executor._executor.parameters["array_parallelism"] == ex.array_parallelism


_DRIVER_EXIT = """
import sys
from pathlib import Path
from study.jobfns import toy_plan
from codemix.study.scheduler import InProcess, run_jobs
plan = toy_plan(Path(sys.argv[1]), sleep=float(sys.argv[2]))
summary = run_jobs(plan, InProcess(), poll_s=0.05)
print(len(summary.ran), len(summary.elsewhere))
sys.exit(0 if summary.ok else 1)
"""


def test_two_drivers_on_one_study_run_every_job_exactly_once(toy_env):
    """A login node and a laptop on one file system: both finish, each job ran once, in one of them."""
    root = toy_env["root"]
    procs = [subprocess.Popen([sys.executable, "-c", _DRIVER_EXIT, str(root), "0.4"], stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=180)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    calls = read_calls(toy_env["calls"])
    assert sorted(calls) == sorted(set(calls)) and len(calls) == len(EXPECTED)  # exactly once each
    ran = [tuple(map(int, out.split())) for out in outs]
    assert sum(r for r, _ in ran) == len(EXPECTED)  # what one did not run, it saw done by the other
    assert all(r + e <= len(EXPECTED) for r, e in ran)
    assert values(toy_plan(root, sleep=0.4)) == EXPECTED  # the same study: the same job keys
    assert not list((root / "locks").rglob("*")) or all(p.is_dir() for p in (root / "locks").rglob("*"))


def test_a_stale_lock_of_a_killed_driver_is_taken_over(toy_env):
    from codemix.study.locks import STALE_S

    plan = toy_plan(toy_env["root"], n=1)
    tok = next(j for j in plan.jobs.values() if j.stage == "tokenizer")
    lock = plan.lock_path(tok)
    lock.parent.mkdir(parents=True)
    lock.write_text('{"holder": "deadhost:12345:abcd"}')  # a driver killed while running the job
    stale = time.time() - 2 * STALE_S
    os.utime(lock, (stale, stale))
    summary = run_jobs(plan, InProcess())
    assert summary.ok and tok.id in summary.ran and values(plan) == {"tok": 1, "s0": 1, "e0": 1, "all": 1}
    assert not lock.exists()


def test_a_lock_of_a_dead_process_on_this_machine_is_taken_over_at_once(toy_env):
    """A driver killed here (SIGKILL: no cleanup) leaves a fresh-looking lock; its process is gone, so the
    next run takes the job at once instead of waiting for the heartbeat to go stale."""
    import socket

    plan = toy_plan(toy_env["root"], n=1)
    tok = next(j for j in plan.jobs.values() if j.stage == "tokenizer")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = plan.lock_path(tok)
    lock.parent.mkdir(parents=True)
    lock.write_text(f'{{"holder": "{socket.gethostname()}:{dead.pid}:abcd"}}')
    start = time.monotonic()
    assert run_jobs(plan, InProcess(), poll_s=0.05).ok and tok.id in read_calls(toy_env["calls"])
    assert time.monotonic() - start < 30


def test_a_live_lock_is_respected(toy_env):
    """A job another driver holds is not run here; when that driver lets go unfinished, it is taken back."""
    from codemix.study.locks import JobLock

    plan = toy_plan(toy_env["root"], n=1)
    tok = next(j for j in plan.jobs.values() if j.stage == "tokenizer")
    other = JobLock(plan.lock_path(tok), heartbeat_s=0.05)
    assert other.acquire()
    assert run_job(plan, tok) == "busy" and read_calls(toy_env["calls"]) == []
    other.release()
    assert run_jobs(plan, InProcess(), poll_s=0.05).ok and values(plan)["all"] == 1


# ----------------------------------------------------------------------------- packs


def _pack_calls(calls: list[str]) -> list[list[str]]:
    return [c.split(":", 1)[1].split(",") for c in calls if c.startswith("pack:")]


def test_a_pack_runs_its_members_in_one_call_each_into_its_own_job_dir(toy_env):
    plan = toy_plan(toy_env["root"], pack=True)
    streams = [j.id for j in plan.by_stage("stream")]
    summary = run_jobs(plan, InProcess())
    assert summary.ok and values(plan) == EXPECTED and _tree(toy_env["root"])
    calls = read_calls(toy_env["calls"])
    assert _pack_calls(calls) == [streams]  # one call of the pack's function with all three
    for job_id in streams:  # ... and each member is an ordinary done job that records its pack
        assert json.loads((plan.job_dir(job_id) / "DONE").read_text())["pack"] == streams
    assert run_jobs(plan, InProcess()).ran == []


def test_a_failing_pack_fails_its_members_and_reruns_them_together(toy_env):
    toy_env["fail"].write_text("on")
    plan = toy_plan(toy_env["root"], fail={1}, pack=True)
    summary = run_jobs(plan, InProcess())
    streams = sorted(j.id for j in plan.by_stage("stream"))
    assert sorted(summary.failed) == streams  # one process: its error is every member's
    assert sorted(plan.jobs[b].name for b in summary.blocked) == ["all", "e0", "e1", "e2"]
    assert all("boom in s1" in read_failure(plan, s) for s in streams)
    toy_env["fail"].unlink()
    assert run_jobs(plan, InProcess()).ok and values(plan) == EXPECTED
    assert len(_pack_calls(read_calls(toy_env["calls"]))) == 2


def test_a_pack_leaves_out_members_that_are_done_or_held_elsewhere(toy_env):
    from codemix.study.locks import JobLock
    from codemix.study.scheduler import Unit, run_unit

    plan = toy_plan(toy_env["root"], pack=True)
    run_jobs(plan.with_inputs(plan.by_stage("tokenizer")), InProcess())
    s0, s1, s2 = plan.by_stage("stream")
    assert run_job(plan, s0) == "done"  # run alone, with the job's own function
    other = JobLock(plan.lock_path(s1), heartbeat_s=0.05)
    assert other.acquire()
    pack = plan.pack_of(s0)
    states = run_unit(plan, Unit(tuple(plan.jobs[i] for i in pack.members), pack.fn))
    assert states == {s0.id: "found", s1.id: "busy", s2.id: "done"}
    assert _pack_calls(read_calls(toy_env["calls"])) == []  # one member left: it ran alone
    other.release()
    assert run_jobs(plan, InProcess(), poll_s=0.05).ok and values(plan) == EXPECTED

