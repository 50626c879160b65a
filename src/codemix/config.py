"""Typed configuration: one class per stage, loaded from a study YAML file.

A study file (``studies/*.yaml``) holds every stage's config under one root,
:class:`StudyConfig`. Field docstrings are the reference documentation: they become
``--help`` text and the YAML reference in the README (``codemix config-reference``).

Loading collects *every* problem — YAML syntax, unknown keys, wrong types, values out
of range, cross-field mistakes such as a code weight naming no source — and raises one
:class:`~codemix.errors.ConfigError` that lists them all, each naming the field, the
value and what is allowed.
"""

from __future__ import annotations

import copy
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from rich.console import Console
from rich.panel import Panel
from rich.syntax import Syntax

from codemix.errors import ConfigError
from codemix.io import atomic_write_text

__all__ = [
    "AnalysisConfig",
    "BenchmarkConfig",
    "BigbenchEvalConfig",
    "CogsEvalConfig",
    "CogsVfEvalConfig",
    "DataConfig",
    "EvalsConfig",
    "ExecutorConfig",
    "FinetuneConfig",
    "Labels",
    "EXEC_LANGUAGES",
    "MAX_M",
    "AdaptEvalConfig",
    "MbppConfig",
    "MbppTransferEvalConfig",
    "SolutionsEvalConfig",
    "MixturesConfig",
    "ModelConfig",
    "ObjectivesConfig",
    "ParallelConfig",
    "PassivizationEvalConfig",
    "PerplexityEvalConfig",
    "PretrainConfig",
    "SourceConfig",
    "StudyConfig",
    "TokenizerConfig",
    "apply_overrides",
    "configure",
    "load_study",
    "normalize_language",
    "print_config",
    "save_config",
    "validate_study",
]

#: Largest code fraction allowed per setting (DESIGN.md, "Mixtures").
MAX_M = {"competitive": 0.9, "additive": 0.5}


@dataclass(frozen=True)
class Labels:
    """Which model: its study, mixture (setting, m, baseline), seed and code composition (arm).

    These are the label columns of a result row (DESIGN.md, "Result rows"); a checkpoint
    records them. A model from outside a study has every field empty (``None``).
    """

    study: str | None = None
    setting: str | None = None
    m: float | None = None
    baseline: bool | None = None
    seed: int | None = None
    arm: str | None = None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Labels:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True)


# ----------------------------------------------------------------------------- data


class TokenizerConfig(_Config):
    vocab_size: int = Field(8192, ge=512, le=1 << 20)
    """Vocabulary size of the byte-level BPE trained on the study's sources (special tokens included)."""
    path: str | None = None
    """An existing `tokenizer.json` or HF tokenizer directory to use instead of training one."""
    sample_bytes_per_source: int = Field(2_000_000, gt=0)
    """Bytes of training text drawn from each source (NL and each code language get an equal share)."""
    min_frequency: int = Field(2, ge=1)
    """Minimum pair frequency for a BPE merge."""


class SourceConfig(_Config):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    """Unique source name, used in weights, file names and result rows."""
    kind: Literal["jsonl", "json", "text", "parquet", "dir", "hf"] = "jsonl"
    """Adapter: JSONL(.gz)/JSON with a text field, plain text, Parquet, a directory of source files, or a Hugging Face dataset."""
    lang: str = "en"
    """Language of the documents (`en`, `python`, `rust`, `go`, ...); a `dir` source infers it per file from the extension."""
    code: bool = False
    """Whether the source is source code (counts towards the code fraction m)."""
    paths: list[str] = Field(default_factory=list)
    """Files or directories (globs allowed, e.g. `web/*.parquet`), relative to the data directory unless absolute."""
    text_field: str = "text"
    """Field holding the document text (jsonl, json, parquet, hf)."""
    split: Literal["line", "blank_line", "file"] = "line"
    """How a plain-text file splits into documents: one per line, per blank-line-separated block, or the whole file."""
    hf_name: str | None = None
    """Hugging Face dataset name or local path (kind: hf)."""
    hf_config: str | None = None
    """Hugging Face dataset config (kind: hf)."""
    hf_split: str = "train"
    """Hugging Face split (kind: hf)."""
    max_docs: int | None = Field(None, gt=0)
    """Read at most this many documents (after the fixed shuffle)."""


class DataConfig(_Config):
    seq_len: int = Field(256, ge=8, le=1 << 17)
    """Tokens per training sequence. Sequences never cross sources."""
    heldout_docs: int | float = 50
    """Documents per source set aside for evaluation before any mixture draws: a count, or a fraction in (0, 1)."""
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    """Tokenizer to train or load."""
    sources: list[SourceConfig] = Field(default_factory=list)
    """Natural-language and code sources."""
    shuffle_seed: int = 1234
    """Seed of each source's fixed document order (the same for every mixture, so mixtures nest)."""
    workers: int = Field(0, ge=0)
    """Tokenizer worker processes (0: one per CPU core)."""


