"""The execution sandbox, with real programs and real toolchains (python3, rustc, go).

Each hostile program is bounded, so a sandbox bug fails its test rather than the machine:
the fork bomb stops at 50 processes, the memory hog at 6 GiB, and so on. Each hostile test
checks that the program did not pass, that nothing outside its temp dir changed, and that
the next program still runs normally.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import stat
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from codemix.config import normalize_language
from codemix.errors import ToolchainError
from codemix.evals import execution
from codemix.evals.execution import OUTCOMES, Limits, Sandbox, isolation_mode

pytestmark = pytest.mark.timeout(120)

MODE = isolation_mode()
needs_isolation = pytest.mark.skipif(MODE == "rlimits", reason="no namespaces on this machine (rlimits mode)")

OK_PY = "assert sum(range(5)) == 10\nprint('ok')\n"


@pytest.fixture(scope="module")
def sandbox():
    # A generous timeout: on a loaded CI machine a program that should pass must not time out. The
    # memory limit is the evals' (4 GiB): Go's compiler needs most of 1 GiB, and under 1 GiB it
    # crashed now and then (at 768 MiB, always)
    with Sandbox(limits=Limits(timeout_s=10), workers=2) as sb:
        yield sb


@pytest.fixture(scope="module")
def impatient():
    """For programs that are meant to time out."""
    with Sandbox(limits=Limits(timeout_s=2), workers=2) as sb:
        yield sb


def assert_still_works(sb: Sandbox) -> None:
    """A later, ordinary program runs normally."""
    res = sb.run("py", OK_PY + f"# {uuid.uuid4()}\n")  # unique: never a cache hit
    assert res.outcome == "passed", res
    assert res.stdout_head == "ok\n"


def assert_no_leftovers(sb: Sandbox) -> None:
    for uid in sb.uids:
        assert execution._processes_of(uid) == []


@pytest.fixture
def open_dir():
    """A world-writable dir outside any sandbox temp dir: only the sandbox stops a program writing here."""
    path = Path(tempfile.mkdtemp(prefix="codemix-test-open-"))
    os.chmod(path, 0o777)
    yield path
    for p in sorted(path.rglob("*"), reverse=True):
        p.unlink() if not p.is_dir() else p.rmdir()
    path.rmdir()


# ----------------------------------------------------------------------------- outcomes


def test_python_outcomes(sandbox):
    progs = {
        "passed": OK_PY,
        "failed": "def f(x):\n    return x + 1\nassert f(1) == 3\n",
        "compile_error": "def f(x)\n    return x\n",
        "runtime_error": "def f(x):\n    return x / 0\nassert f(1) == 1\n",
    }
    results = sandbox.run_many([("py", p) for p in progs.values()], progress=False)
    assert [r.outcome for r in results] == list(progs)
    failed, compile_error, runtime_error = results[1], results[2], results[3]
    assert "AssertionError" in failed.stderr_tail
    assert "SyntaxError" in compile_error.stderr_tail
    assert "ZeroDivisionError" in runtime_error.stderr_tail


def test_python_is_isolated_and_env_scrubbed(sandbox):
    prog = (
        "import os, sys\n"
        "assert sys.flags.isolated == 1\n"
        "assert os.environ['HOME'] == os.getcwd(), (os.environ['HOME'], os.getcwd())\n"
        "assert 'CODEMIX_DATA' not in os.environ and 'VIRTUAL_ENV' not in os.environ\n"
        "assert set(os.listdir('.')) <= {'main.py', 'tmp'}, os.listdir('.')\n"
    )
    os.environ["CODEMIX_SECRET_TEST"] = "x"
    try:
        res = sandbox.run("py", prog + "assert 'CODEMIX_SECRET_TEST' not in os.environ\n")
    finally:
        del os.environ["CODEMIX_SECRET_TEST"]
    assert res.outcome == "passed", res


GO_TEST = ("package sq_test\n\nimport \"testing\"\n\nfunc sq(a int) int {\n    BODY\n}\n\n"
           "func TestSq(t *testing.T) {\n    if sq(3) != 9 {\n        t.Errorf(\"bad\")\n    }\n}\n")

RUST_GO_CASES = [
    # (language, program, expected outcome). Passed / failed / compile_error on real MultiPL-E
    # problems are in test_mbpp.py; these are the other paths of each language.
    ("rs", "fn sq(a: isize) -> isize {\n    a * a\n}\nfn main() {\n    assert_eq!(sq(3), 9);\n}\n", "passed"),
    ("rs", "fn sq(a: isize) -> isize {\n    let v: Vec<isize> = vec![];\n    v[a as usize]\n}\n"
           "fn main() {\n    assert_eq!(sq(3), 9);\n}\n", "runtime_error"),
    ("rs", "fn main() {\n    loop {}\n}\n", "timeout"),
    ("go", GO_TEST.replace("BODY", "return a * a"), "passed"),
    ("go", GO_TEST.replace("BODY", "var v []int\n    return v[a]"), "runtime_error"),
    ("go", GO_TEST.replace("BODY", "for {\n    }"), "timeout"),
]


def test_rust_and_go_outcomes(sandbox, impatient):
    slow = [want == "timeout" for _, _, want in RUST_GO_CASES]
    ran = {flag: iter(sb.run_many([(lang, prog) for (lang, prog, _), s in zip(RUST_GO_CASES, slow) if s == flag],
                                  progress=False))
           for flag, sb in ((False, sandbox), (True, impatient))}
    results = [next(ran[s]) for s in slow]
    got = [(lang, r.outcome) for (lang, _, _), r in zip(RUST_GO_CASES, results)]
    assert got == [(lang, want) for lang, _, want in RUST_GO_CASES], [r.stderr_tail[-300:] for r in results]


# HumanEval-X's Rust shape: an empty main, the tests in a #[cfg(test)] module (run with rustc --test).
RUST_TESTS = ("fn main(){}\nfn sq(a: i32) -> i32 {\n    BODY\n}\n\n#[cfg(test)]\nmod tests {\n    use super::*;\n\n"
              "    #[test]\n    fn test_sq() {\n        assert_eq!(sq(3), 9);\n"
              "        assert_eq!(sq(-2), 4);\n    }\n}\n")

RUST_TEST_CASES = [
    (RUST_TESTS.replace("BODY", "a * a"), "passed"),
    (RUST_TESTS.replace("BODY", "a + a"), "failed"),  # assert_eq! fails inside the #[test]
    (RUST_TESTS.replace("BODY", "a * \"a\""), "compile_error"),
    (RUST_TESTS.replace("BODY", "let v: Vec<i32> = vec![];\n    v[a as usize]"), "runtime_error"),
    # tests commented out: a test binary that runs nothing does not pass
    (RUST_TESTS.replace("BODY", "a * a").replace("#[cfg(test)]", "/*\n#[cfg(test)]") + "*/\n", "runtime_error"),
    # a passing test module does not stand in for a main whose asserts fail (MultiPL-E's shape)
    (RUST_TESTS.replace("BODY", "a * a").replace("fn main(){}", "fn main() {\n    assert_eq!(sq(2), 5);\n}"),
     "failed"),
]


def test_rust_test_module_outcomes(sandbox):
    results = sandbox.run_many([("rs", prog) for prog, _ in RUST_TEST_CASES], progress=False)
    got = [r.outcome for r in results]
    assert got == [want for _, want in RUST_TEST_CASES], [r.stderr_tail[-300:] for r in results]
    assert "test result: ok. 1 passed" in results[0].stderr_tail  # the test binary ran, its report is kept
    assert "left: `6`" in results[1].stderr_tail or "left: 6" in results[1].stderr_tail
    assert "running 0 tests" in results[4].stderr_tail


# HumanEval-X's Go shape: package main, testify's assert, which only the system's Go libraries provide.
GO_TESTIFY = ('package main\n\nimport (\n    "testing"\n    "github.com/stretchr/testify/assert"\n)\n\n'
              "func Sq(a int) int {\n    BODY\n}\n\n"
              "func TestSq(t *testing.T) {\n    assert := assert.New(t)\n    assert.Equal(9, Sq(3))\n"
              "    assert.Equal(4, Sq(-2))\n}\n")


@pytest.mark.skipif(not execution.go_package_installed("github.com/stretchr/testify/assert"),
                    reason="testify is not installed (make system-deps installs golang-github-stretchr-testify-dev)")
def test_go_programs_import_testify_offline(sandbox):
    progs = {"passed": GO_TESTIFY.replace("BODY", "return a * a"),
             "failed": GO_TESTIFY.replace("BODY", "return a + a"),
             "runtime_error": GO_TESTIFY.replace("BODY", "return a * a").replace("func TestSq", "func testSq")}
    results = sandbox.run_many([("go", p) for p in progs.values()], progress=False)
    assert [r.outcome for r in results] == list(progs), [r.stderr_tail[-300:] for r in results]
    assert "Not equal" in results[1].stderr_tail
    assert "no tests to run" in results[2].stderr_tail  # a test program that tests nothing does not pass
    # a library that is not installed is a compile error, not a download
    missing = GO_TESTIFY.replace("stretchr/testify/assert", "codemix-example/nope/assert").replace("BODY", "return a")
    res = sandbox.run("go", missing)
    assert res.outcome == "compile_error" and "codemix-example/nope/assert" in res.stderr_tail, res


def test_outcomes_are_known(sandbox):
    assert set(OUTCOMES) == {"passed", "failed", "timeout", "compile_error", "runtime_error"}


def test_result_cache_runs_only_new_programs(tmp_path):
    progs = [("py", OK_PY), ("py", "assert False\n")]
    with Sandbox(workers=1, cache_dir=tmp_path) as sb:
        first = sb.run_many(progs, progress=False)
    with Sandbox(workers=1, cache_dir=tmp_path) as sb:
        again = sb.run_many([*progs, ("py", OK_PY + "# new\n")], progress=False)
    assert [r.cached for r in first] == [False, False]
    assert [r.cached for r in again] == [True, True, False]
    assert [r.outcome for r in again] == ["passed", "failed", "passed"]


def test_missing_toolchain_names_the_debian_package(monkeypatch):
    fake = dataclasses.replace(execution.LANGUAGES["rs"], toolchain="codemix-no-such-rustc",
                               debian_package="rustc")
    monkeypatch.setitem(execution.LANGUAGES, "rs", fake)
    with Sandbox(workers=1) as sb, pytest.raises(ToolchainError, match="apt-get install rustc"):
        sb.run("rs", "fn main() {}\n")


def test_unknown_language():
    with pytest.raises(ValueError, match="unknown language"):
        normalize_language("cobol")
    assert normalize_language("Rust") == "rs"


# ----------------------------------------------------------------------------- hostile programs


def test_infinite_loop(impatient):
    # The child leaves the process group, so killing the group alone would miss it.
    res = impatient.run("py", "import os\nif os.fork() == 0:\n    os.setsid()\nwhile True:\n    pass\n")
    assert res.outcome == "timeout"
    assert_no_leftovers(impatient)
    assert_still_works(impatient)


@pytest.mark.skipif(MODE != "root", reason="RLIMIT_NPROC is per user: per program only when the harness is root")
def test_fork_bomb_is_bounded():
    # At most 50 processes even if the limit fails; they exit by themselves after 20 s.
    prog = (
        "import os, time\n"
        "for i in range(50):\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(20)\n"
        "        os._exit(0)\n"
    )
    with Sandbox(limits=Limits(timeout_s=5, nproc=16), workers=1) as sb:
        res = sb.run("py", prog)
        assert res.outcome == "runtime_error"
        assert "BlockingIOError" in res.stderr_tail or "Resource temporarily unavailable" in res.stderr_tail
        assert_no_leftovers(sb)
        assert_still_works(sb)


def test_memory_hog():
    # Touches up to 6 GiB, 256 MiB at a time; a 1 GiB address-space limit stops it.
    prog = "chunks = []\nfor i in range(24):\n    chunks.append(b'x' * (256 << 20))\n"
    with Sandbox(limits=Limits(timeout_s=10, memory_mb=1024), workers=1) as sb:
        res = sb.run("py", prog)
        assert res.outcome == "runtime_error"
        assert "MemoryError" in res.stderr_tail
        assert_still_works(sb)


def test_huge_output(sandbox):
    # 64 KiB per write for at most 1 GiB; the 64 MiB file-size limit stops it, only a head is kept.
    prog = "import sys\nfor i in range(16384):\n    sys.stdout.write('x' * 65536)\n    sys.stderr.write('y' * 65536)\n"
    res = sandbox.run("py", prog)
    assert res.outcome in ("runtime_error", "timeout")
    assert len(res.stdout_head) <= execution._STDOUT_HEAD
    assert len(res.stderr_tail) <= execution._STDERR_TAIL
    assert not list(Path(sandbox.root).glob("io-*"))  # captured output is removed
    assert_still_works(sandbox)


@needs_isolation
def test_write_outside_temp_dir(sandbox, open_dir):
    name = f"codemix-escape-{uuid.uuid4().hex}"
    targets = [open_dir / name, Path("/tmp") / name, Path("/var/tmp") / name, Path("/dev/shm") / name]
    prog = (
        "wrote = []\n"
        f"for t in {[str(t) for t in targets]!r}:\n"
        "    try:\n"
        "        open(t, 'w').write('escaped')\n"
        "        wrote.append(t)\n"
        "    except OSError:\n"
        "        pass\n"
        "assert not wrote, wrote\n"  # fails only if the sandbox let a write through
        "raise SystemExit('could not write outside')\n"
    )
    try:
        res = sandbox.run("py", prog)
        assert res.outcome == "runtime_error", res
        assert "could not write outside" in res.stderr_tail
        assert [t for t in targets if t.exists()] == []
    finally:
        for t in targets:
            t.unlink(missing_ok=True)
    assert_still_works(sandbox)


@needs_isolation
def test_delete_files(sandbox, open_dir):
    victim = open_dir / "precious.txt"
    victim.write_text("keep me")
    victim.chmod(0o666)
    prog = (
        "import os, shutil\n"
        f"for p in [{str(victim)!r}]:\n"
        "    try:\n"
        "        os.remove(p)\n"
        "    except OSError:\n"
        "        pass\n"
        f"shutil.rmtree({str(open_dir)!r}, ignore_errors=True)\n"
        f"assert os.path.exists({str(victim)!r}), 'deleted'\n"
        "raise SystemExit('could not delete')\n"
    )
    res = sandbox.run("py", prog)
    assert res.outcome == "runtime_error", res
    assert "could not delete" in res.stderr_tail
    assert victim.read_text() == "keep me"
    assert_still_works(sandbox)


@pytest.mark.skipif(MODE == "rlimits", reason="without a uid or PID namespace of its own, kill(-1) reaches us")
def test_kill_parent(sandbox):
    prog = (
        "import os, signal\n"
        "for target in (os.getppid(), -1):\n"  # the harness, then every process it may signal
        "    try:\n"
        "        os.kill(target, signal.SIGKILL)\n"
        "    except OSError:\n"
        "        pass\n"
        "raise SystemExit('still here')\n"
    )
    res = sandbox.run("py", prog)
    assert res.outcome == "runtime_error"
    assert_still_works(sandbox)  # this process, the harness, is alive and working


@needs_isolation
def test_network_connection(sandbox):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    prog = (
        "import socket\n"
        "for addr in [('127.0.0.1', %d), ('1.1.1.1', 53), ('8.8.8.8', 443)]:\n"
        "    try:\n"
        "        socket.create_connection(addr, timeout=1).close()\n"
        "        print('connected', addr)\n"
        "        raise SystemExit(0)\n"
        "    except OSError:\n"
        "        pass\n"
        "raise SystemExit('no network')\n" % port
    )
    try:
        res = sandbox.run("py", prog)
        assert res.outcome == "runtime_error", res
        assert "no network" in res.stderr_tail
        with pytest.raises(TimeoutError):
            listener.accept()
    finally:
        listener.close()
    assert_still_works(sandbox)


def test_process_that_outlives_the_program(sandbox, open_dir):
    # The daemon would write a file 2 s after the program ended; it must be dead by then.
    marker = open_dir / f"daemon-{uuid.uuid4().hex}"
    daemon = f"import time; time.sleep(2); open({str(marker)!r}, 'w').write('alive')"
    prog = (
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', {daemon!r}], start_new_session=True,\n"
        "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print('spawned')\n"
    )
    res = sandbox.run("py", prog)
    if MODE == "root":  # the harness sees the daemon (its uid is the program's) and fails the sample
        assert res.outcome == "runtime_error"
        assert "left running" in res.stderr_tail
    assert_no_leftovers(sandbox)
    time.sleep(2.5)
    assert not marker.exists()
    assert_still_works(sandbox)


def test_temp_dirs_are_private_and_removed(sandbox):
    root = Path(sandbox.root)
    assert stat.S_IMODE(root.stat().st_mode) == 0o711
    res = sandbox.run("py", "import os\nprint(os.getcwd())\n")
    assert res.outcome == "passed"
    workdir = Path(res.stdout_head.strip())
    assert workdir.parent == root and not workdir.exists()
