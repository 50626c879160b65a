"""MBPP code generation in Python, Rust and Go, judged by execution, scored with pass@k.

Problems are MultiPL-E records (Cassano et al. 2023): ``name, language, prompt, tests,
stop_tokens``. A sample's program is ``prompt + completion + tests`` and it passes when
it runs to the end in the sandbox (:mod:`codemix.evals.execution`). Built in:

- MultiPL-E's MBPP translations to Python, Rust and Go (``multipl_e/mbpp-{py,rs,go}-reworded``),
  the default, so all three languages share one prompt style;
- the original MBPP (Austin et al. 2021) in Python, test split (task_id 11-510) or its
  sanitized subset (``problems="mbpp"`` / ``"mbpp-sanitized"``), with reference solutions,
  which ``--reference`` runs through the harness as a check of the harness itself;
- any MultiPL-E-format JSONL file (``problems=PATH``), e.g. HumanEval translations.

pass@k is the unbiased estimator of Chen et al. (2021), per problem, averaged over problems.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import operator
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from codemix.config import MbppConfig, StudyConfig, normalize_language
from codemix.data.fetch import data_path
from codemix.errors import DataError
from codemix.evals.benchmark import EvalContext
from codemix.evals.execution import OUTCOMES, ExecResult, Limits, Sandbox, default_cache_dir
from codemix.evals.handle import Handle
from codemix.io import atomic_write_text

__all__ = [
    "Mbpp",
    "Problem",
    "build_program",
    "load_mbpp",
    "load_multipl_e",
    "pass_at_k",
    "read_completions",
    "score",
    "select_problems",
    "truncate",
]

TASK = "mbpp"
MBPP_TEST_IDS = range(11, 511)
#: Built-in MultiPL-E file per language (relative to the data directory).
MULTIPL_E_FILES = {lang: f"multipl_e/mbpp-{lang}-reworded.jsonl.gz" for lang in ("py", "rs", "go")}
BUILTIN_SETS = ("mbpp", "mbpp-sanitized")
#: Stop sequences for original-MBPP prompts (as in bigcode-evaluation-harness's MBPP task).
MBPP_STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")
SAMPLES_FILE = "mbpp_samples.jsonl"


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One problem in MultiPL-E form; ``reference`` is a known-good completion, when there is one."""

    name: str
    language: str
    prompt: str
    tests: str
    stop_tokens: tuple[str, ...]
    reference: str | None = None

    @property
    def key(self) -> str:
        """Identity across languages: ``mbpp_<task_id>`` for MBPP problems, else the name."""
        m = re.match(r"(mbpp_\d+)_", self.name)
        return m.group(1) if m else self.name


def build_program(problem: Problem, completion: str) -> str:
    """The program that is run: ``prompt + completion + tests`` (the MultiPL-E convention)."""
    return problem.prompt + completion + problem.tests


def truncate(completion: str, stop_tokens: Iterable[str]) -> str:
    """``completion`` cut at the first occurrence of any stop sequence."""
    cut = len(completion)
    for s in stop_tokens:
        if s and (i := completion.find(s)) != -1:
            cut = min(cut, i)
    return completion[:cut]


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    with _open_text(path) as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{i}: not JSON ({e}); expected one JSON object per line") from e
    return rows


def _data_file(relpath: str, data_dir: str | Path | None) -> Path:
    if data_dir is not None:
        path = Path(data_dir) / relpath
        if not path.exists():
            raise DataError(f"missing data file {path}; run `codemix data fetch {relpath.split('/')[0]}`")
        return path

    return data_path(relpath)


