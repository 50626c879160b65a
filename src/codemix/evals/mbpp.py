"""MBPP code generation in Python, Rust and Go, judged by execution, scored with pass@k.

Problems are MultiPL-E records (Cassano et al. 2023): ``name, language, prompt, tests,
stop_tokens``. A sample's program is ``prompt + completion + tests`` and it passes when
it runs to the end in the sandbox (:mod:`codemix.evals.execution`). Built in:

- MultiPL-E's MBPP translations to Python, Rust and Go (``multipl_e/mbpp-{py,rs,go}-reworded``),
  the default, so all three languages share one prompt style;
- the original MBPP (Austin et al. 2021) in Python, test split (task_id 11-510) or its
  sanitized subset (``problems="mbpp"`` / ``"mbpp-sanitized"``), with reference solutions,
  which ``--reference`` runs through the harness as a check of the harness itself;
- HumanEval-X (Zheng et al. 2023) in Python, Rust and Go (``problems="humaneval-x"``), the same 164
  problems in each language with canonical solutions; programs are assembled as CodeGeeX's harness
  assembles them (:func:`build_program`). Its Rust harness has the crates ``rand``, ``regex`` and
  ``md5``, which no registry here provides: a program that still uses one gets the outcome
  ``needs_crate`` (not run; it does not pass) instead of a compile error;
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
from codemix.errors import DataError, ToolchainError
from codemix.evals import execution
from codemix.evals.benchmark import EvalContext
from codemix.evals.execution import ExecResult, Limits, Sandbox, default_cache_dir, go_package_installed
from codemix.evals.handle import Handle
from codemix.io import atomic_write_text

__all__ = [
    "OUTCOMES",
    "Mbpp",
    "Problem",
    "build_program",
    "load_humaneval_x",
    "load_mbpp",
    "read_jsonl",
    "load_multipl_e",
    "missing_crates",
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
PYTHON_SETS = ("mbpp", "mbpp-sanitized")
BUILTIN_SETS = (*PYTHON_SETS, "humaneval-x")
#: The sandbox's outcomes, and HumanEval-X's Rust programs that need a crate (never run).
OUTCOMES = (*execution.OUTCOMES, "needs_crate")
#: Stop sequences for original-MBPP prompts (as in bigcode-evaluation-harness's MBPP task).
MBPP_STOP = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```")
SAMPLES_FILE = "mbpp_samples.jsonl"


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class Problem:
    """One problem in MultiPL-E form; ``reference`` is a known-good completion, when there is one.

    The model sees ``prompt``; the program run is ``header + prompt + completion + tests``.
    """

    name: str
    language: str
    prompt: str
    tests: str
    stop_tokens: tuple[str, ...]
    reference: str | None = None
    header: str = ""
    """Program text before the prompt that the model does not see (HumanEval-X's Go package and test
    imports, Rust's empty ``main``)."""
    harness: str = "multipl_e"
    """How the program is assembled: ``multipl_e`` or ``humaneval_x`` (see :func:`build_program`)."""

    @property
    def key(self) -> str:
        """Identity across languages: ``mbpp_<task_id>`` for MBPP problems, else the name."""
        m = re.match(r"(mbpp_\d+)_", self.name)
        return m.group(1) if m else self.name


def build_program(problem: Problem, completion: str) -> str:
    """The program that is run: ``header + prompt + completion + tests`` (MultiPL-E's convention, with
    HumanEval-X's header).

    HumanEval-X programs are fixed up as CodeGeeX's harness fixes them, since Go rejects unused or
    repeated imports: in Go the prompt's import block is replaced by the packages, of the prompt's
    and of the harness's usual ones (``fmt, math, strings, ...``), that the prompt's code and the
    completion use and the header does not import. In Rust, the ``use`` lines of the harness's crates
    (``rand, regex, md5``) go when the program does not use that crate (:func:`missing_crates`).
    """
    if problem.harness == "humaneval_x" and problem.language == "go":
        return _humaneval_x_go(problem, completion)
    program = problem.header + problem.prompt + completion + problem.tests
    if problem.harness == "humaneval_x" and problem.language == "rs":
        unused = set(RUST_CRATES) - set(_rust_crates_used(program))
        program = "".join(line for line in program.splitlines(keepends=True)
                          if not ((m := _RUST_CRATE_USE.match(line)) and m.group(1) in unused))
    return program


def missing_crates(problem: Problem, program: str) -> list[str]:
    """The crates of HumanEval-X's Rust harness (``rand, regex, md5``) that ``program`` (from
    :func:`build_program`) uses: none is available here, so it cannot be judged."""
    if problem.harness != "humaneval_x" or problem.language != "rs":
        return []
    return _rust_crates_used(program)


#: CodeGeeX's HumanEval-X harness: the crates its Rust programs link, and the Go packages it imports when used.
RUST_CRATES = {"rand": r"\brand::|\bRng\b", "regex": r"\bregex::|\bRegex\b", "md5": r"\bmd5::"}
GO_USUAL_PACKAGES = ("math", "strings", "fmt", "strconv", "time", "bytes", "regexp", "sort", "math/rand", "crypto/md5")
_RUST_CRATE_USE = re.compile(r"^\s*use\s+(?:::)?(" + "|".join(RUST_CRATES) + r")\b[^;]*;[ \t]*\n?")
# Comments and string literals of C-like code (Rust, Go): where a name mentioned is not a use.
_COMMENT_OR_STRING = re.compile(r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\])*\"|`[^`]*`|'(?:\\.|[^'\\\n])'", re.DOTALL)
_GO_IMPORTS = re.compile(r"\s*import\s*(\([^)]*\)|\"[^\"\n]*\")[ \t]*\n?")


