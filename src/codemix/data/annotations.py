"""Identifier annotations of a code stream: found once in the data stage, sliced at training time.

CodeT5's identifier-aware objectives (:mod:`codemix.objectives.codet5`) need, for every code
row, which tokens belong to identifiers and which functions carry documentation. Parsing a
row with tree-sitter takes 5-8 ms on the main thread, longer than a whole GPU step of a small
model, so the data stage annotates each code stream once, whole document by whole document,
in worker processes, and a training step slices stored arrays for its window ``[lo, hi)`` of
stream positions. Whole documents also parse better than rows cut out of them, which start
and end mid-statement. The annotator is the row-level code itself
(:func:`~codemix.data.identifiers.token_annotations`), so a window that covers whole
documents gets exactly what a row parse of them gets.

An annotation directory, ``<stream>/annotations``, holds ``meta.json`` (language, counts,
the stream's sha256 and tokenizer hash, the sha256 of every file) and ``.npy`` arrays,
memory-mapped on open so that a multi-GB stream is not read into memory:

- per token: ``occurrence`` (int32; int64 past 2**31 tokens), the identifier occurrence the
  token belongs to, -1 for none; ids are global to the stream and increase along it;
- per occurrence: ``occ_start``, ``occ_end`` (int64), the token range it overlaps;
  ``occ_key`` (int64), an 8-byte blake2b of its name (equal names, equal keys);
  ``occ_maskable`` (bool), as ``TokenIdentifiers.maskable``;
- per documented function, sorted by start: ``pair_start``, ``pair_end`` (int64), the token
  range holding its documentation and code; ``pair_doc``, ``pair_code``, ``pair_name``
  (pairs + 1 int64 pointers): function ``p`` owns rows ``[ptr[p], ptr[p + 1])`` of
  ``doc_runs`` and ``code_runs`` ((runs, 2) int64 token ranges of the documentation — several
  for Rust ``///`` lines — and of the code without it) and of ``names`` (uint8, the
  functions' names concatenated).

Building is parallel over chunks of whole documents, resumable (each annotated chunk is
committed to ``<stream>/.annotations.partial`` — a shard file, then a line in
``commits.jsonl`` — and a rerun annotates only the chunks missing there) and atomic (the
directory appears complete or not at all).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import IO, Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from codemix.data.identifiers import (
    LANGUAGES,
    TokenBytes,
    TokenDocPair,
    TokenIdentifiers,
    check_language,
    token_annotations,
)
from codemix.data.streams import TokenStream
from codemix.data.tokenizer import load_tokenizer, tokenizer_hash
from codemix.errors import DataError
from codemix.io import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    available_cpus,
    fork_pool,
    read_commits,
    read_json,
    sha256_file,
    stable_hash,
)

__all__ = ["CHUNK_TOKENS", "StreamAnnotations", "annotation_dir", "build_annotations", "needs_annotations"]

#: Stream tokens per work unit (whole documents, so a little more): a few seconds of parsing,
#: small enough to spread a small stream over every worker.
CHUNK_TOKENS = 1 << 18
_FORMAT_VERSION = 1
_COUNTS = ("n_tokens", "n_occurrences", "n_tagged", "n_pairs", "n_doc_runs", "n_code_runs", "n_name_bytes")


def needs_annotations(cfg: Any, source: Any) -> bool:
    """Whether a source's stream is annotated: code in a language with a grammar, in an ``arch: t5`` study."""
    return cfg.model.arch == "t5" and source.code and source.lang in LANGUAGES


def annotation_dir(stream_dir: str | Path) -> Path:
    """Where the annotations of the stream at ``stream_dir`` live."""
    return Path(stream_dir) / "annotations"


def _name_key(name: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "little", signed=True)