def load_multipl_e(path: str | Path) -> list[Problem]:
    """Problems of a MultiPL-E-format JSONL(.gz) file (fields ``name, language, prompt, tests, stop_tokens``)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"problems file {path} does not exist; expected MultiPL-E JSONL "
                        "(name, language, prompt, tests, stop_tokens)")
    problems, errors = [], []
    for i, row in enumerate(_read_jsonl(path), 1):
        missing = [f for f in ("name", "language", "prompt", "tests") if f not in row]
        if missing:
            errors.append(f"line {i}: missing {', '.join(missing)}")
            continue
        try:
            lang = normalize_language(row["language"])
        except ValueError as e:
            errors.append(f"line {i}: {e}")
            continue
        problems.append(Problem(row["name"], lang, row["prompt"], row["tests"], tuple(row.get("stop_tokens") or ())))
    if errors:
        raise DataError(f"{path} is not a valid MultiPL-E problems file:\n  " + "\n  ".join(errors[:20]))
    return problems


def _entry_point(code: str, tests: Sequence[str]) -> str:
    names = re.findall(r"^def\s+(\w+)", code, flags=re.M)
    return next((n for n in names if any(re.search(rf"\b{n}\s*\(", t) for t in tests)), names[0] if names else "f")


def load_mbpp(split: str = "test", *, data_dir: str | Path | None = None) -> list[Problem]:
    """Original MBPP in Python with reference solutions: ``test`` (task_id 11-510) or ``sanitized`` (its subset).

    The prompt is the problem statement and one test in a docstring (as in
    bigcode-evaluation-harness); the tests are MBPP's setup code and asserts.
    """
    if split not in ("test", "sanitized"):
        raise ValueError(f"split must be 'test' or 'sanitized', not {split!r}")
    if split == "test":
        rows = _read_jsonl(_data_file("mbpp/mbpp.jsonl.gz", data_dir))
        records = [(r["task_id"], r["text"], r["code"], r["test_setup_code"], r["test_list"]) for r in rows]
    else:
        with _open_text(_data_file("mbpp/sanitized-mbpp.json.gz", data_dir)) as f:
            rows = json.load(f)
        records = [(r["task_id"], r["prompt"], r["code"], "\n".join(r["test_imports"]), r["test_list"]) for r in rows]
    problems = []
    for task_id, text, code, setup, tests in sorted(records):
        if task_id not in MBPP_TEST_IDS:
            continue
        prompt = f'"""\n{text.strip()}\n{tests[0]}\n"""\n'
        # Setup code comes after the solution: it may use the solution's classes (task 367).
        body = "\n\n" + (setup.strip() + "\n" if setup.strip() else "") + "\n".join(tests) + "\n"
        name = f"mbpp_{task_id}_{_entry_point(code, tests)}"
        problems.append(Problem(name, "py", prompt, body, MBPP_STOP, reference=code))
    return problems


def select_problems(cfg: MbppConfig, *, data_dir: str | Path | None = None) -> dict[str, list[Problem]]:
    """The problems to evaluate, per language, after ``problems``, ``common_only`` and ``limit``."""
    by_lang: dict[str, list[Problem]] = {}
    if cfg.problems in BUILTIN_SETS:
        if cfg.langs != ["py"] and set(cfg.langs) - {"py"}:
            warnings.warn(f"problems={cfg.problems} is Python only; ignoring langs {cfg.langs}", stacklevel=2)
        by_lang["py"] = load_mbpp("test" if cfg.problems == "mbpp" else "sanitized", data_dir=data_dir)
    elif cfg.problems is not None:
        for p in load_multipl_e(cfg.problems):
            if p.language in cfg.langs:
                by_lang.setdefault(p.language, []).append(p)
        if not by_lang:
            raise DataError(f"{cfg.problems} has no problems in {', '.join(cfg.langs)}")
    else:
        for lang in cfg.langs:
            if lang not in MULTIPL_E_FILES:
                raise DataError(f"no built-in MBPP problems for {lang}; pass a MultiPL-E file with --problems")
            by_lang[lang] = load_multipl_e(_data_file(MULTIPL_E_FILES[lang], data_dir))
    if cfg.common_only and len(by_lang) > 1:
        common = set.intersection(*({p.key for p in ps} for ps in by_lang.values()))
        by_lang = {lang: [p for p in ps if p.key in common] for lang, ps in by_lang.items()}
        order = {key: i for i, key in enumerate(sorted(common, key=_natural))}
        by_lang = {lang: sorted(ps, key=lambda p: order[p.key]) for lang, ps in by_lang.items()}
    if cfg.limit is not None:
        by_lang = {lang: ps[: cfg.limit] for lang, ps in by_lang.items()}
    return by_lang


def _natural(key: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", key))


# ----------------------------------------------------------------------------- pass@k


def _pass_at_k_iv(n: int, c: int, k: int) -> tuple[int, int, int]:
    try:
        n, c, k = (operator.index(v) for v in (n, c, k))
    except TypeError:
        raise ValueError(f"n, c and k must be integers; found n={n!r}, c={c!r}, k={k!r}") from None
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n; found c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n; found k={k}, n={n}")
    return n, c, k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct samples out of ``n`` (Chen et al. 2021, eq. 1).

    ``1 - C(n-c, k) / C(n, k)``, computed as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)``, which never
    forms the (huge) binomial coefficients.
    """
    n, c, k = _pass_at_k_iv(n, c, k)
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


