"""Atomic file and directory writes, hashing, and the helpers of resumable parallel builds.

Artifacts are written to a temporary sibling and renamed into place, so a crash or a
bad input never leaves a half-written file or directory behind.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import multiprocessing
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_dir",
    "available_cpus",
    "fork_pool",
    "read_commits",
    "read_json",
    "replace_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "sha256_file",
    "stable_hash",
]


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``path`` when the block exits cleanly.

    On an exception the temporary directory is removed and ``path`` is untouched. With
    ``overwrite`` an existing ``path`` is replaced (old copy removed only after the new one
    is complete); otherwise an existing ``path`` raises ``FileExistsError``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists")
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private (0700); the artifact gets normal permissions
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, path)


def replace_dir(src: str | Path, dst: str | Path) -> None:
    """Rename the complete directory ``src`` to ``dst`` (same file system), swapping out an existing ``dst``.

    The old ``dst`` is moved aside first and removed after, so ``dst`` is never missing for
    longer than between two renames and never half-written.
    """
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
    _fsync_dir(dst.parent)


def sha256_file(path: str | Path, *, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(obj: Any, *, length: int = 12) -> str:
    """Hash of a JSON-serializable object, independent of dict key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


# ----------------------------------------------------------------------------- resumable work


def available_cpus() -> int:
    """CPUs this process may use (a SLURM or container allocation, not the whole machine)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file's object, or {} when it is missing or torn (a work directory's key file)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def read_commits(path: Path) -> dict[int, dict[str, Any]]:
    """Committed chunks by index; a torn last line (killed mid-write) is ignored."""
    commits: dict[int, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            commits[entry["chunk"]] = entry
    return commits


def _exit_with_parent() -> None:
    """Linux: have the kernel end this worker when the parent dies (e.g. a SIGKILLed job), not orphan it."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: workers exit when their queue closes instead
        pass


def fork_pool(workers: int, initializer: Callable[..., None], initargs: tuple[Any, ...] = ()) -> cf.ProcessPoolExecutor:
    """``workers`` processes, forked now, each set up by ``initializer(*initargs)`` and ending with its parent.

    Fork rather than spawn/forkserver: those re-import the caller's ``__main__``, which breaks
    scripts without an ``if __name__ == "__main__"`` guard. So call this before starting any
    thread of your own (a progress bar), and give the workers work that needs none of the
    parent's threads (no torch; tokenizers with its parallelism off).
    """
    pool = cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork"),
                                  initializer=_init_forked, initargs=(initializer, initargs))
    pool.submit(os.getpid).result()  # launches every worker now
    return pool


def _init_forked(initializer: Callable[..., None], initargs: tuple[Any, ...]) -> None:
    _exit_with_parent()
    initializer(*initargs)
