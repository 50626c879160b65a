"""Statistics, figures and the report of a code-mixture study (Petty et al. 2024, arXiv 2409.04556).

- :mod:`codemix.analysis.inference`: Holm / Benjamini–Hochberg adjusted p-values, Wilson intervals.
- :mod:`codemix.analysis.noise`: seed noise: signal-to-noise ratio, sign stability, detectable slope.
- :mod:`codemix.analysis.regression`: OLS of each metric on the code fraction m, per group.
- :mod:`codemix.analysis.permutation`: §5.1 permutation tests of treatment vs control slopes.
- :mod:`codemix.analysis.arms`: arms and studies side by side (the m × arm interaction).
- :mod:`codemix.analysis.findings`: the answer first: each benchmark's headline slope, in words.
- :mod:`codemix.analysis.plots`: the paper's figures (value vs m, slope densities, null distributions).
- :mod:`codemix.analysis.report`: ``analyze`` / ``codemix analyze``: CSVs, LaTeX tables, HTML and Markdown.
"""