# ----------------------------------------------------------------------------- generation and scoring


Completions = dict[tuple[str, str], list[str]]
"""(language, problem name) -> completions."""


def generate(handle: Any, problems: dict[str, list[Problem]], cfg: MbppConfig, *, progress: bool = True) -> Completions:
    """``cfg.n`` completions per problem from a model handle, cut at each problem's stop tokens."""
    out: Completions = {}
    groups: dict[tuple[str, ...], list[Problem]] = defaultdict(list)
    for ps in problems.values():
        for p in ps:
            groups[p.stop_tokens].append(p)
    total = sum(len(g) for g in groups.values())
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("generating", total=total)
        for stop, group in groups.items():
            for i in range(0, len(group), cfg.batch_size):
                batch = group[i: i + cfg.batch_size]
                texts = handle.generate([p.prompt for p in batch], max_new_tokens=cfg.max_new_tokens,
                                        stop=list(stop) or None, temperature=cfg.sampling_temperature, top_p=cfg.top_p,
                                        n=cfg.n, seed=cfg.seed)
                for p, samples in zip(batch, texts, strict=True):
                    out[(p.language, p.name)] = [truncate(s, stop) for s in samples]
                bar.advance(task, len(batch))
    return out


def read_completions(path: str | Path) -> Completions:
    """Completions generated elsewhere: JSONL lines of ``name, language, completion``
    (``completions``: a list, is accepted too, as bigcode-evaluation-harness writes)."""
    out: Completions = defaultdict(list)
    for i, row in enumerate(_read_jsonl(Path(path)), 1):
        if "name" not in row or "language" not in row or not ({"completion", "completions"} & row.keys()):
            raise DataError(f"{path}:{i}: expected fields name, language, completion; found {sorted(row)}")
        texts = row["completions"] if "completions" in row else [row["completion"]]
        out[(normalize_language(row["language"]), row["name"])].extend(texts)
    return dict(out)


def score(problems: dict[str, list[Problem]], completions: Completions, cfg: MbppConfig, *, out_dir: str | Path,
          sandbox: Sandbox | None = None, progress: bool = True) -> list[dict]:
    """Run every completion, write per-sample JSONL to ``out_dir``, return tidy rows.

    Completions are used as given (generation cuts them at stop tokens; reference solutions must
    not be cut). Problems without completions are skipped; pass@k uses the problems with at least k samples.
    """
    jobs: list[tuple[Problem, int, str]] = []
    for lang, ps in problems.items():
        for p in ps:
            for j, text in enumerate(completions.get((lang, p.name), [])):
                jobs.append((p, j, text))
    own = sandbox is None
    sb = sandbox or Sandbox(limits=Limits(timeout_s=cfg.timeout_s), workers=cfg.workers,
                            cache_dir=default_cache_dir())
    try:
        results = sb.run_many([(p.language, build_program(p, text)) for p, _, text in jobs], progress=progress)
    finally:
        if own:
            sb.close()

    out_dir = Path(out_dir)
    lines = [json.dumps({"task": TASK, "language": p.language, "name": p.name, "sample": j, "completion": text,
                         "outcome": r.outcome, "returncode": r.returncode, "stderr_tail": r.stderr_tail,
                         "duration_s": round(r.duration_s, 4), "cached": r.cached})
             for (p, j, text), r in zip(jobs, results, strict=True)]
    atomic_write_text(out_dir / SAMPLES_FILE, "".join(line + "\n" for line in lines))
    return _rows(jobs, results, cfg)