class MixturesConfig(_Config):
    settings: list[Literal["competitive", "additive"]] = Field(default_factory=lambda: ["competitive", "additive"])
    """Mixture settings to build (DESIGN.md, "Mixtures")."""
    m: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5])
    """Code fractions. Competitive allows [0, 0.9], additive [0, 0.5]."""
    m_by_setting: dict[Literal["competitive", "additive"], list[float]] = Field(default_factory=dict)
    """Code fractions of one setting, replacing `m` for it, e.g. `{additive: [0, 0.1, 0.2, 0.3, 0.4, 0.5]}`."""

    def m_for(self, setting: str) -> list[float]:
        """The code fractions of ``setting``: ``m_by_setting[setting]``, else ``m``."""
        return self.m_by_setting.get(setting, self.m)

    def arm_names(self) -> list[str | None]:
        """The study's arms (``[None]``: one composition, ``code_weights``)."""
        return list(self.arms) or [None]

    def code_weights_of(self, arm: str | None) -> dict[str, float]:
        """The code weights of ``arm`` (``code_weights`` when the study has no arms)."""
        return self.arms[arm] if arm is not None else self.code_weights
    baselines: bool = True
    """Also build language-only twins of the additive mixtures (same N_total)."""
    n_tokens: int = Field(400_000, gt=0)
    """N_total for competitive mixtures, N_lang for additive ones, in tokens."""
    code_weights: dict[str, float] = Field(default_factory=dict)
    """How code tokens split across code sources; a code source absent here is evaluation-only. Empty: equal over code sources."""
    arms: dict[str, dict[str, float]] = Field(default_factory=dict)
    """Several code compositions in one study, by arm name, e.g. `{python-only: {python: 1.0}, mixed: {python: 0.9, rust: 0.05, go: 0.05}}` (each like `code_weights`, which must then be empty). Mixtures with code are built per arm; those without (m = 0, baselines) are shared. The arm is a column of the result rows."""
    lang_weights: dict[str, float] = Field(default_factory=dict)
    """How language tokens split across language sources. Empty: equal over language sources."""
    max_repetition: float = Field(1.0, ge=1.0)
    """How many times a source may be repeated to reach its target (1.0: no repetition)."""
    seed: int = 0
    """Seed of the training order of sequences."""


# ----------------------------------------------------------------------------- model and training


class ModelConfig(_Config):
    arch: Literal["gpt", "t5"] = "gpt"
    """`gpt`: Llama-style decoder; `t5`: CodeT5-style encoder-decoder (HF T5)."""
    preset: str = "tiny"
    """Size preset: gpt `tiny|20m|124m|t5-large-dec`; t5 `tiny|codet5-small|codet5-base`."""
    n_layers: int | None = Field(None, gt=0)
    """Override: number of layers (decoder layers for gpt; encoder layers for t5)."""
    n_decoder_layers: int | None = Field(None, gt=0)
    """Override (t5): number of decoder layers."""
    n_heads: int | None = Field(None, gt=0)
    """Override: attention heads."""
    n_kv_heads: int | None = Field(None, gt=0)
    """Override (gpt): key/value heads (grouped-query attention); default = n_heads."""
    d_model: int | None = Field(None, gt=0)
    """Override: model width."""
    d_ff: int | None = Field(None, gt=0)
    """Override: feed-forward width."""
    d_kv: int | None = Field(None, gt=0)
    """Override (t5): per-head key/value width."""
    max_seq_len: int | None = Field(None, gt=0)
    """Override: longest sequence the model handles (default: data.seq_len, at least 1024 for gpt)."""
    tie_embeddings: bool | None = None
    """Override: share input embedding and output projection."""
    rope_theta: float | None = Field(None, gt=0)
    """Override (gpt): RoPE base."""
    dropout: float | None = Field(None, ge=0, lt=1)
    """Override: dropout probability."""


class ObjectivesConfig(_Config):
    """CodeT5 objectives (Wang et al. 2021) and their mixing, for `arch: t5`."""

    span_corruption: float = Field(1.0, ge=0)
    """Weight of masked span prediction (applies to every document)."""
    identifier_tagging: float = Field(1.0, ge=0)
    """Weight of identifier tagging (code documents)."""
    masked_identifier: float = Field(1.0, ge=0)
    """Weight of masked identifier prediction (code documents)."""
    bimodal: float = Field(0.0, ge=0)
    """Weight of bimodal dual generation (code with docstrings); CodeT5 adds it in a second phase."""
    noise_density: float = Field(0.15, gt=0, lt=1)
    """Fraction of tokens masked by span corruption."""
    mean_span: float = Field(3.0, gt=0)
    """Mean masked span length."""
    target_len: int = Field(128, gt=0)
    """Decoder length for span-corruption targets."""


