"""Benchmarks: the model handle, the execution sandbox, one module per benchmark, and the registry.

:data:`codemix.evals.registry.BENCHMARKS` is the one list of benchmarks; each implements
:class:`codemix.evals.benchmark.Benchmark`. Result rows follow :mod:`codemix.evals.rows`.
"""
