"""benchmarks/compile_time.py at the tiny preset: it runs, and compares the two ways of compiling one model."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_compile_time_compares_whole_and_regional_compilation_of_the_same_model():
    proc = subprocess.run([sys.executable, "benchmarks/compile_time.py", "--presets", "tiny", "--backend", "aot_eager",
                           "--device", "cpu", "--seq-len", "16"], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert line["preset"] == "tiny" and line["backend"] == "aot_eager"
    assert line["graphs"] == {"whole": 1, "regions": 2}  # the model; one block for both blocks, and the head
    assert line["max_abs_loss_diff"] < 1e-5  # the same model and batch compiled two ways
    assert line["whole_s"] > 0 and line["regions_s"] > 0 and line["ratio"] > 0


def test_an_unknown_preset_is_named_with_the_choices(capsys):
    spec = importlib.util.spec_from_file_location("compile_time", ROOT / "benchmarks" / "compile_time.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_:
        module.main(["--presets", "124m,huge"])  # checked before any model is compiled
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "unknown preset(s) ['huge']" in err and "codet5-small" in err
