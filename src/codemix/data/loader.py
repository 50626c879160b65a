"""Batches of training sequences from a mixture index.

Each epoch visits every sequence of the mixture once, in an order drawn from
``(seed, epoch)``; the mixture's own seeded order is the base, so two pretraining seeds
see the same sequences in different orders. A global batch is ``batch_size`` consecutive
sequences of that order; rank ``r`` of ``world_size`` takes the ``r``-th contiguous
slice, so the ranks' shares are disjoint and together cover the batch. The last
incomplete global batch of an epoch is dropped (every rank must step together).

The state is ``(epoch, batch)``: restoring it continues with the identical next batch,
whatever the process, because the order is recomputed from the seed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from codemix.data.streams import TokenStream
from codemix.errors import DataError

__all__ = ["MixtureLoader", "VERIFY_LIMIT_BYTES"]

#: Token files up to this size are sha256-checked when a loader opens them (a second or so);
#: larger ones are size-checked only: call ``TokenStream.verify()`` explicitly.
VERIFY_LIMIT_BYTES = 1 << 30


class MixtureLoader:
    """Iterate ``torch.LongTensor (batch_size // world_size, seq_len)``: this rank's share of each global batch.

    Iterating runs to the end of the current epoch (``batches_per_epoch`` global batches);
    iterating again continues with the next epoch. With ``with_sources`` each batch is
    ``{"tokens": (B, T), "source": (B,), "offset": (B,)}``: source ids in
    ``mixture.json["sources"]`` order (= ``data.sources`` order) and each row's start in the
    stream of its source (:attr:`streams`).
    """

    def __init__(self, mixture_dir: str | Path, *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 verify: bool | None = None, with_sources: bool = False):
        self.dir = Path(mixture_dir)
        info_path = self.dir / "mixture.json"
        if not info_path.is_file():
            raise DataError(f"no mixture at {self.dir} (mixture.json missing); build it with `codemix mix STUDY.yaml`")
        if batch_size % world_size:
            raise DataError(f"batch_size={batch_size} is not divisible by world_size={world_size}; "
                            f"pick a global batch size that is a multiple of the number of ranks")
        if not 0 <= rank < world_size:
            raise DataError(f"rank={rank} is outside [0, world_size={world_size})")
        self.info: dict[str, Any] = json.loads(info_path.read_text())
        self.index: np.ndarray = np.load(self.dir / "index.npy")
        self.seq_len: int = int(self.info["seq_len"])
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.local_batch_size = batch_size // world_size
        self.with_sources = with_sources
        self.streams = [TokenStream((self.dir / self.info["streams"][name]).resolve()) for name in self.info["sources"]]
        used = set(np.unique(self.index[:, 0]).tolist()) if len(self.index) else set()
        for sid in sorted(used):
            stream = self.streams[sid]
            size = stream.n_tokens * stream.dtype.itemsize
            if verify or (verify is None and size <= VERIFY_LIMIT_BYTES):
                stream.verify()
            if int(self.index[self.index[:, 0] == sid, 1].max()) + self.seq_len > stream.n_tokens:
                raise DataError(f"mixture {self.dir} points past the end of stream {stream.dir}; "
                                f"the stream was rebuilt after the mixture: rerun `codemix mix` to rebuild both")
        self.batches_per_epoch: int = len(self.index) // batch_size
        if self.batches_per_epoch == 0:
            raise DataError(f"mixture {self.dir} has {len(self.index)} sequences, fewer than one batch of "
                            f"{batch_size}; lower pretrain.batch_size or raise mixtures.n_tokens")
        self.epoch = 0
        self.batch = 0  # next global batch within the epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.index))

    def _rows(self, epoch: int, batch: int, order: np.ndarray) -> np.ndarray:
        start = batch * self.batch_size + self.rank * self.local_batch_size
        return self.index[order[start: start + self.local_batch_size]]

    def __iter__(self) -> Iterator[torch.Tensor | dict[str, torch.Tensor]]:
        epoch = self.epoch
        order = self._order(epoch)
        while self.epoch == epoch and self.batch < self.batches_per_epoch:
            rows = self._rows(epoch, self.batch, order)
            out = np.empty((len(rows), self.seq_len), dtype=np.int64)
            for i, (sid, offset) in enumerate(rows):
                out[i] = self.streams[sid].tokens[offset: offset + self.seq_len]
            self.batch += 1
            if self.batch == self.batches_per_epoch:
                self.epoch, self.batch = epoch + 1, 0
            tokens = torch.from_numpy(out)
            if not self.with_sources:
                yield tokens
                continue
            # objectives that treat code and text differently need each sequence's source, and
            # where it starts in that source's stream to find the stream's annotations
            yield {"tokens": tokens, "source": torch.from_numpy(rows[:, 0].copy()),
                   "offset": torch.from_numpy(rows[:, 1].astype(np.int64))}

    def state_dict(self) -> dict[str, int]:
        """Where iteration stands: the next batch to yield. Save it with the checkpoint."""
        return {"epoch": self.epoch, "batch": self.batch, "seed": self.seed, "batch_size": self.batch_size,
                "n_sequences": len(self.index)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved state (it must come from a loader over the same mixture and batch size)."""
        if state.get("n_sequences", len(self.index)) != len(self.index) or state.get("batch_size", self.batch_size) != self.batch_size:
            raise DataError(f"loader state is for {state.get('n_sequences')} sequences in batches of "
                            f"{state.get('batch_size')}, this loader has {len(self.index)} in batches of "
                            f"{self.batch_size}; resume with the same mixture and pretrain.batch_size")
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        if "seed" in state:
            self.seed = int(state["seed"])