class PretrainConfig(_Config):
    batch_size: int = Field(16, gt=0)
    """Sequences per optimizer step (global, across ranks and accumulation)."""
    micro_batch_size: int | None = Field(None, gt=0)
    """Sequences per forward pass per rank; gradient accumulation makes up the rest. Default: batch_size / ranks."""
    lr: float = Field(3.0e-3, gt=0)
    """Peak learning rate."""
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    """Final learning rate of the cosine schedule, as a fraction of lr."""
    warmup_steps: int = Field(20, ge=0)
    """Linear warmup steps."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW weight decay (not applied to norms and biases)."""
    beta1: float = Field(0.9, ge=0, lt=1)
    """AdamW beta1."""
    beta2: float = Field(0.95, ge=0, lt=1)
    """AdamW beta2."""
    grad_clip: float = Field(1.0, ge=0)
    """Gradient-norm clipping (0: off)."""
    max_steps: int | None = Field(None, gt=0)
    """Cap on optimizer steps. Default: exactly one pass over the mixture."""
    max_tokens: int | None = Field(None, gt=0)
    """Cap on training tokens (alternative to max_steps)."""
    eval_every: int = Field(50, gt=0)
    """Steps between held-out loss evaluations (per source)."""
    eval_batches: int = Field(4, gt=0)
    """Held-out batches per source and evaluation."""
    log_every: int = Field(10, gt=0)
    """Steps between log lines."""
    checkpoint_every: int | None = Field(None, gt=0)
    """Steps between checkpoints (default: only at the end)."""
    keep_checkpoints: int = Field(2, gt=0)
    """How many of the latest checkpoints to keep."""
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    """`auto`: bf16 autocast on CUDA, fp32 on CPU."""
    compile: bool | None = None
    """torch.compile the model (default: on for CUDA, off on CPU); a GPT or CodeT5 block by block
    (1.2-3.2x faster to compile)."""
    device: str = "auto"
    """`auto`, `cpu`, `cuda`, `cuda:1`, ..."""
    pack: int = Field(8, gt=0)
    """Train up to this many GPT runs of a study together in one process, as one fused model (`codemix.train.pack`):
    same results, higher throughput for small models. Default: 8; 1: one run per process. The planner splits
    packs that would not fit in `pack_memory_gb`; on a CPU, whose threads each train a group of a pack's
    members, it makes packs of multiples of the thread count."""
    pack_memory_gb: float | None = Field(None, gt=0)
    """Memory one pack may use (weights, AdamW state and activations of all members). Default: the GPU's memory
    (or half the RAM without one) of the machine that plans; 40 with `executor.kind: slurm`."""
    tensorboard: bool = False
    """Also log to TensorBoard (if installed)."""
    wandb: bool = False
    """Also log to Weights & Biases (if installed)."""
    objectives: ObjectivesConfig = Field(default_factory=ObjectivesConfig)
    """Pretraining objectives for `arch: t5`."""


class ParallelConfig(_Config):
    fsdp: bool = False
    """Shard parameters with FSDP2 instead of replicating them with DDP (under torchrun)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend (`auto`: nccl on CUDA, gloo on CPU)."""


# ----------------------------------------------------------------------------- evals


class FinetuneConfig(_Config):
    steps: int = Field(10_000, gt=0)
    """Finetuning steps (paper: 10K)."""
    batch_size: int = Field(32, gt=0)
    """Examples per step."""
    lr: float = Field(1.0e-4, gt=0)
    """Peak learning rate (constant after warmup)."""
    warmup_steps: int = Field(100, ge=0)
    """Linear warmup steps."""
    eval_every: int = Field(1000, gt=0)
    """Steps between dev/gen evaluations (decoded outputs saved each time)."""
    max_train_examples: int | None = Field(None, gt=0)
    """Finetune on at most this many training examples (a subset, for quick runs)."""
    seed: int = 0
    """Seed of the finetuning data order."""