def _rows(jobs: list[tuple[Problem, int, str]], results: list[ExecResult], cfg: MbppConfig) -> list[dict]:
    per_problem: dict[str, dict[str, list[int]]] = defaultdict(dict)  # lang -> name -> [n, c]
    outcomes: dict[str, Counter] = defaultdict(Counter)
    for (p, _, _), r in zip(jobs, results, strict=True):
        nc = per_problem[p.language].setdefault(p.name, [0, 0])
        nc[0] += 1
        nc[1] += r.passed
        outcomes[p.language][r.outcome] += 1
    rows = []
    for lang, counts in per_problem.items():
        for k in sorted(set(cfg.k)):
            vals = [pass_at_k(n, c, k) for n, c in counts.values() if n >= k]
            if len(vals) < len(counts):
                warnings.warn(f"{lang}: {len(counts) - len(vals)} problems have fewer than {k} samples; "
                              f"pass@{k} leaves them out", stacklevel=2)
            if vals:
                rows.append({"task": TASK, "subtask": lang, "metric": f"pass@{k}",
                             "value": sum(vals) / len(vals), "n": len(vals), "question_type": "generative",
                             "primary": k == min(cfg.k)})
        total = sum(outcomes[lang].values())
        for outcome in OUTCOMES:
            rows.append({"task": TASK, "subtask": lang, "metric": f"frac_{outcome}",
                         "value": outcomes[lang][outcome] / total, "n": total})
    return rows


class Mbpp:
    """The ``mbpp`` benchmark (registry entry)."""

    needs_heldout = False
    finetunes = False

    def __init__(self, config: type[MbppConfig]):
        self.config = config

    def evaluate(self, handle: Handle | None, cfg: MbppConfig, ctx: EvalContext) -> list[dict[str, Any]]:
        """Generate with the model (or take ``cfg.completions``), run in the sandbox, score pass@k.

        Returns tidy rows (``task="mbpp", subtask=<lang>, metric="pass@<k>" | "frac_<outcome>", value, n``)
        and writes per-sample results to ``ctx.out_dir/mbpp_samples.jsonl``.
        """
        problems = select_problems(cfg)
        if cfg.completions == "reference":
            completions = {(p.language, p.name): [p.reference] for ps in problems.values() for p in ps if p.reference}
            if not completions:
                raise DataError(f"problems {cfg.problems!r} have no reference solutions (only mbpp and "
                                "mbpp-sanitized do); pass --problems mbpp")
        elif cfg.completions:
            completions = read_completions(cfg.completions)
            problems = _with_completions(problems, completions, cfg.completions)
        else:
            assert handle is not None
            completions = generate(handle, problems, cfg, progress=ctx.progress)
        return score(problems, completions, cfg, out_dir=ctx.out_dir, progress=ctx.progress)

    def needs_model(self, cfg: MbppConfig) -> bool:
        return cfg.completions is None

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = ("MBPP / MultiPL-E code generation in Python, Rust and Go, run in the sandbox and "
                              "scored with pass@k; or a check of the harness on reference solutions.")
        parser.add_argument("--reference", action="store_true",
                            help="run MBPP's reference solutions (test split, Python) through the harness: a "
                                 "harness check (no --model)")
        parser.add_argument("--completions", metavar="FILE.jsonl",
                            help="evaluate completions generated elsewhere (lines of name, language, completion)")
        parser.add_argument("--langs", help="comma-separated languages (default py,rs,go)")
        parser.add_argument("--n", type=int, help="samples per problem (default 1)")
        parser.add_argument("--k", help="comma-separated k of pass@k (default 1)")
        parser.add_argument("--limit", type=int, help="at most N problems per language")
        parser.add_argument("--problems", metavar="FILE",
                            help="MultiPL-E-format JSONL to use instead of the built-in problems (or mbpp, "
                                 "mbpp-sanitized)")
        parser.add_argument("--common-only", action="store_true", default=None,
                            help="only problems present in every chosen language")
        parser.add_argument("--temperature", type=float, help="sampling temperature (default 0 for n=1, else 0.8)")
        parser.add_argument("--timeout", type=float, help="seconds per program run (default 10)")
        parser.add_argument("--workers", type=int, help="parallel sandbox workers (default: one per CPU)")

    def options(self, args: argparse.Namespace) -> dict[str, Any]:
        values = {
            "langs": args.langs.split(",") if args.langs else None,
            "n": args.n,
            "k": [int(x) for x in args.k.split(",")] if args.k else None,
            "limit": args.limit,
            "problems": args.problems,
            "common_only": args.common_only,
            "temperature": args.temperature,
            "timeout_s": args.timeout,
            "workers": args.workers,
            "completions": args.completions,
        }
        if args.reference:
            values.update(completions="reference", problems=args.problems or "mbpp", langs=["py"])
        return values

    def data_files(self, cfg: MbppConfig) -> list[str]:
        if cfg.problems in BUILTIN_SETS:
            return ["mbpp/mbpp.jsonl.gz" if cfg.problems == "mbpp" else "mbpp/sanitized-mbpp.json.gz"]
        return [cfg.problems] if cfg.problems else [MULTIPL_E_FILES[lang] for lang in cfg.langs]

    def flops(self, cfg: MbppConfig, n_params: int, study: StudyConfig) -> float:
        return 2.0 * n_params * (cfg.limit or 400) * len(cfg.langs) * cfg.n * 512

    def report(self, rows: list[dict[str, Any]], cfg: MbppConfig, ctx: EvalContext, console: Console) -> int:
        what = {"reference": "reference solutions", None: "model"}.get(cfg.completions, cfg.completions)
        _print_table(rows, f"MBPP pass@k: {what}", console)
        console.print(f"per-sample results: {ctx.out_dir / SAMPLES_FILE}")
        return _report_reference(ctx.out_dir / SAMPLES_FILE, console) if cfg.completions == "reference" else 0


