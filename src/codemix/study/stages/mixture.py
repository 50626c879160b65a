"""The mixture stage: which sequences of which stream a model trains on (setting × m, + baselines).

A mixture is keyed by its content: the sequences it takes from each source, the sequence
length, repetition and training-order seed, and the streams it reads (their identity, not
their length). Mixtures with the same content are one job, whatever they are called:
competitive, additive and baseline at m = 0 hold the same language tokens and no code, so
they are one mixture, one pretraining run per seed and one eval per benchmark, whose rows
are reported under each label.
"""

from __future__ import annotations

from codemix.config import StudyConfig
from codemix.data.mixture import MixtureSpec, build_mixture, mixture_name, mixture_sequences, mixture_specs
from codemix.study.jobs import Job, JobContext

__all__ = ["plan", "run", "spec_of"]


def plan(cfg: StudyConfig, streams: dict[str, Job]) -> list[Job]:
    """One job per distinct mixture; each job's labels name every (setting, m, baseline) it stands for."""
    jobs: dict[str, Job] = {}
    seq_len = cfg.data.seq_len
    for spec in mixture_specs(cfg.mixtures):
        sequences = mixture_sequences(spec, cfg.mixtures, cfg.data)
        key = {"sequences": sequences, "seq_len": seq_len, "max_repetition": cfg.mixtures.max_repetition,
               "seed": cfg.mixtures.seed}
        code = sum(n for s, n in sequences.items() if cfg.source(s).code)
        # Names leave the arm out: adding arms to a study must not rename (rerun) its mixtures; the
        # hash tells arms apart, the labels say which arm. Language-only mixtures are the same in
        # every arm (and at m = 0 in every setting).
        name = "lang-only-m0" if spec.m == 0 and not code else mixture_name(spec.setting, spec.m, spec.baseline)
        job = Job.create("mixture", name, f"{__name__}:run", key,
                         {f"stream:{n}": j for n, j in streams.items()},  # mixture.json names every source
                         disk_bytes=sum(sequences.values()) * 16.0)
        job = jobs.setdefault(job.id, job)
        label = {"setting": spec.setting, "m": spec.m, "baseline": spec.baseline, "arm": spec.arm}
        if label not in job.labels:
            job.labels.append(label)
    return list(jobs.values())


def spec_of(job: Job) -> MixtureSpec:
    """The spec a mixture job builds: its first label (identical mixtures share one job)."""
    lab = job.labels[0]
    return MixtureSpec(lab["setting"], float(lab["m"]), bool(lab["baseline"]), lab["arm"])


def run(ctx: JobContext) -> None:
    """Build one mixture index (``index.npy``, ``mixture.json``) from the streams."""
    build_mixture(spec_of(ctx.job), ctx.cfg.mixtures, ctx.cfg.data, ctx.stream_dirs(), ctx.out)

