"""The SQLite index: rebuilt from job directories, status output, result export."""

from __future__ import annotations

import shutil
import sqlite3

import pandas as pd

from codemix.evals.rows import COLUMNS, write_table
from codemix.study.scheduler import InProcess, run_jobs
from codemix.study.store import Store, print_status

from .jobfns import toy_plan


def test_rebuild_from_dirs_and_export(toy_env, tmp_path):
    toy_env["fail"].write_text("on")
    plan = toy_plan(toy_env["root"], fail={2})
    run_jobs(plan, InProcess())
    with Store(plan) as store:
        store.rebuild()
        assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        counts = store.counts()
        assert counts[("stream", "done")] == 2 and counts[("stream", "failed")] == 1
        assert counts[("eval", "blocked")] == 1 and counts[("analysis", "blocked")] == 1
        rows = store.results()
    assert len(rows) == 4 and {r["value"] for r in rows} == {1.0, 2.0, 111.0, 222.0}
    assert all(r["study"] == "toy" and r["baseline"] is False for r in rows)

    # the database is only an index: delete it, rebuild, same answers
    (plan.root / "study.db").unlink()
    for extra in ("study.db-wal", "study.db-shm"):
        (plan.root / extra).unlink(missing_ok=True)
    with Store(plan) as store:
        store.rebuild()
        assert store.results() == rows

    for name in ("r.csv", "r.parquet"):
        write_table(rows, tmp_path / name)
    csv, pq = pd.read_csv(tmp_path / "r.csv"), pd.read_parquet(tmp_path / "r.parquet")
    assert list(csv.columns) == list(COLUMNS) == list(pq.columns)
    assert sorted(csv["value"]) == sorted(pq["value"]) == [1.0, 2.0, 111.0, 222.0]

    # a job dir removed by hand is simply not done any more
    e1 = next(j for j in plan.jobs.values() if j.name == "e1")
    shutil.rmtree(plan.job_dir(e1))
    with Store(plan) as store:
        states = store.rebuild()
        assert states[e1.id] == "pending" and len(store.results()) == 2
    with sqlite3.connect(plan.root / "study.db") as db:  # readable by any SQLite client
        assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == len(plan.jobs)


def test_status_shows_counts_and_each_failure(toy_env):
    from rich.console import Console

    toy_env["fail"].write_text("on")
    plan = toy_plan(toy_env["root"], fail={0})
    run_jobs(plan, InProcess())
    console = Console(record=True, width=200)
    with Store(plan) as store:
        store.rebuild()
        print_status(store, console=console)
    text = console.export_text()
    assert "boom in s0" in text and "FAILED" in text and "blocked" in text
    assert "rerun" in text
