"""The KV cache every method decodes on: fixed-width buffers and what each column holds.

HF's DynamicCache grows by concatenation, so every step has new shapes and nothing can be
captured as a CUDA graph. Here each layer's keys and values live in buffers with a fixed
number of columns per row (one row per prompt); a forward writes its T new tokens at the
columns the runtime chose. Beside the buffers, per column: committed or not, its position
id, and the stream that wrote it. Columns nobody reads any more (re-tokenized tails, dead
branches, losing candidates) are reclaimed by compaction, which keeps the columns' order.
"""
from __future__ import annotations

import torch
from transformers import DynamicCache

NOBODY = -1  # owner of a committed or free column


class ColumnCache(DynamicCache):
    """Keys and values in fixed-width buffers (rows x heads x width x dim) per layer."""

    def __init__(self, source: DynamicCache, width: int):
        super().__init__()
        self.k = [_widen(layer.keys, width) for layer in source.layers]
        self.v = [_widen(layer.values, width) for layer in source.layers]
        self.cols: torch.Tensor | None = None  # where the next forward writes, one column per fed position

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k, v = self.k[layer_idx], self.v[layer_idx]
        cols = self.cols.to(k.device)  # no-op unless the member's layers span GPUs (device "auto")
        k.index_copy_(2, cols, key_states.to(k.dtype))
        v.index_copy_(2, cols, value_states.to(v.dtype))
        return k, v

    def get_seq_length(self, layer_idx: int | None = 0) -> int:
        return self.width

    @property
    def width(self) -> int:
        return self.k[0].shape[2] if self.k else 0

    def gather_columns(self, order: torch.Tensor) -> None:
        """Row r's column j becomes its column order[r, j], in place (graphs keep their buffers)."""
        for buf in self.k + self.v:
            idx = order.to(buf.device)[:, None, :, None].expand(-1, buf.shape[1], -1, buf.shape[3])
            buf[:, :, : order.shape[1]] = buf.gather(2, idx)

    def refill(self, source: DynamicCache) -> None:
        """The prefill `source` in the first columns, zeros after it, in the buffers as they are."""
        for bufs, layers in ((self.k, [x.keys for x in source.layers]), (self.v, [x.values for x in source.layers])):
            for buf, new in zip(bufs, layers):
                buf[:, :, : new.shape[2]] = new
                buf[:, :, new.shape[2]:] = 0

    def batch_select_indices(self, rows: torch.Tensor) -> None:
        self.k = [b.index_select(0, rows.to(b.device)) for b in self.k]
        self.v = [b.index_select(0, rows.to(b.device)) for b in self.v]

    def grow(self, width: int) -> None:
        self.k = [_widen(b, width) for b in self.k]
        self.v = [_widen(b, width) for b in self.v]


def _widen(buf: torch.Tensor, width: int) -> torch.Tensor:
    out = buf.new_zeros(buf.shape[0], buf.shape[1], width, buf.shape[3])
    out[:, :, : buf.shape[2]] = buf
    return out


class KVCache:
    """The column cache of one member and its per-column state; `front`: columns from here on are free."""

    def __init__(self, prefill: DynamicCache, committed: torch.Tensor, pos: torch.Tensor, extra: int):
        self.cache = ColumnCache(prefill, committed.shape[1] + extra)
        self.front = committed.shape[1]
        self.committed = _pad_cols(committed.bool(), extra)
        self.pos = _pad_cols(pos, extra)
        self.owner = torch.full_like(self.pos, NOBODY, dtype=torch.int32)
        self.compactions = 0

    def refill(self, prefill: DynamicCache, committed: torch.Tensor, pos: torch.Tensor) -> bool:
        """Another batch's prefill in this cache's buffers, as a new KVCache of the same width
        would hold it, written in place (graphs captured on the buffers stay valid). False when
        it does not fit (other rows, fewer columns, another layout): nothing is written then."""
        rows, n = committed.shape
        layers = prefill.layers
        if rows != self.rows or n > self.width or len(layers) != len(self.cache.k) or any(
                x.keys.shape[:2] != b.shape[:2] or x.keys.shape[3] != b.shape[3] or x.keys.dtype != b.dtype
                for x, b in zip(layers, self.cache.k)):
            return False
        self.cache.refill(prefill)
        for name, new, free in (("committed", committed.bool(), False), ("pos", pos, 0)):
            old = getattr(self, name)
            old[:, :n] = new
            old[:, n:] = free
        self.owner.fill_(NOBODY)
        self.front, self.compactions = n, 0
        return True

    @property
    def width(self) -> int:
        return self.cache.width

    @property
    def rows(self) -> int:
        return self.committed.shape[0]

    def reserve(self, n: int, live_owners: list[int]) -> int:
        """First of n free columns in every row (compacting, widening when needed)."""
        if self.front + n > self.width:
            self.compact(n, live_owners)
        return self.front

    def compact(self, need: int, live_owners: list[int]) -> bool:
        """Squeeze out the columns nobody reads (committed or owned by a live stream), order kept,
        so that `need` free columns follow. True when the buffers were replaced (graphs invalid)."""
        from .member import on_device
        self.compactions += 1
        live = on_device(live_owners, self.owner.device, torch.int32)
        read = self.committed | torch.isin(self.owner, live)
        width = int(read.sum(1).max()) if read.numel() else 0
        order = torch.sort((~read).to(torch.int8), dim=1, stable=True).indices[:, :width]
        self.cache.gather_columns(order)
        for name, free in (("committed", False), ("pos", 0), ("owner", NOBODY)):
            old = getattr(self, name)
            new = torch.full_like(old, free)
            new[:, :width] = old.gather(1, order)
            old.copy_(new)  # in place: captured graphs plan their attention from these
        self.front = width
        if width + need <= self.width:
            return False
        grow = max(need, 256)  # rare: more live columns than planned
        self.cache.grow(self.width + grow)
        self.committed, self.pos = _pad_cols(self.committed, grow), _pad_cols(self.pos, grow)
        self.owner = _pad_cols(self.owner, grow, NOBODY)
        return True

    def keep_rows(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.committed, self.pos, self.owner = (x.index_select(0, rows) for x in (self.committed, self.pos, self.owner))


def commit_columns(committed: torch.Tensor, pos: torch.Tensor, owner: torch.Tensor, index) -> None:
    """A KVCache's per-column state (committed, pos, owner) after commits, in place. index rows,
    one column each: cache row r, owner, also (a second stream; an owner of no column for none),
    hide_from, end, valid. The columns `owner` (and `also`) wrote in row r become committed text;
    committed columns of that row at positions >= hide_from stop being (they were re-tokenized);
    so do its columns at positions >= end (scored, never committed). A column with valid 0
    writes row r back as it was (a captured graph's warm-up runs on an index of zeros); a row
    may come several times only with the same values."""
    r, own, other, hide, end, valid = (x[:, None] if i else x for i, x in enumerate(index))
    rows_pos, rows_owner = pos.index_select(0, r), owner.index_select(0, r)
    rows_committed = committed.index_select(0, r)
    written = (rows_owner == own) | (rows_owner == other)
    new = (rows_committed & (rows_pos < hide)) | (written & (rows_pos < end))
    keep = valid == 0
    committed.index_copy_(0, r, torch.where(keep, rows_committed, new))
    owner.index_copy_(0, r, torch.where(keep, rows_owner, rows_owner.masked_fill(written, NOBODY)))


def _pad_cols(x: torch.Tensor, n: int, value=0) -> torch.Tensor:
    return torch.cat([x, torch.full((x.shape[0], n), value, dtype=x.dtype, device=x.device)], 1)
