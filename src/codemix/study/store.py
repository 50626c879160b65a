"""The study index: job states, failures and result rows, in SQLite (``<out>/study.db``).

Files are the truth (DESIGN.md): a job is done when ``jobs/<id>/DONE`` exists, failed when
``failures/<id>/FAILED`` exists, and its result rows are ``jobs/<id>/rows.jsonl``. The
database is an index of those files for fast queries and export; :meth:`Store.rebuild`
recreates it from the directories at any time, so deleting ``study.db`` loses nothing.
WAL journaling lets ``codemix study status`` read while a run writes.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from codemix.evals.rows import COLUMNS, collect_rows
from codemix.io import atomic_write_json, atomic_write_text
from codemix.study.jobs import STAGES, Job, Plan
from codemix.study.locks import lock_is_live

__all__ = [
    "Store",
    "clear_failure",
    "plan_rows",
    "job_state",
    "print_status",
    "read_failure",
    "record_failure",
]

#: How much of a traceback the FAILED file and `study status` keep.
ERROR_TAIL_CHARS = 4000


# ----------------------------------------------------------------------------- failures


def record_failure(plan: Plan, job: Job, error: str, *, attempt: str = "") -> Path:
    """Write ``failures/<id>/FAILED`` (the error's tail) and ``failure.json``, atomically.

    Failures live outside ``jobs/`` so a job directory is always either complete or absent.
    """
    where = plan.failure_dir(job)
    tail = error[-ERROR_TAIL_CHARS:]
    atomic_write_text(where / "FAILED", tail if tail.endswith("\n") else tail + "\n")
    atomic_write_json(where / "failure.json", {"id": job.id, "stage": job.stage, "name": job.name,
                                               "time": time.time(), "attempt": attempt,
                                               "error_tail": tail})
    return where


def read_failure(plan: Plan, job: Job | str) -> str | None:
    path = plan.failure_dir(job) / "FAILED"
    return path.read_text(errors="replace") if path.is_file() else None


def clear_failure(plan: Plan, job: Job | str) -> None:
    shutil.rmtree(plan.failure_dir(job), ignore_errors=True)


#: Job states, in the order `study status` shows them.
STATES = ("done", "running", "extend", "failed", "blocked", "pending")


def job_state(plan: Plan, job: Job, states: dict[str, str] | None = None) -> str:
    """One of :data:`STATES`: ``running`` (a driver holds its lock), ``extend`` (done, but the study now
    needs more of it: a token stream), ``blocked`` (an input failed or is blocked)."""
    if plan.is_done(job):
        return "done"
    if lock_is_live(plan.lock_path(job)):
        return "running"
    if (plan.failure_dir(job) / "FAILED").is_file():
        return "failed"
    if states is not None and any(states.get(dep) in ("failed", "blocked") for dep in job.inputs.values()):
        return "blocked"
    return "extend" if plan.needs_growth(job) else "pending"


def all_states(plan: Plan) -> dict[str, str]:
    states: dict[str, str] = {}
    for job in plan.jobs.values():  # inputs come first, so `blocked` propagates in one pass
        states[job.id] = job_state(plan, job, states)
    return states


# ----------------------------------------------------------------------------- result rows


def plan_rows(plan: Plan) -> list[dict[str, Any]]:
    """:func:`collect_rows` of every done eval job of the plan."""
    done = [(plan.job_dir(j), j.labels) for j in plan.by_stage("eval") if plan.is_done(j)]
    return collect_rows(plan.cfg.name, done)


# ----------------------------------------------------------------------------- the SQLite index


_SCHEMA_VERSION = 4
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, stage TEXT NOT NULL, name TEXT NOT NULL, hash TEXT NOT NULL,
    state TEXT NOT NULL, dir TEXT NOT NULL, seconds REAL, finished REAL, error TEXT, labels TEXT
);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL, study TEXT, setting TEXT, m REAL, baseline INTEGER, seed INTEGER,
    task TEXT, subtask TEXT, metric TEXT, value REAL, n INTEGER, arm TEXT, question_type TEXT, "primary" INTEGER
);
CREATE INDEX IF NOT EXISTS results_job ON results(job_id);
"""


class Store:
    """``<out>/study.db``: an index of the study's jobs and result rows (WAL mode)."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.path = plan.root / "study.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=30)
        self.db.execute("PRAGMA journal_mode=WAL")
        if self.db.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
            # The index is derived from the job directories: an older layout is dropped, not migrated.
            self.db.executescript("DROP TABLE IF EXISTS jobs; DROP TABLE IF EXISTS results;")
            self.db.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, job: Job, state: str) -> None:
        """Record one job's state (and its result rows when it is a done eval job)."""
        done_info: dict[str, Any] = {}
        done_file = self.plan.job_dir(job) / "DONE"
        if state == "done" and done_file.is_file():
            try:
                done_info = json.loads(done_file.read_text() or "{}")
            except ValueError:
                done_info = {}
        error = read_failure(self.plan, job) if state == "failed" else None
        with self.db:
            self.db.execute(
                "INSERT OR REPLACE INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?)",
                (job.id, job.stage, job.name, job.hash, state, str(self.plan.job_dir(job)),
                 done_info.get("seconds"), done_info.get("finished"), error, json.dumps(job.labels)))
            self.db.execute("DELETE FROM results WHERE job_id = ?", (job.id,))
            if state == "done" and job.stage == "eval":
                rows = collect_rows(self.plan.cfg.name, [(self.plan.job_dir(job), job.labels)])
                self.db.executemany(f"INSERT INTO results VALUES (?{',?' * len(COLUMNS)})",
                                    [(job.id, *(r[c] for c in COLUMNS)) for r in rows])

    def rebuild(self) -> dict[str, str]:
        """Forget everything and re-index the plan's jobs from their directories."""
        states = all_states(self.plan)
        with self.db:
            self.db.execute("DELETE FROM jobs")
            self.db.execute("DELETE FROM results")
        for job in self.plan.jobs.values():
            self.update(job, states[job.id])
        return states

    def counts(self) -> dict[tuple[str, str], int]:
        cur = self.db.execute("SELECT stage, state, COUNT(*) FROM jobs GROUP BY stage, state")
        return {(stage, state): n for stage, state, n in cur}

    def failures(self) -> list[tuple[str, str]]:
        return list(self.db.execute("SELECT id, error FROM jobs WHERE state = 'failed' ORDER BY rowid"))

    def results(self) -> list[dict[str, Any]]:
        columns = ", ".join(f'"{c}"' for c in COLUMNS)  # `primary` is an SQL keyword
        cur = self.db.execute(f"SELECT {columns} FROM results ORDER BY rowid")
        rows = [dict(zip(COLUMNS, r)) for r in cur]
        for r in rows:
            r["baseline"], r["primary"] = bool(r["baseline"]), bool(r["primary"])
        return rows


# ----------------------------------------------------------------------------- `codemix study status`


def print_status(store: Store, *, console: Any = None) -> None:
    console = console or Console()
    counts = store.counts()
    plan = store.plan
    t = Table(title=f"study {plan.cfg.name!r} — {plan.root}")
    t.add_column("stage")
    for s in STATES:
        t.add_column(s, justify="right")
    styles = {"done": "green", "running": "cyan", "extend": "", "failed": "red", "blocked": "yellow", "pending": ""}
    for stage in STAGES:
        if any(st == stage for st, _ in counts):
            cells = [str(counts.get((stage, s), 0)) for s in STATES]
            t.add_row(stage, *(f"[{styles[s]}]{c}[/]" if styles[s] and c != "0" else c
                               for s, c in zip(STATES, cells)))
    console.print(t)
    for job_id, error in store.failures():
        lines = (error or "").rstrip().splitlines()
        console.print(Panel("\n".join(lines[-15:]), title=f"[red]FAILED[/] {job_id}",
                            subtitle=f"full error: {plan.failure_dir(job_id) / 'FAILED'}", expand=False))
    blocked = sum(n for (_, s), n in counts.items() if s == "blocked")
    if blocked:
        console.print(f"{blocked} job(s) wait on failed jobs; fix the cause and rerun `codemix study run` "
                      "(only jobs not done are run).")
    report = plan.root / "report" / "index.html"
    if report.is_file():
        stamp = plan.root / "report" / ".analysis-job"
        current = [j.id for j in plan.by_stage("analysis")]
        if stamp.is_file() and stamp.read_text().strip() in current:
            console.print(f"report: {report}")
        else:
            console.print(f"report: {report} [yellow](from an earlier version of the study; "
                          "`codemix study run` brings it up to date)[/]")