def _code_only(text: str) -> str:
    """``text`` with comments blanked and string literals emptied."""
    return _COMMENT_OR_STRING.sub(lambda m: " " if m.group()[0] == "/" else m.group()[0] * 2, text)


def _rust_crates_used(program: str) -> list[str]:
    code = _code_only("".join(line for line in program.splitlines(keepends=True) if not _RUST_CRATE_USE.match(line)))
    return [crate for crate, pattern in RUST_CRATES.items() if re.search(pattern, code)]


def _humaneval_x_go(problem: Problem, completion: str) -> str:
    m = _GO_IMPORTS.match(problem.prompt)
    prompt_imports = re.findall(r'"([^"]+)"', m.group(1)) if m else []
    body = problem.prompt[m.end():] if m else problem.prompt
    have = set(re.findall(r'"([^"]+)"', problem.header))
    code = _code_only(body + completion)
    needed = [pkg for pkg in dict.fromkeys([*prompt_imports, *GO_USUAL_PACKAGES])
              if pkg not in have and re.search(rf"\b{re.escape(pkg.rsplit('/', 1)[-1])}\.", code)]
    imports = "import (\n" + "".join(f'    "{pkg}"\n' for pkg in needed) + ")\n" if needed else ""
    return problem.header + imports + body + completion + problem.tests


def truncate(completion: str, stop_tokens: Iterable[str]) -> str:
    """``completion`` cut at the first occurrence of any stop sequence."""
    cut = len(completion)
    for s in stop_tokens:
        if s and (i := completion.find(s)) != -1:
            cut = min(cut, i)
    return completion[:cut]


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    """The objects of a JSONL(.gz) file; a line that is not JSON is a DataError naming it."""
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
    for i, row in enumerate(read_jsonl(path), 1):
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
        rows = read_jsonl(_data_file("mbpp/mbpp.jsonl.gz", data_dir))
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


#: HumanEval-X's file per language (SOURCES.md); the same 164 problems in each.
HUMANEVAL_X_LANGS = {"python": "py", "rust": "rs", "go": "go", "cpp": "cpp", "java": "java", "js": "js"}
HUMANEVAL_X_STOP = {"py": ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"),
                    "rs": ("\n}\n\n", "\n#[cfg(test)]", "\nfn main"), "go": ("\n}\n\n", "\nfunc Test")}


def _humaneval_x_file(lang: str) -> str:
    name = next((n for n, c in HUMANEVAL_X_LANGS.items() if c == HUMANEVAL_X_LANGS.get(lang, lang)), None)
    if name is None:
        raise DataError(f"HumanEval-X has no language {lang!r}; expected one of {', '.join(HUMANEVAL_X_LANGS)}")
    return f"humaneval_x/humaneval_{name}.jsonl.gz"


