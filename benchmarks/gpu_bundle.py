"""Build the bundle that benchmarks/gpu_check.sh carries to a bare GPU machine (``make gpu-bundle``).

A GPU machine here has PyTorch and transformers but no package registry and no data mirror.
The bundle (git-ignored, under 64 MiB) holds what the check needs beyond ``src/``:

- ``wheels/``: every runtime dependency of codemix (the closure of its requirements, at the
  versions installed here) that the machine's image lacks (:data:`DEVICE_HAS`), as wheels for
  its Python (3.12, manylinux x86-64); pure-Python sdists are built into wheels here;
- ``data/``: the files the check's study (benchmarks/gpu_check.yaml) reads, under their
  data-directory names: the first documents of each source, each benchmark's files whole.

    python benchmarks/gpu_bundle.py                          # .device/ (needs PyPI and $CODEMIX_DATA)
    python benchmarks/gpu_bundle.py --no-wheels --out DIR    # the data alone (the --cpu test uses this)

Prints one JSON line: what it wrote and how big it is.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata as metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

from codemix.config import load_study
from codemix.data.fetch import data_path
from codemix.evals.registry import BENCHMARKS

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT / "benchmarks" / "gpu_check.yaml"
LIMIT_BYTES = 60 * 2**20  # the device tool carries 64 MiB in all
#: The GPU machine's Python and platform (the device tool's KINDS.md: Python 3.12.3, x86-64).
PYTHON_VERSION = "3.12"
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")

#: Packages of the GPU machine's image that codemix's requirements reach (KINDS.md, "Python packages
#: already there", read 2026-11-17); everything else codemix needs travels as a wheel.
DEVICE_HAS = frozenset("""
absl-py annotated-doc anyio attrs certifi charset-normalizer click cloudpickle colorama contourpy cycler filelock
fonttools formulaic fsspec h11 hf-xet httpcore httpx huggingface-hub idna interface-meta jinja2 joblib kiwisolver
lxml markdown-it-py markupsafe matplotlib mdurl mpmath narwhals networkx numpy packaging pandas patsy pillow
portalocker psutil pyarrow pygments pyparsing python-dateutil pyyaml regex requests rich sacrebleu safetensors
scikit-learn scipy setuptools shellingham six statsmodels sympy tabulate threadpoolctl tokenizers torch tqdm
transformers typer typing-extensions urllib3 wrapt xxhash
""".split())
#: Carried all the same: the image's version is unknown and the bundled wheels need a recent one (pydantic-core
#: requires typing-extensions>=4.16; pydantic imports its ``Sentinel``, new in 4.14, and fails to import on 4.12).
#: A newer typing-extensions only adds, so the bundle's copy (first on PYTHONPATH) can shadow the image's.
CARRY_ANYWAY = frozenset({"typing-extensions"})


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing_requirements() -> list[str]:
    """``name==version`` of every package codemix needs (transitively, on the GPU machine) that it lacks."""
    env = {**default_environment(), "python_version": PYTHON_VERSION, "python_full_version": f"{PYTHON_VERSION}.3",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64"}
    seen: dict[str, str] = {}
    todo = ["codemix"]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            raise SystemExit(f"{name} is not installed here; run `make install` first") from None
        seen[name] = dist.version
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({**env, "extra": ""}):
                todo.append(_norm(req.name))
    seen.pop("codemix")
    return sorted(f"{name}=={version}" for name, version in seen.items() if name not in DEVICE_HAS - CARRY_ANYWAY)


def download_wheels(requirements: list[str], dest: Path) -> None:
    """A wheel per requirement for the GPU machine: a binary one from PyPI, else built here from a pure-Python sdist."""
    dest.mkdir(parents=True, exist_ok=True)
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    for req in requirements:
        binary = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                                 "--python-version", PYTHON_VERSION, "--implementation", "cp", *platforms,
                                 "-d", str(dest), req], capture_output=True, text=True)
        if binary.returncode != 0:  # no wheel on PyPI (e.g. rouge-score): build one, it is pure Python
            subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), req],
                           check=True)


def data_files() -> dict[str, int | None]:
    """Data-directory path -> lines to keep (None: the whole file) of what the check's study reads."""
    cfg = load_study(STUDY)
    files: dict[str, int | None] = {}
    for src in cfg.data.sources:  # twice the documents it takes (some are empty), plus the held-out ones
        for path in src.paths:
            files[path] = 2 * (src.max_docs or 1000) + 2 * int(cfg.data.heldout_docs) + 50
    for section in cfg.evals.model_dump(exclude_none=True):
        bench_cfg = getattr(cfg.evals, section)
        for path in BENCHMARKS[bench_cfg.section].data_files(bench_cfg):
            files.setdefault(path, None)
    return files


def write_data(out: Path) -> list[str]:
    """Copy (or cut) every data file of the check into ``out``; the paths written."""
    written = []
    for rel, lines in data_files().items():
        source, target = data_path(rel), out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        elif lines is None or not source.name.endswith(".gz"):
            shutil.copyfile(source, target)
        else:
            with gzip.open(source, "rt") as f, gzip.open(target, "wt") as g:
                for i, line in enumerate(f):
                    if i >= lines:
                        break
                    g.write(line)
        written.append(rel)
    return written


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / ".device", help="bundle directory (default .device/)")
    parser.add_argument("--no-wheels", action="store_true", help="only the data (no PyPI needed)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.out.parent if args.out.parent.exists() else None) as tmp:
        staging = Path(tmp) / "bundle"
        files = write_data(staging / "data")
        wheels = [] if args.no_wheels else missing_requirements()
        if wheels:
            download_wheels(wheels, staging / "wheels")
        size = _size(staging)
        if size > LIMIT_BYTES:
            raise SystemExit(f"the bundle is {size / 2**20:.1f} MiB, over the {LIMIT_BYTES / 2**20:.0f} MiB the "
                             "device tool carries; cut the data slices or the wheels")
        for part in ("data", "wheels"):  # replace what an earlier build left, part by part
            if (staging / part).exists():
                shutil.rmtree(args.out / part, ignore_errors=True)
                args.out.mkdir(parents=True, exist_ok=True)
                (staging / part).rename(args.out / part)
    print(json.dumps({"bundle": str(args.out), "data_files": len(files), "wheels": wheels,
                      "mib": round(_size(args.out) / 2**20, 2)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