class BenchmarkConfig(_Config):
    """The config section of one benchmark (``evals.<section>`` of a study file).

    Each subclass names its section (``class X(BenchmarkConfig, section="mbpp")``); the
    study's ``evals`` schema (:class:`EvalsConfig`) has one optional field per section, and
    ``codemix.evals.registry`` pairs each section with the benchmark that runs it.
    """

    section: ClassVar[str] = ""
    _sections: ClassVar[dict[str, type[BenchmarkConfig]]] = {}

    def __init_subclass__(cls, section: str = "", **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if section:
            assert section not in BenchmarkConfig._sections, f"two benchmark configs for section {section!r}"
            cls.section = section
            BenchmarkConfig._sections[section] = cls

    @classmethod
    def sections(cls) -> dict[str, type[BenchmarkConfig]]:
        """Every benchmark section, by name, in declaration order."""
        return dict(BenchmarkConfig._sections)


class CogsEvalConfig(BenchmarkConfig, section="cogs"):
    """COGS (Kim & Linzen 2020): finetune, then exact match on gen by type."""

    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    """Finetuning before evaluation."""
    limit: int | None = Field(None, gt=0)
    """At most this many examples per split and generalization type."""
    batch_size: int = Field(64, gt=0)
    """Decoding batch size."""
    max_new_tokens: int | None = Field(None, gt=0)
    """Longest decoded output, in tokens (default: the longest evaluated target + 1, so no gold output is cut)."""


class CogsVfEvalConfig(CogsEvalConfig, section="cogs_vf"):
    """Variable-free COGS (Qiu et al. 2022)."""


class PassivizationEvalConfig(CogsEvalConfig, section="passivization"):
    """English passivization (Mueller et al. 2022)."""


class BigbenchEvalConfig(BenchmarkConfig, section="bigbench"):
    """Zero-shot BIG-bench JSON tasks."""

    tasks: list[str] = Field(default_factory=list)
    """Task names (empty: every non-code task of the data directory's BIG-bench file)."""
    path: str | None = None
    """A task.json, a directory of them, or a BIG-bench JSONL; default: bigbench/bigbench_tasks.jsonl.gz."""
    limit: int | None = Field(None, gt=0)
    """At most this many examples per task (subtask)."""
    batch_size: int = Field(32, gt=0)
    """Scoring batch size."""
    include_code_tasks: bool = False
    """Keep tasks whose keywords mark them as code tasks (excluded by default, as in the paper)."""


class PerplexityEvalConfig(BenchmarkConfig, section="perplexity"):
    """Bits-per-byte, perplexity, next-token and next-line accuracy per source."""

    sources: list[str] = Field(default_factory=list)
    """Sources whose held-out documents are scored (empty: every source of the study)."""
    files: list[str] = Field(default_factory=list)
    """Extra files (any source format) to score."""
    max_docs: int | None = Field(None, gt=0)
    """At most this many documents per source."""
    next_line_samples: int = Field(50, ge=0)
    """Line-completion probes per source (greedy next line vs the real line)."""
    batch_size: int = Field(8, gt=0)
    """Sequences per forward pass."""


#: Languages the execution sandbox runs (MultiPL-E's names), and the aliases it accepts.
EXEC_LANGUAGES = ("py", "rs", "go")
_LANGUAGE_ALIASES = {"python": "py", "python3": "py", "rust": "rs", "golang": "go", "go_test.go": "go"}


def normalize_language(name: str) -> str:
    """``py``/``rs``/``go`` for a language name or alias (``python``, ``rust``, ``golang``)."""
    key = _LANGUAGE_ALIASES.get(name.lower(), name.lower())
    if key not in EXEC_LANGUAGES:
        raise ValueError(f"unknown language {name!r}; expected one of {', '.join(EXEC_LANGUAGES)} "
                         f"(or {', '.join(_LANGUAGE_ALIASES)})")
    return key


class MbppConfig(BenchmarkConfig, section="mbpp"):
    """MBPP / MultiPL-E in Python, Rust and Go with sandboxed execution and pass@k."""

    langs: list[str] = Field(default_factory=lambda: list(EXEC_LANGUAGES))
    """Languages: py, rs, go (aliases python, rust, golang)."""
    n: int = Field(1, gt=0)
    """Samples per problem."""
    k: list[int] = Field(default_factory=lambda: [1])
    """pass@k reported for each k (every k <= n)."""
    temperature: float | None = Field(None, ge=0.0)
    """Sampling temperature (default: 0.0 when n == 1, else 0.8)."""
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    max_new_tokens: int = Field(256, gt=0)
    """Longest completion, in tokens."""
    limit: int | None = Field(None, gt=0)
    """At most this many problems per language."""
    problems: str | None = None
    """A MultiPL-E-format JSONL file, `mbpp` / `mbpp-sanitized` (original MBPP, Python), or `humaneval-x` (HumanEval-X's 164 problems in py, rs and go, run as CodeGeeX's harness runs them; Rust programs that need its crates rand, regex or md5 are marked `needs_crate`, not run); default: MultiPL-E MBPP."""
    common_only: bool = False
    """Only problems present in every chosen language."""
    completions: str | None = None
    """Score these completions instead of generating: a JSONL file of name, language, completion, or `reference` (the problems' reference solutions: a check of the harness)."""
    timeout_s: float = Field(10.0, gt=0)
    """Wall-clock limit per program run, in seconds (compiling gets extra time)."""
    workers: int = Field(0, ge=0)
    """Parallel sandbox workers (0: one per CPU)."""
    seed: int = 0
    """Generation seed."""
    batch_size: int = Field(16, gt=0)
    """Prompts per generate call."""

    @field_validator("langs")
    @classmethod
    def _langs(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one language is needed")
        return list(dict.fromkeys(normalize_language(x) for x in v))

    @model_validator(mode="after")
    def _check(self) -> MbppConfig:
        bad = [k for k in self.k if k < 1 or k > self.n]
        if bad or not self.k:
            raise ValueError(f"k must be a non-empty list of 1 <= k <= n = {self.n}; found {self.k}"
                             + (f" (use --n {max(self.k)} or more)" if bad else ""))
        return self

    @property
    def sampling_temperature(self) -> float:
        """``temperature``, else greedy for one sample and 0.8 for several."""
        return self.temperature if self.temperature is not None else (0.0 if self.n == 1 else 0.8)


#: HumanEval-X's languages (its file names), and the sets of problems with correct solutions.
SOLUTION_LANGUAGES = ("python", "rust", "go", "cpp", "java", "js")
SOLUTION_SETS = ("humaneval_x", "mbpp")


class SolutionsEvalConfig(BenchmarkConfig, section="solutions"):
    """Likelihood of correct solutions given their prompts, per language (bits per byte, log-prob per token)."""

    sets: list[Literal["humaneval_x", "mbpp"]] = Field(default_factory=lambda: list(SOLUTION_SETS))
    """Built-in problem sets: HumanEval-X (the same 164 problems in every language) and MBPP (Python, test split)."""
    langs: list[str] = Field(default_factory=lambda: ["python", "rust", "go"])
    """Languages of HumanEval-X to score: python, rust, go, cpp, java, js (MBPP is Python only)."""
    problems: str | None = None
    """A JSONL file of problems with `prompt` and `canonical_solution` (HumanEval-X's format), scored instead of `sets`; its language comes from `language`, or the prefix of `task_id` (`Rust/3`)."""
    limit: int | None = Field(None, gt=0)
    """At most this many problems per set and language."""
    batch_size: int = Field(8, gt=0)
    """Sequences per forward pass."""

    @field_validator("langs")
    @classmethod
    def _known_langs(cls, v: list[str]) -> list[str]:
        aliases = {"py": "python", "rs": "rust", "javascript": "js", "c++": "cpp"}
        out = list(dict.fromkeys(aliases.get(x.lower(), x.lower()) for x in v))
        bad = [x for x in out if x not in SOLUTION_LANGUAGES]
        if bad or not out:
            raise ValueError(f"languages must be among {', '.join(SOLUTION_LANGUAGES)}; found {bad or v}")
        return out


class MbppTransferEvalConfig(BenchmarkConfig, section="mbpp_transfer"):
    """Python → Rust / Go transfer: finetune on MBPP's Python train split, test MBPP in py, rs and go (pass@k) and the solutions' likelihood."""

    finetune: FinetuneConfig = Field(default_factory=lambda: FinetuneConfig(
        steps=1000, batch_size=16, lr=1.0e-4, warmup_steps=50, eval_every=100))
    """Finetuning on MBPP's train split (task ids 601-974); every `eval_every` steps the validation split (511-600) is scored and the best step's weights are kept."""
    test: MbppConfig = Field(default_factory=lambda: MbppConfig(common_only=True))
    """How the finetuned model is tested: MultiPL-E's MBPP test problems (the same ones in every language by default), pass@k in the sandbox."""
    solutions: SolutionsEvalConfig | None = Field(default_factory=SolutionsEvalConfig)
    """After the finetune, also the likelihood of correct solutions per language (null: skip)."""


class AdaptEvalConfig(BenchmarkConfig, section="adapt"):
    """Few-shot adaptation to a low-resource language: continue pretraining on K tokens of a corpus, score its held-out documents."""

    corpora: list[str] = Field(default_factory=lambda: ["exercism_rust", "exercism_go"])
    """Built-in corpora (exercism_rust, exercism_go, exercism_python, thealgorithms_rust, thealgorithms_go), JSONL files with a text field, or directories of source files."""
    lang: str | None = None
    """Language of corpora that do not say it (a JSONL without `lang`); a directory's language comes from its file extensions."""
    text_field: str = "text"
    """Field holding a document of a JSONL corpus (exercism records: the solution)."""
    budgets: list[int] = Field(default_factory=lambda: [0, 20_000, 100_000, 500_000])
    """Training tokens of the corpus per run (0: the model as it is); each run starts from the same checkpoint."""
    heldout: float = Field(0.2, gt=0, lt=1)
    """Share of a corpus's exercises (or files) held out for measuring, drawn with `seed`; never split by line."""
    epochs: int = Field(1, gt=0)
    """Passes over each budget's tokens."""
    batch_size: int = Field(8, gt=0)
    """Sequences per step."""
    seq_len: int | None = Field(None, gt=1)
    """Tokens per training sequence (default: the model's pretraining length, at most 512)."""
    lr: float = Field(1.0e-4, gt=0)
    """Learning rate (constant after warmup)."""
    warmup_steps: int = Field(10, ge=0)
    """Linear warmup steps."""
    max_docs: int | None = Field(None, gt=0)
    """At most this many held-out documents are scored per corpus."""
    next_line_samples: int = Field(50, ge=0)
    """Next-line completion probes per corpus and budget."""
    seed: int = 0
    """Seed of the held-out split and the training order."""

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v: list[int]) -> list[int]:
        if not v or any(b < 0 for b in v):
            raise ValueError(f"budgets must be a non-empty list of token counts >= 0; found {v}")
        return sorted(set(v))


#: Languages of the vulnerability sets (SOURCES.md, `vuln/`), and the aliases accepted for them.
VULN_LANGUAGES = ("c", "cpp", "java", "python", "go", "rust", "javascript", "csharp", "php")
_VULN_ALIASES = {"c++": "cpp", "cc": "cpp", "cxx": "cpp", "py": "python", "python3": "python", "golang": "go",
                 "rs": "rust", "js": "javascript", "c#": "csharp", "cs": "csharp"}
VULN_SETS = ("juliet_c", "juliet_java", "owasp_java", "owasp_python", "sven", "cweval", "gosec", "cyberseceval")


def normalize_vuln_language(name: str) -> str:
    """A language of :data:`VULN_LANGUAGES` for a name or alias (``c++``, ``py``, ``golang``, ``rs``)."""
    key = _VULN_ALIASES.get(name.lower(), name.lower())
    if key not in VULN_LANGUAGES:
        raise ValueError(f"unknown language {name!r}; expected one of {', '.join(VULN_LANGUAGES)}")
    return key


class VulnEvalConfig(BenchmarkConfig, section="vuln"):
    """Vulnerability detection in languages unseen in finetuning: a classifier finetuned on some languages, F1, precision, recall, balanced accuracy and AUROC on others."""

    train_langs: list[str] = Field(default_factory=lambda: ["c", "cpp", "java"])
    """Languages the classifier is finetuned on; their held-out groups are scored too (in-language)."""
    test_langs: list[str] | None = None
    """Languages it is tested on, none of them a train language (default: python, go; with `test_data`: the file's languages). A language with vulnerable examples only (rust, from CyberSecEval) gets recall alone."""
    sets: list[Literal[VULN_SETS]] = Field(default_factory=lambda: list(VULN_SETS))
    """Built-in sets: Juliet C/C++ and Java (functions), OWASP Benchmark Java and Python, SVEN (Python, C, C++), CWEval, gosec (Go), CyberSecEval (positives only: used only for languages that no other chosen set covers, e.g. rust)."""
    test_data: str | None = None
    """A JSONL file of test examples (`lang`, `label`, `code`; optional `cwe`, `group`, `id`), used instead of the built-in sets for testing."""
    heldout: float = Field(0.2, gt=0, lt=1)
    """Share of each training set's groups (Juliet families, fixes, tasks) held out to score the train languages in-language, drawn with `seed`."""
    limit: int | None = Field(None, gt=0)
    """At most this many examples per test language and per held-out train language (a seeded draw)."""
    max_tokens: int = Field(512, ge=8)
    """Tokens of code per example (longer code keeps its start); at most the model's context and pretraining length."""
    finetune: FinetuneConfig = Field(default_factory=lambda: FinetuneConfig(
        steps=500, batch_size=16, lr=1.0e-4, warmup_steps=50))
    """Classification finetuning of the model and a linear head on its pooled hidden states (decoder: last token; T5: mean of the encoder states): steps, batch_size, lr, warmup_steps, max_train_examples, seed (`eval_every` is not used)."""
    probe: bool = False
    """Train the head alone on frozen (standardized) features instead of finetuning end to end."""
    probe_lr: float = Field(1.0e-2, gt=0)
    """Learning rate of the head when `probe` is on."""
    balance: Literal["weights", "sample", "none"] = "weights"
    """Class imbalance of the training examples: loss weights inverse to class frequency, class-balanced batches, or none."""
    batch_size: int = Field(32, gt=0)
    """Examples per forward pass when scoring."""
    min_cwe_examples: int = Field(20, gt=0)
    """Per-CWE rows for each CWE with at least this many examples in a test language."""
    shortcut: bool = True
    """Also report a bag-of-tokens logistic regression (scikit-learn) trained and tested on the same splits: how much the surface form alone explains."""
    variants: list[Literal["base", "security", "general"]] = Field(default_factory=lambda: ["base"])
    """Continued pretraining before the classification finetuning, each variant from the same weights: base (none), security (`pretrain_tokens` of the train languages' vulnerable and fixed training code), general (as many tokens of general code: the study's code sources, else `general_code`). The first is the headline."""
    pretrain_tokens: int = Field(100_000, gt=0)
    """K: training tokens of the security and of the general continued pretraining (the same K and steps for both)."""
    pretrain_seq_len: int | None = Field(None, gt=1)
    """Tokens per continued-pretraining sequence (default: the model's pretraining length, at most 512)."""
    pretrain_batch_size: int = Field(8, gt=0)
    """Sequences per continued-pretraining step."""
    pretrain_lr: float = Field(1.0e-4, gt=0)
    """Continued-pretraining learning rate (constant after warmup)."""
    pretrain_warmup_steps: int = Field(10, ge=0)
    """Continued-pretraining warmup steps."""
    general_code: list[str] = Field(default_factory=lambda: [
        "code/code_python.jsonl.gz", "code/code_rust.jsonl.gz", "code/code_go.jsonl.gz"])
    """General code (JSONL with a `text` field; globs allowed) when the model is not evaluated with its study's code sources."""
    seed: int = 0
    """Seed of the held-out split, the `limit` draws and the head's initialization."""

    @field_validator("train_langs", "test_langs")
    @classmethod
    def _langs(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("at least one language is needed")
        return list(dict.fromkeys(normalize_vuln_language(x) for x in v))

    @field_validator("variants")
    @classmethod
    def _variants(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("at least one variant is needed (base: no continued pretraining)")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _disjoint(self) -> VulnEvalConfig:
        both = sorted(set(self.train_langs) & set(self.test_langs or ()))
        if both:
            raise ValueError(f"{', '.join(both)} both trained on and tested on; a train language is scored on its "
                             "held-out groups anyway, so leave it out of test_langs")
        return self


class _EvalsBase(_Config):
    def enabled(self) -> dict[str, BenchmarkConfig]:
        """Benchmarks that are configured, by name."""
        return {name: getattr(self, name) for name in type(self).model_fields if getattr(self, name) is not None}


#: The study's ``evals`` section: one optional field per benchmark section (see :class:`BenchmarkConfig`).
EvalsConfig = create_model(
    "EvalsConfig", __base__=_EvalsBase, __doc__="Benchmarks to run on every checkpoint.",
    **{name: (cls | None, Field(None, description=cls.__doc__)) for name, cls in BenchmarkConfig.sections().items()},
)


# ----------------------------------------------------------------------------- analysis and execution


class AnalysisConfig(_Config):
    permutations: int = Field(10_000, gt=0)
    """Permutations for the slope-distribution tests (Petty et al. §5.1)."""
    control_draws: int = Field(21, gt=0, le=1000)
    """Control shuffles per permutation test; the report gives the median p over them."""
    seed: int = 0
    """Seed of the permutation tests and of the seed resamples."""


class ExecutorConfig(_Config):
    kind: Literal["local", "slurm"] = "local"
    """`local`: run jobs on this machine; `slurm`: submit them through submitit."""
    partition: str | None = None
    """SLURM partition."""
    account: str | None = None
    """SLURM account."""
    gpus_per_job: int = Field(1, ge=0)
    """GPUs per training job (more than one: torchrun inside the job)."""
    cpus_per_task: int = Field(8, gt=0)
    """CPUs per job."""
    mem_gb: int = Field(64, gt=0)
    """Memory per job."""
    time_limit_min: int = Field(24 * 60, gt=0)
    """Time limit per job, in minutes."""
    array_parallelism: int = Field(64, gt=0)
    """How many jobs of one array run at once."""
    max_retries: int = Field(2, ge=0)
    """Resubmissions of a preempted or failed job."""
    slurm_args: dict[str, Any] = Field(default_factory=dict)
    """Extra submitit `slurm_*` parameters."""


class StudyConfig(_Config):
    name: str = Field("study", pattern=r"^[A-Za-z0-9_.-]+$")
    """Study name (recorded in every result row)."""
    out: str = "runs/study"
    """Output directory of the study, relative to the working directory."""
    data: DataConfig = Field(default_factory=DataConfig)
    """Sources, tokenizer and sequence length."""
    mixtures: MixturesConfig = Field(default_factory=MixturesConfig)
    """Which mixtures to build."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    """Architecture and size."""
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    """Pretraining optimization."""
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    """Multi-GPU settings."""
    seeds: list[int] = Field(default_factory=lambda: [0])
    """Pretraining seeds (one model per mixture and seed)."""
    evals: EvalsConfig = Field(default_factory=EvalsConfig)
    """Benchmarks to run on every checkpoint."""
    analysis: AnalysisConfig = Field(default_factory=AnalysisConfig)
    """Statistics."""
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    """Where jobs run."""

    def source(self, name: str) -> SourceConfig:
        for s in self.data.sources:
            if s.name == name:
                return s
        raise KeyError(name)


# ----------------------------------------------------------------------------- loading


def _format_loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _pydantic_problems(err: ValidationError) -> list[str]:
    problems = []
    for e in err.errors():
        loc = _format_loc(e["loc"])
        value = e.get("input")
        shown = repr(value) if not isinstance(value, dict) else "{...}"
        if e["type"] == "extra_forbidden":
            problems.append(f"{loc}: unknown field (check its spelling; see `codemix config-reference`)")
        elif e["type"] == "missing":
            problems.append(f"{loc}: required field is missing")
        else:
            problems.append(f"{loc}={shown}: {e['msg']}")
    return problems


def _semantic_problems(cfg: StudyConfig) -> list[str]:
    """Cross-field checks that pydantic's per-field validation cannot express."""
    problems: list[str] = []
    names = [s.name for s in cfg.data.sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        problems.append(f"data.sources: duplicate source names {dupes}; names must be unique")
    if not cfg.data.sources:
        problems.append("data.sources: no sources; declare at least one language and one code source")
    code = {s.name for s in cfg.data.sources if s.code}
    lang = {s.name for s in cfg.data.sources if not s.code}
    for i, s in enumerate(cfg.data.sources):
        if s.kind == "hf" and not s.hf_name:
            problems.append(f"data.sources[{i}] ({s.name}): kind hf needs hf_name")
        if s.kind != "hf" and not s.paths:
            problems.append(f"data.sources[{i}] ({s.name}): kind {s.kind} needs at least one path in `paths`")
    h = cfg.data.heldout_docs
    if isinstance(h, float) and not 0 < h < 1:
        problems.append(f"data.heldout_docs={h}: a fraction must be in (0, 1); use an integer for a count")
    if isinstance(h, int) and h < 0:
        problems.append(f"data.heldout_docs={h}: must be >= 0")

    mix = cfg.mixtures
    if not mix.m:
        problems.append("mixtures.m: empty; give at least one code fraction")
    if len(set(mix.settings)) != len(mix.settings):
        problems.append(f"mixtures.settings={mix.settings}: duplicate settings")
    for setting in mix.settings:
        hi = MAX_M[setting]
        for m in mix.m_for(setting):
            if m < 0:
                problems.append(f"mixtures.m: m={m} is below 0, the minimum for the {setting} setting")
            elif m > hi:
                problems.append(f"mixtures.m: m={m} is above {hi}, the maximum for the {setting} setting")
    if mix.baselines and "additive" not in mix.settings:
        problems.append("mixtures.baselines=true needs the additive setting (baselines are its language-only twins); "
                        "add `additive` to mixtures.settings or set baselines: false")
    if mix.arms and mix.code_weights:
        problems.append("mixtures.code_weights and mixtures.arms are both set; with arms, give each arm its code "
                        "weights and leave code_weights empty")
    weight_sets = [("code_weights", mix.code_weights, code, "code"), ("lang_weights", mix.lang_weights, lang, "language")]
    weight_sets += [(f"arms.{arm}", weights, code, "code") for arm, weights in mix.arms.items()]
    for arm, weights in mix.arms.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", arm):
            problems.append(f"mixtures.arms: arm name {arm!r} may hold only letters, digits, `_`, `.` and `-` "
                            "(it names directories)")
        if not weights:
            problems.append(f"mixtures.arms.{arm}: no code weights; name at least one code source, e.g. {{python: 1.0}}")
    for field, weights, pool, kind in weight_sets:
        for name, w in weights.items():
            if name not in names:
                problems.append(f"mixtures.{field}: unknown source {name!r}; sources are {names}")
            elif name not in pool:
                problems.append(f"mixtures.{field}: source {name!r} is not a {kind} source "
                                f"(set `code: {str(kind == 'code').lower()}` on it or move it to the other weights)")
            if w < 0:
                problems.append(f"mixtures.{field}.{name}={w}: weights must be >= 0")
        if weights and sum(w for w in weights.values() if w > 0) <= 0:
            problems.append(f"mixtures.{field}: all weights are 0; at least one must be positive")
    if any(m > 0 for m in mix.m) and not code:
        problems.append("mixtures.m has values above 0 but no source has `code: true`")
    if not lang:
        problems.append("data.sources: no language source (`code: false`); every mixture needs language tokens")
    if not cfg.seeds:
        problems.append("seeds: empty; give at least one seed")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        problems.append(f"seeds={cfg.seeds}: duplicate seeds")
    mb = cfg.pretrain.micro_batch_size
    if mb is not None and cfg.pretrain.batch_size % mb:
        problems.append(f"pretrain.micro_batch_size={mb} does not divide pretrain.batch_size={cfg.pretrain.batch_size}")
    if cfg.pretrain.warmup_steps and cfg.pretrain.max_steps and cfg.pretrain.warmup_steps > cfg.pretrain.max_steps:
        problems.append(f"pretrain.warmup_steps={cfg.pretrain.warmup_steps} exceeds pretrain.max_steps={cfg.pretrain.max_steps}")
    if cfg.executor.kind == "slurm" and not cfg.executor.partition:
        problems.append("executor.partition: required for `kind: slurm` (your cluster's partition name)")
    return problems


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML) to a raw config dict."""
    out = copy.deepcopy(raw)
    problems = []
    for item in overrides or []:
        if "=" not in item:
            problems.append(f"--set {item!r}: expected KEY=VALUE, e.g. --set pretrain.max_steps=40")
            continue
        key, _, value = item.partition("=")
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                problems.append(f"--set {key}: {part!r} is not a mapping")
                break
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            last = parts[-1]
            if isinstance(node, list) and last.isdigit():
                node[int(last)] = _parse_scalar(value)
            else:
                node[last] = _parse_scalar(value)
    if problems:
        raise ConfigError(problems)
    return out


def _partial_semantic_problems(raw: dict[str, Any]) -> list[str]:
    """Cross-field checks on the sections that did validate, so one pass reports everything."""
    sections, bad = {}, set()
    for name, field in StudyConfig.model_fields.items():
        if name not in raw:
            continue
        try:
            sections[name] = StudyConfig.model_validate({name: raw[name]}).__dict__[name]
        except ValidationError:
            bad.add(name)
    if "data" in bad:  # every cross-field check refers to the sources
        return []
    cfg = StudyConfig.model_construct(**{**StudyConfig().__dict__, **sections})
    return [p for p in _semantic_problems(cfg) if p.split(".")[0].split("=")[0].split(":")[0] not in bad]


def validate_study(raw: dict[str, Any], *, source: str | None = None) -> StudyConfig:
    """Validate a raw dict; raise one ConfigError listing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"top level must be a mapping of fields, found {type(raw).__name__}", source)
    try:
        cfg = StudyConfig.model_validate(raw)
    except ValidationError as err:
        problems = _pydantic_problems(err)
        problems += [p for p in _partial_semantic_problems(raw) if p not in problems]
        raise ConfigError(problems, source) from None
    problems = _semantic_problems(cfg)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def load_study(path: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """Load, override and validate a study YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"study file {str(path)!r} not found; pass a path like studies/demo.yaml")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"YAML syntax error{where}: {getattr(err, 'problem', err)}", str(path)) from None
    if not isinstance(raw, dict):
        raise ConfigError(f"top level must be a mapping of fields, found {type(raw).__name__}", str(path))
    return validate_study(apply_overrides(raw, overrides), source=str(path))


def to_yaml(cfg: BaseModel) -> str:
    buf = io.StringIO()
    yaml.safe_dump(cfg.model_dump(mode="json"), buf, sort_keys=False)
    return buf.getvalue()


def save_config(cfg: BaseModel, directory: str | Path, name: str = "config.yaml") -> Path:
    """Save the resolved config beside an artifact (atomically)."""
    path = Path(directory) / name
    atomic_write_text(path, to_yaml(cfg))
    return path


def print_config(cfg: BaseModel, title: str = "resolved config") -> None:
    """Print the resolved config (rich, to stderr so stdout stays machine-readable)."""
    Console(stderr=True).print(Panel(Syntax(to_yaml(cfg), "yaml", theme="ansi_dark"), title=title, expand=False))


C = TypeVar("C", bound=BaseModel)


def configure(cls: type[C], base: C | None = None, overrides: list[str] | None = None, *,
              where: str = "", **values: Any) -> C:
    """One config section, resolved the way every command resolves it.

    Start from ``base`` (e.g. a study's section) or the defaults, apply ``--set KEY=VALUE``
    ``overrides``, then the explicit ``values`` (command-line flags; ``None`` means not given),
    and validate once: every problem is reported together, in the format of a study file's.
    """
    # only what was set: derived defaults (e.g. mbpp's temperature from n) follow the new values
    raw = apply_overrides(base.model_dump(exclude_unset=True) if base is not None else {}, overrides)
    raw.update({k: v for k, v in values.items() if v is not None})
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_pydantic_problems(err), where or None) from None


def _type_name(ann: Any) -> str:
    text = repr(ann) if not isinstance(ann, type) else ann.__name__
    for noise in ("typing.", "codemix.config.", "<class '", "'>"):
        text = text.replace(noise, "")
    return text.replace("NoneType", "None")


def reference_markdown(model: type[BaseModel] = StudyConfig, prefix: str = "") -> str:
    """The YAML reference: every field, its type, default and docstring (the README embeds it)."""
    rows = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        sub = next((c for c in (ann, *args) if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if field.is_required():
            default = "required"
        else:
            value = field.get_default(call_default_factory=True)
            default = "" if isinstance(value, BaseModel) else f"`{value!r}`"
        doc = (field.description or "").replace("\n", " ").replace("|", "\\|")
        type_name = _type_name(ann).replace("|", "\\|")
        rows.append(f"| `{key}` | `{type_name}` | {default} | {doc} |")
        if sub is not None:
            is_list = getattr(ann, "__origin__", None) is list
            rows.extend(reference_markdown(sub, f"{key}[]." if is_list else f"{key}.").splitlines()[2:])
    return "| field | type | default | meaning |\n|---|---|---|---|\n" + "\n".join(rows)
