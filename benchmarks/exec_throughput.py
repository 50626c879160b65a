"""Throughput of the execution sandbox vs running the same programs one at a time, unsandboxed.

Programs: Python, the MBPP test split's reference solutions (they pass); Rust and Go,
MultiPL-E MBPP prompts with a body that compiles and then panics (``unimplemented!()`` /
``panic("unimplemented")``), so each is really compiled, linked and run. The harness runs
them in parallel workers, each sandboxed (namespaces, rlimits, own uid), result cache off;
the baseline runs the very same command lines (``python3 -I``, ``rustc`` then the binary,
``go test``) with ``subprocess.run``, one after the other, in a fresh temp dir each, in the
same process. Both must agree on pass/fail.

    CODEMIX_DATA=../shared/data .venv/bin/python benchmarks/exec_throughput.py [--py 200 --rs 24 --go 24]

Prints one JSON line: programs/s per language for both, and harness / baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from codemix.config import MbppConfig
from codemix.evals.execution import LANGUAGES, Limits, Sandbox, isolation_mode
from codemix.evals.mbpp import build_program, load_mbpp, select_problems

PLACEHOLDER = {"rs": "    unimplemented!()\n", "go": "    panic(\"unimplemented\")\n}\n"}


def programs(lang: str, count: int) -> list[str]:
    if lang == "py":
        return [build_program(p, p.reference) for p in load_mbpp("test")[:count]]
    probs = select_problems(MbppConfig(langs=[lang], limit=count))[lang]
    return [build_program(p, PLACEHOLDER[lang]) for p in probs]


def run_serial(lang: str, progs: list[str], sb: Sandbox, limits: Limits) -> list[bool]:
    """One at a time with subprocess.run: same toolchain, same command lines, no sandbox."""
    spec = LANGUAGES[lang]
    exe, _ = sb.toolchain(lang)
    passed = []
    with tempfile.TemporaryDirectory(prefix="codemix-bench-") as root:
        env = {**os.environ, "GOCACHE": f"{root}/gocache", "GOPATH": f"{root}/gopath", "GOFLAGS": "-mod=mod",
               "GOPROXY": "off", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0", "GOMAXPROCS": "2"}
        for prog in progs:
            with tempfile.TemporaryDirectory(dir=root) as work:
                src = Path(work) / spec.filename
                src.write_text(prog)
                if lang == "go":
                    (Path(work) / "go.mod").write_text("module sandbox\n\ngo 1.18\n")
                ok = True
                for step in spec.steps(exe, src, limits):
                    proc = subprocess.run(step.argv, cwd=work, env=env, capture_output=True, timeout=step.timeout_s)
                    if proc.returncode != 0:
                        ok = False
                        break
                passed.append(ok)
    return passed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--py", type=int, default=200, help="Python programs")
    ap.add_argument("--rs", type=int, default=24, help="Rust programs")
    ap.add_argument("--go", type=int, default=24, help="Go programs")
    ap.add_argument("--workers", type=int, default=0, help="harness workers (0: one per CPU)")
    args = ap.parse_args()

    limits = Limits()
    out: dict = {"benchmark": "exec_throughput", "isolation": isolation_mode(), "cpus": len(os.sched_getaffinity(0)),
                 "load_avg_1m_at_start": round(os.getloadavg()[0], 2)}
    with Sandbox(limits=limits, workers=args.workers, cache_dir=None) as sb:
        out["workers"] = sb.workers
        for lang in ("py", "rs", "go"):
            count = getattr(args, lang)
            if not count:
                continue
            progs = programs(lang, count)
            sb.toolchain(lang)  # probe outside the timings
            t0 = time.perf_counter()
            results = sb.run_many([(lang, p) for p in progs], progress=False)
            t_harness = time.perf_counter() - t0
            t0 = time.perf_counter()
            serial = run_serial(lang, progs, sb, limits)
            t_serial = time.perf_counter() - t0
            agree = sum(r.passed == s for r, s in zip(results, serial, strict=True))
            out[lang] = {
                "programs": len(progs),
                "harness_programs_per_s": round(len(progs) / t_harness, 2),
                "serial_programs_per_s": round(len(progs) / t_serial, 2),
                "ratio": round(t_serial / t_harness, 2),
                "passed": sum(r.passed for r in results),
                "agree_with_serial": agree,
            }
    out["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