def _layout(meta: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """Shape and dtype of every array of an annotation directory with these counts."""
    n_occ, n_pairs = meta["n_occurrences"], meta["n_pairs"]
    i64 = np.dtype(np.int64)
    return {
        "occurrence": ((meta["n_tokens"],), np.dtype(meta["occurrence_dtype"])),
        "occ_start": ((n_occ,), i64),
        "occ_end": ((n_occ,), i64),
        "occ_key": ((n_occ,), i64),
        "occ_maskable": ((n_occ,), np.dtype(bool)),
        "pair_start": ((n_pairs,), i64),
        "pair_end": ((n_pairs,), i64),
        "pair_doc": ((n_pairs + 1,), i64),
        "pair_code": ((n_pairs + 1,), i64),
        "pair_name": ((n_pairs + 1,), i64),
        "doc_runs": ((meta["n_doc_runs"], 2), i64),
        "code_runs": ((meta["n_code_runs"], 2), i64),
        "names": ((meta["n_name_bytes"],), np.dtype(np.uint8)),
    }


def _indices(runs: np.ndarray) -> np.ndarray:
    """Token ranges ``(n, 2)`` -> the sorted indices they cover."""
    return np.concatenate([np.arange(s, e, dtype=np.int64) for s, e in runs.tolist()])


def _runs(indices: np.ndarray) -> np.ndarray:
    """Sorted unique indices -> the token ranges ``(n, 2)`` that cover exactly them."""
    breaks = np.flatnonzero(np.diff(indices) != 1) + 1
    return np.stack([indices[np.r_[0, breaks]], indices[np.r_[breaks - 1, len(indices) - 1]] + 1], axis=1)


# ----------------------------------------------------------------------------- reading


class StreamAnnotations:
    """The annotations of one code stream, memory-mapped, for windows ``[lo, hi)`` of stream positions.

    Opening checks that they belong to the stream as it is now (its sha256 in ``meta.json``)
    and that every array has the size ``meta.json`` gives (a truncated file is caught at once).
    """

    def __init__(self, stream_dir: str | Path):
        self.stream_dir = Path(stream_dir)
        self.dir = annotation_dir(stream_dir)
        meta = read_json(self.dir / "meta.json")
        if not meta:
            raise DataError(f"no identifier annotations at {self.dir} (meta.json missing: never built, or the build "
                            f"was interrupted); rerun `codemix mix STUDY.yaml`, which annotates the code streams of "
                            f"t5 studies")
        stream_sha = read_json(self.stream_dir / "meta.json").get("sha256")
        if meta.get("version") != _FORMAT_VERSION or meta.get("stream_sha256") != stream_sha:
            made_for = f"stream sha256 {str(meta.get('stream_sha256'))[:16]}…, format {meta.get('version')}"
            raise DataError(f"the identifier annotations at {self.dir} do not belong to the stream there (made for "
                            f"{made_for}; the stream is now {str(stream_sha)[:16]}…, format {_FORMAT_VERSION}); "
                            f"rerun `codemix mix STUDY.yaml` to annotate it again")
        self.meta = meta
        self.lang: str = meta["lang"]
        self.n_tokens: int = meta["n_tokens"]
        self.arrays: dict[str, np.ndarray] = {}  # the files of _layout, by name
        for name, (shape, dtype) in _layout(meta).items():
            path = self.dir / f"{name}.npy"
            try:
                array = np.load(path, mmap_mode="r")
            except (OSError, ValueError):  # missing, or shorter than its header says
                array = None
            if array is None or array.shape != shape or array.dtype != dtype:
                found = "missing or truncated" if array is None else f"{array.shape} {array.dtype}"
                raise DataError(f"{path} is {found}, expected {shape} {dtype} (meta.json); delete {self.dir} and "
                                f"rerun `codemix mix STUDY.yaml`")
            self.arrays[name] = np.asarray(array)  # a plain view of the map: slicing a np.memmap is slower

    def _check_window(self, lo: int, hi: int) -> None:
        if not 0 <= lo < hi <= self.n_tokens:
            raise ValueError(f"window [{lo}, {hi}) is not a non-empty range of the stream's {self.n_tokens} tokens")

    def identifiers(self, lo: int, hi: int) -> TokenIdentifiers:
        """The identifiers of stream positions ``[lo, hi)``, as ``token_identifiers`` gives them for a row.

        Occurrences are those with a token in the window, numbered from 0 in order; ``names``
        holds their 64-bit name keys. An occurrence the window cuts (it has tokens outside)
        stays tagged but is not maskable: hiding part of a name would leak the rest.
        ``spans`` are relative to ``lo`` (a cut occurrence's reaches outside ``[0, hi - lo)``).
        """
        self._check_window(lo, hi)
        a = self.arrays
        occurrence = a["occurrence"][lo:hi].astype(np.int64)
        first = int(np.searchsorted(a["occ_end"], lo, "right"))  # occurrences are sorted by start and by end
        last = int(np.searchsorted(a["occ_start"], hi, "left"))
        start, end = a["occ_start"][first:last], a["occ_end"][first:last]
        maskable = a["occ_maskable"][first:last] & (start >= lo) & (end <= hi)
        return TokenIdentifiers(
            tagged=occurrence >= 0,
            occurrence=np.where(occurrence >= 0, occurrence - first, -1),
            names=a["occ_key"][first:last].tolist(),
            maskable=maskable.tolist(),
            spans=np.stack([start - lo, end - lo], axis=1),
        )

    def doc_pairs(self, lo: int, hi: int) -> list[TokenDocPair]:
        """Documented functions whose documentation and code lie wholly in ``[lo, hi)``, indices relative to ``lo``.

        As ``token_doc_pairs`` gives them: ``name`` is the function's name (bytes), ``doc`` and
        ``code`` sorted unique token indices, ``code`` without the documentation's tokens.
        """
        self._check_window(lo, hi)
        a = self.arrays
        out = []
        for p in range(int(np.searchsorted(a["pair_start"], lo)), int(np.searchsorted(a["pair_start"], hi))):
            if a["pair_end"][p] > hi:
                continue
            doc = _indices(a["doc_runs"][a["pair_doc"][p]: a["pair_doc"][p + 1]]) - lo
            code = _indices(a["code_runs"][a["pair_code"][p]: a["pair_code"][p + 1]]) - lo
            out.append(TokenDocPair(bytes(a["names"][a["pair_name"][p]: a["pair_name"][p + 1]]), doc, code))
        return out


# ----------------------------------------------------------------------------- building

_worker: tuple[TokenStream, TokenBytes, str] | None = None


def _init_worker(stream_dir: str, tokenizer_path: str, lang: str) -> None:
    global _worker
    _worker = (TokenStream(stream_dir), TokenBytes(load_tokenizer(tokenizer_path)), lang)


def _annotate_chunk(lo: int, hi: int) -> dict[str, np.ndarray]:
    """The arrays of stream tokens ``[lo, hi)`` (whole documents), with token positions relative to ``lo``.

    Occurrence ids and pointers (``pair_doc``, ``pair_code``, ``pair_name``) count from 0 here;
    assembly shifts them.
    """
    assert _worker is not None
    stream, token_bytes, lang = _worker
    found, pairs = token_annotations(np.asarray(stream.tokens[lo:hi]), lang, token_bytes)
    pairs = sorted(pairs, key=lambda p: min(p.doc[0], p.code[0]))  # windows find pairs by binary search on this
    doc_runs, code_runs = [_runs(p.doc) for p in pairs], [_runs(p.code) for p in pairs]

    def pointers(items: list) -> np.ndarray:
        return np.cumsum([0] + [len(x) for x in items], dtype=np.int64)

    def stacked(runs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(runs) if runs else np.zeros((0, 2), dtype=np.int64)

    return {
        "occurrence": found.occurrence,
        "occ_start": found.spans[:, 0].copy(),
        "occ_end": found.spans[:, 1].copy(),
        "occ_key": np.array([_name_key(n) for n in found.names], dtype=np.int64),
        "occ_maskable": np.array(found.maskable, dtype=bool),
        "pair_start": np.array([min(p.doc[0], p.code[0]) for p in pairs], dtype=np.int64),
        "pair_end": np.array([max(p.doc[-1], p.code[-1]) + 1 for p in pairs], dtype=np.int64),
        "pair_doc": pointers(doc_runs),
        "pair_code": pointers(code_runs),
        "pair_name": pointers([p.name for p in pairs]),
        "doc_runs": stacked(doc_runs),
        "code_runs": stacked(code_runs),
        "names": np.frombuffer(b"".join(p.name for p in pairs), dtype=np.uint8),
    }


def _chunk_bounds(doc_ends: np.ndarray, n_tokens: int, chunk_tokens: int) -> list[int]:
    """Offsets that cut the stream into chunks of whole documents: the first document end at or past each
    multiple of ``chunk_tokens``."""
    targets = np.arange(chunk_tokens, n_tokens, chunk_tokens)
    cuts = doc_ends[np.searchsorted(doc_ends, targets)]  # the first document end at or past each target
    return np.unique(np.concatenate([[0], cuts, [n_tokens]]).astype(np.int64)).tolist()


def _check_stream(stream: TokenStream, lang: str, tok_hash: str, tokenizer_path: Path) -> None:
    problems = []
    if stream.meta.get("lang") != lang:
        problems.append(f"it holds language {stream.meta.get('lang')!r}, not {lang!r}")
    if stream.meta.get("tokenizer_hash") != tok_hash:
        problems.append(f"it was tokenized with tokenizer {stream.meta.get('tokenizer_hash')}, not with "
                        f"{tokenizer_path} ({tok_hash})")
    if problems:
        raise DataError(f"cannot annotate the stream at {stream.dir}: {'; '.join(problems)}; annotate it as the "
                        f"language of its source with the study's tokenizer.json")


def build_annotations(stream_dir: str | Path, lang: str, tokenizer_path: str | Path, *,
                      workers: int | None = None, progress: bool = True) -> Path:
    """Annotate the code stream at ``stream_dir`` (in ``lang``, tokenized with ``tokenizer_path``).

    Returns :func:`annotation_dir`. A no-op when the annotations there were made from this
    stream (its tokens' sha256), tokenizer, language and format. ``workers`` processes
    (default: one per available CPU) annotate chunks of whole documents.
    """
    lang = check_language(lang)
    stream_dir, tokenizer_path = Path(stream_dir), Path(tokenizer_path)
    stream = TokenStream(stream_dir)
    tok_hash = tokenizer_hash(tokenizer_path)
    _check_stream(stream, lang, tok_hash, tokenizer_path)
    key = stable_hash({"stream": stream.meta["sha256"], "tokenizer": tok_hash, "lang": lang,
                       "version": _FORMAT_VERSION})
    out = annotation_dir(stream_dir)
    if read_json(out / "meta.json").get("key") == key:
        return out

    bounds = _chunk_bounds(stream.doc_ends, stream.n_tokens, CHUNK_TOKENS)
    work = stream_dir / ".annotations.partial"
    work_key = stable_hash({"annotations": key, "bounds": bounds})
    if work.exists() and read_json(work / "key.json").get("key") != work_key:
        shutil.rmtree(work)
    (work / "shards").mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "key.json", {"key": work_key})
    commits = read_commits(work / "commits.jsonl")
    _annotate_chunks(stream, tokenizer_path, lang, bounds, work, commits, workers=workers or available_cpus(),
                     progress=progress)

    meta = {"key": key, "version": _FORMAT_VERSION, "lang": lang, "stream_sha256": stream.meta["sha256"],
            "tokenizer_hash": tok_hash, "n_docs": stream.n_docs,
            "occurrence_dtype": "int32" if stream.n_tokens < 2**31 else "int64",  # ids <= tokens
            **{field: sum(commits[i][field] for i in range(len(bounds) - 1)) for field in _COUNTS}}
    with atomic_dir(out, overwrite=True) as tmp:
        _assemble(tmp, work, len(bounds) - 1, meta)
    shutil.rmtree(work, ignore_errors=True)
    return out


def _annotate_chunks(stream: TokenStream, tokenizer_path: Path, lang: str, bounds: list[int], work: Path,
                     commits: dict[int, dict[str, Any]], *, workers: int, progress: bool) -> None:
    """Annotate and commit every chunk that ``commits`` lacks."""
    todo = [i for i in range(len(bounds) - 1) if i not in commits]
    args = (str(stream.dir), str(tokenizer_path), lang)
    workers = min(workers, len(todo))
    # forked before the progress bar starts its thread
    pool = fork_pool(workers, _init_worker, args) if workers > 1 else None
    if pool is None:
        _init_worker(*args)
    bar = Progress(TextColumn(f"annotating {stream.dir.name}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("tokens"), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
                   disable=not progress)
    try:
        if pool is None:
            results = ((i, _annotate_chunk(bounds[i], bounds[i + 1])) for i in todo)
        else:
            futures = {pool.submit(_annotate_chunk, bounds[i], bounds[i + 1]): i for i in todo}
            results = ((futures[f], f.result()) for f in cf.as_completed(futures))
        with bar, open(work / "commits.jsonl", "a") as log:
            task = bar.add_task("", total=stream.n_tokens, completed=sum(c["n_tokens"] for c in commits.values()))
            for i, arrays in results:
                commits[i] = _commit(work, log, i, arrays)
                bar.advance(task, commits[i]["n_tokens"])
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)


def _commit(work: Path, log: IO[str], i: int, arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """Write chunk ``i``'s shard, then its line in the commit log (a kill between the two loses only the chunk)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(work / "shards" / f"{i:06d}.npz", buf.getvalue())
    counts = {"n_tokens": len(arrays["occurrence"]), "n_occurrences": len(arrays["occ_key"]),
              "n_tagged": int((arrays["occurrence"] >= 0).sum()), "n_pairs": len(arrays["pair_start"]),
              "n_doc_runs": len(arrays["doc_runs"]), "n_code_runs": len(arrays["code_runs"]),
              "n_name_bytes": len(arrays["names"])}
    log.write(json.dumps({"chunk": i, **counts}) + "\n")
    log.flush()
    os.fsync(log.fileno())
    return counts


def _assemble(tmp: Path, work: Path, n_chunks: int, meta: dict[str, Any]) -> None:
    """Concatenate the committed shards into the arrays of :func:`_layout`, then write ``meta.json``.

    Shards count tokens, occurrences, runs and name bytes from 0; here each is shifted by
    what the shards before it hold.
    """
    out = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
           for name, (shape, dtype) in _layout(meta).items()}
    for ptr in ("pair_doc", "pair_code", "pair_name"):
        out[ptr][0] = 0
    at = dict.fromkeys(("tokens", "occurrences", "pairs", "doc_runs", "code_runs", "names"), 0)
    for i in range(n_chunks):
        with np.load(work / "shards" / f"{i:06d}.npz") as shard:
            s = {name: shard[name] for name in shard.files}
        t, o, p = at["tokens"], at["occurrences"], at["pairs"]
        n_tok, n_occ, n_pairs = len(s["occurrence"]), len(s["occ_key"]), len(s["pair_start"])
        out["occurrence"][t: t + n_tok] = np.where(s["occurrence"] >= 0, s["occurrence"] + o, -1)
        for name in ("occ_start", "occ_end"):
            out[name][o: o + n_occ] = s[name] + t
        for name in ("occ_key", "occ_maskable"):
            out[name][o: o + n_occ] = s[name]
        for name in ("pair_start", "pair_end"):
            out[name][p: p + n_pairs] = s[name] + t
        for ptr, rows, shift in (("pair_doc", "doc_runs", t), ("pair_code", "code_runs", t), ("pair_name", "names", 0)):
            r = at[rows]
            out[ptr][p + 1: p + n_pairs + 1] = s[ptr][1:] + r
            out[rows][r: r + len(s[rows])] = s[rows] + shift
            at[rows] += len(s[rows])
        at["tokens"] += n_tok
        at["occurrences"] += n_occ
        at["pairs"] += n_pairs
    for array in out.values():
        array.flush()
    del out
    files = {f"{name}.npy": sha256_file(tmp / f"{name}.npy") for name in _layout(meta)}
    atomic_write_json(tmp / "meta.json", {**meta, "files": files})