def load_humaneval_x(lang: str, *, data_dir: str | Path | None = None) -> list[Problem]:
    """The 164 HumanEval-X problems of one language (``python, rust, go, cpp, java, js`` or ``py, rs``),
    with their canonical solutions as ``reference``; ``name`` is ``humaneval_<n>`` in every language.

    The prompt is what a model sees before the solution: Python's and Go's ``prompt`` (imports,
    docstring and signature); in Rust the ``use`` lines, the problem comment and the signature.
    Programs follow CodeGeeX's harness (:func:`build_program`): Go runs as ``package main`` under
    ``go test`` with testify; Rust adds an empty ``main`` and runs its ``#[cfg(test)]`` module.
    """
    path = _humaneval_x_file(lang)
    code = HUMANEVAL_X_LANGS.get(lang, lang)
    problems = []
    for row in read_jsonl(_data_file(path, data_dir)):
        number = row["task_id"].split("/")[-1]
        header, prompt, tests = "", row["prompt"], row["test"]
        if code == "py":
            tests = "\n" + tests
        elif code == "rs":  # the imports, the comment, then the signature: the order a Rust file has
            signature = re.search(r"^(?:pub\s+)?fn\s", row["declaration"], re.MULTILINE)
            if signature is None:
                raise DataError(f"{path}: {row['task_id']} has no `fn` in its declaration")
            uses, signature = row["declaration"][: signature.start()], row["declaration"][signature.start():]
            header, prompt = "fn main(){}\n", uses.rstrip("\n") + "\n" + row["prompt"] + signature
        elif code == "go":
            header = row["test_setup"].rstrip("\n") + "\n\n"
        problems.append(Problem(f"humaneval_{number}", code, prompt, tests, HUMANEVAL_X_STOP.get(code, ()),
                                reference=row["canonical_solution"], header=header, harness="humaneval_x"))
    return problems


def select_problems(cfg: MbppConfig, *, data_dir: str | Path | None = None) -> dict[str, list[Problem]]:
    """The problems to evaluate, per language, after ``problems``, ``common_only`` and ``limit``."""
    by_lang: dict[str, list[Problem]] = {}
    if cfg.problems in PYTHON_SETS:
        if cfg.langs != ["py"] and set(cfg.langs) - {"py"}:
            warnings.warn(f"problems={cfg.problems} is Python only; ignoring langs {cfg.langs}", stacklevel=2)
        by_lang["py"] = load_mbpp("test" if cfg.problems == "mbpp" else "sanitized", data_dir=data_dir)
    elif cfg.problems == "humaneval-x":
        by_lang = {lang: load_humaneval_x(lang, data_dir=data_dir) for lang in cfg.langs}
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
    for i, row in enumerate(read_jsonl(Path(path)), 1):
        if "name" not in row or "language" not in row or not ({"completion", "completions"} & row.keys()):
            raise DataError(f"{path}:{i}: expected fields name, language, completion; found {sorted(row)}")
        texts = row["completions"] if "completions" in row else [row["completion"]]
        out[(normalize_language(row["language"]), row["name"])].extend(texts)
    return dict(out)


def score(problems: dict[str, list[Problem]], completions: Completions, cfg: MbppConfig, *, out_dir: str | Path,
          sandbox: Sandbox | None = None, progress: bool = True, task: str = TASK) -> list[dict]:
    """Run every completion, write per-sample JSONL to ``out_dir``, return tidy rows.

    Completions are used as given (generation cuts them at stop tokens; reference solutions must
    not be cut). Problems without completions are skipped; pass@k uses the problems with at least k samples.
    """
    jobs: list[tuple[Problem, int, str]] = []
    for lang, ps in problems.items():
        for p in ps:
            for j, text in enumerate(completions.get((lang, p.name), [])):
                jobs.append((p, j, text))
    programs = [build_program(p, text) for p, _, text in jobs]
    crates = [missing_crates(p, prog) for (p, _, _), prog in zip(jobs, programs, strict=True)]
    runnable = [i for i, c in enumerate(crates) if not c]
    _check_go_libraries([jobs[i][0] for i in runnable])
    own = sandbox is None
    sb = sandbox or Sandbox(limits=Limits(timeout_s=cfg.timeout_s), workers=cfg.workers,
                            cache_dir=default_cache_dir())
    try:
        ran = sb.run_many([(jobs[i][0].language, programs[i]) for i in runnable], progress=progress)
    finally:
        if own:
            sb.close()
    results = [ExecResult("needs_crate", None, f"needs the crate(s) {', '.join(c)}, not available here: not run")
               for c in crates]
    for i, r in zip(runnable, ran, strict=True):
        results[i] = r

    out_dir = Path(out_dir)
    lines = [json.dumps({"task": task, "language": p.language, "name": p.name, "sample": j, "completion": text,
                         "outcome": r.outcome, "returncode": r.returncode, "stderr_tail": r.stderr_tail,
                         "duration_s": round(r.duration_s, 4), "cached": r.cached})
             for (p, j, text), r in zip(jobs, results, strict=True)]
    atomic_write_text(out_dir / SAMPLES_FILE, "".join(line + "\n" for line in lines))
    return _rows(jobs, results, cfg, task)


#: Go packages outside the standard library that built-in problems import, and the Debian package of each.
GO_LIBRARY_PACKAGES = {"github.com/stretchr/testify/assert": "golang-github-stretchr-testify-dev"}


