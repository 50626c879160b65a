"""Sandboxed execution of generated programs (Python, Rust, Go).

Every program runs in its own temporary directory and process session, under resource
limits (CPU seconds, address space, processes, file size, open files), with a scrubbed
environment (``HOME`` = its temp dir, a minimal ``PATH``) and a wall-clock timeout that
kills its whole process group. How much more isolation is possible depends on the
machine; it is detected once per process (:func:`isolation_mode`):

- ``root`` (the harness runs as root, as in CI): each parallel worker runs its programs as
  its own unprivileged uid, claimed with a lock file so concurrent harnesses never share
  one. So ``RLIMIT_NPROC`` (which root ignores) bounds that program alone, the program can
  signal no process but its own, and every process left with that uid after the program
  ends is found and killed (and the sample fails). Programs run inside one mount and
  network namespace set up once per :class:`Sandbox`: no network, and every file system
  read-only except the sandbox's own temp dir. Entering it costs three small util-linux
  execs (``nsenter``, ``prlimit``, ``setpriv``) per program.
- ``userns`` (not root, user namespaces allowed): per program a new user, PID, network and
  mount namespace, set up by a small Python launcher; the program is PID 1 of its
  namespace, so everything it spawns dies with it.
- ``rlimits``: neither; resource limits, sessions and timeouts only (a hostile program can
  reach the network and signal this user's processes). A warning says so.

The harness never forks with ``preexec_fn`` (unsafe with threads, and slow from a process
holding a model): the limits are applied by the exec'd helpers.

Languages: Python runs the program. Rust compiles it with rustc and runs ``main``; a program
with a ``#[cfg(test)]`` module is (also) compiled with ``rustc --test`` and its test binary run.
Go runs ``go test`` in GOPATH mode, offline: imports resolve to the standard library and to the
Go libraries Debian installs under ``/usr/share/gocode`` (e.g. testify's ``assert``, from
``golang-github-stretchr-testify-dev``), which the program can read but not write.

Outcomes: ``passed``, ``failed`` (a test assertion failed), ``timeout``,
``compile_error``, ``runtime_error`` (anything else, including a test program that runs no
test), with the tail of stderr.
Results are cached in SQLite by a hash of language, program, toolchain and limits, so
re-runs execute only new programs (timeouts are not cached: they depend on load).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import queue
import re
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from codemix.config import EXEC_LANGUAGES, normalize_language
from codemix.errors import ToolchainError

__all__ = [
    "LANGUAGES",
    "OUTCOMES",
    "ExecResult",
    "Limits",
    "Sandbox",
    "SandboxError",
    "default_cache_dir",
    "go_package_installed",
    "isolation_mode",
]

OUTCOMES = ("passed", "failed", "timeout", "compile_error", "runtime_error")

#: Bumped whenever a change could alter outcomes of cached programs.
CACHE_VERSION = 2
#: Where Debian installs Go libraries (``golang-*-dev`` packages): the second GOPATH entry of Go programs.
GO_LIBRARIES = Path("/usr/share/gocode")
#: First uid of the range sandboxed programs run as when the harness is root. uids with no
#: passwd entry are fine for setuid; this range is far above any a distribution hands out.
UID_BASE = 1_900_000_000
UID_RANGE = 4096
_UID_LOCK_DIR = Path(tempfile.gettempdir()) / "codemix-sandbox-uids"
_STDERR_TAIL = 2000
_STDOUT_HEAD = 4000
_MARK = "codemix-sandbox:"


class SandboxError(RuntimeError):
    """The sandbox itself failed (not the program under test)."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one program."""

    timeout_s: float = 10.0
    """Wall-clock limit of running the program (a Go test binary: of the test run)."""
    compile_timeout_s: float = 60.0
    """Extra wall-clock time for compiling (rustc; the build half of `go test`)."""
    memory_mb: int = 4096
    """Address space per process (RLIMIT_AS)."""
    nproc: int = 256
    """Processes and threads of the program's uid (RLIMIT_NPROC); Go needs a few dozen."""
    fsize_mb: int = 64
    """Largest file the program may write, its captured output included (RLIMIT_FSIZE)."""
    nofile: int = 256
    """Open file descriptors (RLIMIT_NOFILE)."""


