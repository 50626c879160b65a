"""Job locks: one driver runs a job at a time, whichever machine it is on.

Two ``codemix study run`` drivers may share an out directory (a login node and a laptop on
the same file system, or a rerun started while a SLURM array still runs). Before a job
runs, its runner creates ``locks/<job id>`` exclusively (``O_CREAT | O_EXCL``, which
network file systems honour) holding who it is; while the job runs, a heartbeat thread
touches the file. Another driver that finds the lock leaves the job alone and waits for
it; a lock whose heartbeat has stopped for ``stale_s`` seconds (its driver was killed), or
whose holder on this machine has no process any more, is taken over: renamed away (only one
taker's rename succeeds) and created afresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

__all__ = ["HEARTBEAT_S", "STALE_S", "JobLock", "lock_is_live"]

#: Seconds between heartbeats of a running job's lock.
HEARTBEAT_S = 5.0
#: A lock not touched for this long belongs to a dead driver and may be taken over.
STALE_S = 60.0


def _holder(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("holder")
    except (OSError, ValueError):
        return None


def lock_is_live(path: Path, stale_s: float = STALE_S) -> bool:
    """Whether ``path`` is a lock whose holder is alive: its heartbeat is recent, and a holder on this
    machine still has its process (a driver killed here is known dead at once, not after ``stale_s``)."""
    try:
        if time.time() - path.stat().st_mtime >= stale_s:
            return False
    except FileNotFoundError:
        return False
    host, _, rest = (_holder(path) or "").partition(":")
    pid = rest.partition(":")[0]
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, under another user
            return True
    return True


class JobLock:
    """An exclusive, heartbeating lock file; :meth:`acquire` never blocks."""

    def __init__(self, path: Path, *, stale_s: float = STALE_S, heartbeat_s: float = HEARTBEAT_S):
        self.path, self.stale_s, self.heartbeat_s = Path(path), stale_s, heartbeat_s
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lock (taking over a stale one); False when a live holder has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if lock_is_live(self.path, self.stale_s):
                    return False
                self._take_over()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({"holder": self.token, "since": time.time()}, f)
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}", daemon=True)
            self._thread.start()
            return True
        return False

    def _take_over(self) -> None:
        """Move a stale lock out of the way; put it back if what was moved is not stale (a race)."""
        dead = self.holder()
        moved = self.path.with_name(f"{self.path.name}.stale-{self.token.replace(':', '-')}")
        try:
            os.replace(self.path, moved)
        except FileNotFoundError:  # another taker moved it first
            return
        if _holder(moved) != dead and lock_is_live(moved, self.stale_s):  # a fresh lock came in between
            with contextlib.suppress(OSError):
                os.link(moved, self.path)  # back, unless yet another lock exists now
        moved.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def holder(self) -> str | None:
        """The token of whoever holds the lock now (None: nobody, or it is being written)."""
        return _holder(self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.holder() == self.token:  # never remove a lock someone took over
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> JobLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