def _check_go_libraries(problems: Iterable[Problem]) -> None:
    """Fail before running anything when Go problems import a library that is not installed: every
    sample would be a compile error (and cached as one)."""
    headers = {p.header for p in problems if p.language == "go"}
    missing = {path: deb for path, deb in GO_LIBRARY_PACKAGES.items()
               if any(f'"{path}"' in h for h in headers) and not go_package_installed(path)}
    if missing:
        raise ToolchainError(f"the Go tests import {', '.join(missing)}, which is not installed under "
                             f"{execution.GO_LIBRARIES}: apt-get install {' '.join(missing.values())} "
                             "(or `make install`)")


def _rows(jobs: list[tuple[Problem, int, str]], results: list[ExecResult], cfg: MbppConfig, task: str) -> list[dict]:
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
                rows.append({"task": task, "subtask": lang, "metric": f"pass@{k}",
                             "value": sum(vals) / len(vals), "n": len(vals), "question_type": "generative",
                             "primary": k == min(cfg.k)})
        total = sum(outcomes[lang].values())
        for outcome in OUTCOMES:
            rows.append({"task": task, "subtask": lang, "metric": f"frac_{outcome}",
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
                raise DataError(f"problems {cfg.problems!r} have no reference solutions (only mbpp, "
                                "mbpp-sanitized and humaneval-x do); pass --problems mbpp")
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
                            help="run the reference solutions through the harness: a harness check (no --model); "
                                 "MBPP's test split in Python unless --problems says otherwise (humaneval-x: "
                                 "its canonical solutions in --langs)")
        parser.add_argument("--completions", metavar="FILE.jsonl",
                            help="evaluate completions generated elsewhere (lines of name, language, completion)")
        parser.add_argument("--langs", help="comma-separated languages (default py,rs,go)")
        parser.add_argument("--n", type=int, help="samples per problem (default 1)")
        parser.add_argument("--k", help="comma-separated k of pass@k (default 1)")
        parser.add_argument("--limit", type=int, help="at most N problems per language")
        parser.add_argument("--problems", metavar="FILE",
                            help="MultiPL-E-format JSONL to use instead of the built-in problems (or mbpp, "
                                 "mbpp-sanitized, humaneval-x)")
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
            values.update(completions="reference", problems=args.problems or "mbpp")
            if values["problems"] in PYTHON_SETS:
                values["langs"] = ["py"]
        return values

    def data_files(self, cfg: MbppConfig) -> list[str]:
        if cfg.problems == "humaneval-x":
            return [_humaneval_x_file(lang) for lang in cfg.langs]
        if cfg.problems in PYTHON_SETS:
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
    """Pass counts per language, every failure with its reason, and the programs that need a crate (not
    judged: left out of the pass rate, which must reach 99% for the harness to be OK)."""
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    judged = [r for r in rows if r["outcome"] != "needs_crate"]
    failures = [r for r in judged if r["outcome"] != "passed"]
    for r in failures:
        console.print(f"  {r['language']} {r['name']}: {r['outcome']}: {_reason(r['stderr_tail'])[:160]}")
    for r in rows:
        if r["outcome"] == "needs_crate":
            console.print(f"  {r['language']} {r['name']}: needs_crate: {r['stderr_tail']}")
    for lang in dict.fromkeys(r["language"] for r in rows):
        mine = [r for r in rows if r["language"] == lang]
        crates = sum(r["outcome"] == "needs_crate" for r in mine)
        console.print(f"  {lang}: {sum(r['outcome'] == 'passed' for r in mine)}/{len(mine)} passed"
                      + (f", {crates} need a crate (not run)" if crates else ""))
    rate = 1 - len(failures) / max(1, len(judged))
    ok = rate >= 0.99
    console.print(f"reference solutions: {len(judged) - len(failures)}/{len(judged)} passed ({rate:.1%})"
                  + (f", {len(rows) - len(judged)} more need a crate" if len(judged) < len(rows) else "") + "; "
                  + ("harness OK" if ok else "[red]below 99%: the harness is broken on this machine"))
    return 0 if ok else 1


def _reason(stderr_tail: str) -> str:
    """The most telling line of a failed program's output: the first error or assertion, else the last line."""
    lines = [ln.strip() for ln in stderr_tail.splitlines() if ln.strip()]
    telling = re.compile(r"error|Error|panicked|assert|FAIL:|no test|0 tests|killed")
    return next((ln for ln in lines if telling.search(ln) and not ln.startswith(("FAIL\t", "test result"))),
                lines[-1] if lines else "")