@dataclass(frozen=True)
class ExecResult:
    """What happened to one program."""

    outcome: str
    """One of :data:`OUTCOMES`."""
    returncode: int | None
    """Exit status of the last step run (negative: killed by that signal)."""
    stderr_tail: str
    """Last characters of stderr (for Go: of the combined output)."""
    stdout_head: str = ""
    duration_s: float = 0.0
    cached: bool = False

    @property
    def passed(self) -> bool:
        return self.outcome == "passed"


# ----------------------------------------------------------------------------- launcher

# In root mode: the process that holds the sandbox's namespaces (mode "hold"). Otherwise:
# runs in the child before the program (namespaces, read-only mounts, rlimits), then execs
# it. Stdlib only and short, so it starts fast.
_LAUNCHER = r"""
import ctypes, json, os, resource, signal, sys
s = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]

def die(msg):
    os.write(2, ("codemix-sandbox: " + msg + "\n").encode())
    os._exit(125)

def check(ret, what):
    if ret != 0:
        e = ctypes.get_errno()
        die(what + ": " + os.strerror(e))

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
FLAG = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": 1024, "nodiratime": 2048,
        "relatime": 1 << 21}

def unescape(p):
    return p.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")

def read_only_fs(rw, strict):
    check(libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None), "make mounts private")
    for p in rw:
        check(libc.mount(p.encode(), p.encode(), None, MS_BIND | MS_REC, None), "bind " + p)
    with open("/proc/self/mountinfo") as f:
        mounts = [(unescape(l.split()[4]), l.split()[5]) for l in f]
    for point, opts in mounts:
        if point in rw or point.startswith(("/proc", "/sys")) or point in ("/dev", "/dev/pts"):
            continue
        if any(point.startswith(p.rstrip("/") + "/") for p in rw):
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        for o in opts.split(","):
            flags |= FLAG.get(o, 0)
        if libc.mount(None, point.encode(), None, flags, None) != 0 and (strict or point == "/"):
            check(1, "remount read-only " + point)

try:
    if s["mode"] == "hold":  # root: set up the namespaces programs enter, then wait for stdin to close
        check(libc.unshare(0x00020000 | 0x40000000 | 0x08000000), "unshare(mount, net, ipc)")
        read_only_fs(s["rw"], strict=False)
        os.write(1, b"ready\n")
        sys.stdin.buffer.read()
        os._exit(0)
    if s["mode"] == "userns":
        uid, gid = os.getuid(), os.getgid()
        check(libc.unshare(0x10000000 | 0x20000000 | 0x40000000 | 0x00020000 | 0x08000000),
              "unshare(user, pid, net, mount, ipc)")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open("/proc/self/" + name, "w") as f:
                f.write(text)
        pid = os.fork()  # the child is PID 1 of the new namespace: all it spawns dies with it
        if pid:
            signal.signal(signal.SIGTERM, lambda *a: os.kill(pid, signal.SIGKILL))
            status = os.waitpid(pid, 0)[1]
            if os.WIFSIGNALED(status):
                os.write(2, ("codemix-sandbox: killed by signal %d\n" % os.WTERMSIG(status)).encode())
                os._exit(128 + os.WTERMSIG(status))
            os._exit(os.WEXITSTATUS(status))
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: the launcher's death kills the namespace
        read_only_fs(s["rw"], strict=False)
    for name, value in s["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    os.umask(0o077)
    os.chdir(s["cwd"])
except OSError as e:
    die(str(e))
try:
    os.execve(s["argv"][0], s["argv"], s["env"])
except OSError as e:
    os.write(2, ("codemix-sandbox: exec %s: %s\n" % (s["argv"][0], e)).encode())
    os._exit(127)
"""


def _launcher_argv(spec: dict) -> list[str]:
    return [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(spec)]


_UTIL_LINUX = ("nsenter", "prlimit", "setpriv")


