"""The checks of benchmarks/gpu_check.sh (which sets up the bundle and runs this); one JSON line per check.

Every CUDA path of codemix in one run on one H100: about 8 minutes, most of it compilation, and never
more than ``--budget`` (560 s), so that one device call of 10 minutes always gets every line back:

- ``train_124m``, ``train_t5_large_dec``: bf16 autocast + torch.compile + fused AdamW training of
  codemix's decoder against HF Llama of the same shape (benchmarks/train_throughput.py);
- ``train_codet5_small``: CodeT5 (its objectives, tagging head) against HF T5 (the same script);
- ``pack_20m``: eight 20M-parameter GPTs as one pack against the same eight trained one after
  another, both compiled (benchmarks/pack_throughput.py; target: ratio >= 3);
- ``study``: benchmarks/gpu_check.yaml end to end through the local executor (tokenizer, streams,
  mixtures, four runs pretrained as one pack, an eval of each kind, analysis).

``--cpu`` runs the same checks at tiny sizes on a CPU (tests/test_gpu_check.py does), so the
script cannot rot between GPU runs; its pack check is compiled, as on a GPU (torch.compile
traces the packed model the same way for both; only Inductor's code generation differs). A
failing check prints ``"ok": false`` with the end of its output and the others still run; the
exit status is 1 if any failed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRAIN, PACK = "benchmarks/train_throughput.py", "benchmarks/pack_throughput.py"
_CPU_TRAIN = ["--device", "cpu", "--steps", "2", "--rounds", "1", "--warmup", "1", "--batch-size", "2",
              "--seq-len", "64", "--vocab", "512"]

#: name -> (arguments on a GPU, arguments with --cpu, seconds allowed on a GPU). The limits are what the
#: checks took on an H100 on 2026-11-28 (compilation is most of it) with room to spare; --budget caps them
#: all together, so that one device call of 10 minutes always gets every line back.
CHECKS: dict[str, tuple[list[str], list[str], int]] = {
    "study": ([], [], 130),  # 106 s
    "pack_20m": ([PACK, "--preset", "20m", "--ks", "8"],
                 [PACK, "--preset", "tiny", "--ks", "2", "--steps", "2", "--warmup", "1", "--batch-size", "2",
                  "--seq-len", "32", "--vocab", "256", "--rounds", "1", "--compile", "on"], 100),  # 74 s
    "train_124m": ([TRAIN, "--preset", "124m", "--rounds", "2"], [TRAIN, "--preset", "tiny", *_CPU_TRAIN],
                   110),  # 90 s (with the whole GPT compiled; now block by block)
    "train_codet5_small": ([TRAIN, "--preset", "codet5-small", "--rounds", "2"],
                           [TRAIN, "--preset", "t5-tiny", *_CPU_TRAIN],
                           150),  # 137 s (1 round, compiled whole, beside 2 checks; now block by block)
    "train_t5_large_dec": ([TRAIN, "--preset", "t5-large-dec", "--rounds", "2"],
                           [TRAIN, "--preset", "tiny", *_CPU_TRAIN], 170),  # 156 s, likewise (GPT compiled whole)
}
#: Seconds all checks may take together on a GPU (the device tool's calls end at 600 s, the setup included).
GPU_BUDGET = 560
#: The study at tiny sizes for --cpu (the same stages and evals, fewer steps).
CPU_STUDY = ["pretrain.device=cpu", "pretrain.max_steps=6", "pretrain.eval_every=3", "evals.cogs_vf.finetune.steps=2",
             "evals.mbpp.limit=1", "evals.mbpp.n=1", "evals.bigbench.limit=2", "analysis.permutations=20"]


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def _tail(output: str | None, chars: int = 1500) -> str:
    return (output or "")[-chars:]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """``python args...`` in the project root; a timeout is a RuntimeError with the end of what it printed.

    The check runs in a session of its own, and a timeout kills all of it: a study's jobs and
    Inductor's compile workers too, which would otherwise hold the GPU through the next check.
    """
    with subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()  # what it printed so far says how far it got
            raise RuntimeError(f"timed out after {timeout:.0f} s: {_tail(err)} {_tail(out)}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_script(args: list[str], timeout: float) -> dict[str, Any]:
    """Run a benchmark script; its JSON line (the last one), or the reason there is none."""
    proc = _run(args, timeout)
    result = _last_json(proc.stdout)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"exit {proc.returncode}: {_tail(proc.stderr or proc.stdout)}")
    return result


def run_study(cpu: bool, timeout: float) -> dict[str, Any]:
    """benchmarks/gpu_check.yaml through `codemix study run`; what ran where, how long, how many rows."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "study"
        sets = [f"out={out}", *(CPU_STUDY if cpu else [])]
        cmd = ["-m", "codemix.cli", "study", "run", "benchmarks/gpu_check.yaml"]
        proc = _run([*cmd, *(x for s in sets for x in ("--set", s))], timeout)
        if proc.returncode != 0:
            failures = [p.read_text()[-1200:] for p in (out / "failures").rglob("FAILED")]
            raise RuntimeError(f"exit {proc.returncode}: {proc.stderr[-800:]} {' | '.join(failures)[:2000]}")
        seconds: dict[str, float] = defaultdict(float)
        packs = []
        for done in sorted((out / "jobs").glob("*/*/DONE")):
            record, stage = json.loads(done.read_text()), done.parent.parent.name
            pack = record.get("pack")
            if pack and pack[0] != record["id"]:
                continue  # a pack's time once, under its first member
            seconds[stage] += record["seconds"]
            if pack:
                packs.append(len(pack))
        speeds = [json.loads(line)["tokens_per_s"] for log in (out / "jobs" / "pretrain").glob("*/log.jsonl")
                  for line in log.read_text().splitlines() if '"tokens_per_s"' in line]
        rows = (out / "results.csv").read_text().count("\n") - 1
        return {"jobs": sum(1 for _ in (out / "jobs").glob("*/*/DONE")), "packs": packs,
                "stage_seconds": {k: round(v, 1) for k, v in seconds.items()}, "result_rows": rows,
                "pretrain_tokens_per_s_per_run": round(sum(speeds) / len(speeds), 1) if speeds else None,
                "report": (out / "report" / "index.html").is_file()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the same checks at tiny sizes on a CPU")
    parser.add_argument("--only", help="comma-separated checks to run (default: all): " + ", ".join(CHECKS))
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for all checks together; a check gets what is left if that is less than its "
                             f"own limit, and none once it is spent (default: {GPU_BUDGET} on a GPU, none on a CPU)")
    args = parser.parse_args(argv)
    names = args.only.split(",") if args.only else list(CHECKS)
    unknown = sorted(set(names) - set(CHECKS))
    if unknown:
        parser.error(f"unknown checks {unknown}; choose from {sorted(CHECKS)}")
    import torch  # after argument parsing: --help stays fast

    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --cpu for the tiny CPU version")
    device = "cpu" if args.cpu else torch.cuda.get_device_name(0)
    budget = args.budget if args.budget is not None else (None if args.cpu else GPU_BUDGET)
    began, failed = time.perf_counter(), 0
    for name in names:
        gpu_args, cpu_args, limit = CHECKS[name]
        timeout = 300 if args.cpu else limit
        if budget is not None:
            timeout = min(timeout, budget - (time.perf_counter() - began))
        start = time.perf_counter()
        try:
            if timeout < 1:
                raise RuntimeError(f"not run: the --budget of {budget:.0f} s is spent; run it alone with --only {name}")
            result = run_study(args.cpu, timeout) if name == "study" else run_script(
                cpu_args if args.cpu else gpu_args, timeout)
            line = {"check": name, "ok": True, "device": device, **result}
        except RuntimeError as e:
            failed += 1
            line = {"check": name, "ok": False, "device": device, "error": str(e)[-2500:]}
        line["seconds"] = round(time.perf_counter() - start, 1)
        print(json.dumps(line), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
