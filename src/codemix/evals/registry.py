"""The benchmark registry: the one list of benchmarks.

One entry per benchmark (:data:`BENCHMARKS`), each implementing
:class:`codemix.evals.benchmark.Benchmark`: its config section (a
:class:`codemix.config.BenchmarkConfig` subclass, which names the section), how to evaluate
a model, its command-line options, what it reads and roughly what it costs. The study's
``evals`` schema, ``codemix eval NAME``, the planner and ``study status`` all derive from
this list: adding a benchmark is one module plus one line here.
"""

from __future__ import annotations

from codemix.config import (
    AdaptEvalConfig,
    BigbenchEvalConfig,
    CogsEvalConfig,
    CogsVfEvalConfig,
    MbppConfig,
    MbppTransferEvalConfig,
    PassivizationEvalConfig,
    PerplexityEvalConfig,
    SolutionsEvalConfig,
    VulnEvalConfig,
)
from codemix.evals import adapt, bigbench, cogs, mbpp, perplexity, solutions, transfer, vuln
from codemix.evals.benchmark import Benchmark

__all__ = ["BENCHMARKS"]

#: name -> benchmark. The one place a benchmark is registered.
BENCHMARKS: dict[str, Benchmark] = {b.config.section: b for b in (
    cogs.Cogs(CogsEvalConfig, cogs.COGS),
    cogs.Cogs(CogsVfEvalConfig, cogs.COGS_VF),
    cogs.Cogs(PassivizationEvalConfig, cogs.PASSIVIZATION),
    bigbench.Bigbench(BigbenchEvalConfig),
    perplexity.Perplexity(PerplexityEvalConfig),
    mbpp.Mbpp(MbppConfig),
    solutions.Solutions(SolutionsEvalConfig),
    transfer.MbppTransfer(MbppTransferEvalConfig),
    adapt.Adapt(AdaptEvalConfig),
    vuln.Vuln(VulnEvalConfig),
)}