class _Namespaces:
    """A process holding a mount + network + IPC namespace with a read-only view of every
    file system except ``rw``; programs enter it with ``nsenter``. It exits when the harness
    closes its stdin, or dies."""

    def __init__(self, rw: Path):
        spec = {"mode": "hold", "rw": [str(rw)], "rlimits": {}, "cwd": "/", "argv": [], "env": {}}
        self.proc = subprocess.Popen(_launcher_argv(spec), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        assert self.proc.stdout is not None
        if self.proc.stdout.readline() != b"ready\n":
            err = self.proc.communicate(timeout=30)[1].decode(errors="replace").strip()
            raise SandboxError(f"could not set up the sandbox's namespaces: {err}")
        self.tools = [shutil.which(t) or t for t in _UTIL_LINUX]

    def enter(self, work: Path, uid: int, rlimits: dict[str, int], argv: list[str]) -> list[str]:
        """Command line running ``argv`` in the namespaces, in ``work``, under ``rlimits``, as ``uid``."""
        if self.proc.poll() is not None:
            raise SandboxError("the sandbox's namespace holder died")
        nsenter, prlimit, setpriv = self.tools
        ns = f"/proc/{self.proc.pid}/ns"
        limits = [f"--{name.removeprefix('RLIMIT_').lower()}={value}" for name, value in rlimits.items()]
        return [nsenter, f"--net={ns}/net", f"--mount={ns}/mnt", f"--ipc={ns}/ipc", f"--wdns={work}", "--",
                prlimit, *limits, "--",
                setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--no-new-privs", "--", *argv]

    def close(self) -> None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            self.proc.communicate(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _probe(mode: str) -> bool:
    """Whether ``mode`` works on this machine: a trivial program runs in it."""
    try:
        if mode == "root":
            if not all(shutil.which(t) for t in _UTIL_LINUX):
                return False
            with tempfile.TemporaryDirectory() as tmp:
                ns = _Namespaces(Path(tmp))
                try:
                    argv = ns.enter(Path("/"), 65534, {"RLIMIT_CORE": 0}, ["/bin/true"])
                    proc = subprocess.run(argv, capture_output=True, timeout=30, start_new_session=True)
                finally:
                    ns.close()
        else:
            spec = {"mode": mode, "rw": [], "rlimits": {}, "cwd": "/", "argv": ["/bin/true"], "env": {}}
            proc = subprocess.run(_launcher_argv(spec), capture_output=True, timeout=30, start_new_session=True)
        return proc.returncode == 0
    except (OSError, subprocess.SubprocessError, SandboxError):
        return False


@cache
def isolation_mode() -> str:
    """How programs are isolated on this machine: ``root``, ``userns`` or ``rlimits`` (detected once)."""
    if sys.platform != "linux":
        return "rlimits"
    if os.geteuid() == 0 and _probe("root"):
        return "root"
    if os.geteuid() != 0 and _probe("userns"):
        return "userns"
    warnings.warn("sandbox: no namespaces available on this machine (root mode also needs util-linux's "
                  "nsenter, prlimit and setpriv); generated programs run with resource limits only and can "
                  "reach the network and signal this user's processes", stacklevel=2)
    return "rlimits"


# ----------------------------------------------------------------------------- languages


@dataclass(frozen=True)
class _Step:
    argv: list[str]
    timeout_s: float
    kind: str  # "compile", "run" or "test" (a test runner that reports on stdout: `go test`, a Rust test binary)


@dataclass(frozen=True)
class Language:
    """How to build, run and judge programs of one language."""

    name: str
    toolchain: str
    """Executable looked up on PATH, then in /usr/bin."""
    debian_package: str
    version_args: tuple[str, ...]
    filename: str
    steps: Callable[[str, Path, Limits], list[_Step]]
    classify: Callable[[_Step, int, str, str], str]
    """(step, returncode, stdout, stderr) -> outcome, for a step that finished in time."""


def _py_steps(exe: str, src: Path, lim: Limits) -> list[_Step]:
    return [_Step([exe, "-I", "-B", src.name], lim.timeout_s, "run")]


def _py_classify(step: _Step, rc: int, out: str, err: str) -> str:
    if rc == 0:
        return "passed"
    last = next((ln for ln in reversed(err.strip().splitlines()) if ln.strip()), "")
    if last.startswith("AssertionError"):
        return "failed"
    if last.startswith(("SyntaxError", "IndentationError", "TabError")):
        return "compile_error"
    return "runtime_error"


_RS_TEST_MODULE = re.compile(r"#\[cfg\(\s*test\s*\)\]")
_RS_EMPTY_MAIN = re.compile(r"\bfn\s+main\s*\(\s*\)\s*\{\s*\}")


def _rs_steps(exe: str, src: Path, lim: Limits) -> list[_Step]:
    """Compile and run ``main`` (MultiPL-E's tests are asserts in ``main``); for a program with a
    ``#[cfg(test)]`` module (HumanEval-X), compile with ``--test`` and run the tests. A program with
    both runs both, so tests a completion adds cannot stand in for the asserts in ``main``."""
    program = src.read_text(encoding="utf-8")
    has_tests = _RS_TEST_MODULE.search(program) is not None
    # Linking std dynamically halves compile time and makes a 20 KB binary instead of 11 MB.
    rustc = [exe, "--edition", "2021", "-A", "warnings", "-C", "debuginfo=0", "-C", "prefer-dynamic", "-C", "rpath"]
    steps = []
    if not has_tests or not _RS_EMPTY_MAIN.search(program):
        steps += [_Step([*rustc, "-o", "prog", src.name], lim.compile_timeout_s, "compile"),
                  _Step(["./prog"], lim.timeout_s, "run")]
    if has_tests:
        steps += [_Step([*rustc, "--test", "-o", "tests", src.name], lim.compile_timeout_s, "compile"),
                  _Step(["./tests", "--test-threads=1"], lim.timeout_s, "test")]
    return steps


def _rs_classify(step: _Step, rc: int, out: str, err: str) -> str:
    if step.kind == "compile":
        return "passed" if rc == 0 else "compile_error"
    if rc == 0:
        # A test binary that ran nothing proved nothing (e.g. its tests are commented out).
        ran_none = step.kind == "test" and re.search(r"^running 0 tests$", out, re.MULTILINE) is not None
        return "runtime_error" if ran_none else "passed"
    if "panicked" in err and "assertion" in err:  # a test binary's panics are in its stdout, merged into err
        return "failed"
    return "runtime_error"


def _go_steps(exe: str, src: Path, lim: Limits) -> list[_Step]:
    # -vet=off: vet findings are not compile errors in MultiPL-E's sense; -count=1: no test-result cache.
    argv = [exe, "test", "-vet=off", "-count=1", f"-timeout={max(1, int(lim.timeout_s))}s", "."]
    return [_Step(argv, lim.compile_timeout_s + lim.timeout_s, "test")]


def _go_classify(step: _Step, rc: int, out: str, err: str) -> str:
    both = out + err
    if rc == 0:
        return "runtime_error" if "[no tests to run]" in both else "passed"
    # go test's summary line of a test binary that ran (the package is named after the work dir)
    ran = re.search(r"^FAIL\t\S+\t", both, re.MULTILINE) is not None
    if "[build failed]" in both or "[setup failed]" in both or not ran:
        return "compile_error"
    if "panic: test timed out" in both:
        return "timeout"
    if "panic:" in both:
        return "runtime_error"
    if "--- FAIL" in both:
        return "failed"
    return "runtime_error"


LANGUAGES: dict[str, Language] = {
    "py": Language("py", "python3", "python3", ("--version",), "main.py", _py_steps, _py_classify),
    "rs": Language("rs", "rustc", "rustc", ("--version",), "main.rs", _rs_steps, _rs_classify),
    "go": Language("go", "go", "golang-go", ("version",), "main_test.go", _go_steps, _go_classify),
}
assert tuple(LANGUAGES) == EXEC_LANGUAGES  # the toolchains of the languages the config accepts


def go_package_installed(import_path: str) -> bool:
    """Whether Go programs can import ``import_path``, a package outside the standard library: a
    Debian ``golang-*-dev`` package installed it under :data:`GO_LIBRARIES`."""
    return (GO_LIBRARIES / "src" / import_path).is_dir()


def _go_libraries_digest() -> str:
    """A hash of the package dirs under :data:`GO_LIBRARIES`: installing a library changes it."""
    dirs = sorted(str(Path(d).relative_to(GO_LIBRARIES)) for d, _, _ in os.walk(GO_LIBRARIES))
    return hashlib.sha256("\n".join(dirs).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- sandbox


@dataclass
class _Slot:
    """One parallel worker: the uid its programs run as (root mode) and its Go build cache."""

    uid: int | None
    gocache: Path
    lock_fd: int | None = None


def _claim_uids(count: int) -> list[tuple[int, int]]:
    """Claim ``count`` unused uids of the sandbox range, each held by an flock'ed file until released."""
    _UID_LOCK_DIR.mkdir(mode=0o700, exist_ok=True)
    claimed: list[tuple[int, int]] = []
    for uid in range(UID_BASE, UID_BASE + UID_RANGE):
        fd = os.open(_UID_LOCK_DIR / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        claimed.append((uid, fd))
        if len(claimed) == count:
            return claimed
    for _, fd in claimed:
        os.close(fd)
    raise SandboxError(f"no free sandbox uids in [{UID_BASE}, {UID_BASE + UID_RANGE}): are that many "
                       f"harnesses running? (locks in {_UID_LOCK_DIR})")


def _processes_of(uid: int) -> list[int]:
    """Live (non-zombie) processes whose real uid is ``uid``."""
    pids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            fd = os.open(f"/proc/{name}/status", os.O_RDONLY)
            try:
                status = os.read(fd, 2048)
            finally:
                os.close(fd)
            i = status.index(b"\nUid:\t") + 6
            if int(status[i: status.index(b"\t", i)]) == uid:
                j = status.index(b"\nState:\t") + 8
                if status[j: j + 1] != b"Z":
                    pids.append(int(name))
        except (OSError, ValueError):
            continue
    return pids


def _kill_uid(uid: int) -> int:
    """Kill every process running as ``uid`` (what a program left behind: daemons, setsid children).

    Returns how many there were.
    """
    found: set[int] = set()
    for _ in range(200):
        pids = _processes_of(uid)
        if not pids:
            return len(found)
        found.update(pids)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.005)
    raise SandboxError(f"processes of sandbox uid {uid} keep reappearing: {_processes_of(uid)[:10]}")


def _wait(proc: subprocess.Popen, timeout: float) -> bool:
    """Whether ``proc`` exits within ``timeout`` (it is not reaped).

    A pidfd wakes us the moment it exits; ``Popen.wait(timeout)`` polls with sleeps of up
    to 50 ms, which would be most of the time a short program takes.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        try:
            proc.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        return bool(poller.poll(max(0, int(timeout * 1000))))
    finally:
        os.close(fd)


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _read_head(path: Path, n: int) -> str:
    with open(path, "rb") as f:
        return f.read(n).decode("utf-8", "replace")


def _read_tail(path: Path, n: int) -> str:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - n))
        return f.read().decode("utf-8", "replace")


def _fast_tmp() -> str | None:
    """/dev/shm when it is a roomy tmpfs: creating and removing a temp dir per program on
    disk costs milliseconds each (rmdir on ext4); ``None`` (the default temp dir) otherwise."""
    with contextlib.suppress(OSError):
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize >= 4 << 30 and os.access("/dev/shm", os.W_OK | os.X_OK):
            return "/dev/shm"
    return None


def _default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_cache_dir() -> Path:
    """Where results are cached: ``$XDG_CACHE_HOME/codemix/exec`` (default ``~/.cache/codemix/exec``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "codemix" / "exec"


class _ResultCache:
    """program hash -> ExecResult, in SQLite."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, timeout=60, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, result TEXT NOT NULL)")
        self.db.commit()
        self.lock = threading.Lock()

    def get(self, key: str) -> ExecResult | None:
        with self.lock:
            row = self.db.execute("SELECT result FROM results WHERE key = ?", (key,)).fetchone()
        return None if row is None else ExecResult(**{**json.loads(row[0]), "cached": True})

    def put(self, key: str, result: ExecResult) -> None:
        with self.lock:
            self.db.execute("INSERT OR REPLACE INTO results VALUES (?, ?)", (key, json.dumps(asdict(result))))
            self.db.commit()

    def close(self) -> None:
        self.db.close()


class Sandbox:
    """Runs programs in parallel, each sandboxed; see the module docstring.

    ``workers=0`` uses one worker per CPU. ``cache_dir=None`` disables the result cache.
    ``isolation`` forces a mode (``auto``: :func:`isolation_mode`). Use as a context
    manager (or call :meth:`close`) to remove its temp dirs and free its uids.
    """

    def __init__(self, *, limits: Limits | None = None, workers: int = 0, cache_dir: str | Path | None = None,
                 isolation: str = "auto"):
        self.limits = limits or Limits()
        self.workers = workers if workers > 0 else _default_workers()
        self.mode = isolation_mode() if isolation == "auto" else isolation
        if self.mode not in ("root", "userns", "rlimits"):
            raise ValueError(f"isolation must be auto, root, userns or rlimits, not {isolation!r}")
        self._closed = True
        self.root = Path(tempfile.mkdtemp(prefix="codemix-exec-", dir=_fast_tmp()))
        os.chmod(self.root, 0o711)  # sandbox uids may enter their own dirs, not list or touch others
        self._slots: queue.Queue[_Slot] = queue.Queue()
        self._ns: _Namespaces | None = None
        self._cache: _ResultCache | None = None
        try:
            uids = _claim_uids(self.workers) if self.mode == "root" else []
            for uid, _ in uids:
                _kill_uid(uid)  # left over by a harness that was killed mid-run
            for i in range(self.workers):
                gocache = self.root / f"go-{i}"
                gocache.mkdir(mode=0o700)
                if uids:
                    uid, fd = uids[i]
                    os.chown(gocache, uid, uid)
                    self._slots.put(_Slot(uid, gocache, fd))
                else:
                    self._slots.put(_Slot(None, gocache))
            if self.mode == "root":
                self._ns = _Namespaces(self.root)
            if cache_dir is not None:
                self._cache = _ResultCache(Path(cache_dir) / "results.sqlite")
        except BaseException:
            self._closed = False
            self.close()
            raise
        self._closed = False
        self._toolchains: dict[str, tuple[str, str]] = {}
        self._toolchain_lock = threading.Lock()

    # -- lifecycle

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        while not self._slots.empty():
            slot = self._slots.get_nowait()
            if slot.uid is not None:
                _kill_uid(slot.uid)
            if slot.lock_fd is not None:
                os.close(slot.lock_fd)
        if self._ns is not None:
            self._ns.close()
        shutil.rmtree(self.root, ignore_errors=True)
        if self._cache is not None:
            self._cache.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def uids(self) -> list[int]:
        """The uids this sandbox runs programs as (empty unless in ``root`` mode)."""
        return sorted(slot.uid for slot in list(self._slots.queue) if slot.uid is not None)

    @contextlib.contextmanager
    def _slot(self) -> Iterator[_Slot]:
        slot = self._slots.get()
        try:
            yield slot
        finally:
            self._slots.put(slot)

    # -- toolchains

    def toolchain(self, language: str) -> tuple[str, str]:
        """(executable, version) for ``language``, probed once inside the sandbox.

        Candidates are the toolchain on PATH, then /usr/bin; the first one that runs as the
        sandbox user wins (e.g. a rustup ``rustc`` under /root does not, Debian's does).
        """
        lang = LANGUAGES[normalize_language(language)]
        with self._toolchain_lock:
            if lang.name in self._toolchains:
                return self._toolchains[lang.name]
            tried = []
            for exe in dict.fromkeys(p for p in (shutil.which(lang.toolchain), f"/usr/bin/{lang.toolchain}") if p):
                if not os.access(exe, os.X_OK):
                    continue
                with self._slot() as slot, self._workdir(slot) as work:
                    step = _Step([exe, *lang.version_args], self.limits.compile_timeout_s, "probe")
                    rc, out, err, _ = self._run_step(step, work, slot)
                if rc == 0:
                    version = out.strip() or err.strip()
                    if lang.name == "go":  # what programs can import is part of the toolchain
                        version += f" + {GO_LIBRARIES}:{_go_libraries_digest()}"
                    self._toolchains[lang.name] = (exe, version)
                    return self._toolchains[lang.name]
                tried.append(f"{exe} (exit {rc}: {err.strip()[-200:]})")
            found = "; tried " + ", ".join(tried) if tried else ""
            raise ToolchainError(
                f"no usable `{lang.toolchain}` for {lang.name} programs{found}. Install the Debian package "
                f"`{lang.debian_package}` (apt-get install {lang.debian_package}, or `make install`)."
            )

    # -- running

    def _env(self, work: Path, slot: _Slot, exe: str) -> dict[str, str]:
        return {
            "PATH": ":".join(dict.fromkeys([str(Path(exe).parent), "/usr/local/bin", "/usr/bin", "/bin"])),
            "HOME": str(work),
            "TMPDIR": str(work / "tmp"),
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            # Go: offline, local toolchain, the worker's build cache (reused across programs). GOPATH
            # mode: imports resolve to the standard library and Debian's Go libraries (read-only),
            # with no go.mod and nothing to download.
            "GOCACHE": str(slot.gocache / "build"),
            "GOPATH": f"{slot.gocache / 'gopath'}:{GO_LIBRARIES}",
            "GOTMPDIR": str(work / "tmp"),
            "GOPROXY": "off",
            "GOTOOLCHAIN": "local",
            "GOTELEMETRY": "off",
            "GO111MODULE": "off",
            "CGO_ENABLED": "0",
            "GOMAXPROCS": "2",
        }

    def _rlimits(self) -> dict[str, int]:
        lim = self.limits
        nproc = lim.nproc
        if self.mode != "root" and os.geteuid() != 0:
            # RLIMIT_NPROC counts all of this user's processes: leave room for those running.
            nproc += len(_processes_of(os.getuid())) + 64
        return {
            "RLIMIT_CPU": int(lim.timeout_s + lim.compile_timeout_s) + 1,
            "RLIMIT_AS": lim.memory_mb << 20,
            "RLIMIT_NPROC": nproc,
            "RLIMIT_FSIZE": lim.fsize_mb << 20,
            "RLIMIT_NOFILE": lim.nofile,
            "RLIMIT_CORE": 0,
        }

    @contextlib.contextmanager
    def _workdir(self, slot: _Slot) -> Iterator[Path]:
        """A fresh temp dir owned by the slot's uid (with ``tmp/`` inside), removed afterwards."""
        work = Path(tempfile.mkdtemp(dir=self.root, prefix="run-"))
        try:
            (work / "tmp").mkdir()
            if slot.uid is not None:
                os.chown(work, slot.uid, slot.uid)
                os.chown(work / "tmp", slot.uid, slot.uid)
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _run_step(self, step: _Step, work: Path, slot: _Slot) -> tuple[int | None, str, str, int]:
        """Run one step; (returncode or None on timeout, stdout head, stderr tail, processes left running).

        Processes left running are counted where the program has a uid of its own (root
        mode); in a PID namespace (userns mode) they die with the program.
        """
        env = self._env(work, slot, step.argv[0])
        if self._ns is not None:
            assert slot.uid is not None
            argv = self._ns.enter(work, slot.uid, self._rlimits(), step.argv)
        else:
            spec = {"mode": self.mode, "rw": [str(self.root)], "rlimits": self._rlimits(), "cwd": str(work),
                    "argv": step.argv, "env": env}
            argv = _launcher_argv(spec)
        io = Path(tempfile.mkdtemp(dir=self.root, prefix="io-"))  # root-only: the program cannot reach it
        try:
            with open(io / "out", "wb") as out, open(io / "err", "wb") as err:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=work, env=env,
                                        start_new_session=True, umask=0o077)
                timed_out = not _wait(proc, step.timeout_s + 0.5)  # + the helpers' start-up
                _killpg(proc.pid)  # whatever the program left in its process group
                proc.wait()
                left = _kill_uid(slot.uid) if slot.uid is not None else 0  # and what escaped it (setsid)
            stdout = _read_head(io / "out", _STDOUT_HEAD)
            stderr = _read_tail(io / "err", _STDERR_TAIL)
            if step.kind == "test":  # go test reports on stdout; keep the end of both
                stderr = (stderr + _read_tail(io / "out", _STDERR_TAIL))[-_STDERR_TAIL:]
        finally:
            shutil.rmtree(io, ignore_errors=True)
        rc = proc.returncode
        if rc != 0 and stderr.startswith((_MARK, "nsenter:", "prlimit:", "setpriv:")):
            raise SandboxError(f"sandbox setup failed for {step.argv[0]}: {stderr.strip()}")
        return (None if timed_out else rc), stdout, stderr, (0 if timed_out else left)

    def cache_key(self, language: str, program: str) -> str:
        """Hash of everything that decides a program's outcome."""
        lang = normalize_language(language)
        _, version = self.toolchain(lang)
        payload = json.dumps([CACHE_VERSION, lang, version, self.limits.timeout_s, self.limits.memory_mb, program])
        return hashlib.sha256(payload.encode()).hexdigest()

    def _execute(self, language: str, program: str) -> ExecResult:
        lang = LANGUAGES[language]
        exe, _ = self.toolchain(language)
        start = time.monotonic()
        with self._slot() as slot, self._workdir(slot) as work:
            src = work / lang.filename
            src.write_text(program, encoding="utf-8")
            if slot.uid is not None:
                os.chown(src, slot.uid, slot.uid)
            rc, out, err, outcome = None, "", "", "runtime_error"
            for step in lang.steps(exe, src, self.limits):
                rc, out, err, left = self._run_step(step, work, slot)
                if rc is None or rc == -signal.SIGXCPU:
                    outcome = "timeout"
                    break
                outcome = lang.classify(step, rc, out, err)
                if left:  # a test program has no business leaving processes behind
                    outcome = "runtime_error"
                    err += f"\n{_MARK} killed {left} process(es) the program left running\n"
                if outcome != "passed":
                    break
        return ExecResult(outcome, rc, err[-_STDERR_TAIL:], out[:_STDOUT_HEAD], time.monotonic() - start)

    def run(self, language: str, program: str) -> ExecResult:
        """Run one program (from the cache when it ran before)."""
        return self.run_many([(language, program)], progress=False)[0]

    def run_many(self, jobs: Sequence[tuple[str, str]], *, progress: bool = True,
                 description: str = "executing") -> list[ExecResult]:
        """Run ``(language, program)`` pairs in parallel; results in the same order."""
        if self._closed:
            raise SandboxError("this Sandbox is closed")
        jobs = [(normalize_language(lang), prog) for lang, prog in jobs]
        for lang in dict.fromkeys(lang for lang, _ in jobs):
            self.toolchain(lang)  # fail early, and once, on a missing toolchain
        results: list[ExecResult | None] = [None] * len(jobs)
        todo: dict[str, list[int]] = {}
        for i, (lang, prog) in enumerate(jobs):
            key = self.cache_key(lang, prog)
            hit = self._cache.get(key) if self._cache is not None else None
            if hit is not None:
                results[i] = hit
            else:
                todo.setdefault(key, []).append(i)  # identical programs run once

        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        with Progress(*columns, disable=not progress or not todo, transient=True) as bar, \
                ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="sandbox") as pool:
            task = bar.add_task(description, total=len(todo))
            futures = {pool.submit(self._execute, *jobs[idx[0]]): key for key, idx in todo.items()}
            try:
                for fut in as_completed(futures):
                    key = futures[fut]
                    res = fut.result()
                    if self._cache is not None and res.outcome != "timeout":
                        self._cache.put(key, res)
                    for i in todo[key]:
                        results[i] = res
                    bar.advance(task)
            except BaseException:
                for fut in futures:
                    fut.cancel()
                raise
        assert all(r is not None for r in results)
        return results  # type: ignore[return-value]
