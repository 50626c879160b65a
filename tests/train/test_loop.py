"""The one training loop (:mod:`codemix.train.loop`): what it sets up for the process it trains in."""

from __future__ import annotations

import subprocess
import sys

#: In a fresh process, a "step" that allocates 64 MiB of activations, writes them and frees them,
#: counted in page faults per step: with glibc's defaults, then after keep_freed_memory().
SCRIPT = r"""
import resource
import torch
from codemix.train.loop import keep_freed_memory

def step():
    torch.ones(16 << 20).sum()

def faults_per_step():
    step()  # the heap grows to a step's peak
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        step()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) // 3

default = faults_per_step()
applied = keep_freed_memory()
print(default, faults_per_step(), applied)
"""


def test_freed_activations_stay_with_the_process_instead_of_faulting_back_in():
    """glibc's defaults unmap a freed 64 MiB block and fault its 16K pages in again next step; kept, they stay."""
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    default, kept, applied = (int(x) if x.isdigit() else x for x in out.stdout.split())
    assert applied == "True"
    assert default >= 16_000  # 64 MiB / 4 KiB pages, every step
    assert kept < 100, (default, kept)
