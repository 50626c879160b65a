"""Source adapters: every kind of corpus becomes a stream of :class:`Document`.

A source (``SourceConfig``) names files in one of a few formats; :func:`iter_documents`
reads them in file order, one document at a time (a whole-book JSONL line is the most
that is held), and :func:`shuffled_documents` puts them in the source's one fixed
shuffled order. Every mixture reads that same order, which is what makes mixtures nest:
a mixture with more of a source holds a prefix-superset of the documents of one with less.

The shuffle is a seeded shuffle buffer, so memory stays bounded on corpora larger than
RAM; a source smaller than the buffer (every corpus of the mirror) gets a uniform
permutation.
"""

from __future__ import annotations

import gzip
import io
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import datasets
import pyarrow.parquet as pq

from codemix.config import SourceConfig
from codemix.data.fetch import data_path
from codemix.errors import DataError

__all__ = [
    "Document",
    "EXTENSION_LANGS",
    "iter_documents",
    "shuffled_documents",
    "count_documents",
    "heldout_count",
]

#: Language of a file in a `dir` source, by extension.
EXTENSION_LANGS = {
    ".py": "python", ".rs": "rust", ".go": "go", ".js": "javascript", ".ts": "typescript",
    ".java": "java", ".c": "c", ".h": "c", ".cc": "cpp", ".cpp": "cpp", ".hpp": "cpp",
    ".rb": "ruby", ".sh": "shell", ".txt": "en", ".md": "en",
}

#: Bytes of text the shuffle buffer holds before it starts emitting documents.
SHUFFLE_BUFFER_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class Document:
    """One document: a stable id (file and record number), its text and its language."""

    doc_id: str
    text: str
    lang: str


def _open_text(path: Path) -> IO[str]:
    """Open a text file, transparently gunzipping ``.gz``; decoding errors are replaced, not fatal."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _resolve(src: SourceConfig) -> list[Path]:
    """The source's files; a path with `*` or `?` is a glob (sorted, at least one match)."""
    files: list[Path] = []
    for p in src.paths:
        if any(c in p for c in "*?["):
            root = data_path(".", must_exist=False) if not Path(p).is_absolute() else Path("/")
            pattern = p if not Path(p).is_absolute() else p.lstrip("/")
            matches = sorted(root.glob(pattern))
            if not matches:
                raise DataError(f"source {src.name!r}: no file matches {p!r} under {root}; check the pattern")
            files.extend(matches)
        else:
            files.append(data_path(p))
    return files


def _text_of(record: Any, src: SourceConfig, where: str) -> str:
    if isinstance(record, str):
        return record
    if not isinstance(record, dict) or src.text_field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"source {src.name!r}: {where} has no field {src.text_field!r} (found {keys}); "
                        f"set `text_field` on the source to the field holding the text")
    text = record[src.text_field]
    if not isinstance(text, str):
        raise DataError(f"source {src.name!r}: {where} field {src.text_field!r} is {type(text).__name__}, expected a string")
    return text


def _iter_jsonl(src: SourceConfig, path: Path) -> Iterator[Document]:
    with _open_text(path) as f:
        for n, line in enumerate(f):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"source {src.name!r}: {path} line {n + 1} is not JSON ({err.msg}); "
                                f"kind `jsonl` expects one JSON object per line (use `kind: json` for a JSON array)") from None
            lang = record.get("lang", src.lang) if isinstance(record, dict) and src.code else src.lang
            yield Document(f"{path.name}:{n}", _text_of(record, src, f"{path} line {n + 1}"), lang)