def _with_completions(problems: dict[str, list[Problem]], completions: Completions,
                      path: str) -> dict[str, list[Problem]]:
    """The problems that have completions; a file matching none is an error, a few strays a warning."""
    if not completions:
        raise DataError(f"{path} holds no completions; expected JSONL lines of name, language, completion")
    known = {(p.language, p.name) for ps in problems.values() for p in ps}
    unknown = sorted(set(completions) - known)
    if unknown and len(unknown) == len(completions):
        raise DataError(f"none of the completions in {path} match a problem (e.g. {unknown[0]}); pass the "
                        "matching --problems file or --langs")
    if unknown:
        Console(stderr=True).print(f"[yellow]{len(unknown)} completions name no selected problem (e.g. {unknown[0]})")
    return {lang: [p for p in ps if (lang, p.name) in completions] for lang, ps in problems.items()}


def _print_table(rows: list[dict], title: str, console: Console) -> None:
    langs = list(dict.fromkeys(r["subtask"] for r in rows))
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    table = Table(title=title)
    table.add_column("language")
    table.add_column("problems", justify="right")
    for m in metrics:
        table.add_column(m.replace("frac_", "").replace("_error", ""), justify="right")
    for lang in langs:
        got = {r["metric"]: r for r in rows if r["subtask"] == lang}
        n = next((r["n"] for r in got.values() if r["metric"].startswith("pass@")), "")
        table.add_row(lang, str(n), *(f"{got[m]['value']:.3f}" if m in got else "" for m in metrics))
    console.print(table)


def _report_reference(samples: Path, console: Console) -> int:
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    failures = [r for r in rows if r["outcome"] != "passed"]
    rate = 1 - len(failures) / max(1, len(rows))
    for r in failures:
        last = next((ln for ln in reversed(r["stderr_tail"].splitlines()) if ln.strip()), "")
        console.print(f"  {r['name']}: {r['outcome']}: {last[:160]}")
    ok = rate >= 0.99
    console.print(f"reference solutions: {len(rows) - len(failures)}/{len(rows)} passed ({rate:.1%}); "
                  + ("harness OK" if ok else "[red]below 99%: the harness is broken on this machine"))
    return 0 if ok else 1
