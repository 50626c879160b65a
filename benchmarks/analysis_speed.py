"""Speed of the §5.1 permutation analysis: vectorized NumPy vs a plain Python loop.

Workload (issue 8): 200 tasks × 30 (m, seed) points, treatment and control slopes, then
10,000 re-partitions of the 400 pooled slopes for Δmean, Δvariance, Δskewness and the
Δupper/lower quartiles (Petty et al. 2024, arXiv 2409.04556, §5.1). Since issue 17 the
analysis draws the control slopes ``control_draws`` times (21 by default) and tests each draw
on the same re-partitions; ``vectorized_s`` times that default (the target: under 2 s), and
``vectorized_one_draw_s`` one draw, the workload of the plain Python loop (one shuffle, one
test), so that ``speedup`` compares like with like. Both implementations start from the same
result rows and run in this process, one after the other, and give the same treatment slopes.

    python benchmarks/analysis_speed.py [--tasks 200] [--permutations 10000] [--control-draws 21] [--seed 0]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time

import numpy as np
import pandas as pd

from codemix.analysis.permutation import CONTROL_DRAWS, STATISTICS, code_effect_test

M_VALUES = (0.0, 0.1, 0.25, 0.5, 0.75, 0.9)
SEEDS = 5  # 6 values of m × 5 seeds = 30 points per task


def make_rows(n_tasks: int, rng: np.random.Generator) -> pd.DataFrame:
    slopes = rng.normal(0.05, 0.1, n_tasks)
    m = np.tile(np.repeat(M_VALUES, SEEDS), n_tasks)
    task = np.repeat(np.arange(n_tasks), len(M_VALUES) * SEEDS)
    value = 0.4 + slopes[task] * m + rng.normal(0, 0.05, len(m))
    return pd.DataFrame({"study": "bench", "setting": "competitive", "m": m, "baseline": False,
                         "seed": np.tile(np.arange(SEEDS), n_tasks * len(M_VALUES)),
                         "task": [f"task{t:04d}" for t in task], "subtask": "", "metric": "acc",
                         "value": value, "n": 100})


# ----------------------------------------------------------------- the plain Python loop


def _slope(xs: list[float], ys: list[float]) -> float:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    sxx = sum((x - mx) ** 2 for x in xs)
    return sxy / sxx


def _quantile(sorted_xs: list[float], q: float) -> float:
    pos = q * (len(sorted_xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def _stats(xs: list[float]) -> list[float]:
    n = len(xs)
    mean = sum(xs) / n
    m2 = sum((x - mean) ** 2 for x in xs) / n
    m3 = sum((x - mean) ** 3 for x in xs) / n
    s = sorted(xs)
    return [mean, m2 * n / (n - 1), m3 / m2**1.5, _quantile(s, 0.75), _quantile(s, 0.25)]


def python_loop(records: list[dict], n_permutations: int, seed: int) -> tuple[list[float], list[float]]:
    """Treatment slopes and two-sided p-values, one task and one permutation at a time."""
    rnd = random.Random(seed)
    points: dict[str, tuple[list[float], list[float]]] = {}
    for r in records:
        xs, ys = points.setdefault(r["task"], ([], []))
        xs.append(r["m"])
        ys.append(r["value"])
    treatment, control = [], []
    for xs, ys in points.values():
        treatment.append(_slope(xs, ys))
        shuffled = xs[:]
        rnd.shuffle(shuffled)
        control.append(_slope(shuffled, ys))
    n_t = len(treatment)
    observed = [a - b for a, b in zip(_stats(treatment), _stats(control), strict=True)]
    pooled = treatment + control
    less = [1] * len(observed)
    greater = [1] * len(observed)
    for _ in range(n_permutations):
        rnd.shuffle(pooled)
        delta = [a - b for a, b in zip(_stats(pooled[:n_t]), _stats(pooled[n_t:]), strict=True)]
        for i, (d, o) in enumerate(zip(delta, observed, strict=True)):
            tol = abs(o) * 100 * 2.220446049250313e-16
            less[i] += d <= o + tol
            greater[i] += d >= o - tol
    total = n_permutations + 1
    return treatment, [min(1.0, 2 * min(lo, gr) / total) for lo, gr in zip(less, greater, strict=True)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=200)
    parser.add_argument("--permutations", type=int, default=10_000)
    parser.add_argument("--control-draws", type=int, default=CONTROL_DRAWS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rows = make_rows(args.tasks, np.random.default_rng(args.seed))
    records = rows.to_dict("records")
    warm = make_rows(5, np.random.default_rng(1))  # first-call costs (imports, caches) are not timed
    code_effect_test(warm, n_resamples=20, rng=0)
    python_loop(warm.to_dict("records"), 20, 0)

    t0 = time.perf_counter()
    vec = code_effect_test(rows, n_resamples=args.permutations, control_draws=args.control_draws, rng=args.seed)
    vectorized_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    code_effect_test(rows, n_resamples=args.permutations, control_draws=1, rng=args.seed)
    one_draw_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    loop_slopes, _ = python_loop(records, args.permutations, args.seed)
    loop_s = time.perf_counter() - t0

    # Same treatment slopes (deterministic); p-values are not compared because each side draws
    # its own control shuffle, which moves the observed statistics by more than Monte Carlo error.
    slope_diff = np.max(np.abs(vec.slopes.sort_values("task")["treatment"].to_numpy() - np.array(loop_slopes)))
    print(json.dumps({
        "benchmark": "analysis_speed", "tasks": args.tasks, "points_per_task": len(M_VALUES) * SEEDS,
        "permutations": args.permutations, "statistics": len(STATISTICS), "control_draws": args.control_draws,
        "vectorized_s": round(vectorized_s, 4), "vectorized_one_draw_s": round(one_draw_s, 4),
        "python_loop_s": round(loop_s, 4), "speedup": round(loop_s / one_draw_s, 1),
        "draws_cost_ratio": round(vectorized_s / one_draw_s, 1),
        "max_abs_treatment_slope_diff": float(slope_diff),
    }))


if __name__ == "__main__":
    main()
