"""MBPP / MultiPL-E: problems from the mirror, pass@k, scoring, the command line, a real model end to end."""

from __future__ import annotations

import csv
import io
import json
import math
from fractions import Fraction

import pytest
from rich.console import Console

from codemix.cli import build_parser, main
from codemix.config import MbppConfig, configure
from codemix.errors import ConfigError
from codemix.evals import mbpp
from codemix.evals.benchmark import EvalContext
from codemix.evals.execution import Sandbox, default_cache_dir
from codemix.evals.mbpp import Problem, build_program, load_mbpp, pass_at_k, select_problems
from codemix.evals.registry import BENCHMARKS
from codemix.evals.rows import COLUMNS

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module", autouse=True)
def _exec_cache(tmp_path_factory):
    """The sandbox's result cache, shared by this module's tests and out of the user's home."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=2, cache_dir=default_cache_dir()) as sb:  # default limits: the CLI shares its cache
        yield sb


# ----------------------------------------------------------------------------- pass@k


def pass_at_k_direct(n: int, c: int, k: int) -> Fraction:
    """1 - C(n-c, k) / C(n, k), exactly (math.comb is 0 when k > n - c)."""
    return 1 - Fraction(math.comb(n - c, k), math.comb(n, k))


def test_pass_at_k_matches_direct_combinatorics():
    for n in range(1, 16):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(pass_at_k_direct(n, c, k)), abs=1e-12), (n, c, k)


@pytest.mark.parametrize("n,c,k", [(200, 0, 10), (200, 1, 1), (200, 3, 100), (1000, 7, 50), (1000, 999, 1000)])
def test_pass_at_k_large_n_is_stable(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(float(pass_at_k_direct(n, c, k)), rel=1e-9, abs=1e-15)


def test_pass_at_k_edge_cases():
    assert pass_at_k(10, 0, 10) == 0.0  # c = 0: never
    assert pass_at_k(10, 1, 10) == 1.0  # n = k: any correct sample counts
    assert pass_at_k(5, 5, 5) == 1.0
    assert pass_at_k(1, 1, 1) == 1.0 and pass_at_k(1, 0, 1) == 0.0
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)  # pass@1 is the fraction correct


@pytest.mark.parametrize("n,c,k", [(5, 6, 1), (5, -1, 1), (5, 2, 0), (5, 2, 6), (5.5, 2, 1)])
def test_pass_at_k_rejects_bad_input(n, c, k):
    with pytest.raises(ValueError):
        pass_at_k(n, c, k)


# ----------------------------------------------------------------------------- config and problems


def test_config_defaults_and_validation():
    assert MbppConfig().temperature is None and MbppConfig().sampling_temperature == 0.0
    assert MbppConfig(n=10, k=[1, 5, 10]).sampling_temperature == 0.8
    assert MbppConfig(n=10, temperature=0.2).sampling_temperature == 0.2
    assert MbppConfig(n=1, temperature=0.3).sampling_temperature == 0.3
    assert MbppConfig(langs=["python", "Rust", "go"]).langs == ["py", "rs", "go"]
    with pytest.raises(ValueError, match="k must be"):
        MbppConfig(n=1, k=[1, 5])
    with pytest.raises(ValueError, match="unknown language"):
        MbppConfig(langs=["cobol"])


def test_builtin_multipl_e_problems(data_dir):
    probs = select_problems(MbppConfig(), data_dir=data_dir)
    assert {lang: len(ps) for lang, ps in probs.items()} == {"py": 399, "rs": 354, "go": 375}
    common = select_problems(MbppConfig(common_only=True, limit=20), data_dir=data_dir)
    keys = [[p.key for p in ps] for ps in common.values()]
    assert len(keys[0]) == 20 and keys[0] == keys[1] == keys[2]
    full = select_problems(MbppConfig(common_only=True))  # via $CODEMIX_DATA
    assert {len(ps) for ps in full.values()} == {348}
    rs = full["rs"][0]
    assert rs.stop_tokens == ("\n}",) and rs.tests.lstrip().startswith("}")


def test_original_mbpp_splits(data_dir):
    test = load_mbpp("test", data_dir=data_dir)
    assert len(test) == 500 and [p.key for p in test[:2]] == ["mbpp_11", "mbpp_12"]
    assert all(p.reference and p.language == "py" for p in test)
    assert len(load_mbpp("sanitized", data_dir=data_dir)) == 257
    p367 = next(p for p in test if p.key == "mbpp_367")  # setup code that uses the solution's class
    prog = build_program(p367, p367.reference)
    assert prog.index("class Node") < prog.index("root = Node(1)")


def test_humaneval_x_problems_and_programs(data_dir):
    probs = select_problems(MbppConfig(problems="humaneval-x", common_only=True), data_dir=data_dir)
    assert {lang: len(ps) for lang, ps in probs.items()} == {"py": 164, "rs": 164, "go": 164}
    assert [p.key for p in probs["rs"]] == [p.key for p in probs["go"]] == [f"humaneval_{i}" for i in range(164)]
    assert all(p.reference and p.harness == "humaneval_x" for ps in probs.values() for p in ps)
    rs, go = ({p.name: p for p in probs[lang]} for lang in ("rs", "go"))

    # Rust: a `pub fn` declaration ends the prompt too; unused crate `use` lines are dropped
    assert rs["humaneval_27"].prompt.rstrip().endswith("pub fn flip_case(string: String) -> String{")
    prog = build_program(rs["humaneval_0"], rs["humaneval_0"].reference)
    assert "use rand" not in prog and "use regex" not in prog and "use md5" not in prog and "use std::" in prog
    assert mbpp.missing_crates(rs["humaneval_0"], prog) == []
    needs = {n: mbpp.missing_crates(rs[n], build_program(rs[n], rs[n].reference)) for n in rs}
    assert {n: c for n, c in needs.items() if c} == {"humaneval_38": ["rand"], "humaneval_50": ["rand"],
                                                    "humaneval_53": ["rand"], "humaneval_91": ["regex"],
                                                    "humaneval_162": ["md5"]}
    assert "use regex::Regex;" in build_program(rs["humaneval_91"], rs["humaneval_91"].reference)

    # Go: the prompt's imports are replaced by those the code uses and the header lacks (CodeGeeX)
    p32 = go["humaneval_32"]  # the header imports math, and so does the prompt
    assert '"math"' in p32.header and p32.prompt.lstrip().startswith("import")
    assert build_program(p32, p32.reference).count('"math"') == 1
    p0 = go["humaneval_0"]
    assert '"math"' not in build_program(p0, "    return false\n}\n")  # the completion does not use it
    assert build_program(p0, p0.reference).count('"math"') == 1
    with_strings = build_program(p0, '    return strings.Contains("a", "b") // math.\n}\n')  # a comment is no use
    assert '"strings"' in with_strings and '"math"' not in with_strings
    assert "import" not in go["humaneval_65"].prompt  # its solution's strconv comes from the usual packages
    assert '"strconv"' in build_program(go["humaneval_65"], go["humaneval_65"].reference)


# Canonical solutions with something to check: Rust 27 (`pub fn`), 32 (its tests are commented out),
# 38/91/162 (crates); Go 0, 32 and 65 (imports); plus a wrong Rust and Go completion.
HUMANEVAL_X_PICKS = {"py": ["humaneval_0"], "rs": ["humaneval_0", "humaneval_27", "humaneval_32", "humaneval_38",
                                                   "humaneval_91", "humaneval_162"],
                     "go": ["humaneval_0", "humaneval_32", "humaneval_65"]}


def test_humaneval_x_scoring_marks_programs_that_need_crates(tmp_path, data_dir, sandbox):
    probs = select_problems(MbppConfig(problems="humaneval-x"), data_dir=data_dir)
    picked = {lang: [p for p in probs[lang] if p.name in names] for lang, names in HUMANEVAL_X_PICKS.items()}
    completions = {(p.language, p.name): [p.reference] for ps in picked.values() for p in ps}
    completions[("rs", "humaneval_0")].append("    numbers.len() > 1\n}\n")  # wrong: fails a test
    completions[("go", "humaneval_0")].append("    return len(numbers) > 1\n}\n")
    cfg = MbppConfig(problems="humaneval-x", completions="reference")
    rows = mbpp.score(picked, completions, cfg, out_dir=tmp_path, sandbox=sandbox, progress=False)
    samples = [json.loads(line) for line in (tmp_path / mbpp.SAMPLES_FILE).read_text().splitlines()]
    got = {(s["language"], s["name"], s["sample"]): s["outcome"] for s in samples}
    assert got == {
        ("py", "humaneval_0", 0): "passed",
        ("rs", "humaneval_0", 0): "passed", ("rs", "humaneval_0", 1): "failed",
        ("rs", "humaneval_27", 0): "passed", ("rs", "humaneval_32", 0): "runtime_error",  # ran no test
        ("rs", "humaneval_38", 0): "needs_crate", ("rs", "humaneval_91", 0): "needs_crate",
        ("rs", "humaneval_162", 0): "needs_crate",
        ("go", "humaneval_0", 0): "passed", ("go", "humaneval_0", 1): "failed",
        ("go", "humaneval_32", 0): "passed", ("go", "humaneval_65", 0): "passed",
    }, [(s["name"], s["outcome"], s["stderr_tail"][-300:]) for s in samples if s["outcome"] != "passed"]
    value = {(r["subtask"], r["metric"]): r["value"] for r in rows}
    assert value[("rs", "frac_needs_crate")] == pytest.approx(3 / 7) and value[("py", "frac_needs_crate")] == 0
    assert value[("rs", "pass@1")] == pytest.approx(1.5 / 6)  # a sample that needs a crate does not pass

    console = Console(file=io.StringIO(), width=200)
    status = BENCHMARKS["mbpp"].report(rows, cfg, EvalContext(out_dir=tmp_path, progress=False), console)
    text = console.file.getvalue()
    assert status == 1  # 2 of 9 judged samples fail: below 99%
    assert "rs humaneval_91: needs_crate: needs the crate(s) regex" in text
    assert "rs humaneval_32: runtime_error: running 0 tests" in text
    assert "rs: 2/7 passed, 3 need a crate (not run)" in text and "go: 3/4 passed" in text
    assert "6/9 passed (66.7%), 3 more need a crate" in text


def test_missing_problems_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        select_problems(MbppConfig(problems=str(tmp_path / "nope.jsonl")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"name": "x", "language": "py"}) + "\n")
    with pytest.raises(ValueError, match="missing prompt, tests"):
        select_problems(MbppConfig(problems=str(bad)))


def test_truncate():
    assert mbpp.truncate("    return 1\n}\nfn main", ["\n}"]) == "    return 1"
    assert mbpp.truncate("abc", []) == "abc"


# ----------------------------------------------------------------------------- hand-written completions

# Correct, wrong and non-compiling completions for real MultiPL-E Rust and Go problems.
HANDWRITTEN = {
    ("rs", "mbpp_17_square_perimeter"): ["    4 * a\n", "    3 * a\n", "    4 * a +\n"],
    ("rs", "mbpp_62_smallest_num"): ["    *xs.iter().min().unwrap()\n", "    *xs.iter().max().unwrap()\n",
                                     "    xs.iter().min()\n"],
    ("rs", "mbpp_8_square_nums"): ["    nums.iter().map(|x| x * x).collect()\n", "    nums\n",
                                   "    nums.iter().map(|x| x * x)\n"],
    ("go", "mbpp_17_square_perimeter"): ["    return 4 * a\n}\n", "    return 3 * a\n}\n",
                                         "    return \"four\"\n}\n"],
    ("go", "mbpp_62_smallest_num"): [
        "    m := xs[0]\n    for _, x := range xs {\n        if x < m {\n            m = x\n        }\n    }\n"
        "    return m\n}\n",
        "    return xs[0]\n}\n",
        "    return min(xs)\n}\n"],
    ("go", "mbpp_8_square_nums"): [
        "    out := []int{}\n    for _, x := range nums {\n        out = append(out, x*x)\n    }\n    return out\n}\n",
        "    return nums\n}\n",
        "    out := []int{}\n    for _, x := range nums {\n        out = append(out, x*x)\n    }\n}\n"],
}
EXPECTED = ["passed", "failed", "compile_error"]


def test_handwritten_rust_and_go_completions_are_classified(data_dir, sandbox):
    probs = select_problems(MbppConfig(langs=["rs", "go"]), data_dir=data_dir)
    by_name = {(p.language, p.name): p for ps in probs.values() for p in ps}
    jobs = [(lang, build_program(by_name[(lang, name)], text))
            for (lang, name), texts in HANDWRITTEN.items() for text in texts]
    results = sandbox.run_many(jobs, progress=False)
    got = [r.outcome for r in results]
    assert got == EXPECTED * len(HANDWRITTEN), [(j[0], r.outcome, r.stderr_tail[-200:]) for j, r in zip(jobs, results)
                                                if r.outcome != "passed"]


# ----------------------------------------------------------------------------- scoring


class CannedHandle:
    """Stands in for the model: for each prompt, sample 0 is the reference solution, sample 1 is wrong."""

    def __init__(self, problems: list[Problem]):
        self.by_prompt = {p.prompt: p for p in problems}
        self.calls: list[dict] = []

    def generate(self, prompts, *, max_new_tokens, stop=None, temperature=0.0, top_p=1.0, n=1, seed=0):
        self.calls.append({"n": n, "stop": stop, "temperature": temperature, "max_new_tokens": max_new_tokens})
        wrong = "def nothing():\n    return None\nprint('x')\n"  # cut at "\nprint" like a model's output
        return [[self.by_prompt[p].reference, wrong][:n] for p in prompts]


def test_evaluate_with_canned_completions(tmp_path, data_dir, sandbox, monkeypatch):
    problems = load_mbpp("test", data_dir=data_dir)[:6]
    handle = CannedHandle(problems)
    monkeypatch.setattr(mbpp, "Sandbox", lambda **kw: sandbox)
    monkeypatch.setattr(sandbox, "close", lambda: None)  # the module fixture closes it
    cfg = MbppConfig(problems="mbpp", langs=["py"], n=2, k=[1, 2], max_new_tokens=64, limit=6)
    rows = BENCHMARKS["mbpp"].evaluate(handle, cfg, EvalContext(out_dir=tmp_path, progress=False))

    assert handle.calls and all(c["n"] == 2 and c["temperature"] == 0.8 for c in handle.calls)
    assert "\nassert" in handle.calls[0]["stop"]
    values = {r["metric"]: r for r in rows}
    assert values["pass@1"]["value"] == pytest.approx(0.5) and values["pass@1"]["n"] == 6
    assert values["pass@2"]["value"] == pytest.approx(1.0)
    assert values["frac_passed"]["value"] == pytest.approx(0.5) and values["frac_passed"]["n"] == 12
    assert {r["task"] for r in rows} == {"mbpp"} and {r["subtask"] for r in rows} == {"py"}
    samples = [json.loads(line) for line in (tmp_path / mbpp.SAMPLES_FILE).read_text().splitlines()]
    assert len(samples) == 12
    wrong = [s for s in samples if s["sample"] == 1]
    assert all(s["completion"].endswith("return None") and s["outcome"] == "runtime_error" for s in wrong)


def _config(*argv: str) -> MbppConfig:
    """The config `codemix eval mbpp ARGV` evaluates with (flags over --set over the defaults)."""
    args = build_parser().parse_args(["eval", "mbpp", *argv])
    return configure(MbppConfig, None, args.overrides, where="codemix eval mbpp", **BENCHMARKS["mbpp"].options(args))


def test_cli_reference_passes_a_slice(tmp_path, data_dir, capsys):
    out = tmp_path / "results.csv"
    assert main(["eval", "mbpp", "--reference", "--limit", "30", "--out", str(out), "--workers", "2"]) == 0
    reader = csv.DictReader(out.open())
    rows = list(reader)
    assert reader.fieldnames == list(COLUMNS)
    pass1 = next(r for r in rows if r["metric"] == "pass@1")
    assert (pass1["subtask"], float(pass1["value"]), int(pass1["n"])) == ("py", 1.0, 30)
    assert "30/30 passed" in capsys.readouterr().out
    assert len((tmp_path / "results" / mbpp.SAMPLES_FILE).read_text().splitlines()) == 30


def test_cli_humaneval_x_reference_passes_a_slice(tmp_path, data_dir, capsys):
    out = tmp_path / "results.csv"
    assert main(["eval", "mbpp", "--problems", "humaneval-x", "--reference", "--langs", "py,rs,go", "--limit", "6",
                 "--common-only", "--workers", "2", "--out", str(out)]) == 0
    rows = {(r["subtask"], r["metric"]): r for r in csv.DictReader(out.open())}
    for lang in ("py", "rs", "go"):
        assert (float(rows[(lang, "pass@1")]["value"]), int(rows[(lang, "pass@1")]["n"])) == (1.0, 6)
    text = capsys.readouterr().out
    assert "py: 6/6 passed" in text and "rs: 6/6 passed" in text and "go: 6/6 passed" in text
    assert "18/18 passed" in text


def test_cli_completions_file(tmp_path, data_dir):
    comp = tmp_path / "completions.jsonl"
    with comp.open("w") as f:
        for (lang, name), texts in HANDWRITTEN.items():
            if name == "mbpp_17_square_perimeter":
                for text in texts[:2]:
                    f.write(json.dumps({"name": name, "language": {"rs": "rust", "go": "go"}[lang],
                                        "completion": text}) + "\n")
    out = tmp_path / "r.csv"
    assert main(["eval", "mbpp", "--completions", str(comp), "--langs", "rs,go", "--n", "2", "--k", "1,2",
                 "--out", str(out)]) == 0
    reader = csv.DictReader(out.open())
    rows = {(r["subtask"], r["metric"]): r for r in reader}
    assert reader.fieldnames == list(COLUMNS)
    for lang in ("rs", "go"):
        assert float(rows[(lang, "pass@1")]["value"]) == 0.5 and int(rows[(lang, "pass@1")]["n"]) == 1
        assert float(rows[(lang, "pass@2")]["value"]) == 1.0
        assert float(rows[(lang, "frac_failed")]["value"]) == 0.5


def test_cli_options_parse(tmp_path, capsys):
    cfg = _config("--model", "m", "--langs", "py,rs", "--n", "5", "--k", "1,5", "--temperature", "0.4",
                  "--timeout", "3", "--common-only", "--limit", "7")
    assert (cfg.langs, cfg.n, cfg.k, cfg.temperature, cfg.timeout_s, cfg.common_only, cfg.limit) == (
        ["py", "rs"], 5, [1, 5], 0.4, 3.0, True, 7)
    with pytest.raises(ConfigError, match="k must be"):
        _config("--model", "m", "--n", "2", "--k", "5")
    out = tmp_path / "r.csv"
    assert main(["eval", "mbpp", "--out", str(out)]) == 2  # nothing to evaluate
    assert "give --model" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_evaluate_a_real_tiny_model(tmp_path, data_dir):
    """End to end with a real (untrained) model handle: generation, sandbox, rows."""
    from codemix.config import DataConfig
    from codemix.data.tokenizer import build_tokenizer, hf_tokenizer
    from codemix.evals.handle import load_handle, save_tiny_model

    cfg = DataConfig.model_validate({
        "heldout_docs": 5, "tokenizer": {"vocab_size": 512, "sample_bytes_per_source": 30_000},
        "sources": [{"name": "python", "lang": "python", "code": True, "paths": ["code/code_python.jsonl.gz"],
                     "max_docs": 20}]})
    tok = hf_tokenizer(build_tokenizer(cfg, tmp_path / "tokenizer.json"))
    model = save_tiny_model(tmp_path / "gpt", tok, arch="gpt", max_length=64)
    rows = BENCHMARKS["mbpp"].evaluate(load_handle(model, device="cpu"),
                                       MbppConfig(langs=["py"], max_new_tokens=8, workers=2, limit=3),
                                       EvalContext(out_dir=tmp_path / "out", progress=False))
    got = {r["metric"]: r for r in rows}
    assert got["pass@1"]["n"] == 3 and 0 <= got["pass@1"]["value"] <= 1
    assert sum(got[f"frac_{o}"]["value"] for o in mbpp.OUTCOMES) == pytest.approx(1)
    assert len((tmp_path / "out" / mbpp.SAMPLES_FILE).read_text().splitlines()) == 3