def _iter_json(src: SourceConfig, path: Path) -> Iterator[Document]:
    with _open_text(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as err:
            raise DataError(f"source {src.name!r}: {path} is not a JSON document ({err.msg}); "
                            f"use `kind: jsonl` for one object per line") from None
    if isinstance(data, dict):  # {"data": [...]} and similar wrappers: the one list-valued field
        lists = [v for v in data.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"source {src.name!r}: {path} is a JSON object, expected a list of records "
                            f"(or an object with exactly one list field)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"source {src.name!r}: {path} holds a {type(data).__name__}, expected a list of records")
    for n, record in enumerate(data):
        yield Document(f"{path.name}:{n}", _text_of(record, src, f"{path} item {n}"), src.lang)


def _iter_text(src: SourceConfig, path: Path) -> Iterator[Document]:
    with _open_text(path) as f:
        if src.split == "file":
            yield Document(f"{path.name}:0", f.read(), src.lang)
        elif src.split == "line":
            for n, line in enumerate(f):
                if line.strip():
                    yield Document(f"{path.name}:{n}", line.rstrip("\n"), src.lang)
        else:  # blank_line: paragraphs separated by one or more blank lines
            block: list[str] = []
            start = 0
            for n, line in enumerate(f):
                if line.strip():
                    if not block:
                        start = n
                    block.append(line)
                elif block:
                    yield Document(f"{path.name}:{start}", "".join(block).rstrip("\n"), src.lang)
                    block = []
            if block:
                yield Document(f"{path.name}:{start}", "".join(block).rstrip("\n"), src.lang)


def _iter_parquet(src: SourceConfig, path: Path) -> Iterator[Document]:
    pf = pq.ParquetFile(path)
    if src.text_field not in pf.schema_arrow.names:
        raise DataError(f"source {src.name!r}: {path} has no column {src.text_field!r} "
                        f"(columns: {pf.schema_arrow.names}); set `text_field` on the source")
    n = 0
    for batch in pf.iter_batches(columns=[src.text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if text is not None:
                yield Document(f"{path.name}:{n}", text, src.lang)
            n += 1


def _iter_dir(src: SourceConfig, path: Path) -> Iterator[Document]:
    if not path.is_dir():
        raise DataError(f"source {src.name!r}: kind `dir` expects a directory, found file {path}")
    found = False
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        lang = EXTENSION_LANGS.get(file.suffix)
        if lang is None:
            continue
        found = True
        with _open_text(file) as f:
            yield Document(str(file.relative_to(path)), f.read(), lang)
    if not found:
        raise DataError(f"source {src.name!r}: no files with a known extension under {path} "
                        f"(known: {sorted(EXTENSION_LANGS)})")


def _iter_hf(src: SourceConfig) -> Iterator[Document]:
    """A Hugging Face dataset, streamed. Local files go in `paths` (as `data_files`), e.g. hf_name: json."""
    kwargs: dict[str, Any] = {"split": src.hf_split, "streaming": True}
    if src.paths:
        kwargs["data_files"] = [str(p) for p in _resolve(src)]
    try:
        ds = datasets.load_dataset(src.hf_name, src.hf_config, **kwargs)
    except Exception as err:  # datasets raises many types; the user needs the name and the cause
        raise DataError(f"source {src.name!r}: could not load Hugging Face dataset {src.hf_name!r} "
                        f"(config {src.hf_config!r}, split {src.hf_split!r}): {err}") from None
    for n, row in enumerate(ds):
        yield Document(f"{src.hf_name}:{n}", _text_of(row, src, f"dataset {src.hf_name!r} row {n}"), src.lang)


_ADAPTERS = {"jsonl": _iter_jsonl, "json": _iter_json, "text": _iter_text, "parquet": _iter_parquet, "dir": _iter_dir}


def iter_documents(src: SourceConfig) -> Iterator[Document]:
    """Every document of a source in file order (files in the order of `paths`), empty texts skipped."""
    if src.kind == "hf":
        docs = _iter_hf(src)
    else:
        adapter = _ADAPTERS[src.kind]
        docs = (doc for path in _resolve(src) for doc in adapter(src, path))
    for doc in docs:
        if doc.text:
            yield doc


def shuffled_documents(src: SourceConfig, seed: int, *, buffer_bytes: int = SHUFFLE_BUFFER_BYTES) -> Iterator[Document]:
    """The source's documents in its one fixed shuffled order, at most `max_docs` of them.

    The order depends only on the files, ``seed`` and the source name (so two sources with
    the same files are shuffled differently), never on how much of it is consumed.
    """
    rng = random.Random(f"{seed}:{src.name}")
    buffer: list[Document] = []
    held = 0
    emitted = 0
    limit = src.max_docs

    def take() -> Document:
        nonlocal held
        i = rng.randrange(len(buffer))
        buffer[i], buffer[-1] = buffer[-1], buffer[i]
        doc = buffer.pop()
        held -= len(doc.text)
        return doc

    for doc in iter_documents(src):
        buffer.append(doc)
        held += len(doc.text)
        while held > buffer_bytes and buffer:
            yield take()
            emitted += 1
            if limit is not None and emitted >= limit:
                return
    while buffer:
        yield take()
        emitted += 1
        if limit is not None and emitted >= limit:
            return


def count_documents(src: SourceConfig) -> int:
    """Documents the source yields (after `max_docs`); one full read."""
    n = 0
    for _ in iter_documents(src):
        n += 1
        if src.max_docs is not None and n >= src.max_docs:
            break
    return n


def heldout_count(src: SourceConfig, heldout: int | float) -> int:
    """Held-out documents of a source: a count as is, a fraction of its documents (rounded)."""
    if isinstance(heldout, float):
        return round(heldout * count_documents(src))
    return int(heldout)
