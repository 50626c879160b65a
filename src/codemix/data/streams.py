"""Token streams: each source tokenized once, in its fixed shuffled document order.

A stream directory holds ``tokens.bin`` (every document's tokens followed by ``<eos>``,
concatenated; uint16 when the vocabulary fits, else uint32), ``docs.npy`` (int64 end
offset of each document) and ``meta.json`` (counts, tokenizer hash, sha256 of both files).
Per source ``S`` the training documents go to ``streams/S/`` and the held-out documents —
the first ``heldout_docs`` of the shuffled order, split off before anything else — to
``streams/S/heldout/``, which also keeps their texts (``docs.jsonl.gz``) for evaluations.

Building a stream is the expensive step of data preparation, so it is

* **parallel**: the main process reads documents and cuts them into chunks of about
  ``CHUNK_CHARS`` characters; worker processes tokenize chunks; the main process writes
  them in order;
* **budgeted**: it stops at the first document where the training tokens reach
  ``budget_tokens`` (the most any mixture of the study needs). Because the document order
  is fixed, a stream built with a smaller budget is a prefix of one built with a larger
  budget;
* **resumable**: each tokenized chunk is committed to a work directory beside the output
  (a shard file, then one line in ``commits.jsonl``); after a kill, a rerun re-reads the
  documents but only tokenizes chunks that were not committed, then concatenates.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import functools
import gzip
import hashlib
import io
import itertools
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from codemix.config import DataConfig, SourceConfig
from codemix.data.sources import Document, heldout_count, shuffled_documents
from codemix.data.tokenizer import EOS, load_tokenizer, tokenizer_hash
from codemix.errors import DataError
from codemix.io import (
    atomic_dir,
    atomic_write_bytes,
    atomic_write_json,
    available_cpus,
    fork_pool,
    read_commits,
    read_json,
    stable_hash,
)

__all__ = ["CHUNK_CHARS", "TokenStream", "build_stream", "encode_documents", "write_stream"]

#: Characters of text per tokenization chunk: small enough to parallelize a small budget,
#: large enough that inter-process overhead stays a few percent.
CHUNK_CHARS = 256 * 1024
_FORMAT_VERSION = 1


class TokenStream:
    """A token stream directory, memory-mapped.

    Opening checks the file sizes against ``meta.json`` (a truncated file is caught at
    once); :meth:`verify` checks the sha256 of both files (a corrupted byte is caught).
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        meta_path = self.dir / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"no token stream at {self.dir} (meta.json missing); build it with `codemix mix STUDY.yaml`")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        self.dtype = np.dtype(self.meta["dtype"])
        self.n_tokens: int = int(self.meta["n_tokens"])
        self.n_docs: int = int(self.meta["n_docs"])
        tokens_path = self.dir / "tokens.bin"
        expected = self.n_tokens * self.dtype.itemsize
        found = tokens_path.stat().st_size if tokens_path.is_file() else None
        if found != expected:
            raise DataError(f"token file {tokens_path} is truncated or missing: expected {expected} bytes "
                            f"({self.n_tokens} tokens), found {found}; delete {self.dir} and rerun `codemix mix`")
        self.tokens: np.ndarray = (np.memmap(tokens_path, dtype=self.dtype, mode="r") if self.n_tokens
                                   else np.zeros(0, dtype=self.dtype))
        self.doc_ends: np.ndarray = np.load(self.dir / "docs.npy")
        if len(self.doc_ends) != self.n_docs or (self.n_docs and int(self.doc_ends[-1]) != self.n_tokens):
            raise DataError(f"document index {self.dir / 'docs.npy'} does not match meta.json "
                            f"({len(self.doc_ends)} documents, expected {self.n_docs}); delete {self.dir} and rerun `codemix mix`")

    def __len__(self) -> int:
        return self.n_tokens

    def doc(self, i: int) -> np.ndarray:
        """Tokens of document ``i``, its trailing ``<eos>`` included."""
        start = int(self.doc_ends[i - 1]) if i > 0 else 0
        return np.asarray(self.tokens[start: int(self.doc_ends[i])])

    def verify(self) -> None:
        """Check both files against the sha256 recorded when they were written; raise DataError if not."""
        for name, key in (("tokens.bin", "sha256"), ("docs.npy", "docs_sha256")):
            path = self.dir / name
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    h.update(block)
            if h.hexdigest() != self.meta[key]:
                raise DataError(f"{path} is corrupt: sha256 {h.hexdigest()[:16]}… does not match the recorded "
                                f"{self.meta[key][:16]}…; delete {self.dir} and rerun `codemix mix` to rebuild it")


# ----------------------------------------------------------------------------- encoding

