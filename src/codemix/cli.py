"""The ``codemix`` command.

Every command that reads a study file takes ``--set KEY=VALUE`` overrides (repeatable),
e.g. ``--set pretrain.max_steps=40 --set model.arch=t5``.

A command's module is imported when the command runs (:func:`_lazy`), so ``codemix --help``,
``codemix data`` and ``codemix analyze`` do not load torch and transformers. ``codemix eval``
takes its benchmarks and their options from the registry, which is imported when the
command line names ``eval`` (or the full parser is asked for).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from rich.console import Console
from rich.text import Text

from codemix.config import reference_markdown
from codemix.errors import CodemixError

EPILOG = "Data directory: $CODEMIX_DATA, else ~/.cache/codemix. Docs: README.md."


def _lazy(target: str) -> Callable[[argparse.Namespace], int]:
    """The command ``module:function``, imported when it runs."""
    module, _, func = target.partition(":")

    def call(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), func)(args)

    return call


def _study_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study YAML file, e.g. studies/demo.yaml")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study field, e.g. --set pretrain.max_steps=40 (repeatable)")


def build_parser(*, evals: bool = True) -> argparse.ArgumentParser:
    """The parser of every command; ``evals=False`` leaves out the benchmark subcommands of ``eval``."""
    parser = argparse.ArgumentParser(
        prog="codemix",
        description="Controlled code-mixture studies: build NL/code mixtures, pretrain, evaluate, analyze.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # data
    data = sub.add_parser("data", help="fetch and list datasets in the data directory")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    p = dsub.add_parser("fetch", help="download datasets (sha256-checked, resumable) or copy them from a mirror")
    p.add_argument("names", nargs="*", help="datasets to fetch (default: all); see `codemix data list`")
    p.add_argument("--from", dest="mirror", metavar="DIR", help="copy from a local mirror instead of downloading")
    p.add_argument("--dir", dest="data_dir", metavar="DIR", help="data directory (default: $CODEMIX_DATA or ~/.cache/codemix)")
    p.set_defaults(func=_lazy("codemix.data.fetch:cmd_fetch"))
    p = dsub.add_parser("list", help="show which dataset files are present, missing or corrupt")
    p.add_argument("--dir", dest="data_dir", metavar="DIR", help="data directory")
    p.add_argument("--no-verify", action="store_true", help="skip sha256 checks (faster)")
    p.set_defaults(func=_lazy("codemix.data.fetch:cmd_list"))

    # mix
    p = sub.add_parser("mix", help="train the tokenizer, tokenize sources, build every mixture of a study",
                       description="Build the study's tokenizer, token streams and mixture indexes (jobs of the "
                                   "study's graph, under <study.out>/jobs), then print target vs realized tokens "
                                   "per mixture. Work already done is reused.")
    _study_args(p)
    p.set_defaults(func=_lazy("codemix.study.commands:cmd_mix"))

    # train
    p = sub.add_parser("train", help="pretrain one model of a study (and build the data it needs)",
                       description="Pretrain the study's model (gpt or t5) for one mixture and seed, as a job of "
                                   "the study's graph: the data it needs is built first, an interrupted run "
                                   "resumes from its last checkpoint, a finished one is reused. Prints the final "
                                   "checkpoint directory last.")
    _study_args(p)
    p.add_argument("--setting", choices=["competitive", "additive"], required=True, help="mixture setting")
    p.add_argument("--m", type=float, required=True, help="code fraction of the mixture")
    p.add_argument("--seed", type=int, default=0, help="pretraining seed (default 0)")
    p.add_argument("--baseline", action="store_true", help="the language-only twin of the additive mixture at m")
    p.add_argument("--arm", help="the code composition (mixtures.arms), when the study has several")
    p.add_argument("--gpus", type=int, metavar="N",
                   help="train on N GPUs of this machine (torchrun with DDP, or FSDP2 with parallel.fsdp=true; "
                        "default: executor.gpus_per_job)")
    p.set_defaults(func=_lazy("codemix.study.commands:cmd_train"))

    # export
    p = sub.add_parser("export", help="write a checkpoint as a Hugging Face model directory",
                       description="Write a directory that transformers' AutoModelForCausalLM (gpt) or "
                                   "AutoModelForSeq2SeqLM (t5) loads as is, with the tokenizer.")
    p.add_argument("checkpoint", help="codemix checkpoint directory (or run directory: its latest checkpoint)")
    p.add_argument("out", help="output directory")
    p.set_defaults(func=_lazy("codemix.models.export:cmd_export"))

    # eval: one subcommand per benchmark of the registry
    ev = sub.add_parser("eval", help="evaluate a model on a benchmark",
                        description="Evaluate a codemix checkpoint or any local Hugging Face model on one "
                                    "benchmark. Rows carry the checkpoint's study, setting, m and seed.")
    if evals:
        importlib.import_module("codemix.study.commands").add_eval_parsers(ev)

    # analyze
    p = sub.add_parser("analyze", help="findings, regressions, permutation tests, figures and report from result rows",
                       description="Read tidy result rows (CSV/Parquet with columns study, setting, m, baseline, "
                                   "seed, task, subtask, metric, value, n) and write findings.csv, regressions.csv, "
                                   "permutation.csv and report/index.html. Several files are compared as arms "
                                   "(each named by its arm column, else its study name or file stem).")
    p.add_argument("results", nargs="+", help="results .csv or .parquet; several files: one arm each")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--permutations", type=int, default=10_000, help="permutations per test (default 10000)")
    p.add_argument("--control-draws", type=int, default=None,
                   help="control shuffles per permutation test; the report gives the median p (default 21)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutation tests and seed resamples")
    p.add_argument("--study-dir", help="study output directory: adds config, mixture table and loss curves")
    p.set_defaults(func=_lazy("codemix.analysis.report:cmd_analyze"))

    # study
    st = sub.add_parser("study", help="plan, run and inspect whole studies")
    ssub = st.add_subparsers(dest="study_command", required=True, metavar="ACTION")
    p = ssub.add_parser("plan", help="print the job graph with estimated compute and what is done")
    _study_args(p)
    p.set_defaults(func=_lazy("codemix.study.commands:cmd_plan"))
    p = ssub.add_parser("run", help="run every job not yet done (local or SLURM executor)",
                        description="Run every job of the study that is not done. Several drivers may run one "
                                    "study at once (e.g. a login node and a laptop on one file system): each job "
                                    "runs once, in whichever driver takes its lock first.")
    _study_args(p)
    p.add_argument("--executor", choices=["local", "slurm", "submitit-local"], help="override executor.kind")
    p.set_defaults(func=_lazy("codemix.study.commands:cmd_run"))
    p = ssub.add_parser("status", help="counts per stage and state, and each failure's error")
    _study_args(p)
    p.add_argument("--export", metavar="FILE", help="write all result rows to FILE (.csv or .parquet)")
    p.set_defaults(func=_lazy("codemix.study.commands:cmd_status"))

    p = sub.add_parser("config-reference", help="print the study YAML reference (every field and its meaning)")
    p.set_defaults(func=lambda args: print(reference_markdown()) or 0)
    return parser


def main(argv: list[str] | None = None) -> int:
    if not sys.stdout.isatty():  # logs and pipes: rich would wrap every table at 80 columns
        os.environ.setdefault("COLUMNS", "120")
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser(evals=bool(argv) and argv[0] == "eval")
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CodemixError as err:
        Console(stderr=True).print(Text("error: ", style="bold red") + Text(str(err)))
        return 2
    except KeyboardInterrupt:
        print("interrupted; completed artifacts are kept, rerun to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
