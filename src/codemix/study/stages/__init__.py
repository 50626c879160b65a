"""The study's stages, one module each, in the order they run.

Every stage module owns its config section and its key, and has

- a builder that adds its jobs to a plan (:mod:`codemix.study.graph` calls them in order);
- ``run(ctx: JobContext)``: the job function, a function of explicit input and output
  paths (``ctx.inputs``, ``ctx.out``) that calls the stage's library code.
"""