_worker_tokenizer = None
_worker_eos = 0


def _init_worker(tokenizer_path: str, *, single_threaded: bool = False) -> None:
    global _worker_tokenizer, _worker_eos
    if single_threaded:
        # One thread per worker process: the processes are the parallelism. This also keeps a
        # forked child off the parent's Rust thread pool, which does not exist after fork
        # (tokenizers reads this variable on every call).
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = load_tokenizer(tokenizer_path)
    _worker_eos = _worker_tokenizer.token_to_id(EOS)


def _encode_chunk(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokens of the texts, each followed by <eos>, concatenated; and each text's length in tokens."""
    assert _worker_tokenizer is not None
    encode = getattr(_worker_tokenizer, "encode_batch_fast", _worker_tokenizer.encode_batch)
    encodings = encode(texts, add_special_tokens=False)
    lens = np.fromiter((len(e.ids) + 1 for e in encodings), dtype=np.int64, count=len(encodings))
    tokens = np.empty(int(lens.sum()), dtype=np.uint32)
    pos = 0
    for e, n in zip(encodings, lens):
        tokens[pos: pos + n - 1] = e.ids
        tokens[pos + n - 1] = _worker_eos
        pos += n
    return tokens, lens


def encode_documents(texts: list[str], tokenizer_path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Tokenize texts in this process (for small inputs: held-out documents, tests)."""
    _init_worker(str(tokenizer_path))
    return _encode_chunk(texts)


def _dtype_for(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def write_stream(directory: Path, tokens: np.ndarray, lens: np.ndarray, meta: dict[str, Any]) -> None:
    """Write tokens.bin, docs.npy and meta.json into an (already temporary) directory."""
    (directory / "tokens.bin").write_bytes(tokens.tobytes())
    _write_docs_and_meta(directory, lens, meta, hashlib.sha256(tokens.tobytes()).hexdigest(), len(tokens))


def _write_docs_and_meta(directory: Path, lens: np.ndarray, meta: dict[str, Any], sha: str, n_tokens: int) -> None:
    buf = io.BytesIO()
    np.save(buf, np.cumsum(lens, dtype=np.int64))
    (directory / "docs.npy").write_bytes(buf.getvalue())
    meta = {**meta, "n_tokens": int(n_tokens), "n_docs": int(len(lens)), "sha256": sha,
            "docs_sha256": hashlib.sha256(buf.getvalue()).hexdigest()}
    (directory / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------- building


def _chunks(docs: Iterator[Document], chunk_chars: int) -> Iterator[list[Document]]:
    chunk: list[Document] = []
    size = 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc.text)
        if size >= chunk_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _complete_stream(directory: Path | None, key: str) -> dict[str, Any] | None:
    """The training ``meta.json`` of a complete stream with identity ``key`` in ``directory``, else None."""
    if directory is None:
        return None
    meta, held = read_json(directory / "meta.json"), read_json(directory / "heldout" / "meta.json")
    return meta if meta.get("key") == key and held.get("key") == key else None


def stream_holds(meta: dict[str, Any], budget_tokens: int) -> bool:
    """Whether a stream's training tokens cover ``budget_tokens`` (or its source has no more)."""
    return meta["n_tokens"] >= budget_tokens or bool(meta.get("exhausted", False))


def _write_heldout(directory: Path, docs: list[Document], tokenizer_path: Path, meta: dict[str, Any]) -> None:
    directory.mkdir()
    tokens, lens = encode_documents([d.text for d in docs], tokenizer_path) if docs else (
        np.zeros(0, np.uint32), np.zeros(0, np.int64))
    write_stream(directory, tokens.astype(np.dtype(meta["dtype"])), lens, {**meta, "split": "heldout"})
    lines = "".join(json.dumps({"doc_id": d.doc_id, "text": d.text, "lang": d.lang}) + "\n" for d in docs)
    with open(directory / "docs.jsonl.gz", "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        gz.write(lines.encode("utf-8"))


def build_stream(
    source: SourceConfig,
    data: DataConfig,
    tokenizer_path: str | Path,
    out_dir: str | Path,
    *,
    budget_tokens: int,
    extend: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    chunk_chars: int = CHUNK_CHARS,
    _stop_after_chunks: int | None = None,
) -> TokenStream:
    """Tokenize ``source`` into ``out_dir`` (training documents) and ``out_dir/heldout``.

    Training documents are tokenized until the stream holds at least ``budget_tokens``
    tokens (or the source runs out; ``meta.json`` then says ``exhausted: true``).
    Idempotent: a complete stream built from the same source, tokenizer and held-out
    split with at least ``budget_tokens`` tokens is returned as is.

    A stream's identity (``meta["key"]``) does not include its budget: a larger budget
    *extends* it. ``extend`` names a complete, shorter stream of the same identity (by
    default ``out_dir`` itself); its documents are kept byte for byte as the prefix and only
    the documents after them are tokenized, so everything built on the prefix stays valid.
    ``_stop_after_chunks`` stops after committing that many new chunks, as a kill would (for tests).
    """
    out_dir = Path(out_dir)
    tokenizer_path = Path(tokenizer_path)
    tok_hash = tokenizer_hash(tokenizer_path)
    key = stable_hash({"source": source.model_dump(), "heldout": data.heldout_docs, "seed": data.shuffle_seed,
                       "tokenizer": tok_hash, "chunk_chars": chunk_chars, "version": _FORMAT_VERSION})
    current = _complete_stream(out_dir, key)
    if current is not None and stream_holds(current, budget_tokens):
        return TokenStream(out_dir)
    prefix_dir = Path(extend) if extend is not None else (out_dir if current is not None else None)
    prefix = _complete_stream(prefix_dir, key)
    if extend is not None and prefix is None:
        raise DataError(f"cannot extend {extend}: it is not a complete stream of source {source.name!r} with the "
                        "same tokenizer and held-out split; delete it and rebuild")
    prefix_docs = prefix["n_docs"] if prefix is not None else 0

    vocab = load_tokenizer(tokenizer_path).get_vocab_size()
    dtype = _dtype_for(vocab)
    base_meta = {"source": source.name, "lang": source.lang, "code": source.code, "tokenizer_hash": tok_hash,
                 "vocab_size": vocab, "dtype": dtype.name, "key": key, "version": _FORMAT_VERSION}

    work = out_dir.parent / f".{out_dir.name}.partial"
    work_key = {"key": key, "prefix_docs": prefix_docs}
    if work.exists() and read_json(work / "key.json") != work_key:
        shutil.rmtree(work)
    (work / "shards").mkdir(parents=True, exist_ok=True)
    atomic_write_json(work / "key.json", work_key)
    commits = read_commits(work / "commits.jsonl")

    n_heldout = heldout_count(source, data.heldout_docs)
    docs = shuffled_documents(source, data.shuffle_seed)
    heldout: list[Document] = list(itertools.islice(docs, n_heldout))  # split off before anything trains
    if len(heldout) < n_heldout and budget_tokens > 0:
        raise DataError(f"source {source.name!r} has only {len(heldout)} documents and data.heldout_docs="
                        f"{data.heldout_docs} holds out {n_heldout}, leaving none for training; "
                        f"lower data.heldout_docs or add documents")
    for _ in itertools.islice(docs, prefix_docs):  # the prefix's documents are read, not tokenized again
        pass
    prefix_tokens = prefix["n_tokens"] if prefix is not None else 0

    _, exhausted, stopped = _tokenize_training(
        source, docs, tokenizer_path, work, commits, budget_tokens=budget_tokens - prefix_tokens, dtype=dtype,
        workers=workers or data.workers or available_cpus(), progress=progress, chunk_chars=chunk_chars,
        stop_after=_stop_after_chunks)
    if stopped:
        raise KeyboardInterrupt(f"stopped after {_stop_after_chunks} chunks (test hook)")

    with atomic_dir(out_dir, overwrite=True) as tmp:
        _assemble(tmp, work, commits, budget_tokens, {**base_meta, "split": "train", "budget_tokens": budget_tokens,
                                                      "exhausted": exhausted},
                  prefix=prefix_dir if prefix is not None else None)
        if prefix is not None:
            shutil.copytree(prefix_dir / "heldout", tmp / "heldout")
        else:
            _write_heldout(tmp / "heldout", heldout, tokenizer_path, base_meta)
    shutil.rmtree(work, ignore_errors=True)
    return TokenStream(out_dir)


def _tokenize_training(
    source: SourceConfig,
    docs: Iterator[Document],
    tokenizer_path: Path,
    work: Path,
    commits: dict[int, dict[str, Any]],
    *,
    budget_tokens: int,
    dtype: np.dtype,
    workers: int,
    progress: bool,
    chunk_chars: int,
    stop_after: int | None,
) -> tuple[int, bool, bool]:
    """Commit chunks until the budget is reached. Returns (tokens committed, source exhausted, stopped early)."""
    total = 0
    new_commits = 0
    exhausted = True
    pool: cf.Executor | None = None
    pending: collections.deque[tuple[int, cf.Future]] = collections.deque()
    max_in_flight = 2 * workers
    log = open(work / "commits.jsonl", "a")

    bar = Progress(TextColumn(f"tokenizing {source.name}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("tokens"), TimeRemainingColumn(), console=Console(stderr=True), transient=True,
                   disable=not progress)

    def commit(index: int, tokens: np.ndarray, lens: np.ndarray) -> None:
        atomic_write_bytes(work / "shards" / f"{index:06d}.bin", tokens.astype(dtype).tobytes())
        buf = io.BytesIO()
        np.save(buf, lens)
        atomic_write_bytes(work / "shards" / f"{index:06d}.lens.npy", buf.getvalue())
        entry = {"chunk": index, "n_docs": int(len(lens)), "n_tokens": int(lens.sum())}
        log.write(json.dumps(entry) + "\n")
        log.flush()
        os.fsync(log.fileno())
        commits[index] = entry

    try:
        if workers > 1 and budget_tokens > 0:
            pool = _start_pool(workers, tokenizer_path)
        with bar:
            task = bar.add_task("", total=budget_tokens or None)
            chunk_iter = enumerate(_chunks(docs, chunk_chars)) if budget_tokens > 0 else iter(())
            done_reading = False
            while True:
                # Keep up to max_in_flight chunks in workers; committed chunks cost only the re-read.
                while not done_reading and len(pending) < max_in_flight and total < budget_tokens:
                    try:
                        index, chunk = next(chunk_iter)
                    except StopIteration:
                        done_reading = True
                        break
                    if index in commits:
                        pending.append((index, None))
                        continue
                    texts = [d.text for d in chunk]
                    if workers <= 1:
                        fut: cf.Future = cf.Future()
                        _init_worker_once(tokenizer_path)
                        fut.set_result(_encode_chunk(texts))
                    else:
                        assert pool is not None
                        fut = pool.submit(_encode_chunk, texts)
                    pending.append((index, fut))
                if not pending:
                    break
                index, fut = pending.popleft()
                if fut is not None:
                    tokens, lens = fut.result()
                    commit(index, tokens, lens)
                    new_commits += 1
                total += commits[index]["n_tokens"]
                bar.update(task, completed=min(total, budget_tokens))
                if total >= budget_tokens:
                    exhausted = False
                    break
                if stop_after is not None and new_commits >= stop_after:
                    return total, False, True
            if budget_tokens <= 0:
                exhausted = False
    finally:
        log.close()
        if pool is not None:
            for _, f in pending:
                if f is not None:
                    f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
    return total, exhausted, False


_inline_loaded: str | None = None


def _start_pool(workers: int, tokenizer_path: Path) -> cf.ProcessPoolExecutor:
    """Tokenizing worker processes (:func:`codemix.io.fork_pool`), forked before the progress bar starts.

    Forking is safe here because a worker only tokenizes: it never uses torch, prints, or the
    parent's Rust thread pool (its tokenizer runs single-threaded, set before the first call).
    """
    return fork_pool(workers, functools.partial(_init_worker, single_threaded=True), (str(tokenizer_path),))


def _init_worker_once(tokenizer_path: Path) -> None:
    global _inline_loaded
    if _inline_loaded != str(tokenizer_path):
        _init_worker(str(tokenizer_path))
        _inline_loaded = str(tokenizer_path)


def _assemble(tmp: Path, work: Path, commits: dict[int, dict[str, Any]], budget_tokens: int,
              meta: dict[str, Any], *, prefix: Path | None = None) -> None:
    """Concatenate the prefix stream (if any) and the committed chunks in order, up to the
    document where the budget is reached."""
    sha = hashlib.sha256()
    all_lens: list[np.ndarray] = []
    total = 0
    with open(tmp / "tokens.bin", "wb") as out:
        if prefix is not None:
            with open(prefix / "tokens.bin", "rb") as f:
                while block := f.read(1 << 22):
                    out.write(block)
                    sha.update(block)
            ends = np.load(prefix / "docs.npy")
            all_lens.append(np.diff(ends, prepend=0))
            total = int(ends[-1]) if len(ends) else 0
        index = 0
        while total < budget_tokens and index in commits:
            lens = np.load(work / "shards" / f"{index:06d}.lens.npy")
            data = (work / "shards" / f"{index:06d}.bin").read_bytes()
            ends = total + np.cumsum(lens)
            if ends[-1] >= budget_tokens:  # keep documents up to the first that reaches the budget
                keep = int(np.searchsorted(ends, budget_tokens)) + 1
                lens = lens[:keep]
                data = data[: int(lens.sum()) * np.dtype(meta["dtype"]).itemsize]
            out.write(data)
            sha.update(data)
            all_lens.append(lens)
            total += int(lens.sum())
            index += 1
    lens = np.concatenate(all_lens) if all_lens else np.zeros(0, np.int64)
    _write_docs_and_meta(tmp, lens, meta, sha.hexdigest(), total)
